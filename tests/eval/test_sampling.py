"""The sampling loop with a fake generator: resume, no duplicates, truncated files, bad prompts."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest

from thinkfast.eval.io import read_jsonl
from thinkfast.eval.sampling import SampleSettings, run_sampling
from thinkfast.eval.tasks.base import Example
from thinkfast.runtime import UserError

N = 3


class FakeGenerate:
    """Records calls; completion text names the prompt and sample; fails on request."""

    def __init__(self, fail_after_calls=None, reject_len=None):
        self.calls: list[list[list[int]]] = []
        self.fail_after_calls = fail_after_calls
        self.reject_len = reject_len

    def __call__(self, prompts, seed):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt  # a crash between engine calls
        if self.reject_len is not None and any(len(p) >= self.reject_len for p in prompts):
            raise ValueError("prompt plus new tokens exceed the context")
        self.calls.append(prompts)
        return [SimpleNamespace(
            samples=[SimpleNamespace(text=f"p{p[0]} s{i} #### {p[0]}", token_ids=[1, 2, 3],
                                     logprobs=[-0.5, -0.25, -0.25], finish_reason="stop") for i in range(N)],
            timing={"prefill_s": 0.1, "decode_s": 0.6, "batch_prompts": len(prompts),
                    "batch_rows": len(prompts) * N, "new_tokens": 9 * len(prompts)})
            for p in prompts]


def _problems(count=5):
    examples = [Example(id=f"test/{i}", question=f"q{i}", gold=f"#### {i}", answer=str(i)) for i in range(count)]
    prompts = [[i] + [0] * i for i in range(count)]  # prompt i has i + 1 tokens
    return examples, prompts


SETTINGS = SampleSettings(task="gsm8k", model="fake", n=N, temperature=0.7, max_new_tokens=16, seed=1)


def _assert_complete(path, count):
    rows = read_jsonl(path)
    keys = [(r["problem_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == count * N  # nothing duplicated, nothing lost
    assert {r["problem_id"] for r in rows} == {f"test/{i}" for i in range(count)}
    return rows


def test_fresh_run_writes_n_rows_per_problem_with_settings_and_timings(tmp_path):
    out = tmp_path / "runs" / "x.jsonl"
    examples, prompts = _problems()
    rep = run_sampling(examples, prompts, FakeGenerate(), out, SETTINGS, batch_problems=2, hardware="cpu: t")
    assert (rep.written, rep.skipped, rep.failed) == (5, 0, [])
    rows = _assert_complete(out, 5)
    r = rows[0]
    assert r["completion"] == "p0 s0 #### 0" and r["gold"] == "#### 0" and r["num_tokens"] == 3
    assert r["logprob_sum"] == pytest.approx(-1.0)
    assert r["settings"]["temperature"] == 0.7 and r["settings"]["n"] == N
    assert (r["batch_problems"], r["batch_rows"], r["hardware"]) == (2, 2 * N, "cpu: t")


def test_resume_after_a_crash_skips_finished_problems(tmp_path):
    out = tmp_path / "x.jsonl"
    examples, prompts = _problems()
    with pytest.raises(KeyboardInterrupt):
        run_sampling(examples, prompts, FakeGenerate(fail_after_calls=2), out, SETTINGS, batch_problems=1)
    assert len(read_jsonl(out)) == 2 * N  # two whole problems survived
    gen = FakeGenerate()
    rep = run_sampling(examples, prompts, gen, out, SETTINGS, batch_problems=1)
    assert (rep.skipped, rep.written) == (2, 3)
    assert [p[0][0] for p in gen.calls] == [2, 3, 4]  # only the missing problems were sampled
    _assert_complete(out, 5)
    # a third run has nothing to do
    gen = FakeGenerate()
    assert run_sampling(examples, prompts, gen, out, SETTINGS).written == 0 and gen.calls == []


def test_partial_problem_and_truncated_line_are_dropped_and_redone(tmp_path):
    out = tmp_path / "x.jsonl"
    examples, prompts = _problems()
    run_sampling(examples[:3], prompts[:3], FakeGenerate(), out, SETTINGS)
    lines = out.read_text().splitlines(keepends=True)
    # crash mid-write of problem 2: its first row whole, its second cut in half
    out.write_text("".join(lines[: 2 * N]) + lines[2 * N] + lines[2 * N + 1][:25])
    rep = run_sampling(examples, prompts, FakeGenerate(), out, SETTINGS)
    assert (rep.skipped, rep.written, rep.dropped_rows) == (2, 3, 1)
    _assert_complete(out, 5)
    assert out.read_text().endswith("\n")


def test_other_settings_are_refused(tmp_path):
    out = tmp_path / "x.jsonl"
    examples, prompts = _problems(2)
    run_sampling(examples, prompts, FakeGenerate(), out, SETTINGS)
    other = SampleSettings(**{**SETTINGS.to_dict(), "temperature": 1.0})
    with pytest.raises(UserError, match="other settings"):
        run_sampling(examples, prompts, FakeGenerate(), out, other)


def test_malformed_line_in_the_middle_is_an_error_with_its_line(tmp_path):
    out = tmp_path / "x.jsonl"
    examples, prompts = _problems(2)
    run_sampling(examples, prompts, FakeGenerate(), out, SETTINGS)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + "{not json\n" + "".join(lines[2:]))
    with pytest.raises(UserError, match=r"x\.jsonl:3"):
        run_sampling(examples, prompts, FakeGenerate(), out, SETTINGS)


def test_prompts_over_the_context_are_reported_and_the_run_goes_on(tmp_path):
    out = tmp_path / "x.jsonl"
    examples, prompts = _problems(5)
    # context 4: prompts of 4 and 5 tokens cannot fit; the engine also rejects 3-token prompts
    rep = run_sampling(examples, prompts, FakeGenerate(reject_len=3), out, SETTINGS, batch_problems=5,
                       context_len=4)
    assert sorted(pid for pid, _ in rep.failed) == ["test/2", "test/3", "test/4"]
    assert any("context of 4" in why for _, why in rep.failed)
    assert rep.written == 2
    assert {r["problem_id"] for r in read_jsonl(out)} == {"test/0", "test/1"}


def test_sample_command_with_an_injected_engine(tmp_path, monkeypatch):
    """The CLI end to end on a tiny saved model, with the engine module replaced by a fake."""
    from thinkfast.checkpoint import save_model
    from thinkfast.cli import main

    from .conftest import make_model, make_tokenizer

    model_dir = tmp_path / "tiny"
    save_model(make_model(), model_dir, tokenizer=make_tokenizer(chat=True))
    data = tmp_path / "gsm8k_test.jsonl"
    data.write_text("".join(json.dumps({"question": f"q {i}", "answer": f"so\n#### {i}"}) + "\n" for i in range(3)))

    fake = FakeGenerate()
    engine = types.ModuleType("thinkfast.inference.engine")
    engine.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    engine.ContextLimitWarning = type("ContextLimitWarning", (UserWarning,), {})
    engine.generate = lambda model, prompts, params, tokenizer=None: fake(prompts, params.seed)
    monkeypatch.setitem(sys.modules, "thinkfast.inference.engine", engine)

    out = tmp_path / "s.jsonl"
    argv = ["sample", "--model", str(model_dir), "--task", "gsm8k", "--n", str(N), "--out", str(out),
            "--data", str(data), "--batch-problems", "2", "--max-new-tokens", "8", "--threads", "1"]
    assert main(argv) == 0
    rows = read_jsonl(out)
    assert len(rows) == 3 * N and rows[0]["settings"]["prompt_style"] == "chat"  # auto: has a template
    assert fake.calls[0][0][0] == 4  # the chat prompt starts with <|user|>, BOS not added twice
    assert main(argv) == 0 and len(read_jsonl(out)) == 3 * N  # resumed: nothing added
    assert len(fake.calls) == 2

    # The 8-shot plain prompt (~600 tokens) is over this model's 256-token context: reported
    # per problem in a side file, and the command still succeeds.
    few = tmp_path / "few.jsonl"
    assert main(argv[:8] + [str(few)] + argv[9:] + ["--prompt-style", "fewshot"]) == 0
    errors = read_jsonl(f"{few}.errors.jsonl")
    assert [e["problem_id"] for e in errors] == ["test/0", "test/1", "test/2"]
    assert "context of 256" in errors[0]["error"]


def test_sample_command_with_the_real_engine(tmp_path):
    """Tiny model, real engine: rows are complete, and batching does not change the samples."""
    from thinkfast.checkpoint import save_model
    from thinkfast.cli import main

    from .conftest import make_model, make_tokenizer

    model_dir = tmp_path / "tiny"
    save_model(make_model(), model_dir, tokenizer=make_tokenizer(chat=True))
    data = tmp_path / "gsm8k_test.jsonl"
    data.write_text("".join(json.dumps({"question": f"question {i} + 1 ?", "answer": f"so\n#### {i + 1}"}) + "\n"
                            for i in range(3)))
    base = ["sample", "--model", str(model_dir), "--task", "gsm8k", "--n", "2", "--data", str(data),
            "--max-new-tokens", "4", "--temperature", "1.0", "--seed", "7", "--threads", "1", "--device", "cpu"]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(base + ["--out", str(a), "--batch-problems", "3"]) == 0
    assert main(base + ["--out", str(b), "--batch-problems", "1"]) == 0
    rows_a, rows_b = read_jsonl(a), read_jsonl(b)
    assert len(rows_a) == 6
    r = rows_a[0]
    assert 1 <= r["num_tokens"] <= 4 and r["logprob_sum"] <= 0 and r["finish_reason"] in ("eos", "stop", "length")
    assert r["decode_s"] > 0 and (r["batch_problems"], r["batch_rows"]) == (3, 6)
    assert [x["completion"] for x in rows_a] == [x["completion"] for x in rows_b]
