"""From samples files to one metrics JSON: coverage, voting metrics, budgets, Pareto fronts.

Input rows (one per sample): ``problem_id``, ``sample_index``, ``gold``, ``completion`` and,
once graded, ``pred``/``correct``; optionally a reward (``thinkfast score``) and the engine's
timings (``thinkfast sample``). Ungraded files are graded here with the task's grader.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

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
    rule simulated on each problem's samples in index order (``simulate_adaptive``). A file made
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
            adaptive_out[rule.method] = simulate_adaptive(problems, groups, rule, timing, fixed, settings)
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


def adaptive_from_stops(problems: Sequence[ProblemSamples], groups: Sequence[Sequence[Optional[int]]],
                        stops: Sequence[int], rule: AdaptiveRule, timing: Optional[RunTiming],
                        fixed: Sequence[float], settings: EvalSettings, simulated: bool) -> dict[str, Any]:
    """Adaptive majority when problem i stops after ``stops[i]`` samples: accuracy is the majority
    of each problem's first ``stops[i]`` samples; cost is the run's seconds per problem at the
    mean samples drawn (``RunTiming.seconds_per_problem``, the fixed-k cost model). Against
    fixed-k majority (``fixed[k - 1]``): the smallest k reaching the same accuracy and the samples
    per problem adaptive saves against it (negative: it drew more)."""
    values = [majority_of_prefix(g, p.correct, m) for p, g, m in zip(problems, groups, stops)]
    mean_samples = sum(stops) / len(stops)
    stats = M.mean_ci(values, settings.n_boot, settings.seed)
    k_same = smallest_k_reaching(fixed, stats["mean"])
    return {"rule": rule.to_dict(), "simulated": simulated, **stats,
            "seconds": timing.seconds_per_problem(mean_samples) if timing else None,
            "mean_samples": mean_samples, "max_samples": max(stops),
            "stopped_early": sum(m < rule.max_n for m in stops),
            "fixed_k_same_accuracy": k_same,
            "samples_saved": None if k_same is None else k_same - mean_samples,
            "samples": list(stops), "per_problem": values}


def simulate_adaptive(problems: Sequence[ProblemSamples], groups: Sequence[Sequence[Optional[int]]],
                      rule: AdaptiveRule, timing: Optional[RunTiming], fixed: Sequence[float],
                      settings: EvalSettings) -> dict[str, Any]:
    """``adaptive_from_stops`` with each problem stopping where ``rule`` stops on its samples in
    index order: what adaptive sampling with the same seed would have drawn, since its samples are
    a prefix of the fixed run's."""
    stops = [rule.stop_after(g[:rule.max_n]) for g in groups]
    return adaptive_from_stops(problems, groups, stops, rule, timing, fixed, settings, simulated=True)


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
