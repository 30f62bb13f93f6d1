"""From samples files to one metrics JSON: coverage, voting metrics, budgets, Pareto fronts.

Input rows (one per sample): ``problem_id``, ``sample_index``, ``gold``, ``completion`` and,
once graded, ``pred``/``correct``; optionally a reward (``thinkfast score``) and the engine's
timings (``thinkfast sample``). Ungraded files are graded here with the task's grader.
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..runtime import UserError
from . import metrics as M
from .adaptive import AdaptiveRule
from .budget import Point, RunTiming, pareto_front, timing_from_rows
from .grading import answer_key, grade_rows, summarize
from .io import read_jsonl

METHODS = ("coverage", "majority", "best_of_n", "weighted_best_of_n")
SELECTION_METHODS = ("majority", "best_of_n", "weighted_best_of_n")
ADAPTIVE_METHODS = ("adaptive-esc", "adaptive-beta")
"""Adaptive majority (``eval.adaptive``): one point per run and rule, in ``run["adaptive"]``."""


@dataclass
class EvalSettings:
    n_boot: int = 1000
    """Bootstrap resamples of problems for every confidence interval."""
    max_subsets: int = 256
    """k-subsets per problem for voting metrics; all of them when there are at most this many."""
    seed: int = 0
    reward_key: str = "reward"
    adaptive_orderings: int = 64
    """Orderings of each problem's samples that simulated adaptive majority averages over
    (``adaptive_over_orderings``): the index order and ``adaptive_orderings - 1`` seeded random
    permutations; 1 is the index order alone."""


@dataclass
class ProblemSamples:
    """One problem's samples in sample-index order."""

    problem_id: str
    preds: list[Optional[str]]
    correct: list[bool]
    rewards: Optional[list[float]]


def group_by_problem(rows: Sequence[dict[str, Any]], reward_key: str, source: str) -> list[ProblemSamples]:
    """Problems in order of first appearance; rewards only when every row has a numeric one."""
    by_pid: dict[str, list[dict[str, Any]]] = {}
    for i, r in enumerate(rows, start=1):
        for f in ("problem_id", "correct"):
            if f not in r:
                raise UserError(f"{source}: row {i} has no {f!r}")
        by_pid.setdefault(str(r["problem_id"]), []).append(r)
    has_rewards = all(isinstance(r.get(reward_key), (int, float)) for r in rows)
    out = []
    for pid, rs in by_pid.items():
        rs = sorted(rs, key=lambda r: r.get("sample_index", 0))
        out.append(ProblemSamples(pid, [r.get("pred") for r in rs], [bool(r["correct"]) for r in rs],
                                  [float(r[reward_key]) for r in rs] if has_rewards else None))
    return out


def problem_values(p: ProblemSamples, n: int, ks: Sequence[int], same: Callable[[str, str], bool],
                   settings: EvalSettings, seed: int) -> dict[str, list[float]]:
    """Per-method values at each k for one problem (its first n samples)."""
    preds, correct = p.preds[:n], p.correct[:n]
    groups = M.group_answers(preds, key=answer_key, same=same)
    c = sum(correct)
    out = {"coverage": [M.pass_at_k(n, c, k) for k in ks],
           "majority": [M.majority_at_k(groups, correct, k, settings.max_subsets, seed) for k in ks]}
    if p.rewards is not None:
        rewards = p.rewards[:n]
        out["best_of_n"] = [M.best_of_n_at_k(rewards, correct, k) for k in ks]
        out["weighted_best_of_n"] = [M.weighted_best_of_n_at_k(groups, rewards, correct, k,
                                                                settings.max_subsets, seed) for k in ks]
    return out


