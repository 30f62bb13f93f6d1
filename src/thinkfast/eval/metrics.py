"""Sample-based metrics: pure functions on plain lists.

For one problem with n samples, sample i has an answer group ``groups[i]`` (None: no answer),
a grade ``correct[i]`` and optionally a reward ``rewards[i]``. Every selection rule returns a
sample index, and the problem is solved when that sample is correct. Metrics "at k" are
expectations over a uniformly random k-subset of the n samples, never the first k (the first k
of a file are not a random draw when sampling was ordered or resumed).

Sources:
- pass@k: Chen et al. (2021), "Evaluating Large Language Models Trained on Code", eq. 1 and the
  numerically stable product in its figure 3.
- majority@k (self-consistency): Wang et al. (2023), "Self-Consistency Improves Chain of Thought".
- Best-of-N and weighted Best-of-N: Cobbe et al. (2021), "Training Verifiers to Solve Math Word
  Problems"; Li et al. (2023), "Making Large Language Models Better Reasoners with Step-Aware
  Verifier"; as computed in huggingface/search-and-learn (maj@n, naive@n, weighted@n).
- Bootstrap percentile intervals: Efron & Tibshirani (1993), "An Introduction to the Bootstrap".
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np

# --- coverage ------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), as the stable product 1 - prod (1 - k/i),
    i = n-c+1..n (Chen et al. 2021, fig. 3): no huge binomials, no cancellation."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def k_values(n: int) -> list[int]:
    """k = 1, 2, 4, ... <= n, and n itself."""
    ks = [1 << j for j in range(max(n, 1).bit_length()) if (1 << j) <= n]
    return ks + ([n] if n >= 1 and ks[-1] != n else [])


# --- answer groups -------------------------------------------------------------------------------


def group_answers(answers: Sequence[Optional[str]], key: Callable[[str], Hashable],
                  same: Callable[[str, str], bool]) -> list[Optional[int]]:
    """Group id per sample; equal ``key`` or ``same(representative, answer)`` joins a group.

    Groups are numbered in order of first appearance and an answer joins the first group it
    matches, so the result is deterministic. ``same`` (the grader's equivalence, possibly slow)
    is called at most once per distinct key and group.
    """
    reps: list[str] = []  # representative answer of each group
    by_key: dict[Hashable, int] = {}
    out: list[Optional[int]] = []
    for ans in answers:
        if ans is None:
            out.append(None)
            continue
        k = key(ans)
        if k not in by_key:
            by_key[k] = next((g for g, rep in enumerate(reps) if same(rep, ans)), len(reps))
            if by_key[k] == len(reps):
                reps.append(ans)
        out.append(by_key[k])
    return out


# --- selection rules (each returns a sample index, or None when nothing can be chosen) -----------


def _first_in(subset: Sequence[int], groups: Sequence[Optional[int]], g: int) -> int:
    return min(i for i in subset if groups[i] == g)


def select_majority(groups: Sequence[Optional[int]], subset: Sequence[int]) -> Optional[int]:
    """The most frequent answer among ``subset``; ties go to the answer seen first (lowest
    sample index). Samples without an answer do not vote. Returns that answer's first sample."""
    votes: dict[int, int] = {}
    for i in subset:
        if groups[i] is not None:
            votes[groups[i]] = votes.get(groups[i], 0) + 1
    if not votes:
        return None
    best = min(votes, key=lambda g: (-votes[g], _first_in(subset, groups, g)))
    return _first_in(subset, groups, best)


def select_weighted(groups: Sequence[Optional[int]], rewards: Sequence[float],
                    subset: Sequence[int]) -> Optional[int]:
    """The answer whose samples' reward sum is highest; ties: more votes, then seen first."""
    total: dict[int, float] = {}
    votes: dict[int, int] = {}
    for i in subset:
        g = groups[i]
        if g is not None:
            total[g] = total.get(g, 0.0) + float(rewards[i])
            votes[g] = votes.get(g, 0) + 1
    if not total:
        return None
    best = min(total, key=lambda g: (-total[g], -votes[g], _first_in(subset, groups, g)))
    return _first_in(subset, groups, best)


def select_best(rewards: Sequence[float], subset: Sequence[int]) -> Optional[int]:
    """The single highest-reward sample; ties go to the lowest sample index."""
    return min(subset, key=lambda i: (-float(rewards[i]), i)) if subset else None


# --- expectations over k-subsets -----------------------------------------------------------------


def subsets(n: int, k: int, max_subsets: int, seed: int) -> np.ndarray:
    """(m, k) sorted sample indices: all k-subsets of range(n) when there are at most
    ``max_subsets``, else that many drawn uniformly at random with ``seed`` (sorted rows, so
    index-based tie-breaks see one order)."""
    if math.comb(n, k) <= max_subsets:
        return np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    rng = np.random.default_rng(seed)
    # The k smallest of n i.i.d. uniforms sit at a uniformly random k-subset of positions.
    return np.sort(np.argsort(rng.random((max_subsets, n)), axis=1)[:, :k], axis=1)


def expected_correct(select: Callable[[Sequence[int]], Optional[int]], correct: Sequence[bool],
                     k: int, max_subsets: int = 256, seed: int = 0) -> float:
    """Mean over k-subsets of ``correct[select(subset)]`` (0 when nothing is selected)."""
    subs = subsets(len(correct), k, max_subsets, seed)
    hits = 0
    for s in subs.tolist():
        i = select(s)
        hits += bool(i is not None and correct[i])
    return hits / len(subs)


def _subset_group_stats(groups: Sequence[Optional[int]], subs: np.ndarray, rewards: Optional[Sequence[float]]):
    """Per subset and answer group: votes, first sample index, reward sum.

    subs (m, k) sorted sample indices -> counts (m, G), first (m, G) (n + 1 where absent),
    totals (m, G) or None. Rewards are added in subset order, as the reference rules do.
    """
    n = len(groups)
    g = np.array([-1 if x is None else x for x in groups], dtype=np.int64)  # (n,)
    G = max(int(g.max(initial=-1)) + 1, 1)
    m = subs.shape[0]
    gs = g[subs]  # (m, k)
    valid = gs >= 0
    rows = np.broadcast_to(np.arange(m)[:, None], subs.shape)[valid]
    cols, idx = gs[valid], subs[valid]
    counts = np.zeros((m, G), dtype=np.int64)
    np.add.at(counts, (rows, cols), 1)
    first = np.full((m, G), n + 1, dtype=np.int64)
    np.minimum.at(first, (rows, cols), idx)
    totals = None
    if rewards is not None:
        totals = np.zeros((m, G), dtype=np.float64)
        np.add.at(totals, (rows, cols), np.asarray(rewards, dtype=np.float64)[idx])
    return counts, first, totals


def _hit_rate(chosen_first: np.ndarray, has_answer: np.ndarray, correct: Sequence[bool]) -> float:
    ok = np.append(np.asarray(correct, dtype=bool), [False, False])  # index n + 1: nothing chosen
    return float((has_answer & ok[chosen_first]).mean())


def majority_at_k(groups: Sequence[Optional[int]], correct: Sequence[bool], k: int,
                  max_subsets: int = 256, seed: int = 0) -> float:
    """``expected_correct`` of ``select_majority``, vectorised over subsets (same rule, same
    ties: most votes, then the lowest first sample index)."""
    subs = subsets(len(groups), k, max_subsets, seed)  # (m, k)
    counts, first, _ = _subset_group_stats(groups, subs, None)
    n = len(groups)
    win = (counts * (n + 2) - first).argmax(1)  # absent groups score below every present one
    chosen = first[np.arange(len(subs)), win]
    return _hit_rate(chosen, counts.sum(1) > 0, correct)


def weighted_best_of_n_at_k(groups: Sequence[Optional[int]], rewards: Sequence[float],
                            correct: Sequence[bool], k: int, max_subsets: int = 256, seed: int = 0) -> float:
    """``expected_correct`` of ``select_weighted``, vectorised over subsets."""
    subs = subsets(len(groups), k, max_subsets, seed)  # (m, k)
    counts, first, totals = _subset_group_stats(groups, subs, rewards)
    n = len(groups)
    present = counts > 0
    best = np.where(present, totals, -np.inf).max(1, keepdims=True)  # (m, 1)
    tie_key = np.where(present & (totals == best), counts * (n + 2) - first, np.iinfo(np.int64).min)
    win = tie_key.argmax(1)
    chosen = first[np.arange(len(subs)), win]
    return _hit_rate(chosen, present.any(1), correct)


def best_of_n_at_k(rewards: Sequence[float], correct: Sequence[bool], k: int) -> float:
    """Exact E over uniform k-subsets of correct[argmax reward] (no sampling needed).

    Rank samples by (reward desc, index asc). The sample at rank r is chosen exactly when it is in
    the subset and none of the r above it is: probability C(n-1-r, k-1) / C(n, k).
    """
    n = len(rewards)
    order = sorted(range(n), key=lambda i: (-float(rewards[i]), i))
    total = math.comb(n, k)
    hits = sum(math.comb(n - 1 - r, k - 1) for r, i in enumerate(order) if correct[i])
    return hits / total


# --- confidence intervals ------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling problems with replacement."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)  # (n_boot,)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """{"mean", "lo", "hi"} of per-problem values (a 95% bootstrap interval)."""
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return {"mean": float(np.mean(values)) if len(values) else 0.0, "lo": lo, "hi": hi}


# --- paired comparisons --------------------------------------------------------------------------


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, alpha: float = 0.05,
                      seed: int = 0) -> dict[str, Any]:
    """Mean of ``a[i] - b[i]`` over the same problems, with a paired percentile-bootstrap interval.

    Resampling problems, not each model's values on its own, keeps the correlation between two
    models on one problem (both solve the easy ones), so the interval of the difference is much
    narrower than two separate intervals suggest. ``verdict`` is "above" when the interval lies
    above 0, "below" when under it, else "tied".
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need the same problems: {len(a)} against {len(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (problems,)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=seed)
    verdict = "above" if lo > 0 else "below" if hi < 0 else "tied"
    return {"diff": float(d.mean()) if d.size else 0.0, "lo": lo, "hi": hi, "verdict": verdict}


def problems_for_margin(sd_diff: float, margin: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Problems needed for a paired two-sided test at level ``alpha`` to detect a mean difference
    of ``margin`` with probability ``power``, per-problem differences having standard deviation
    ``sd_diff``: n = ((z_{1-alpha/2} + z_power) * sd_diff / margin)^2 (normal approximation)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil((z * sd_diff / margin) ** 2)


def margin_for_problems(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The mean difference a paired two-sided test at level ``alpha`` detects with probability
    ``power`` on ``n`` problems whose differences have standard deviation ``sd_diff``: the inverse
    of ``problems_for_margin``, (z_{1-alpha/2} + z_power) * sd_diff / sqrt(n)."""
    from statistics import NormalDist

    if n < 1:
        raise ValueError(f"need at least one problem, got {n}")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * sd_diff / math.sqrt(n)
