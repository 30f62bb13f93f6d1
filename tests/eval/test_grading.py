"""The grader: the labelled corpus against plain Math-Verify, each extraction rule, the worker
pool, CPU-time limits, hostile output, and grading files."""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import time

import pytest

from thinkfast.eval.extraction import TAIL_CHARS, answer_spans, completion_tail, last_boxed
from thinkfast.eval.grading import Grader, grade_file, grade_rows, progress_path, summarize
from thinkfast.eval.tasks.base import Example, get_task
from thinkfast.runtime import UserError

from .conftest import data_file
from .grading_corpus import corpus


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, cpu_limit_s=10.0) as g:
        yield g


def plain_math_verify(gold: str, completion: str) -> bool:
    """Math-Verify with nothing around it: its own extraction of the whole completion."""
    from math_verify import parse, verify

    logging.disable(logging.WARNING)
    return bool(verify(parse(f"${gold}$"), parse(completion)))


def grade(grader, pairs, task="math500"):
    """``(gold answer, completion)`` pairs graded as ``thinkfast grade`` grades them."""
    t = get_task(task).use_grader(grader)
    return t.grade_many([(c, Example("", "", g, t.gold_answer(g))) for g, c in pairs])


# --- the corpus -----------------------------------------------------------------------------------

def test_corpus_is_large_varied_and_one_third_false():
    cases = corpus()
    assert len(cases) >= 500
    assert sum(not c.correct for c in cases) >= len(cases) / 3
    families = {c.family for c in cases}
    for needed in ("boxed", "r1", "minerva", "llama", "md_answer", "hashes", "answer_is", "closing_plain",
                   "dollar", "display_dollar", "paren", "bracket", "intermediate_box", "several_boxes", "no_answer"):
        assert needed in families


def test_corpus_agreement_at_least_plain_math_verify_on_every_family(grader):
    cases = corpus()
    ours = [g.verdict.correct for task in ("gsm8k", "math500")
            for g in grade(grader, [(c.gold, c.completion) for c in cases if c.task == task], task)]
    cases = [c for task in ("gsm8k", "math500") for c in cases if c.task == task]
    plain = [plain_math_verify(c.gold, c.completion) for c in cases]
    per_family = collections.defaultdict(lambda: [0, 0, 0])
    for c, o, p in zip(cases, ours, plain):
        f = per_family[c.family]
        f[0] += 1
        f[1] += o == c.correct
        f[2] += p == c.correct
    table = {k: (n, a / n, b / n) for k, (n, a, b) in sorted(per_family.items())}
    print("\nfamily: cases, thinkfast agreement, plain Math-Verify agreement")
    for k, row in table.items():
        print(f"  {k}: {row[0]}, {row[1]:.1%}, {row[2]:.1%}")
    agreement = sum(o == c.correct for c, o in zip(cases, ours)) / len(cases)
    assert agreement >= 0.995, table
    assert all(a >= b for _, a, b in table.values()), table


TRICKY = [
    # (gold answer, completion, correct?)
    ("1000", "So she earns $1,000 in total.\n#### 1,000", True),
    ("1450000", "The answer is 1,450,000.", True),
    ("\\frac{3}{4}", "Thus \\boxed{\\dfrac{3}{4}}.", True),
    ("\\frac{3}{4}", "Thus \\boxed{0.75}.", True),
    ("0.75", "\\boxed{\\tfrac{3}{4}}", True),
    ("\\frac{3}{4}", "\\boxed{0.7}", False),
    ("18", "She makes \\boxed{\\$18} a day.", True),
    ("18", "The answer is 18 dollars.", True),
    ("5", "\\boxed{5\\text{ cm}}", True),
    ("90", "\\boxed{90^\\circ}", True),
    ("25", "\\boxed{25\\%}", True),
    ("[2,5)", "\\boxed{[2, 5)}", True),
    ("[2,5)", "\\boxed{(2,5]}", False),
    ("(6,31,-1)", "\\boxed{(6, -1, 31)}", False),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}2\\\\1\\end{pmatrix}}", False),
    ("-9", "\\boxed{9}", False),
    ("16", "First \\boxed{12}, no wait: \\boxed{16}.", True),
    ("12", "First \\boxed{12}, no wait: \\boxed{16}.", False),
    ("7", "I am not sure how to solve this.", False),
    ("\\text{(C)}", "\\boxed{C}", True),
    ("3", "\\boxed{x = 3}", True),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", True),
    ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}", True),
]