def evaluate_run(rows: list[dict[str, Any]], task: Any, name: str, source: str,
                 settings: EvalSettings, extra_ks: Sequence[int] = (),
                 adaptive: Sequence[AdaptiveRule] = ()) -> dict[str, Any]:
    """Every metric of one samples file, as a JSON-ready dict, at k = 1, 2, 4, ..., n and at
    ``extra_ks`` (those in 1..n; e.g. the k that fits another model's time budget).

    Besides the summaries in ``metrics``, ``per_problem[method][j][i]`` is the value of problem
    ``problem_ids[i]`` at k = ``ks[j]`` (the numbers every mean and interval is computed from),
    so two runs on the same problems can be compared pairwise (``per_problem_values``).

    ``adaptive`` rules (their ``max_n`` capped at n) add ``run["adaptive"][rule.method]``: the
    rule simulated on each problem's samples, averaged over ``settings.adaptive_orderings``
    orderings of them (``simulate_adaptive``). A file made
    by adaptive sampling (its settings name an ``adaptive`` rule) gets that entry from the samples
    it holds instead, whatever ``adaptive`` says (``adaptive_from_stops``)."""
    if rows and any("correct" not in r for r in rows):
        rows = grade_rows(task, rows, source)
    problems = group_by_problem(rows, settings.reward_key, source)
    if not problems:
        raise UserError(f"{source}: no samples")
    sizes = [len(p.preds) for p in problems]
    n = min(sizes)  # problems with more samples use their first n (samples are i.i.d.)
    ks = sorted(set(M.k_values(n)) | {int(k) for k in extra_ks if 1 <= k <= n})
    per_problem = [problem_values(p, n, ks, task.same_answer, settings, settings.seed * 1_000_003 + i)
                   for i, p in enumerate(problems)]
    timing = timing_from_rows(rows)
    result: dict[str, Any] = {}
    for method in METHODS:
        if method not in per_problem[0]:
            continue
        result[method] = []
        for j, k in enumerate(ks):
            stats = M.mean_ci([v[method][j] for v in per_problem], settings.n_boot, settings.seed)
            seconds = timing.seconds_per_problem(k) if timing else None
            result[method].append({"k": k, **stats, "seconds": seconds})
    first = rows[0]
    made = (first.get("settings") or {}).get("adaptive")
    groups = [M.group_answers(p.preds, key=answer_key, same=task.same_answer) for p in problems]
    adaptive_out: dict[str, Any] = {}
    if made is not None:
        try:
            rule = AdaptiveRule(**made)
        except (TypeError, ValueError) as e:
            raise UserError(f"{source}: row 1 has settings.adaptive {made!r}, not a stopping rule ({e})") from None
        fixed = fixed_majority_curve(problems, groups, n, settings)
        adaptive_out[rule.method] = adaptive_from_stops(problems, groups, [len(p.preds) for p in problems],
                                                        rule, timing, fixed, settings, simulated=False)
    elif adaptive:
        fixed = fixed_majority_curve(problems, groups, n, settings)
        for rule in adaptive:
            rule = AdaptiveRule(rule.rule, rule.window, min(rule.max_n, n), rule.threshold)
            adaptive_out[rule.method] = simulate_adaptive(problems, groups, rule, timing, fixed, settings, n)
    out = {
        "name": name, "path": source, "model": first.get("model"), "task": getattr(task, "name", None),
        "settings": first.get("settings"), "n": n, "n_max": max(sizes), "problems": len(problems), "ks": ks,
        "has_rewards": problems[0].rewards is not None, "grading": summarize(rows).to_dict(),
        "timing": timing.to_dict() if timing else None, "hardware": timing.hardware if timing else None,
        "metrics": result,
        "problem_ids": [p.problem_id for p in problems],
        "per_problem": {method: [[v[method][j] for v in per_problem] for j in range(len(ks))]
                        for method in result},
    }
    if adaptive_out:
        out["adaptive"] = adaptive_out
    return out


# --- adaptive majority ---------------------------------------------------------------------------


class FixedMajorityCurve:
    """Mean majority@k over problems at k = 1..n, as a sequence (``curve[k - 1]``) computed on
    first access and kept: each problem's value as ``problem_values`` computes it (its first n
    samples, the same subset seeds), so the values at ``run["ks"]`` are the ``majority`` means.
    Lazy because the comparison with adaptive majority usually needs only the first few k."""

    def __init__(self, problems: Sequence[ProblemSamples], groups: Sequence[Sequence[Optional[int]]], n: int,
                 settings: EvalSettings):
        self.problems, self.groups, self.n, self.settings = problems, groups, n, settings
        self._values: dict[int, float] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> float:
        if not 0 <= j < self.n:
            raise IndexError(j)
        if j not in self._values:
            s, n = self.settings, self.n
            vals = [M.majority_at_k(g[:n], p.correct[:n], j + 1, s.max_subsets, s.seed * 1_000_003 + i)
                    for i, (p, g) in enumerate(zip(self.problems, self.groups))]
            self._values[j] = sum(vals) / len(vals)
        return self._values[j]


