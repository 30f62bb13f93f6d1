"""Stopping rules against brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from thinkfast.eval import adaptive as A


def test_beta_majority_probability_against_monte_carlo():
    rng = random.Random(0)
    for v1, v2 in [(0, 0), (3, 1), (5, 0), (7, 6), (12, 2)]:
        draws = 200_000
        hits = sum(rng.betavariate(v1 + 1, v2 + 1) > 0.5 for _ in range(draws))
        assert A.beta_majority_probability(v1, v2) == pytest.approx(hits / draws, abs=0.005)


def test_beta_majority_probability_is_symmetric_and_a_half_on_a_tie():
    for v in range(6):
        assert A.beta_majority_probability(v, v) == pytest.approx(0.5)
    for v1, v2 in itertools.product(range(6), repeat=2):
        assert A.beta_majority_probability(v1, v2) + A.beta_majority_probability(v2, v1) == pytest.approx(1)


def test_beta_rule_counts_the_two_leaders_only():
    assert not A.beta_should_stop([])
    assert not A.beta_should_stop([None, None, None])
    assert A.beta_should_stop(["7"] * 5)  # P = 1 - 2^-6 > 0.95
    assert not A.beta_should_stop(["7"] * 3)  # P = 1 - 2^-4 = 0.9375
    assert A.beta_should_stop(["7"] * 5 + ["8"] + ["9"]) == (A.beta_majority_probability(5, 1) > 0.95)


def test_esc_stops_after_the_first_unanimous_window_brute_force():
    """Every sequence of length 6 over {a, b, None}, window 3, against a direct reading of the rule."""
    for seq in itertools.product(["a", "b", None], repeat=6):
        for n in range(7):
            prefix = list(seq[:n])
            windows = [prefix[i:i + 3] for i in range(0, n - n % 3, 3)]
            want = bool(windows) and windows[-1][0] is not None and len(set(windows[-1])) == 1
            assert A.esc_should_stop(prefix, window=3) == want
    with pytest.raises(ValueError):
        A.esc_should_stop(["a"], window=0)
