"""A Markdown report with PNG plots from one or more metrics JSON files (``thinkfast evaluate``).

Plots: coverage vs k, accuracy vs k per selection method, accuracy vs seconds per problem with
the Pareto front marked; then tables of every figure with its 95% bootstrap interval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..config import atomic_write_text
from .evaluation import ADAPTIVE_METHODS, SELECTION_METHODS, pareto_by_task

LABELS = {"coverage": "coverage (pass@k)", "majority": "majority@k", "best_of_n": "Best-of-N@k",
          "weighted_best_of_n": "weighted Best-of-N@k", "adaptive-esc": "adaptive majority (ESC)",
          "adaptive-beta": "adaptive majority (Beta)"}
MARKERS = {"coverage": "o", "majority": "s", "best_of_n": "^", "weighted_best_of_n": "D", "adaptive-esc": "*",
           "adaptive-beta": "P"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, safe in threads and on servers
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def _finish(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, drawn: bool, path: Path) -> bool:
    """Label and grid a plot, save it (with its legend) when anything was ``drawn``, close it;
    returns ``drawn``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
        _save(fig, path)
    plt.close(fig)
    return drawn


def plot_vs_k(runs: Sequence[dict[str, Any]], methods: Sequence[str], title: str, path: Path) -> bool:
    """One line per (run, method) with its confidence band; False when there is nothing to plot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for i, run in enumerate(runs):
        for method in methods:
            es = run["metrics"].get(method)
            if not es:
                continue
            ks = [e["k"] for e in es]
            line, = ax.plot(ks, [e["mean"] for e in es], marker=MARKERS[method], color=f"C{i}",
                            linestyle="-" if method in ("coverage", "majority") else "--",
                            label=f"{run['name']}: {LABELS[method]}")
            ax.fill_between(ks, [e["lo"] for e in es], [e["hi"] for e in es], color=line.get_color(), alpha=0.12)
            drawn = True
    ax.set_xscale("log", base=2)
    ks = sorted({e["k"] for run in runs for es in run["metrics"].values() for e in es})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    return _finish(plt, fig, ax, "k (samples per problem)", "fraction of problems", title, drawn, path)


def plot_vs_seconds(runs: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], task: str, path: Path) -> bool:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for i, run in enumerate(runs):
        for method in SELECTION_METHODS:
            es = [e for e in run["metrics"].get(method, []) if e.get("seconds") is not None]
            if es:
                ax.plot([e["seconds"] for e in es], [e["mean"] for e in es], marker=MARKERS[method],
                        color=f"C{i}", alpha=0.8, label=f"{run['name']}: {LABELS[method]}")
                drawn = True
        for method in ADAPTIVE_METHODS:  # one point each: its mean samples drawn, at their seconds
            a = (run.get("adaptive") or {}).get(method)
            if a is not None and a.get("seconds") is not None:
                ax.scatter([a["seconds"]], [a["mean"]], marker=MARKERS[method], s=70, color=f"C{i}", zorder=4,
                           label=f"{run['name']}: {LABELS[method]}, {a['mean_samples']:.3g} samples")
                drawn = True
    if front:
        ax.step([p["seconds"] for p in front], [p["value"] for p in front], where="post", color="black",
                linewidth=1.5, label="Pareto front")
        ax.scatter([p["seconds"] for p in front], [p["value"] for p in front], s=90, facecolors="none",
                   edgecolors="black", zorder=3)
    ax.set_xscale("log")
    from matplotlib import ticker

    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    return _finish(plt, fig, ax, "seconds per problem (measured engine timings)", "accuracy",
                   f"{task}: accuracy vs time budget", drawn, path)


def _fmt(e: dict[str, Any] | None) -> str:
    return "" if e is None else f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"


def run_table(run: dict[str, Any]) -> list[str]:
    methods = [m for m in ("coverage", *SELECTION_METHODS) if run["metrics"].get(m)]
    head = "| k | " + " | ".join(LABELS[m] for m in methods) + " | s/problem |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for j, k in enumerate(run["ks"]):
        cells = [_fmt(run["metrics"][m][j]) for m in methods]
        sec = run["metrics"]["coverage"][j].get("seconds")
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {'' if sec is None else f'{sec:.3g}'} |")
    return lines


def front_table(front: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| budget (s/problem) | best model | method | k | accuracy |", "|---|---|---|---|---|"]
    for p in front:
        k = f"<= {p['k']}" if p["method"] in ADAPTIVE_METHODS else p["k"]  # adaptive: its max_n
        lines.append(f"| {p['seconds']:.3g} | {p['model']} | {LABELS[p['method']]} | {k} | "
                     f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] |")
    return lines


def adaptive_table(run: dict[str, Any]) -> list[str]:
    """Adaptive majority against fixed-k majority; no lines when the run has none."""
    entries = [(m, a) for m, a in (run.get("adaptive") or {}).items() if m in ADAPTIVE_METHODS]
    if not entries:
        return []
    lines = ["| method | rule | accuracy | mean samples | s/problem | fixed k, same accuracy | samples saved |",
             "|---|---|---|---|---|---|---|"]
    for m, a in entries:
        rule = ", ".join(f"{k}={v}" for k, v in a["rule"].items() if k != "rule")
        sec = "" if a.get("seconds") is None else f"{a['seconds']:.3g}"
        k = "" if a["fixed_k_same_accuracy"] is None else a["fixed_k_same_accuracy"]
        saved = "" if a["samples_saved"] is None else f"{a['samples_saved']:.3g}"
        how = "simulated" if a["simulated"] else "sampled"
        lines.append(f"| {LABELS[m]} ({how}) | {rule} | {_fmt(a)} | {a['mean_samples']:.3g} | {sec} | {k} | {saved} |")
    return lines + [""]


def write_report(metrics: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir``; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for m in metrics for r in m["runs"]]
    fronts = pareto_by_task(runs)  # recomputed: runs may come from several metrics files
    md = ["# Reasoning under a fixed budget", ""]
    for task, front in fronts.items():
        trs = [r for r in runs if str(r["task"]) == task]
        md += [f"## {task}", ""]
        for fname, methods, title in ((f"coverage_vs_k_{task}.png", ("coverage",), "coverage vs k"),
                                      (f"accuracy_vs_k_{task}.png", SELECTION_METHODS, "accuracy vs k")):
            if plot_vs_k(trs, methods, f"{task}: {title}", out / fname):
                md += [f"![{title}]({fname})", ""]
        fname = f"accuracy_vs_seconds_{task}.png"
        if plot_vs_seconds(trs, front["accuracy"], task, out / fname):
            md += [f"![accuracy vs seconds]({fname})", "", "### Best choice at each budget (Pareto front)", ""]
            md += front_table(front["accuracy"]) + [""]
        for r in trs:
            hw = f", {r['hardware']}" if r.get("hardware") else ""
            md += [f"### {r['name']}", "", f"model `{r.get('model')}`, {r['problems']} problems x "
                   f"{r['n']} samples{hw}; grading: {r['grading']['timeouts']} timeouts, "
                   f"{r['grading']['no_answer']} samples without an answer.", ""]
            md += run_table(r) + [""]
            md += adaptive_table(r)
    md += ["Figures are means over problems with 95% percentile-bootstrap intervals; voting metrics at "
           "k < n average over random k-subsets.", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path