def test_tricky_answers(grader):
    graded = grade(grader, [(g, c) for g, c, _ in TRICKY])
    assert [(g.verdict.correct, g.verdict.timeout) for g in graded] == [(ok, False) for _, _, ok in TRICKY]


# --- each hand-written rule earns its place: a case plain Math-Verify gets wrong --------------------

RULES = [
    # the last marker wins over an earlier box
    ("12", "A first guess is $\\boxed{5}$. That ignores the fee. The answer is 12."),
    # GSM8K's #### line
    ("18", "The answer is probably 16 eggs, minus some.\nShe makes 9 * 2 = 18.\n#### 18"),
    # boxes joined by ", and"
    ("2, -3", "So $x$ is $\\boxed{2}$, and $\\boxed{-3}$."),
    # plain-text mathematics after a marker, and without one
    ("\\frac{2+5b}{7}", "Putting everything together, the result is (2+5b)/7."),
    ("2+3i", "The answer is 2+3i."),
    ("(1,4)", "Final Answer: The interval is (1,4)."),
    ("x^2+1", "The answer is x^2 + 1."),  # an expression of several words
    ("\\frac{40}{9}", "The answer is 4 4/9."),  # a mixed number
    ("1, -2", "$\\boxed{-2}$ \\quad \\text{and} \\quad $\\boxed{1}$"),  # boxes apart by several separators
]


@pytest.mark.parametrize("gold, completion", RULES)
def test_each_rule_fixes_a_case_plain_math_verify_gets_wrong(grader, gold, completion):
    assert not plain_math_verify(gold, completion)
    assert grade(grader, [(gold, completion)])[0].verdict.correct


def test_answer_in_passing_after_a_box_is_not_a_marker():
    text = "\\boxed{44}.\n\nWe may check our answer: $17\\cdot 44 = 748$, so our answer is correct."
    assert answer_spans(text)[0] == "\\boxed{44}"


def test_a_marker_span_ends_with_its_sentence():
    spans = answer_spans("Intro $\\boxed{2}$. The answer is $5$. Then we check $3 + 3 = 6$ holds.")
    assert spans[0] == "The answer is $5$."


def test_tail_starts_at_a_line_and_drops_what_follows_a_stop():
    text = "x" * 10 + "\n" + "a $b$ c\n" * 2000 + "\\boxed{7}\n\nProblem: next one \\boxed{8}"
    tail = completion_tail(text, stops=("\n\nProblem:",))
    assert tail.endswith("\\boxed{7}") and len(tail) <= TAIL_CHARS
    assert tail.startswith("a $b$ c\n")


