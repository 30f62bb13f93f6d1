"""Simulated adaptive majority as an expectation over orderings of each problem's samples
(``eval.evaluation.adaptive_over_orderings``), against brute force over every permutation."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from thinkfast.eval.adaptive import AdaptiveRule, beta_should_stop, esc_should_stop
from thinkfast.eval.evaluation import adaptive_over_orderings

# small problems: (group id per sample, correct per sample); group 0 is the right answer, None: no answer
SMALL = {
    "split": ([0, 1, 0, 1, 2, 0], [True, False, True, False, False, True]),
    "minority right": ([1, 1, 0, 1, None], [False, False, True, False, False]),
    "three ways": ([0, 1, 2, 0, None, 1], [True, False, False, True, False, False]),
}
RULES = [AdaptiveRule("esc", window=1), AdaptiveRule("esc", window=2), AdaptiveRule("beta", window=1, threshold=0.7),
         AdaptiveRule("beta", window=2, threshold=0.8)]


def brute(groups, correct, rule, cap):
    """Per permutation of all the samples: (majority of the drawn samples right, samples drawn,
    stopped before the cap), drawing round by round, the rule checked after each whole round."""
    fn = (lambda a: esc_should_stop(a, rule.window)) if rule.rule == "esc" else \
        (lambda a: beta_should_stop(a, rule.threshold))
    out = []
    for perm in itertools.permutations(range(len(groups))):
        g = [groups[i] for i in perm]
        m = next((m for m in range(1, cap + 1) if m == cap or (m % rule.window == 0 and fn(g[:m]))))
        votes = {}
        for x in g[:m]:
            if x is not None:
                votes[x] = votes.get(x, 0) + 1
        if votes:
            top = max(votes.values())
            winner = next(x for x in g[:m] if x is not None and votes[x] == top)  # ties: seen first
            first = next(j for j in range(m) if g[j] == winner)
            ok = float(correct[perm[first]])
        else:
            ok = 0.0
        out.append((ok, m, m < cap))
    return out


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.rule}-w{r.window}")
@pytest.mark.parametrize("name", list(SMALL))
def test_exact_mode_is_the_mean_over_all_permutations(name, rule):
    groups, correct = SMALL[name]
    caps = list(range(1, len(groups) + 1))
    exact = adaptive_over_orderings(groups, correct, rule, caps, orderings=None)
    assert sorted(exact) == caps
    for cap in caps:
        per = brute(groups, correct, rule, cap)
        assert exact[cap].value == pytest.approx(statistics.fmean(v for v, _, _ in per), abs=1e-12)
        assert exact[cap].samples == pytest.approx(statistics.fmean(m for _, m, _ in per), abs=1e-12)
        assert exact[cap].early == pytest.approx(statistics.fmean(e for _, _, e in per), abs=1e-12)
        assert exact[cap].max_samples == max(m for _, m, _ in per)


@pytest.mark.parametrize("rule", RULES[1:3], ids=lambda r: f"{r.rule}-w{r.window}")
def test_sampled_orderings_approach_the_exact_expectation(rule):
    """R orderings (the index order, then R - 1 uniform permutations) estimate the mean over all
    n! orderings with standard error sd / sqrt(R), sd that of the per-ordering values over all
    permutations: within 4 standard errors at every cap below n (where permuting only the first
    cap samples, or keeping the index order, would be off)."""
    R = 3000
    for groups, correct in SMALL.values():
        n = len(groups)
        caps = list(range(1, n))
        sampled = adaptive_over_orderings(groups, correct, rule, caps, orderings=R, seed=7)
        for cap in caps:
            per = brute(groups, correct, rule, cap)
            for j, field in ((0, "value"), (1, "samples")):
                xs = [p[j] for p in per]
                mean, sd = statistics.fmean(xs), statistics.pstdev(xs)
                assert abs(getattr(sampled[cap], field) - mean) <= 4 * sd / math.sqrt(R) + 1e-12, (cap, field)


def test_orderings_are_reproducible_from_the_seed_and_one_is_the_index_order():
    groups, correct = SMALL["three ways"]
    rule = AdaptiveRule("esc", window=1)
    caps = [2, 4, 6]
    a = adaptive_over_orderings(groups, correct, rule, caps, orderings=16, seed=3)
    assert a == adaptive_over_orderings(groups, correct, rule, caps, orderings=16, seed=3)
    assert a != adaptive_over_orderings(groups, correct, rule, caps, orderings=16, seed=4)
    one = adaptive_over_orderings(groups, correct, rule, caps, orderings=1, seed=3)
    for cap in caps:
        stop = AdaptiveRule("esc", window=1, max_n=cap).stop_after(groups[:cap])
        assert one[cap].samples == stop and one[cap].early == (stop < cap)
    # esc window 1 stops at the first answer: sample 0 is right
    assert one[2].value == 1.0 and one[2].samples == 1


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.rule}-w{r.window}")
def test_a_problem_whose_samples_all_agree(rule):
    n = 6
    caps = [1, 3, 6]
    first_stop = rule.window if rule.rule == "esc" else next(
        m for m in range(rule.window, 99, rule.window) if beta_should_stop(["x"] * m, rule.threshold))
    for orderings in (None, 1, 8):
        right = adaptive_over_orderings([0] * n, [True] * n, rule, caps, orderings=orderings)
        wrong = adaptive_over_orderings([0] * n, [False] * n, rule, caps, orderings=orderings)
        silent = adaptive_over_orderings([None] * n, [False] * n, rule, caps, orderings=orderings)
        for cap in caps:
            m = min(first_stop, cap)
            assert (right[cap].value, right[cap].samples, right[cap].early) == (1.0, m, float(m < cap))
            assert (wrong[cap].value, wrong[cap].samples) == (0.0, m)
            # no sample answers: no rule stops and no vote is right
            assert (silent[cap].value, silent[cap].samples, silent[cap].early) == (0.0, cap, 0.0)


def test_caps_outside_the_samples_and_no_orderings_are_refused():
    with pytest.raises(ValueError):
        adaptive_over_orderings([0, 1], [True, False], RULES[0], [3])
    with pytest.raises(ValueError):
        adaptive_over_orderings([0, 1], [True, False], RULES[0], [0])
    with pytest.raises(ValueError):
        adaptive_over_orderings([0, 1], [True, False], RULES[0], [2], orderings=0)
