"""The demo's adaptive reading of the claim: curves averaged over orderings of the samples, and
the cap chosen by accuracy within a budget beside the cap chosen by cost alone."""

from __future__ import annotations

import pytest

import thinkfast.demo as demo
from thinkfast.eval.adaptive import AdaptiveRule
from thinkfast.eval.evaluation import EvalSettings, adaptive_over_orderings, evaluate_run


class Task:
    name = "toy"

    @staticmethod
    def same_answer(a, b):
        return a == b


def rows_of(problems, seconds=(0.5, 4.0)):
    rows = []
    for pid, preds in problems.items():
        for i, pred in enumerate(preds):
            rows.append({"problem_id": pid, "sample_index": i, "pred": pred, "correct": pred == "x", "gold": "x",
                         "prefill_s": seconds[0], "decode_s": seconds[1], "batch_problems": 1,
                         "batch_rows": len(preds)})
    return rows


PROBLEMS = {"p0": ["x", "y", "x", "x", "y", "z"], "p1": ["y", "y", "x", "z", "x", "x"],
            "p2": ["x"] * 6, "p3": [None, "y", "x", "y", "x", "y"]}


def test_adaptive_curve_averages_orderings_as_evaluate_does():
    rows = rows_of(PROBLEMS)
    rule = AdaptiveRule("esc", window=2, max_n=6)
    curve = demo.adaptive_curve(rows, Task(), rule, [2, 4, 6, 99], orderings=32, seed=5)
    assert curve["orderings"] == 32 and [p["max_n"] for p in curve["points"]] == [2, 4, 6]
    run = evaluate_run(rows, Task(), "t", "t", EvalSettings(n_boot=10, seed=5, adaptive_orderings=32), adaptive=[rule])
    a, last = run["adaptive"]["adaptive-esc"], curve["points"][-1]
    assert last["per_problem"] == pytest.approx(a["per_problem"]) and last["mean_samples"] == pytest.approx(a["mean_samples"])
    assert last["seconds"] == pytest.approx(a["seconds"]) and last["index_order_mean"] == pytest.approx(a["index_order"]["mean"])
    # each point is the per-problem function's value at its cap
    for i, preds in enumerate(PROBLEMS.values()):
        groups = [None if p is None else "xyz".index(p) for p in preds]
        ref = adaptive_over_orderings(groups, [p == "x" for p in preds], rule, [2, 4, 6], 32, 5 * 1_000_003 + i)
        for p in curve["points"]:
            assert p["per_problem"][i] == pytest.approx(ref[p["max_n"]].value)
    # one ordering: the index order
    one = demo.adaptive_curve(rows, Task(), rule, [2, 4, 6], orderings=1)
    for p in one["points"]:
        assert p["mean"] == p["index_order_mean"] and p["mean_samples"] == p["index_order_samples"]


def test_adaptive_claim_reads_the_cap_by_accuracy_and_by_cost_alone():
    def curve(points):  # (max_n, seconds, per-problem values over problems a, b, c, d)
        return {"problem_ids": ["a", "b", "c", "d"], "orderings": 64,
                "points": [{"max_n": m, "mean_samples": m / 2, "seconds": t, "mean": sum(v) / 4, "per_problem": v}
                           for m, t, v in points]}

    teacher_run = {"metrics": {"majority": [{"k": 1, "seconds": 0.1}, {"k": 2, "seconds": 0.2},
                                            {"k": 4, "seconds": 0.4}]}}
    curves = {"teacher": curve([(2, 0.15, [1, 0, 0, 0]), (4, 0.3, [1, 1, 0, 0])]),
              # Llamba's cap 3 reads best, its larger caps fit the budgets too
              "llamba": curve([(3, 0.1, [1, 1, 1, 0]), (8, 0.2, [1, 0, 0, 0]), (16, 0.35, [1, 1, 0, 0])]),
              "hybrid": curve([(4, 0.25, [1, 0, 0, 0])])}
    claim = demo.adaptive_claim({"teacher": teacher_run}, curves, n_boot=200)
    rows = {r["budget_k"]: r for r in claim["budgets"]}
    assert claim["orderings"] == 64
    assert (rows[2]["llamba_max_n"], rows[4]["llamba_max_n"]) == (3, 3)  # best within the budget
    assert (rows[2]["llamba_by_cost_max_n"], rows[4]["llamba_by_cost_max_n"]) == (8, 16)  # largest that fits
    assert (rows[2]["teacher_by_cost_max_n"], rows[4]["teacher_by_cost_max_n"]) == (2, 4)
    assert rows[2]["llamba_by_cost"] == pytest.approx(0.25) and rows[4]["llamba_by_cost_samples"] == 8
    assert rows[2]["llamba_by_cost_diff"] == pytest.approx(0.25 - 0.25)
    assert rows[4]["llamba_by_cost_diff"] == pytest.approx(0.5 - 0.5)
    assert rows[2]["llamba_diff"] == pytest.approx(0.75 - 0.25)
    assert rows[2]["hybrid_by_cost_paired_verdict"] is None and rows[4]["hybrid_by_cost_max_n"] == 4
    assert claim["student_wins"]["llamba"] == 2 and claim["student_wins_by_cost"]["llamba"] == 0
    assert sum(claim["paired_verdicts_by_cost"]["llamba"].values()) == 2
