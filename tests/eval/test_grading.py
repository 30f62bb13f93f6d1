"""Extraction, normalisation and equivalence, including Math-Verify under our own deadline."""

from __future__ import annotations

import json
import threading

import pytest

from thinkfast.eval.grading import (Grader, canonical_latex, extract_answer, grade_rows, last_boxed,
                                    normalize_answer, summarize)
from thinkfast.eval.tasks.base import get_task

from .conftest import data_file


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout_s=10.0) as g:
        yield g


# --- extraction -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}"),
    ("nested \\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("set \\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("first \\boxed{3} then \\boxed{4}", "4"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5 apples", "5"),
    ("ok \\boxed{3} but cut \\boxed{\\frac{1", "3"),  # unclosed last box: the complete one wins
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Janet sells 9 eggs.\nShe makes $18.\n#### 18", "18"),
    ("blah #### 1,000", "1,000"),
    ("We get 4 and then 7. The answer is 12.", "12"),
    ("Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.", "-\\frac{2}{3}"),
    ("so the final answer is 3.5.", "3.5"),
    ("I computed 3 then 41 then 5,000 things", "5,000"),
    ("no digits at all", None),
    ("", None),
    ("the answer is \\boxed{9} not 10", "9"),  # a box beats every phrase
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("raw, key", [
    ("1,000", "1000"), ("$1,000$", "1000"), ("\\$18", "18"), ("18.00", "18"), (".5", "0.5"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("\\tfrac34", "\\frac{3}{4}"), ("\\left( 1, 2 \\right)", "(1,2)"),
    ("90^\\circ", "90"), ("90^{\\circ}", "90"), ("25\\%", "25"), ("x = 5", "5"), ("\\text{Evelyn}", "Evelyn"),
    ("5 \\text{ cm}", "5"), ("12 square units", "12"), ("5x", "5x"), ("-0", "0"), ("\\boxed{7}", "7"),
    ("1,\\!000", "1000"), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
])
def test_normalize_answer(raw, key):
    assert normalize_answer(raw) == key


def test_canonical_latex_keeps_spaces_between_commands():
    # "\pi r" without the space would be the unknown command "\pir".
    assert canonical_latex("2\\pi r") == "2\\pi r"


# --- the tricky fixture -------------------------------------------------------------------------------

TRICKY = [
    # (gold answer, completion, correct?)
    ("1000", "So she earns $1,000 in total.\n#### 1,000", True),                       # thousands
    ("1450000", "The answer is 1,450,000.", True),
    ("\\frac{3}{4}", "Thus \\boxed{\\dfrac{3}{4}}.", True),                            # dfrac vs frac
    ("\\frac{3}{4}", "Thus \\boxed{0.75}.", True),                                     # vs decimal
    ("0.75", "\\boxed{\\tfrac{3}{4}}", True),
    ("\\frac{3}{4}", "\\boxed{0.7}", False),
    ("18", "She makes \\boxed{\\$18} a day.", True),                                   # currency
    ("18", "The answer is 18 dollars.", True),                                         # units
    ("5", "\\boxed{5\\text{ cm}}", True),
    ("12", "\\boxed{12 \\text{ square units}}", True),
    ("90", "\\boxed{90^\\circ}", True),                                                # degrees
    ("25", "\\boxed{25\\%}", True),                                                    # percent
    ("[2,5)", "\\boxed{[2, 5)}", True),                                                # intervals
    ("[2,5)", "\\boxed{(2,5]}", False),
    ("(-\\infty, 3]", "\\boxed{\\left(-\\infty, 3\\right]}", True),
    ("(6,31,-1)", "\\boxed{(6, 31, -1)}", True),                                       # tuples
    ("(6,31,-1)", "\\boxed{(6, -1, 31)}", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", True),  # matrices
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}2\\\\1\\end{pmatrix}}", False),
    ("-9", "\\boxed{-9}", True),                                                       # negatives
    ("-9", "\\boxed{9}", False),
    ("-\\frac{2}{3}", "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.", True),
    ("16", "First \\boxed{12}, no wait: \\boxed{16}.", True),                          # several boxes
    ("12", "First \\boxed{12}, no wait: \\boxed{16}.", False),
    ("7", "I am not sure how to solve this.", False),                                  # no answer
    ("\\text{(C)}", "\\boxed{C}", True),
    ("3", "\\boxed{x = 3}", True),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", True),
    ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}", True),
]


@pytest.mark.parametrize("gold, completion, expected", TRICKY)
def test_tricky_answers(grader, gold, completion, expected):
    verdict = grader.equivalent(gold, extract_answer(completion))
    assert verdict.correct is expected
    assert not verdict.timeout


def test_no_answer_is_incorrect_without_calling_the_checker(grader):
    assert grader.equivalent("7", None).correct is False
    assert grader.equivalent("7", "").correct is False


def test_timeout_counts_as_incorrect_and_is_tallied():
    with Grader(timeout_s=0.5) as g:
        v = g.equivalent("5", "9^{9^{9^{9}}}")  # a tower SymPy cannot finish
        assert (v.correct, v.timeout) == (False, True)
        assert g.stats["timeout"] == 1
        assert g.equivalent("\\frac{1}{2}", "0.5").correct  # the worker was restarted


def test_math_verify_runs_off_the_main_thread(grader):
    results = []
    t = threading.Thread(target=lambda: results.append(grader.equivalent("2\\sqrt{2}", "\\sqrt{8}")))
    t.start()
    t.join()
    assert results and results[0].correct and not results[0].timeout


# --- rows and the CLI ---------------------------------------------------------------------------------

def test_grade_rows_and_cli(tmp_path):
    from thinkfast.cli import main

    rows = [{"gold": "Some work.\n#### 1,200", "completion": "... The answer is 1200.", "task": "gsm8k"},
            {"gold": "x\n#### 5", "completion": "no idea", "task": "gsm8k"}]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["grade", "--task", "gsm8k", str(inp), "--out", str(out)]) == 0
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["pred"], g["correct"], g["grade_timeout"]) for g in graded] == [("1200", True, False),
                                                                              (None, False, False)]
    assert summarize(graded).correct == 1