def fixed_majority_curve(problems: Sequence[ProblemSamples], groups: Sequence[Sequence[Optional[int]]], n: int,
                         settings: EvalSettings) -> FixedMajorityCurve:
    """``FixedMajorityCurve`` of these problems."""
    return FixedMajorityCurve(problems, groups, n, settings)


def smallest_k_reaching(curve: Sequence[float], accuracy: float, tol: float = 1e-12) -> Optional[int]:
    """The smallest k whose ``curve[k - 1]`` is at least ``accuracy`` (None when none is)."""
    return next((k for k in range(1, len(curve) + 1) if curve[k - 1] >= accuracy - tol), None)


def majority_of_prefix(groups: Sequence[Optional[int]], correct: Sequence[bool], m: int) -> float:
    """1.0 when the majority of the first ``m`` samples (ties: the answer seen first) is correct."""
    i = M.select_majority(groups, range(m))
    return float(i is not None and correct[i])


ADAPTIVE_ORDERINGS = EvalSettings.adaptive_orderings
"""Default orderings per problem for simulated adaptive majority (``EvalSettings.adaptive_orderings``)."""


@dataclass(frozen=True)
class AdaptiveValue:
    """Adaptive majority on one problem at one cap, as an expectation over orderings of its samples."""

    value: float
    """Expected 0/1 correctness of the majority of the samples drawn at the stop."""
    samples: float
    """Expected samples drawn."""
    early: float
    """Probability that the rule closes the problem before the cap."""
    max_samples: int
    """The most samples drawn in any ordering (exact mode: any ordering with nonzero probability)."""


def _first_stops(groups: Sequence[Optional[int]], rule: AdaptiveRule, below: int) -> Optional[int]:
    """The first whole round m (a multiple of ``rule.window``, m < ``below``) after which ``rule``
    stops on ``groups[:m]``; None when it does not before ``below``."""
    for m in range(rule.window, below, rule.window):
        if rule.should_stop(groups[:m]):
            return m
    return None


def _exact_over_orderings(groups: Sequence[Optional[int]], correct: Sequence[bool], rule: AdaptiveRule,
                          caps: Sequence[int]) -> dict[int, AdaptiveValue]:
    """The exact expectation over all orderings of the samples: a walk over the sequences of
    distinct (answer, correct) labels drawn without replacement, each weighted by its probability,
    cut where the rule stops or the largest cap is reached. Exponential in the cap for many
    distinct answers: for small problems (tests, references)."""
    counts = collections.Counter(zip(groups, correct))  # label -> samples with it
    labels = list(counts)
    total = len(groups)
    acc = {c: [0.0, 0.0, 0.0, 0] for c in caps}  # cap -> [value, samples, early, max samples]
    top = max(caps)

    def record(cap: int, g: list, ok: list, m: int, w: float, early: bool) -> None:
        a = acc[cap]
        a[0] += w * majority_of_prefix(g, ok, m)
        a[1] += w * m
        a[2] += w * early
        a[3] = max(a[3], m)

    def walk(g: list, ok: list, left: dict, w: float) -> None:
        m = len(g)
        if m in acc:
            record(m, g, ok, m, w, False)
        if m >= top:
            return
        if m and m % rule.window == 0 and rule.should_stop(g):
            for cap in caps:
                if cap > m:
                    record(cap, g, ok, m, w, True)
            return
        rest = total - m
        for lab in labels:
            c = left[lab]
            if c:
                left[lab] = c - 1
                walk(g + [lab[0]], ok + [lab[1]], left, w * c / rest)
                left[lab] = c

    walk([], [], dict(counts), 1.0)
    return {c: AdaptiveValue(v, s, e, int(mx)) for c, (v, s, e, mx) in acc.items()}


