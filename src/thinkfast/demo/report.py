"""What the demo reports: the throughput table, each student's budgets, the claim (does a student
beat its teacher at equal seconds per problem?) and the demo's own section of report.md. The keys
of results.json are described in docs/results-schema.md; the figures of full runs are in
docs/demo-study.md.
"""

from __future__ import annotations

import collections
from typing import Any, Optional

from .config import MODELS, STUDENTS


DISTILLED_SHARE = 0.5
"""A student whose greedy accuracy is under this share of the teacher's did not distil: the claim
then compares the teacher with a broken student, and the report says so first."""


def distillation_check(greedy: dict[str, dict[str, Any]], share: float = DISTILLED_SHARE) -> dict[str, Any]:
    """Each student's greedy accuracy on the test problems against the teacher's (a pure function):
    ``{student: {"greedy", "teacher_greedy", "share", "distilled", "lookup", "teacher_lookup",
    "operands", "teacher_operands"}}``, ``distilled`` false when its greedy accuracy is under
    ``share`` of the teacher's; ``lookup`` the share of the look-ups of sentence 3 and on it gets
    right and ``operands`` that of the copied operands' second digits, teacher-forced
    (``demo.lookup``; None in a run whose greedy stages predate the probe)."""
    teacher = greedy["teacher"]["accuracy"]
    out = {}
    for name in STUDENTS:
        acc = greedy[name]["accuracy"]
        ratio = acc / teacher if teacher > 0 else None
        out[name] = {"greedy": acc, "teacher_greedy": teacher, "share": ratio,
                     "distilled": ratio is None or ratio >= share,
                     "lookup": greedy[name].get("lookup_share"), "teacher_lookup": greedy["teacher"].get("lookup_share"),
                     "operands": greedy[name].get("operand_share"),
                     "teacher_operands": greedy["teacher"].get("operand_share")}
    return out


def _lookup_note(v: dict[str, Any]) -> str:
    note = ""
    if v.get("lookup") is not None and v.get("teacher_lookup") is not None:
        note += f", look-up of sentences 3 and on {_pct(v['lookup'])} right against {_pct(v['teacher_lookup'])}"
    if v.get("operands") is not None and v.get("teacher_operands") is not None:
        note += (f", copied operands' second digits {_pct(v['operands'])} right against "
                 f"{_pct(v['teacher_operands'])}")
    return note


