"""The demo's claim: each student against the teacher on the same problems, per budget, paired."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import thinkfast.demo as demo
from thinkfast.eval.evaluation import per_problem_values

PIDS = ["p0", "p1", "p2", "p3"]


def _run(name, seconds, values, pids=PIDS):
    """A run dict as evaluate_run writes it: ``values[k]`` is the per-problem list at k (the same
    for coverage and majority), ``seconds[k]`` its seconds per problem."""
    ks = sorted(values)
    metrics = [{"k": k, "mean": float(np.mean(values[k])), "lo": min(values[k]), "hi": max(values[k]),
                "seconds": seconds[k]} for k in ks]
    table = [list(values[k]) for k in ks]
    return {"name": name, "ks": ks, "problem_ids": list(pids),
            "metrics": {"coverage": metrics, "majority": metrics},
            "per_problem": {"coverage": table, "majority": table}}


def _brute_verdict(diffs, alpha=0.05):
    """The verdict from every one of the len(d)**len(d) equally likely resamples of the problems:
    "above" when fewer than alpha/2 of them have a mean <= 0, "below" when fewer than alpha/2 have
    a mean >= 0, else "tied"."""
    means = [float(np.mean(c)) for c in itertools.product(diffs, repeat=len(diffs))]
    if sum(m <= 0 for m in means) / len(means) < alpha / 2:
        return "above"
    if sum(m >= 0 for m in means) / len(means) < alpha / 2:
        return "below"
    return "tied"


TEACHER = {1: [0.0, 0.2, 0.5, 1.0], 2: [0.1, 0.4, 0.7, 0.9], 4: [0.1, 0.3, 0.6, 0.9]}  # dips at k = 4
TEACHER_S = {1: 0.1, 2: 0.2, 4: 0.4}


def test_paired_verdict_matches_brute_force_on_four_problems():
    # llamba: at each budget's best k, 0.05 above the teacher on every problem (the separate
    # intervals overlap almost entirely; the paired one is a point above 0). Its k = 4 is no
    # better than its k = 2 and costs more, so k = 2 is its best within either budget.
    llamba = {1: [0.0, 0.1, 0.2, 0.3], 2: [0.15, 0.45, 0.75, 0.95], 4: [0.15, 0.45, 0.75, 0.95]}
    # hybrid: only k = 1 fits budget 2, below the teacher on every problem; k = 3 fits budget 4,
    # above the teacher on one problem and below on another (a higher mean, but tied)
    hybrid = {1: [0.0, 0.1, 0.2, 0.3], 3: [0.6, 0.1, 0.7, 0.9], 6: [0.0, 0.2, 0.5, 0.8]}
    runs = {"teacher": _run("teacher", TEACHER_S, TEACHER),
            "llamba": _run("llamba", {1: 0.05, 2: 0.1, 4: 0.2}, llamba),
            "hybrid": _run("hybrid", {1: 0.15, 3: 0.35, 6: 0.7}, hybrid)}
    claim = demo.claim_verdict(runs, n_boot=4000, seed=3)
    assert claim == demo.claim_verdict(runs, n_boot=4000, seed=3)  # seeded: the same every time
    for method in ("coverage", "majority"):
        rows = {r["budget_k"]: r for r in claim[method]["budgets"]}
        assert set(rows) == {2, 4}
        assert [rows[b]["teacher_k"] for b in (2, 4)] == [2, 2]  # the dip at k = 4 is not held against it
        assert [rows[b]["llamba_k"] for b in (2, 4)] == [2, 2]
        assert [rows[b]["hybrid_k"] for b in (2, 4)] == [1, 3]
        for r in rows.values():
            t = per_problem_values(runs["teacher"], method, r["teacher_k"])
            for name in ("llamba", "hybrid"):
                s = per_problem_values(runs[name], method, r[f"{name}_k"])
                d = [s[p] - t[p] for p in PIDS]
                assert r[f"{name}_diff"] == pytest.approx(np.mean(d))
                assert r[f"{name}_lo"] <= r[f"{name}_diff"] <= r[f"{name}_hi"]
                assert min(d) - 1e-12 <= r[f"{name}_lo"] and r[f"{name}_hi"] <= max(d) + 1e-12
                assert r[f"{name}_paired_verdict"] == _brute_verdict(d)
                assert r[f"{name}_problems"] == 4
        assert [rows[b]["llamba_paired_verdict"] for b in (2, 4)] == ["above", "above"]
        assert [rows[b]["hybrid_paired_verdict"] for b in (2, 4)] == ["below", "tied"]
        assert claim[method]["paired_verdicts"] == {"llamba": {"above": 2, "tied": 0, "below": 0},
                                                    "hybrid": {"above": 0, "tied": 1, "below": 1}}
        assert claim[method]["student_wins"] == {"llamba": 2, "hybrid": 1}  # means alone: hybrid "wins" at 4


def test_pairs_by_problem_id_not_position():
    llamba = {k: [v + 0.1 for v in vs] for k, vs in TEACHER.items()}
    order = [3, 0, 2, 1]  # the student's file lists the problems in another order
    shuffled = _run("llamba", TEACHER_S, {k: [vs[i] for i in order] for k, vs in llamba.items()},
                    pids=[PIDS[i] for i in order])
    runs = {"teacher": _run("teacher", TEACHER_S, TEACHER), "llamba": shuffled,
            "hybrid": _run("hybrid", TEACHER_S, TEACHER)}
    rows = demo.claim_verdict(runs, n_boot=500, seed=0)["coverage"]["budgets"]
    for r in rows:
        assert (r["llamba_lo"], r["llamba_diff"], r["llamba_hi"]) == pytest.approx((0.1, 0.1, 0.1))
        assert r["llamba_paired_verdict"] == "above"
        assert (r["hybrid_lo"], r["hybrid_diff"], r["hybrid_hi"]) == (0.0, 0.0, 0.0)
        assert r["hybrid_paired_verdict"] == "tied"


def test_no_per_problem_values_or_no_point_within_budget_gives_none():
    runs = {"teacher": _run("teacher", TEACHER_S, TEACHER),
            "llamba": _run("llamba", {1: 0.3, 2: 0.6}, {1: [0.0] * 4, 2: [1.0] * 4}),  # nothing fits budget 2
            "hybrid": _run("hybrid", TEACHER_S, TEACHER)}
    del runs["hybrid"]["per_problem"]  # a metrics file from before per-problem values were kept
    rows = {r["budget_k"]: r for r in demo.claim_verdict(runs, n_boot=100)["majority"]["budgets"]}
    assert rows[2]["llamba_k"] is None and rows[2]["llamba_paired_verdict"] is None
    assert rows[4]["llamba_k"] == 1 and rows[4]["llamba_paired_verdict"] == "below"
    for r in rows.values():
        assert r["hybrid_k"] is not None
        assert all(r[f"hybrid_{key}"] is None for key in ("diff", "lo", "hi", "paired_verdict", "problems"))