def test_last_boxed_reads_gold_solutions():
    assert last_boxed("so \\boxed{\\frac{\\sqrt{2}}{2}}, then \\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("roots $\\boxed{2}$ \\quad \\text{and} \\quad $\\boxed{-3}$") == "2, -3"
    assert last_boxed("ok \\boxed{3} but cut \\boxed{\\frac{1") == "3"
    assert last_boxed("none") is None


# --- the pool ---------------------------------------------------------------------------------------

def test_any_number_of_workers_gives_the_results_of_one():
    cases = corpus()[::17]
    pairs = [(c.gold, c.completion) for c in cases]
    with Grader(workers=1) as one, Grader(workers=3) as three:
        a, b = grade(one, pairs), grade(three, pairs)
    assert a == b
    assert len({g.verdict.correct for g in a}) == 2  # a mixed set, not all one verdict


def test_workers_outlive_the_threads_that_fed_them():
    """The pool feeds its workers from short-lived threads; a worker started from one must not die
    (by its parent-death signal) when that thread ends, and the next call must reach it."""
    same = {"op": "same", "a": "1", "b": "1"}
    with Grader(workers=2) as g:
        assert g.pool.run([same] * 4) == [{"ok": True}] * 4
        pids = [w._proc.pid for w in g.pool.workers]
        time.sleep(0.5)  # a parent-death signal, had it fired, has landed
        assert [w._proc.poll() for w in g.pool.workers] == [None, None]
        assert g.pool.run([same] * 4) == [{"ok": True}] * 4
        assert [w._proc.pid for w in g.pool.workers] == pids


def test_a_timeout_counts_as_incorrect_is_tallied_and_the_worker_recovers():
    with Grader(cpu_limit_s=0.5) as g:
        graded = grade(g, [("5", "\\boxed{9^{9^{9^{9}}}}"), ("\\frac{1}{2}", "\\boxed{0.5}")])
        assert [(x.verdict.correct, x.verdict.timeout) for x in graded] == [(False, True), (True, False)]
        assert g.stats["timeout"] == 1


def test_equivalent_of_two_answers_is_cached(grader):
    assert grader.equivalent("2\\sqrt{2}", "\\sqrt{8}").correct
    before = grader.stats["cached"]
    assert grader.equivalent("2\\sqrt{2}", "\\sqrt{8}").correct
    assert grader.stats["cached"] == before + 1
    assert not grader.equivalent("7", None).correct


def _spin(stop) -> None:
    while not stop.is_set():
        pass


# A check that takes ~0.3 s of CPU: the limit below is wall time it would exceed with the
# machine's cores shared by busy processes, but CPU time it never reaches.
SLOW = ("x^{20}-1", "\\boxed{(x-1)(" + "+".join(f"x^{{{i}}}" for i in range(19, 1, -1)) + "+x+1)}")


def test_verdicts_do_not_depend_on_the_machine_load():
    pairs = [SLOW, ("5", "\\boxed{9^{9^{9^{9}}}}"), ("\\frac{1}{2}", "\\boxed{0.5}"), ("3", "\\boxed{4}")]
    with Grader(cpu_limit_s=1.5) as g:
        quiet = [x.verdict for x in grade(g, pairs)]
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        hogs = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(6 * (os.cpu_count() or 1))]
        for h in hogs:
            h.start()
        try:
            g._graded.clear()  # grade again, not from the cache
            busy = [x.verdict for x in grade(g, pairs)]
        finally:
            stop.set()
            for h in hogs:
                h.join()
    assert busy == quiet
    assert quiet[0].correct and quiet[1].timeout


# --- hostile output -----------------------------------------------------------------------------------

HOSTILE = [
    "\\boxed{" * 6000,
    "5 " + "meters and " * 20000,
    "\\text{" * 3000 + "1" + "}" * 3000,
    "{" * 5000 + "}" * 4000,
    "The answer is $10^{10^{10^{10}}}$.",
    "The answer is $1000000!$.",
    "\\boxed{9^{9^{9^{9^{9}}}}}",
    "a" * 100_000 + " \\boxed{3}",
    "\\left(" * 3000,
    "nul \x00 bytes \x00 \\boxed{\x00}",
    "lone surrogate \ud800 \\boxed{\udfff}",
    "$" * 9999,
    "The answer is __import__('os').system('touch PWNED').",
]


def test_hostile_output_returns_a_verdict_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    limit = 1.0
    with Grader(cpu_limit_s=limit) as g:
        g.pool  # started before the clock: start-up is not a case's cost
        grade(g, [("1", "\\boxed{1}")])
        t0 = time.monotonic()
        graded = grade(g, [("3", text) for text in HOSTILE])
        elapsed = time.monotonic() - t0
    assert len(graded) == len(HOSTILE)
    assert graded[7].verdict.correct  # the 100 kB completion is read through its tail
    assert not any(x.verdict.correct for i, x in enumerate(graded) if i != 7)
    assert not (tmp_path / "PWNED").exists()
    # No hang: each case costs at most its limit, plus a worker restart after a timeout.
    assert elapsed < len(HOSTILE) * (limit + 5.0)