def throughput_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decode throughput of each model at the batch size it was sampled with."""
    out = []
    for r in runs:
        t = r.get("timing") or {}
        per_sample = t.get("decode_s_per_sample")
        toks = t.get("new_tokens_per_sample")
        rows = t.get("mean_batch_rows")
        out.append({"model": r["name"], "batch_rows": rows, "new_tokens_per_sample": toks,
                    "decode_tokens_per_s": (toks / per_sample) if per_sample and toks else None,
                    "seconds_per_problem_k1": (r["metrics"]["coverage"][0]["seconds"])})
    return out


def budget_ks(teacher_run: dict[str, Any], rows: list[dict[str, Any]]) -> list[int]:
    """For each of the teacher's budgets (seconds per problem at its k = 2, 4, ...), the most
    samples a student's ``rows`` fit in it, by the student's own measured timings: the student is
    also scored at exactly those k, so the comparison uses each budget whole."""
    from ..eval.budget import largest_k_within, timing_from_rows

    timing = timing_from_rows(rows)
    if timing is None:
        return []
    n = min(collections.Counter(r["problem_id"] for r in rows).values())
    ks = [largest_k_within(e["seconds"], timing, n) for e in teacher_run["metrics"]["coverage"]
          if e["k"] >= 2 and e["seconds"] is not None]
    return sorted({k for k in ks if k >= 1})


def paired_budget_difference(student: dict[str, Any], teacher: dict[str, Any], method: str, student_k: int,
                             teacher_k: int, n_boot: int, seed: int) -> Optional[dict[str, Any]]:
    """``paired_difference`` of the student's per-problem values at ``student_k`` against the
    teacher's at ``teacher_k``, over the problems both runs scored (in the teacher's order), plus
    ``problems``, ``sd`` and ``detectable`` (``paired_values``); None when either run keeps no
    per-problem values or none are shared."""
    from ..eval.evaluation import per_problem_values

    s = per_problem_values(student, method, student_k)
    t = per_problem_values(teacher, method, teacher_k)
    if s is None or t is None:
        return None
    return paired_values(s, t, teacher["problem_ids"], n_boot, seed)


def paired_values(s: dict[str, float], t: dict[str, float], order: list[str], n_boot: int,
                  seed: int) -> Optional[dict[str, Any]]:
    """``paired_difference`` of ``s[p] - t[p]`` over the problems of ``order`` both hold, plus
    ``problems`` (how many), ``sd`` (the standard deviation of the per-problem differences) and
    ``detectable``: the difference a paired test at 95% would detect with 80% power on this many
    problems with this sd (``margin_for_problems``). None when no problem is shared."""
    import statistics

    from ..eval.metrics import margin_for_problems, paired_difference

    pids = [p for p in order if p in s and p in t]
    if not pids:
        return None
    a, b = [s[p] for p in pids], [t[p] for p in pids]
    d = paired_difference(a, b, n_boot=n_boot, seed=seed)
    sd = statistics.stdev([x - y for x, y in zip(a, b)]) if len(pids) > 1 else 0.0
    return {**d, "problems": len(pids), "sd": sd, "detectable": margin_for_problems(sd, len(pids))}


def claim_verdict(runs: dict[str, dict[str, Any]], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """For each teacher budget (the seconds per problem of its k >= 2): the best the teacher and
    each student reach within that many seconds. Teacher and students are scored alike, so a
    majority curve that dips at larger k counts its best point for every model.

    Each student is then compared with the teacher on the same problems: the mean per-problem
    difference (student at its best k minus teacher at its best k) with a paired bootstrap
    interval (``n_boot`` resamples, ``seed``), as ``{name}_diff``, ``{name}_lo``, ``{name}_hi`` and
    ``{name}_paired_verdict`` (above / below / tied; None when no comparison can be made)."""
    from ..eval.budget import best_at_budget
    from ..eval.evaluation import run_points

    teacher = runs["teacher"]
    verdict: dict[str, Any] = {}
    for method in ("coverage", "majority"):
        rows = []
        for e in teacher["metrics"][method]:
            if e["k"] < 2 or e["seconds"] is None:
                continue
            row: dict[str, Any] = {"budget_k": e["k"], "seconds": e["seconds"]}
            for name in MODELS:
                best = best_at_budget(run_points(runs[name], [method]), e["seconds"])
                row[name] = best.value if best else None
                row[f"{name}_k"] = best.k if best else None
            for name in STUDENTS:
                d = None
                if row[f"{name}_k"] is not None and row["teacher_k"] is not None:
                    d = paired_budget_difference(runs[name], teacher, method, row[f"{name}_k"], row["teacher_k"],
                                                 n_boot, seed)
                for key in ("diff", "lo", "hi", "sd", "detectable"):
                    row[f"{name}_{key}"] = d[key] if d else None
                row[f"{name}_paired_verdict"] = d["verdict"] if d else None
                row[f"{name}_problems"] = d["problems"] if d else None
            rows.append(row)
        wins = {name: sum(1 for r in rows if r[name] is not None and r[name] > r["teacher"]) for name in STUDENTS}
        paired = {name: {v: sum(1 for r in rows if r[f"{name}_paired_verdict"] == v) for v in ("above", "tied", "below")}
                  for name in STUDENTS}
        verdict[method] = {"budgets": rows, "student_wins": wins, "paired_verdicts": paired,
                           "budgets_compared": len(rows)}
    return verdict


def adaptive_curve(rows: list[dict[str, Any]], task: Any, rule: Any, caps: list[int],
                   orderings: Optional[int] = None, seed: int = 0) -> dict[str, Any]:
    """Adaptive majority (``rule``, an ``eval.adaptive.AdaptiveRule``) simulated on one model's
    graded samples at each cap ``max_n`` in ``caps`` (those up to the samples every problem has),
    as ``thinkfast evaluate`` simulates one (``eval.evaluation.adaptive_over_orderings``, with its
    per-problem seeds from ``seed``): each problem's value (the majority of the samples drawn at
    its stop) and samples drawn are averaged over ``orderings`` orderings of its samples (default
    ``EvalSettings.adaptive_orderings``; 1: the index order alone), and the cost is the run's
    seconds per problem at the mean samples drawn. Returns ``{"problem_ids", "orderings",
    "points": [{max_n, mean_samples, seconds, mean, per_problem, index_order_mean,
    index_order_samples}]}``, the last two the single ordering of the samples in index order."""
    from ..eval.adaptive import AdaptiveRule
    from ..eval.budget import timing_from_rows
    from ..eval.evaluation import EvalSettings, adaptive_over_orderings, group_by_problem, majority_of_prefix
    from ..eval.grading import answer_key
    from ..eval.metrics import group_answers

    orderings = EvalSettings.adaptive_orderings if orderings is None else orderings
    problems = group_by_problem(rows, "reward", "samples")
    n = min(len(p.preds) for p in problems)
    groups = [group_answers(p.preds, key=answer_key, same=task.same_answer) for p in problems]
    timing = timing_from_rows(rows)
    caps = sorted({c for c in caps if 1 <= c <= n})
    per = [adaptive_over_orderings(g[:n], p.correct[:n], rule, caps, orderings, seed * 1_000_003 + i)
           for i, (p, g) in enumerate(zip(problems, groups))] if caps else []
    points = []
    for cap in caps:
        values = [v[cap].value for v in per]
        mean_samples = sum(v[cap].samples for v in per) / len(per)
        r = AdaptiveRule(rule.rule, rule.window, cap, rule.threshold)
        stops = [r.stop_after(g[:cap]) for g in groups]
        first = [majority_of_prefix(g, p.correct, m) for p, g, m in zip(problems, groups, stops)]
        points.append({"max_n": cap, "mean_samples": mean_samples,
                       "seconds": timing.seconds_per_problem(mean_samples) if timing else None,
                       "mean": sum(values) / len(values), "per_problem": values,
                       "index_order_mean": sum(first) / len(first), "index_order_samples": sum(stops) / len(stops)})
    return {"problem_ids": [p.problem_id for p in problems], "orderings": orderings, "points": points}


def _fitting(curve: dict[str, Any], seconds: float) -> list[dict[str, Any]]:
    return [p for p in curve["points"] if p["seconds"] is not None and p["seconds"] <= seconds]


def _best_adaptive(curve: dict[str, Any], seconds: float) -> Optional[dict[str, Any]]:
    """The cap with the highest accuracy whose seconds fit ``seconds`` (ties: the cheaper)."""
    fit = _fitting(curve, seconds)
    return max(fit, key=lambda p: (p["mean"], -p["seconds"])) if fit else None


def _cost_adaptive(curve: dict[str, Any], seconds: float) -> Optional[dict[str, Any]]:
    """The largest cap whose seconds fit ``seconds``, whatever its accuracy: chosen by cost alone."""
    fit = _fitting(curve, seconds)
    return max(fit, key=lambda p: p["max_n"]) if fit else None


def adaptive_claim(runs: dict[str, dict[str, Any]], curves: dict[str, dict[str, Any]], n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """The claim's second reading: at each teacher budget (the seconds per problem of its fixed
    k >= 2), every model votes adaptively (``curves``: ``adaptive_curve`` of one rule per model,
    each cap's accuracy averaged over orderings of the samples) with the cap ``max_n`` that does
    best within those seconds, and each student is compared with the teacher on the same
    problems, as ``claim_verdict`` does for fixed k: per budget ``{name}`` / ``{name}_max_n`` /
    ``{name}_samples`` (accuracy, cap, mean samples drawn), and ``{name}_diff``, ``_lo``, ``_hi``,
    ``_sd``, ``_detectable``, ``_paired_verdict``, ``_problems``.

    Beside it, the reading with each model's cap chosen by cost alone (the largest cap that fits
    the budget, so no accuracy on the test problems picks it): ``{name}_by_cost``,
    ``{name}_by_cost_max_n``, ``{name}_by_cost_samples`` and per student ``{name}_by_cost_diff``,
    ``_lo``, ``_hi``, ``_paired_verdict``, with ``student_wins_by_cost`` and
    ``paired_verdicts_by_cost``."""
    order = curves["teacher"]["problem_ids"]
    rows = []
    for e in runs["teacher"]["metrics"]["majority"]:
        if e["k"] < 2 or e["seconds"] is None:
            continue
        row: dict[str, Any] = {"budget_k": e["k"], "seconds": e["seconds"]}
        for suffix, pick in (("", _best_adaptive), ("_by_cost", _cost_adaptive)):
            chosen = {name: pick(curves[name], e["seconds"]) for name in MODELS}
            for name in MODELS:
                b = chosen[name]
                row[f"{name}{suffix}"] = b["mean"] if b else None
                row[f"{name}{suffix}_max_n"] = b["max_n"] if b else None
                row[f"{name}{suffix}_samples"] = b["mean_samples"] if b else None
            for name in STUDENTS:
                d = None
                if chosen[name] and chosen["teacher"]:
                    d = paired_values(dict(zip(curves[name]["problem_ids"], chosen[name]["per_problem"])),
                                      dict(zip(order, chosen["teacher"]["per_problem"])), order, n_boot, seed)
                keys = ("diff", "lo", "hi", "sd", "detectable") if not suffix else ("diff", "lo", "hi")
                for key in keys:
                    row[f"{name}{suffix}_{key}"] = d[key] if d else None
                row[f"{name}{suffix}_paired_verdict"] = d["verdict"] if d else None
                if not suffix:
                    row[f"{name}_problems"] = d["problems"] if d else None
        rows.append(row)
    out: dict[str, Any] = {"budgets": rows, "budgets_compared": len(rows),
                           "orderings": curves["teacher"].get("orderings")}
    for suffix in ("", "_by_cost"):
        out[f"student_wins{suffix}"] = {
            name: sum(1 for r in rows if r[f"{name}{suffix}"] is not None and r[f"teacher{suffix}"] is not None
                      and r[f"{name}{suffix}"] > r[f"teacher{suffix}"]) for name in STUDENTS}
        out[f"paired_verdicts{suffix}"] = {
            name: {v: sum(1 for r in rows if r[f"{name}{suffix}_paired_verdict"] == v) for v in ("above", "tied", "below")}
            for name in STUDENTS}
    return out


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _paired(row: dict[str, Any], name: str) -> str:
    """A student's paired difference from the teacher, in percentage points, with its interval."""
    if row.get(f"{name}_diff") is None:
        return "-"
    return (f"{_pts(row[f'{name}_diff'])} pts [{_pts(row[f'{name}_lo'])}, {_pts(row[f'{name}_hi'])}] "
            f"{row[f'{name}_paired_verdict']}")