def test_grade_cli_reports_malformed_line(tmp_path, capsys):
    from thinkfast.cli import main

    inp = tmp_path / "bad.jsonl"
    inp.write_text('{"gold": "1", "completion": "1"}\n{"gold": oops}\n{"gold": "2", "completion": "2"}\n')
    assert main(["grade", "--task", "gsm8k", str(inp)]) == 2
    err = capsys.readouterr().err
    assert f"{inp}:2" in err and "Traceback" not in err
    assert inp.read_text().count("\n") == 3  # the input was not touched


# --- gold against itself ------------------------------------------------------------------------------

def _gold_rows(task_name: str, file: str, completion_field: str):
    path = data_file(file)
    task = get_task(task_name)
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return task, [{"gold": ex.gold, "completion": r[completion_field]}
                  for ex, r in zip(task.load(path=str(path)), raw)]


@pytest.mark.parametrize("task_name, file, completion_field", [
    ("gsm8k", "gsm8k_test.jsonl", "answer"),        # the full worked answer, ending "#### N"
    ("math500", "math500_test.jsonl", "solution"),  # the reference solution, read through its \boxed{}
])
@pytest.mark.parametrize("fast_path", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["fast-path", "math-verify-only"])
def test_gold_graded_against_itself(task_name, file, completion_field, fast_path, monkeypatch):
    import thinkfast.eval.grading as grading

    task, rows = _gold_rows(task_name, file, completion_field)
    with Grader(timeout_s=10.0, fast_path=fast_path) as g:
        monkeypatch.setattr(grading, "_DEFAULT", g)
        s = summarize(grade_rows(task, rows))
    assert s.rows == len(rows) > 0
    assert s.correct / s.rows >= 0.995, s.to_dict()


@pytest.mark.parametrize("task_name, file, completion_field", [
    ("gsm8k", "gsm8k_test.jsonl", "answer"),
    pytest.param("math500", "math500_test.jsonl", "solution", marks=pytest.mark.slow),  # ~200 Math-Verify calls
])
def test_a_neighbour_gold_is_wrong_unless_the_answers_coincide(task_name, file, completion_field, monkeypatch):
    """The negative control: each problem graded against the next problem's reference."""
    import thinkfast.eval.grading as grading

    task, rows = _gold_rows(task_name, file, completion_field)
    shifted = [{"gold": a["gold"], "completion": b["completion"]} for a, b in zip(rows, rows[1:] + rows[:1])]
    with Grader(timeout_s=10.0) as g:
        monkeypatch.setattr(grading, "_DEFAULT", g)
        graded = grade_rows(task, shifted)
    for r in graded:
        same = normalize_answer(task.gold_answer(r["gold"])) == normalize_answer(r["pred"])
        assert r["correct"] == same, (r["gold"][-40:], r["pred"])