def test_fuzzed_output_always_gets_a_verdict():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    pieces = st.sampled_from(["\\boxed{", "}", "{", "\\left(", "\\right)", "\\text{", "10^{", "!", "\\frac{",
                              "$", "$$", "\\(", "\\)", "\\[", "\\]", "\x00", "\ud800", "####", "The answer is ",
                              "Final Answer: ", "\\sqrt", "^", "9", "1,000", " ", "\n", ".", "(", ")", "x", "="])
    texts = st.one_of(st.lists(pieces, max_size=200).map("".join), st.text(max_size=300))

    with Grader(cpu_limit_s=1.0) as g:
        @settings(max_examples=40, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(texts)
        def check(text):
            [x] = grade(g, [("7", text)])
            assert isinstance(x.verdict.correct, bool)
            assert x.pred is None or isinstance(x.pred, str)

        check()


# --- grading rows and files ---------------------------------------------------------------------------

def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_grade_cli(tmp_path):
    from thinkfast.cli import main

    rows = [{"gold": "Some work.\n#### 1,200", "completion": "... The answer is 1200.", "task": "gsm8k"},
            {"gold": "x\n#### 5", "completion": "no idea", "task": "gsm8k"}]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(inp, rows)
    assert main(["grade", str(inp), "--out", str(out), "--workers", "2"]) == 0
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["pred"], g["correct"], g["grade_timeout"]) for g in graded] == [("1200", True, False),
                                                                              (None, False, False)]
    assert not os.path.exists(progress_path(out))


def test_grade_cli_reports_malformed_line_and_touches_nothing(tmp_path, capsys):
    from thinkfast.cli import main

    inp = tmp_path / "bad.jsonl"
    inp.write_text('{"gold": "1", "completion": "1"}\n{"gold": oops}\n{"gold": "2", "completion": "2"}\n')
    assert main(["grade", "--task", "gsm8k", str(inp)]) == 2
    err = capsys.readouterr().err
    assert f"{inp}:2" in err and "Traceback" not in err
    assert inp.read_text().count("\n") == 3


def test_empty_input_is_an_error_and_keeps_the_existing_output(tmp_path, capsys):
    from thinkfast.cli import main

    inp, out = tmp_path / "empty.jsonl", tmp_path / "out.jsonl"
    inp.write_text("")
    out.write_text('{"kept": true}\n')
    assert main(["grade", "--task", "gsm8k", str(inp), "--out", str(out)]) == 2
    assert "no rows" in capsys.readouterr().err
    assert out.read_text() == '{"kept": true}\n'


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--timeout", "-1"), ("--timeout", "x")])
def test_grade_rejects_bad_numbers(tmp_path, capsys, flag, value):
    from thinkfast.cli import main

    with pytest.raises(SystemExit) as e:
        main(["grade", str(tmp_path / "x.jsonl"), flag, value])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_an_interrupted_grading_resumes_from_its_progress_file(tmp_path):
    rows = [{"gold": f"w\n#### {i}", "completion": f"The answer is {i}.", "task": "gsm8k"} for i in range(6)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(inp, rows)
    # A run killed after grading rows 0 and 1; row 1's record is marked so its reuse shows.
    from thinkfast.eval.grading import _row_digest

    progress = progress_path(out)
    with open(progress, "w") as f:
        for i, pred in ((0, "0"), (1, "reused")):
            f.write(json.dumps({"i": i, "digest": _row_digest(rows[i]), "pred": pred, "correct": True,
                                "grade_timeout": False, "grade_error": False}) + "\n")
        f.write('{"i": 2, "dig')  # the line being written when it died
    s = grade_file(inp, out, workers=1)
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["pred"] for g in graded] == ["0", "reused", "2", "3", "4", "5"]
    assert s.correct == 6 and not os.path.exists(progress)