def adaptive_over_orderings(groups: Sequence[Optional[int]], correct: Sequence[bool], rule: AdaptiveRule,
                            caps: Sequence[int], orderings: Optional[int] = ADAPTIVE_ORDERINGS,
                            seed: int = 0) -> dict[int, AdaptiveValue]:
    """Adaptive majority on one problem's samples (``groups``, ``correct``: n each) at each cap
    max_n in ``caps`` (1 <= cap <= n; ``rule``'s window and threshold, its max_n replaced by the
    cap), averaged over orderings of the samples. Samples are i.i.d., so every ordering of all n
    of them is equally likely to be the order a real adaptive run draws, and the average over
    orderings estimates the expected accuracy and samples of sampling adaptively; one ordering
    alone is a noisy draw of it.

    ``orderings = R`` averages over R orderings: the index order first, then R - 1 random
    permutations from ``numpy.random.default_rng(seed)`` (so R = 1 is the index order, as
    ``rule.stop_after``, and a result is reproducible from the seed). ``orderings = None`` is the
    exact expectation over all n! orderings (``_exact_over_orderings``; small problems only).
    In each ordering the problem stops after the first whole round at which the rule stops, or
    at the cap, and its value is the majority of the samples drawn (ties: the answer seen first).
    Returns ``{cap: AdaptiveValue}``."""
    n = len(groups)
    caps = sorted(set(int(c) for c in caps))
    if not caps or caps[0] < 1 or caps[-1] > n:
        raise ValueError(f"caps must be in 1..{n} (the samples given), not {caps}")
    if orderings is None:
        return _exact_over_orderings(list(groups), list(correct), rule, caps)
    if orderings < 1:
        raise ValueError(f"orderings must be at least 1 (or None: exact), not {orderings}")
    rng = np.random.default_rng(seed)
    acc = {c: [0.0, 0.0, 0.0, 0] for c in caps}
    for r in range(orderings):
        order = range(n) if r == 0 else rng.permutation(n)
        g = [groups[i] for i in order]
        ok = [correct[i] for i in order]
        first = _first_stops(g, rule, caps[-1])
        for cap in caps:
            m = first if first is not None and first < cap else cap
            a = acc[cap]
            a[0] += majority_of_prefix(g, ok, m)
            a[1] += m
            a[2] += m < cap
            a[3] = max(a[3], m)
    return {c: AdaptiveValue(v / orderings, s / orderings, e / orderings, mx) for c, (v, s, e, mx) in acc.items()}


def adaptive_entry(values: Sequence[float], samples: Sequence[float], early: float, max_samples: float,
                   rule: AdaptiveRule, timing: Optional[RunTiming], fixed: Sequence[float],
                   settings: EvalSettings, simulated: bool) -> dict[str, Any]:
    """One run's adaptive entry from each problem's value and samples drawn: the accuracy with its
    bootstrap interval over problems, the cost (the run's seconds per problem at the mean samples
    drawn, ``RunTiming.seconds_per_problem``, the fixed-k cost model) and, against fixed-k
    majority (``fixed[k - 1]``), the smallest k reaching the same accuracy and the samples per
    problem adaptive saves against it (negative: it drew more)."""
    mean_samples = sum(samples) / len(samples)
    stats = M.mean_ci(list(values), settings.n_boot, settings.seed)
    k_same = smallest_k_reaching(fixed, stats["mean"])
    return {"rule": rule.to_dict(), "simulated": simulated, **stats,
            "seconds": timing.seconds_per_problem(mean_samples) if timing else None,
            "mean_samples": mean_samples, "max_samples": max_samples, "stopped_early": early,
            "fixed_k_same_accuracy": k_same,
            "samples_saved": None if k_same is None else k_same - mean_samples,
            "samples": list(samples), "per_problem": list(values)}


def adaptive_from_stops(problems: Sequence[ProblemSamples], groups: Sequence[Sequence[Optional[int]]],
                        stops: Sequence[int], rule: AdaptiveRule, timing: Optional[RunTiming],
                        fixed: Sequence[float], settings: EvalSettings, simulated: bool) -> dict[str, Any]:
    """``adaptive_entry`` when problem i stops after ``stops[i]`` samples (one ordering: a file
    sampled adaptively, or the index order): its value is the majority of its first ``stops[i]``
    samples."""
    values = [majority_of_prefix(g, p.correct, m) for p, g, m in zip(problems, groups, stops)]
    return adaptive_entry(values, list(stops), sum(m < rule.max_n for m in stops), max(stops), rule, timing,
                          fixed, settings, simulated)


