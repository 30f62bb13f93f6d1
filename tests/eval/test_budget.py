"""Seconds per problem from recorded timings, and the Pareto front on synthetic timings."""

from __future__ import annotations

import pytest

from thinkfast.eval.budget import Point, RunTiming, best_at_budget, largest_k_within, pareto_front, timing_from_rows


def _rows(problems, n, batch_problems, prefill_s, decode_s):
    """Rows as ``thinkfast sample`` writes them: each repeats its engine call's timings."""
    rows = []
    for start in range(0, problems, batch_problems):
        ids = range(start, min(start + batch_problems, problems))
        for pid in ids:
            for i in range(n):
                rows.append({"problem_id": str(pid), "sample_index": i, "prefill_s": prefill_s,
                             "decode_s": decode_s, "batch_problems": len(ids), "batch_rows": len(ids) * n,
                             "num_tokens": 10, "hardware": "cpu: test"})
    return rows


def test_seconds_per_problem_from_batch_timings():
    # 6 problems, 4 samples each, 2 problems per call: 3 calls of 1.0 s prefill + 8.0 s decode.
    t = timing_from_rows(_rows(6, 4, 2, prefill_s=1.0, decode_s=8.0))
    assert t.calls == pytest.approx(3)
    assert t.prefill_s_per_problem == pytest.approx(3 * 1.0 / 6)
    assert t.decode_s_per_sample == pytest.approx(3 * 8.0 / 24)
    # k samples per problem: prefill once, decode share k times
    assert t.seconds_per_problem(1) == pytest.approx(0.5 + 1.0)
    assert t.seconds_per_problem(4) == pytest.approx(0.5 + 4.0)  # = the measured 27 s / 6 problems
    assert t.hardware == "cpu: test" and t.mean_batch_rows == pytest.approx(8)


def test_uneven_last_batch_is_counted_once():
    t = timing_from_rows(_rows(5, 2, 2, prefill_s=2.0, decode_s=4.0))  # calls of 2, 2 and 1 problems
    assert t.calls == pytest.approx(3)
    assert t.prefill_s_per_problem * 5 + t.decode_s_per_sample * 10 == pytest.approx(3 * (2.0 + 4.0))


@pytest.mark.parametrize("prefill,decode", [(0.5, 1.0), (0.0017, 0.0139), (0.0, 0.1), (0.3, 0.0)])
def test_largest_k_within_matches_brute_force(prefill, decode):
    t = RunTiming(prefill_s_per_problem=prefill, decode_s_per_sample=decode, problems=1, samples=1, calls=1,
                  mean_batch_rows=1, new_tokens_per_sample=None, hardware="x")
    n = 64
    for seconds in [0.0, 0.2, 0.5, 1.5, 2.5, 0.0478, 0.737, 0.3 + 3 * 0.1, 100.0]:
        brute = max([k for k in range(1, n + 1) if t.seconds_per_problem(k) <= seconds], default=0)
        assert largest_k_within(seconds, t, n) == brute, seconds


def test_no_timings_no_budget():
    assert timing_from_rows([{"problem_id": "0", "sample_index": 0}]) is None


def test_pareto_front_on_synthetic_timings():
    # A fast weak model and a slow strong one, each at k = 1, 2, 4.
    fast = {1: (1.0, 0.30), 2: (2.0, 0.40), 4: (4.0, 0.45)}
    slow = {1: (3.0, 0.50), 2: (6.0, 0.60), 4: (12.0, 0.58)}
    pts = [Point("fast", "majority", k, s, v) for k, (s, v) in fast.items()]
    pts += [Point("slow", "majority", k, s, v) for k, (s, v) in slow.items()]
    front = pareto_front(pts)
    assert [(p.model, p.k) for p in front] == [("fast", 1), ("fast", 2), ("slow", 1), ("slow", 2)]
    # fast@4 (4 s, 0.45) is beaten by slow@1 (3 s, 0.50); slow@4 by slow@2
    assert best_at_budget(pts, 0.5) is None
    assert best_at_budget(pts, 2.5) == Point("fast", "majority", 2, 2.0, 0.40)
    assert best_at_budget(pts, 100.0).model == "slow" and best_at_budget(pts, 100.0).k == 2


def test_pareto_ties_are_deterministic():
    a = Point("b-model", "majority", 2, 1.0, 0.5)
    b = Point("a-model", "majority", 4, 1.0, 0.5)
    assert pareto_front([a, b]) == pareto_front([b, a]) == [b]