def test_progress_of_other_rows_is_not_reused(tmp_path):
    rows = [{"gold": "w\n#### 1", "completion": "The answer is 1.", "task": "gsm8k"}]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(inp, rows)
    with open(progress_path(out), "w") as f:
        f.write(json.dumps({"i": 0, "digest": "not-this-row", "pred": "9", "correct": False,
                            "grade_timeout": False, "grade_error": False}) + "\n")
    grade_file(inp, out, workers=1)
    assert json.loads(out.read_text())["pred"] == "1"


def test_rows_without_completion_are_named(tmp_path):
    with pytest.raises(UserError, match="row 2: row has no 'completion'"):
        grade_rows(get_task("gsm8k"), [{"gold": "#### 1", "completion": "1"}, {"gold": "#### 2"}], source="f")


def test_a_lone_surrogate_is_graded_and_written(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"gold": "#### 5", "completion": "bad \\ud800 text. The answer is 5.", "task": "gsm8k"}\n')
    assert grade_file(inp, out, workers=1).correct == 1
    assert json.loads(out.read_text())["completion"] == "bad \ud800 text. The answer is 5."


# --- gold against itself ------------------------------------------------------------------------------

def _gold_rows(task_name: str, file: str, completion_field: str):
    path = data_file(file)
    task = get_task(task_name)
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return task, [{"gold": ex.gold, "completion": r[completion_field]}
                  for ex, r in zip(task.load(path=str(path)), raw)]


@pytest.mark.parametrize("task_name, file, completion_field", [
    ("gsm8k", "gsm8k_test.jsonl", "answer"),        # the full worked answer, ending "#### N"
    ("math500", "math500_test.jsonl", "solution"),  # the reference solution, with its \boxed{}
])
def test_gold_graded_against_itself(grader, task_name, file, completion_field):
    task, rows = _gold_rows(task_name, file, completion_field)
    s = summarize(grade_rows(task.use_grader(grader), rows))
    assert s.rows == len(rows) > 0
    assert s.correct == s.rows, s.to_dict()


def test_a_neighbour_gold_is_wrong_unless_the_answers_coincide(grader):
    """The negative control: each problem graded against the next problem's reference."""
    task, rows = _gold_rows("gsm8k", "gsm8k_test.jsonl", "answer")
    shifted = [{"gold": a["gold"], "completion": b["completion"]} for a, b in zip(rows, rows[1:] + rows[:1])]
    graded = grade_rows(task.use_grader(grader), shifted)
    for r in graded:
        same = float(task.gold_answer(r["gold"])) == float(task.gold_answer(r["completion"]))
        assert r["correct"] == same, (r["gold"][-40:], r["pred"])


def test_workers_die_with_the_process_that_started_them(tmp_path):
    """A grading run killed with SIGKILL leaves no worker behind, even one deep in a check."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    pids = tmp_path / "pids"
    script.write_text(
        "import sys\n"
        "from thinkfast.eval.grading import Grader\n"
        "g = Grader(workers=2, cpu_limit_s=600)\n"
        "w = g.pool.workers\n"
        "for x in w: x._start()\n"
        f"open({str(pids)!r}, 'w').write(' '.join(str(x._proc.pid) for x in w))\n"
        "g.pool.run([{'op': 'same', 'a': '5', 'b': '9^{9^{9^{9}}}'}] * 2)\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 120
    while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p) for p in pids.read_text().split()]
    time.sleep(1.0)  # both workers are now inside the tower
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)


def test_a_run_of_more_boxes_than_markers_tried_is_read_whole():
    boxes = ", ".join(f"\\boxed{{{i}}}" for i in range(1, 8))
    assert answer_spans(f"The roots are {boxes}.")[0] == "\\boxed{1, 2, 3, 4, 5, 6, 7}"
