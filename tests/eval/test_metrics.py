"""Metrics against brute force over subsets, and deterministic tie-breaking."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from thinkfast.eval import metrics as M


def test_pass_at_k_matches_enumeration_over_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            correct = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subs = list(itertools.combinations(range(n), k))
                brute = sum(any(correct[i] for i in s) for s in subs) / len(subs)
                assert M.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(1024, 512) overflows a float; the product form does not.
    n, c, k = 1024, 3, 512
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, then one division
    assert M.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)
    with pytest.raises(ValueError):
        M.pass_at_k(4, 5, 1)


def test_k_values():
    assert M.k_values(1) == [1]
    assert M.k_values(8) == [1, 2, 4, 8]
    assert M.k_values(12) == [1, 2, 4, 8, 12]


def test_group_answers_uses_equivalence_not_strings():
    calls = []

    def same(a, b):
        calls.append((a, b))
        return a.replace(" ", "") == b.replace(" ", "")

    groups = M.group_answers(["1/2", "3", None, "1 / 2", "3", "1/2"], key=lambda s: s, same=same)
    assert groups == [0, 1, None, 0, 1, 0]
    # equal keys never reach ``same``: "3" and "1/2" are compared once each, on first sight
    assert all(b != "3" or a != "3" for a, b in calls)
    assert len(calls) == 2


def test_majority_ties_are_deterministic():
    groups = [0, 1, 1, 0, 2]
    # 0 and 1 both have two votes in the full set: the answer seen first (sample 0) wins
    assert M.select_majority(groups, range(5)) == 0
    # on the subset {1, 2, 3, 4}: group 1 has two votes -> its first sample in the subset
    assert M.select_majority(groups, (1, 2, 3, 4)) == 1
    # a 1-1 tie inside a subset goes to the lower sample index, regardless of subset order
    assert M.select_majority(groups, (3, 2)) == M.select_majority(groups, (2, 3)) == 2
    assert M.select_majority([None, None], (0, 1)) is None


def test_weighted_and_best_selection():
    groups = [0, 1, 1, 2]
    rewards = [0.9, 0.5, 0.5, 0.9]
    assert M.select_weighted(groups, rewards, range(4)) == 1  # 1.0 beats 0.9
    # equal sums (0.9 vs 0.9): more votes breaks nothing here (1 vs 1) -> first seen
    assert M.select_weighted(groups, rewards, (0, 3)) == 0
    assert M.select_best(rewards, range(4)) == 0  # reward tie -> lowest index
    assert M.select_best(rewards, (1, 2, 3)) == 3


def _brute(select, correct, k):
    subs = list(itertools.combinations(range(len(correct)), k))
    return sum(bool(select(s) is not None and correct[select(s)]) for s in subs) / len(subs)


def test_voting_metrics_match_enumeration():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 7)
        groups = [rng.choice([None, 0, 1, 2]) for _ in range(n)]
        correct = [g == 1 for g in groups]
        rewards = [round(rng.random(), 1) for _ in range(n)]  # rounding makes ties happen
        for k in range(1, n + 1):
            assert M.majority_at_k(groups, correct, k) == pytest.approx(
                _brute(lambda s: M.select_majority(groups, s), correct, k))
            assert M.weighted_best_of_n_at_k(groups, rewards, correct, k) == pytest.approx(
                _brute(lambda s: M.select_weighted(groups, rewards, s), correct, k))
            # the closed form for Best-of-N equals the enumeration, ties included
            assert M.best_of_n_at_k(rewards, correct, k) == pytest.approx(
                _brute(lambda s: M.select_best(rewards, s), correct, k))


def test_voting_at_k_uses_random_subsets_not_the_first_k():
    # The first two samples are wrong, the rest right: first-k majority@2 would be 0.
    groups = [0, 0, 1, 1, 1, 1]
    correct = [False, False, True, True, True, True]
    # Over all 15 pairs: 6 pairs of right answers win; 8 mixed pairs tie and go to the lower
    # index (a wrong one); 1 pair is wrong/wrong.
    assert M.majority_at_k(groups, correct, 2) == pytest.approx(6 / 15)


def test_sampled_subsets_are_seeded():
    n, k = 30, 10  # C(30, 10) is far above max_subsets: sampled
    a = M.subsets(n, k, max_subsets=50, seed=3)
    assert (a == M.subsets(n, k, max_subsets=50, seed=3)).all()
    assert (a != M.subsets(n, k, max_subsets=50, seed=4)).any()
    assert a.shape == (50, k) and all(len(set(s)) == k and list(s) == sorted(s) for s in a.tolist())
    assert len({tuple(s) for s in M.subsets(6, 3, max_subsets=50, seed=0).tolist()}) == 20  # all, when cheap


def test_sampled_subsets_are_uniform():
    # every sample index is equally likely to be in a random 3-subset of 12: 3/12 each
    a = M.subsets(12, 3, max_subsets=20000, seed=0)  # C(12, 3) = 220 < 20000 -> enumerated
    b = M.subsets(40, 3, max_subsets=20000, seed=0)  # sampled
    assert a.shape == (220, 3)
    freq = (b[:, :, None] == range(40)).any(1).mean(0)  # (40,)
    assert abs(freq - 3 / 40).max() < 0.01


def test_vectorised_voting_equals_the_reference_rules_on_sampled_subsets():
    rng = random.Random(1)
    n, k = 40, 8  # C(40, 8) subsets: sampled, the same ones for both computations
    groups = [rng.choice([None, 0, 1, 2]) for _ in range(n)]
    correct = [g == 2 for g in groups]
    rewards = [round(rng.random(), 1) for _ in range(n)]
    assert M.majority_at_k(groups, correct, k, 64, seed=5) == M.expected_correct(
        lambda s: M.select_majority(groups, s), correct, k, 64, seed=5)
    assert M.weighted_best_of_n_at_k(groups, rewards, correct, k, 64, seed=5) == M.expected_correct(
        lambda s: M.select_weighted(groups, rewards, s), correct, k, 64, seed=5)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = [0.0, 1.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75]
    lo, hi = M.bootstrap_ci(values, n_boot=500, seed=1)
    assert (lo, hi) == M.bootstrap_ci(values, n_boot=500, seed=1)
    mean = sum(values) / len(values)
    assert lo < mean < hi
    assert M.bootstrap_ci([0.5] * 5) == (0.5, 0.5)


# --- paired comparisons --------------------------------------------------------------------------

def test_paired_difference_matches_the_exact_bootstrap_distribution():
    """For 4 problems every one of the 4^4 resamples is equally likely: brute force."""
    import itertools

    import numpy as np

    a, b = [1.0, 0.5, 0.0, 1.0], [0.5, 0.5, 0.25, 0.0]
    d = [x - y for x, y in zip(a, b)]
    means = sorted(sum(d[i] for i in idx) / 4 for idx in itertools.product(range(4), repeat=4))
    exact_lo, exact_hi = np.quantile(means, [0.025, 0.975])
    got = M.paired_difference(a, b, n_boot=200_000, seed=1)
    assert got["diff"] == pytest.approx(sum(d) / 4)
    assert got["lo"] == pytest.approx(exact_lo, abs=0.02) and got["hi"] == pytest.approx(exact_hi, abs=0.02)


def test_pairing_separates_what_two_intervals_cannot():
    """A student 3 points above on the same problems: separate intervals overlap, the paired
    interval of the difference excludes 0."""
    import numpy as np

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, size=400)
    teacher = difficulty
    student = np.clip(difficulty + 0.03 + rng.normal(0, 0.02, size=400), 0, 1)
    lo_s, _ = M.bootstrap_ci(student)
    _, hi_t = M.bootstrap_ci(teacher)
    assert lo_s < hi_t  # the two intervals overlap
    paired = M.paired_difference(student, teacher)
    assert paired["verdict"] == "above" and paired["lo"] > 0
    assert M.paired_difference(teacher, student)["verdict"] == "below"
    assert M.paired_difference(teacher, teacher)["verdict"] == "tied"


def test_paired_difference_is_seeded_and_needs_the_same_problems():
    a, b = [1, 0, 1, 1, 0], [0, 0, 1, 0, 1]
    assert M.paired_difference(a, b, seed=3) == M.paired_difference(a, b, seed=3)
    with pytest.raises(ValueError, match="same problems"):
        M.paired_difference(a, b[:4])


def test_problems_for_margin_by_simulation():
    """The sample size it gives detects the margin about ``power`` of the time."""
    import numpy as np

    sd, margin = 0.3, 0.03
    n = M.problems_for_margin(sd, margin, power=0.8)
    assert n == math.ceil(((1.959964 + 0.841621) * sd / margin) ** 2)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        d = rng.normal(margin, sd, size=n)
        hits += abs(d.mean()) / (d.std(ddof=1) / math.sqrt(n)) > 1.959964
    assert 0.74 < hits / 400 < 0.86


def test_margin_for_problems_inverts_problems_for_margin():
    """The margin detectable on the problems ``problems_for_margin`` asks for is (at most) the one
    asked for, and on a quarter as many problems it is twice as large."""
    for sd, margin in ((0.3, 0.03), (0.45, 0.05), (0.2, 0.1)):
        n = M.problems_for_margin(sd, margin)
        assert margin - 1e-3 < M.margin_for_problems(sd, n) <= margin
        assert M.margin_for_problems(sd, 4 * n) == pytest.approx(M.margin_for_problems(sd, n) / 2)
    with pytest.raises(ValueError):
        M.margin_for_problems(0.3, 0)
