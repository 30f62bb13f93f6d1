"""Resume only trusts finished rows: an unfinished last line is redone, anything else is refused.

A kill can leave exactly one thing behind: the file's tail cut anywhere inside the last problem
(all n rows of a problem go out in one write). Every other fault was made by something else, and
the rows around it may be someone's data, so resume names the line instead of discarding it."""

from __future__ import annotations

import json

import pytest

from thinkfast.eval.io import read_jsonl
from thinkfast.eval.sampling import FINISHED_ROW_KEYS, SampleSettings, prepare_resume, run_sampling
from thinkfast.runtime import UserError

from .test_sampling import N, SETTINGS, FakeGenerate, _assert_complete, _problems


def _sampled(tmp_path, count=3):
    out = tmp_path / "x.jsonl"
    examples, prompts = _problems(count)
    run_sampling(examples, prompts, FakeGenerate(), out, SETTINGS)
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    return out, rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_finished_row_is_what_sample_rows_writes(tmp_path):
    _, rows = _sampled(tmp_path, 1)
    assert set(FINISHED_ROW_KEYS) <= set(rows[0])


def test_last_row_without_completion_is_redone_so_the_file_grades(tmp_path):
    out, rows = _sampled(tmp_path)
    del rows[-1]["completion"]  # e.g. a writer that died between building and finishing a row
    _write(out, rows)
    logged = []
    gen = FakeGenerate()
    examples, prompts = _problems(3)
    rep = run_sampling(examples, prompts, gen, out, SETTINGS, log=logged.append)
    assert (rep.skipped, rep.written, rep.dropped_rows) == (2, 1, N)  # the last problem, all its rows
    assert [p[0][0] for p in gen.calls] == [2]
    assert any(f"x.jsonl:{3 * N}: dropped the last line" in s and "'completion'" in s for s in logged)
    final = _assert_complete(out, 3)
    assert all(isinstance(r["completion"], str) for r in final)  # what `thinkfast grade` requires


@pytest.mark.parametrize("fault,message", [
    (lambda r: r.pop("completion"), "row lacks 'completion'"),
    (lambda r: r.update(completion=None), "'completion' is NoneType, not a string"),
    (lambda r: r.update(sample_index="1"), "'sample_index' is '1', not an integer in 0..2"),
    (lambda r: r.pop("finish_reason"), "row lacks 'finish_reason'"),
])
def test_unfinished_row_in_the_middle_is_an_error_naming_file_and_line(tmp_path, fault, message):
    out, rows = _sampled(tmp_path)
    fault(rows[1])
    _write(out, rows)
    before = out.read_bytes()
    with pytest.raises(UserError, match=rf"x\.jsonl:2: {message}"):
        run_sampling(*_problems(3), FakeGenerate(), out, SETTINGS)
    assert out.read_bytes() == before  # nothing discarded


def test_problem_repeated_or_split_in_the_middle_is_an_error_not_discarded(tmp_path):
    out, rows = _sampled(tmp_path)
    _write(out, rows + rows[:N])  # problem 0 appended again, whole
    before = out.read_bytes()
    with pytest.raises(UserError, match=rf"x\.jsonl:{3 * N + 1}: problem 'test/0' appears again"):
        prepare_resume(out, SETTINGS)
    assert out.read_bytes() == before
    # problem 0 missing a row, followed by finished problems: not what a kill leaves
    _write(out, rows[1:])
    with pytest.raises(UserError, match=r"x\.jsonl:1: problem 'test/0' has sample indices \[1, 2\]"):
        prepare_resume(out, SETTINGS)


def test_unfinished_last_problem_is_dropped_whatever_the_cut(tmp_path):
    """Every byte prefix of a finished file is a state a kill can leave: each resumes to it."""
    out, _ = _sampled(tmp_path, 2)
    full = out.read_bytes()
    for cut in range(len(full) // 2, len(full) + 1, 7):
        out.write_bytes(full[:cut])
        done, _ = prepare_resume(out, SETTINGS)
        kept = read_jsonl(out)
        assert len(kept) == N * len(done) and full.startswith(out.read_bytes())
        rep = run_sampling(*_problems(2), FakeGenerate(), out, SETTINGS)
        assert rep.skipped == len(done) and out.read_bytes() == full


def test_other_settings_on_the_last_line_are_still_refused(tmp_path):
    out, rows = _sampled(tmp_path)
    rows[-1]["settings"] = SampleSettings(**{**SETTINGS.to_dict(), "seed": 9}).to_dict()
    _write(out, rows)
    with pytest.raises(UserError, match=rf"x\.jsonl:{3 * N}: made with other settings"):
        prepare_resume(out, SETTINGS)


def test_a_file_written_before_hit_context_limit_existed_still_resumes(tmp_path):
    out, rows = _sampled(tmp_path)
    for r in rows:
        del r["hit_context_limit"]
    _write(out, rows)
    done, dropped = prepare_resume(out, SETTINGS)
    assert done == {"test/0", "test/1", "test/2"} and dropped == 0


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    out, _ = _sampled(tmp_path)
    lines = out.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"q', b'"\xff q', 1)
    out.write_bytes(b"\n".join(lines))
    before = out.read_bytes()
    with pytest.raises(UserError, match=r"x\.jsonl:2: not UTF-8"):
        prepare_resume(out, SETTINGS)
    assert out.read_bytes() == before