def simulate_adaptive(problems: Sequence[ProblemSamples], groups: Sequence[Sequence[Optional[int]]],
                      rule: AdaptiveRule, timing: Optional[RunTiming], fixed: Sequence[float],
                      settings: EvalSettings, n: Optional[int] = None) -> dict[str, Any]:
    """``rule`` simulated on a fixed file: each problem's value and samples drawn averaged over
    ``settings.adaptive_orderings`` orderings of its first ``n`` samples (default: the fewest any
    problem has; ``adaptive_over_orderings``, problem i seeded ``settings.seed * 1_000_003 + i``
    as its fixed-k subsets are), so ``samples``, ``max_samples`` (the largest per-problem
    expectation) and ``stopped_early`` (the expected problems closed before max_n) are
    expectations. ``orderings`` records how many; ``index_order`` keeps the single ordering of
    the samples in index order (what an adaptive run with the file's seed would have drawn, its
    samples a prefix of the fixed run's): its ``mean``, ``lo``, ``hi``, ``mean_samples``,
    ``stopped_early``, ``samples`` and ``per_problem``."""
    n = min(len(g) for g in groups) if n is None else n
    R = settings.adaptive_orderings
    vals = [adaptive_over_orderings(g[:n], p.correct[:n], rule, [rule.max_n], R, settings.seed * 1_000_003 + i)
            [rule.max_n] for i, (p, g) in enumerate(zip(problems, groups))]
    out = adaptive_entry([v.value for v in vals], [v.samples for v in vals], sum(v.early for v in vals),
                         max(v.samples for v in vals), rule, timing, fixed, settings, simulated=True)
    stops = [rule.stop_after(g[:rule.max_n]) for g in groups]
    ref = adaptive_from_stops(problems, groups, stops, rule, timing, fixed, settings, simulated=True)
    out["orderings"] = R
    out["index_order"] = {k: ref[k] for k in ("mean", "lo", "hi", "mean_samples", "stopped_early", "samples",
                                              "per_problem")}
    return out


def per_problem_values(run: dict[str, Any], method: str, k: int) -> Optional[dict[str, float]]:
    """``{problem_id: value}`` of one run's ``method`` at ``k``; None when the run keeps no
    per-problem values (metrics files written before they were kept) or has no such point."""
    table = (run.get("per_problem") or {}).get(method)
    ks, pids = run.get("ks"), run.get("problem_ids")
    if table is None or ks is None or pids is None or k not in ks:
        return None
    return dict(zip(pids, table[ks.index(k)]))


def run_points(run: dict[str, Any], methods: Sequence[str]) -> list[Point]:
    """A run's points of ``methods``; an adaptive method's one point has k = its max_n."""
    pts = []
    for method in methods:
        a = (run.get("adaptive") or {}).get(method)
        if a is not None and a.get("seconds") is not None:
            pts.append(Point(run["name"], method, a["rule"]["max_n"], a["seconds"], a["mean"], a["lo"], a["hi"]))
        for e in run["metrics"].get(method, []):
            if e.get("seconds") is not None:
                pts.append(Point(run["name"], method, e["k"], e["seconds"], e["mean"], e["lo"], e["hi"]))
    return pts


def pareto_by_task(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per task: the front of accuracy (any selection method) and of coverage vs seconds."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task in sorted({str(r["task"]) for r in runs}):
        same_task = [r for r in runs if str(r["task"]) == task]
        acc = [p for r in same_task for p in run_points(r, SELECTION_METHODS)]
        # an adaptive point joins only where no fixed-k point is as cheap and as good, so where
        # adaptive stopping gains nothing (e.g. every problem drew all n) the front is the fixed one
        acc += [a for r in same_task for a in run_points(r, ADAPTIVE_METHODS)
                if not any(p.seconds <= a.seconds and p.value >= a.value for p in acc)]
        cov = [p for r in same_task for p in run_points(r, ("coverage",))]
        out[task] = {"accuracy": [p.to_dict() for p in pareto_front(acc)],
                     "coverage": [p.to_dict() for p in pareto_front(cov)]}
    return out


def unique_names(paths: Sequence[str]) -> list[str]:
    """Run names from file stems, suffixed where two files share a stem."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}-{i}" for i, s in enumerate(stems)]


def evaluate_files(paths: Sequence[str], task_name: Optional[str], settings: EvalSettings,
                   log: Callable[[str], None] = lambda s: None,
                   adaptive: Sequence[AdaptiveRule] = ()) -> dict[str, Any]:
    from .tasks.base import get_task

    runs = []
    for path, name in zip(paths, unique_names(paths)):
        rows = read_jsonl(path)
        tname = task_name or (rows[0].get("task") if rows else None)
        if not tname:
            raise UserError(f"{path}: rows name no task; pass --task")
        try:
            task = get_task(tname)
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
        runs.append(evaluate_run(rows, task, name, str(path), settings, adaptive=adaptive))
        log(f"{path}: {runs[-1]['problems']} problems x {runs[-1]['n']} samples")
    return {"version": 1, "settings": asdict(settings), "runs": runs, "pareto": pareto_by_task(runs)}