def _adaptive_cell(row: dict[str, Any], name: str) -> str:
    if row.get(name) is None:
        return "-"
    return f"{_pct(row[name])} ({row[f'{name}_max_n']}, {row[f'{name}_samples']:.1f})"


def _power_note(v: dict[str, Any]) -> list[str]:
    """What the paired comparisons at the largest budget can resolve on this many problems."""
    from ..eval.metrics import problems_for_margin

    if not v["budgets"]:
        return []
    last = v["budgets"][-1]
    parts = []
    for name, label in (("llamba", "Llamba"), ("hybrid", "hybrid")):
        sd, det, n = last.get(f"{name}_sd"), last.get(f"{name}_detectable"), last.get(f"{name}_problems")
        if sd is None or det is None:
            continue
        if sd == 0:
            parts.append(f"{label}: the same value on every problem as the teacher")
            continue
        need = problems_for_margin(sd, 0.03) if sd > 0 else 0
        parts.append(f"{label}: sd of the per-problem differences {sd:.3f}, so {n} problems detect "
                     f"{100 * det:.1f} points (3 points would need {need})")
    if not parts:
        return []
    return ["At the largest budget (95% level, 80% power): " + "; ".join(parts) + ".", ""]


def demo_markdown(results: dict[str, Any]) -> list[str]:
    """The demo's own section of report.md: the claim, throughput and stage times."""
    md = ["# thinkfast demo", ""]
    if results["config"]["quick"]:
        md += ["**--quick run: tiny budgets everywhere, so these numbers are meaningless;** it only "
               "shows that every stage runs.", ""]
    failed = [(n, v) for n, v in (results.get("distillation") or {}).items() if not v["distilled"]]
    if failed:
        md += ["**A student did not distil:** " + "; ".join(
            f"{n} greedy {_pct(v['greedy'])} against the teacher's {_pct(v['teacher_greedy'])}{_lookup_note(v)}"
            for n, v in failed)
               + f" (under {DISTILLED_SHARE:.0%} of it). The comparisons below then set the teacher against a "
               "broken student, not a distilled one, and do not test the claim; see docs/demo-study.md, "
               "\"When a student does not distil\".", ""]
    md += ["## Does a student beat its teacher at equal seconds per problem?", ""]
    if results.get("samples_per_problem"):
        md += ["Samples per test problem: " + ", ".join(f"{k} {v}" for k, v in results["samples_per_problem"].items())
               + " (a student's n grows with its measured speed, so its curves reach the teacher's largest "
               "budget).", ""]
    for method in ("coverage", "majority"):
        v = results["claim"][method]
        md += [f"### {method}", "", "| budget: teacher k | seconds/problem | best teacher within it (k) | "
               "best Llamba within it (k) | Llamba - teacher [95% paired CI] | best hybrid within it (k) | "
               "hybrid - teacher [95% paired CI] |", "|---|---|---|---|---|---|---|"]
        for r in v["budgets"]:
            md.append(f"| {r['budget_k']} | {r['seconds']:.3f} | {_pct(r['teacher'])} ({r['teacher_k']}) | "
                      f"{_pct(r['llamba'])} ({r['llamba_k']}) | {_paired(r, 'llamba')} | "
                      f"{_pct(r['hybrid'])} ({r['hybrid_k']}) | {_paired(r, 'hybrid')} |")
        paired = v.get("paired_verdicts")
        md += [""]
        if paired:
            md += ["Paired over the same test problems (the student's per-problem value at its k minus the "
                   "teacher's at its k, bootstrap over problems): " + "; ".join(
                       f"{label} above the teacher in {paired[name]['above']}, tied in {paired[name]['tied']}, "
                       f"below in {paired[name]['below']}" for name, label in (("llamba", "Llamba"), ("hybrid", "hybrid")))
                   + f" of {v['budgets_compared']} budgets.", ""]
        md += [f"Budgets where a student's mean is above the teacher's: Llamba {v['student_wins']['llamba']}, "
               f"hybrid {v['student_wins']['hybrid']} of {v['budgets_compared']}.", ""]
        md += _power_note(v)
    for method, label in (("adaptive-esc", "ESC"), ("adaptive-beta", "Beta")):
        v = results["claim"].get(method)
        if not v:
            continue
        cfg = results["config"]
        md += [f"### adaptive majority ({label}, window {cfg['adaptive_window']})", "",
               "Every model votes adaptively (simulated on its samples): each problem stops once the rule says "
               "its vote is settled, or at the cap max_n; each cap's accuracy and mean samples are averaged over "
               f"{v.get('orderings') or 1} orderings of each problem's samples. At each teacher budget every model "
               "uses the cap that does best within those seconds (cap, mean samples drawn); the last two columns "
               "instead take each model's largest cap that fits the budget, chosen by cost alone.", "",
               "| budget: teacher k | seconds/problem | teacher (cap, samples) | Llamba (cap, samples) | "
               "Llamba - teacher [95% paired CI] | hybrid (cap, samples) | hybrid - teacher [95% paired CI] | "
               "Llamba - teacher, cap by cost | hybrid - teacher, cap by cost |",
               "|---|---|---|---|---|---|---|---|---|"]
        for r in v["budgets"]:
            md.append(f"| {r['budget_k']} | {r['seconds']:.3f} | {_adaptive_cell(r, 'teacher')} | "
                      f"{_adaptive_cell(r, 'llamba')} | {_paired(r, 'llamba')} | {_adaptive_cell(r, 'hybrid')} | "
                      f"{_paired(r, 'hybrid')} | {_paired(r, 'llamba_by_cost')} | {_paired(r, 'hybrid_by_cost')} |")
        paired = v["paired_verdicts"]
        md += ["", "Paired: " + "; ".join(
            f"{lab} above the teacher in {paired[name]['above']}, tied in {paired[name]['tied']}, below in "
            f"{paired[name]['below']}" for name, lab in (("llamba", "Llamba"), ("hybrid", "hybrid")))
            + f" of {v['budgets_compared']} budgets.", ""]
        by_cost = v.get("paired_verdicts_by_cost")
        if by_cost:
            md += ["With the cap chosen by cost alone: " + "; ".join(
                f"{lab} above in {by_cost[name]['above']}, tied in {by_cost[name]['tied']}, below in "
                f"{by_cost[name]['below']}" for name, lab in (("llamba", "Llamba"), ("hybrid", "hybrid"))) + ".", ""]
        md += _power_note(v)
    verifier = results["config"].get("verifier", "orm")
    if verifier == "prm":
        agg = results["config"].get("prm_aggregate", "min")
        md += [f"Best-of-N and weighted Best-of-N use the PRM (a process reward model on the frozen teacher, its "
               f"step labels from teacher rollouts on graded samples of train problems), a chain scored by its "
               f"{'last' if agg == 'last' else 'lowest'} step"
               + (": validation's pick, its weighted majority at or above majority at every k on validation "
                  "problems, with the highest mean over k of any verifier (docs/verifiers.md)." if agg == "last" else
                  "; validation picks its last step instead (docs/verifiers.md)."), ""]
    else:
        md += ["Best-of-N and weighted Best-of-N use the ORM (an outcome reward model on the frozen teacher, trained "
               "on graded teacher samples of train problems); validation picks the PRM scored by its last step "
               "instead (docs/verifiers.md).", ""]
    hl = results["hybrid_layers"]
    md += [f"The hybrid keeps attention in layers {hl['layers']} ({hl['pattern']}), chosen by {hl['method']} "
           "KL on train problems.", ""]
    md += ["## Accuracy at k = 1 and greedy", "", "| model | greedy | temperature | accuracy@1 | coverage@n |",
           "|---|---|---|---|---|"]
    for name in MODELS:
        run = results["runs"][name]
        cov = run["metrics"]["coverage"]
        md.append(f"| {name} | {_pct(results['greedy'][name]['accuracy'])} | {results['temperatures'][name]} | "
                  f"{_pct(cov[0]['mean'])} | {_pct(cov[-1]['mean'])} (n={cov[-1]['k']}) |")
    md += ["", "## Decode throughput at the sampling batch size", ""]
    probes = results.get("decode_speed") or {}
    if probes:
        md += ["The speed probe, which decides the samples per problem: each model's median (and range) over "
               "engine calls of the test sampling's shape (rows, test prompts, max_new_tokens), one model at a time.",
               "", "| model | calls x rows | decode tokens/s (range) | decode s/sample (range) | new tokens / sample |",
               "|---|---|---|---|---|"]
        for name, p in probes.items():
            tps, rng = p.get("decode_tokens_per_s"), p.get("decode_tokens_per_s_range")
            sps, srng = p["decode_s_per_sample"], p["decode_s_per_sample_range"]
            md.append(f"| {name} | {len(p['calls'])} x {p['rows']} | "
                      + (f"{tps:.0f} ({rng[0]:.0f}-{rng[1]:.0f})" if tps else "-")
                      + f" | {sps:.4f} ({srng[0]:.4f}-{srng[1]:.4f}) | {p['new_tokens_per_sample']:.0f} |")
        md += ["", "Over the whole test sampling:", ""]
    md += ["| model | rows per batch | new tokens / sample | decode tokens/s | seconds/problem (k=1) |",
           "|---|---|---|---|---|"]
    for t in results["throughput"]:
        md.append(f"| {t['model']} | {t['batch_rows']:.0f} | {t['new_tokens_per_sample']:.0f} | "
                  f"{t['decode_tokens_per_s']:.0f} | {t['seconds_per_problem_k1']:.3f} |")
    md += ["", "## Wall time per stage (seconds)", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k} | {v:.0f} |" for k, v in results["stage_seconds"].items()]
    return md + [""]

