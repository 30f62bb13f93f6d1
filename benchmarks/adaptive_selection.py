"""How optimistic is the demo's adaptive reading when it picks the best cap within a budget?

Simulated problems with known answer distributions, each with 64 i.i.d. samples (one second of
decode per sample, no prefill), scored as the demo scores a model (``demo.adaptive_curve``, the
ESC rule, window 4). For each replicate (fresh problems) and budget (seconds = samples), the
reading at the cap that does best within the budget, and at the largest cap that fits (by cost
alone), minus the population's expected accuracy at that cap; with one ordering of each
problem's samples (the index order) and with the default 64. Scenarios:

- ``flat``: one right and one wrong answer, the right one's probability p ~ Beta(0.7, 0.7) per
  problem: by symmetry every cap's expected accuracy is exactly 0.5, so any cap looks best only
  by chance (the case of a model whose majority curve is flat).
- ``rising``: p ~ Beta(1.2, 1.2), the rest split over 3 wrong answers (Dirichlet(1, 1, 1)); the
  expected accuracy per cap is estimated on 4000 fresh problems (64 orderings each).

    OMP_NUM_THREADS=1 python benchmarks/adaptive_selection.py --scenario flat --replicates 40
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from thinkfast.demo.report import adaptive_curve
from thinkfast.eval.adaptive import AdaptiveRule

CAPS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
BUDGETS = [2, 4, 8, 16, 32]


class Task:
    name = "toy"

    @staticmethod
    def same_answer(a: str, b: str) -> bool:
        return a == b


def draw_rows(rng: np.random.Generator, scenario: str, problems: int, samples: int) -> list[dict]:
    rows = []
    for i in range(problems):
        if scenario == "flat":
            p = rng.beta(0.7, 0.7)
            probs = np.array([p, 1 - p, 0.0, 0.0])
        else:
            p = rng.beta(1.2, 1.2)
            probs = np.array([p, *(rng.dirichlet([1, 1, 1]) * (1 - p))])
        for j, a in enumerate(rng.choice(4, size=samples, p=probs)):
            rows.append({"problem_id": f"q{i}", "sample_index": j, "pred": "xabc"[a], "correct": bool(a == 0),
                         "gold": "x", "prefill_s": 0.0, "decode_s": 1.0, "batch_problems": 1, "batch_rows": 1})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=("flat", "rising"), default="flat")
    ap.add_argument("--replicates", type=int, default=40)
    ap.add_argument("--problems", type=int, default=200)
    args = ap.parse_args()
    rule = AdaptiveRule("esc", window=4, max_n=64)
    t0 = time.perf_counter()
    if args.scenario == "flat":
        truth = {c: 0.5 for c in CAPS}
    else:
        pop = adaptive_curve(draw_rows(np.random.default_rng(12345), "rising", 4000, 64), Task(), rule, CAPS)
        truth = {p["max_n"]: p["mean"] for p in pop["points"]}
    res: dict[tuple, list[float]] = {}
    for r in range(args.replicates):
        rows = draw_rows(np.random.default_rng(r), args.scenario, args.problems, 64)
        for R in (1, 64):
            curve = adaptive_curve(rows, Task(), rule, CAPS, orderings=R, seed=r)
            for b in BUDGETS:
                fit = [p for p in curve["points"] if p["seconds"] <= b]
                best = max(fit, key=lambda p: (p["mean"], -p["seconds"]))
                cost = max(fit, key=lambda p: p["max_n"])
                res.setdefault((R, "best", b), []).append(best["mean"] - truth[best["max_n"]])
                res.setdefault((R, "cost", b), []).append(cost["mean"] - truth[cost["max_n"]])
    print(f"scenario {args.scenario}: {args.replicates} replicates of {args.problems} problems x 64 samples, "
          f"ESC window 4 ({time.perf_counter() - t0:.0f} s). Reading minus expected accuracy at the chosen cap, "
          "points (mean over replicates, its standard error):")
    print("| budget (samples) | best cap, 1 ordering | best cap, 64 orderings | cap by cost, 1 ordering | "
          "cap by cost, 64 orderings |\n|---|---|---|---|---|")
    for b in BUDGETS:
        cells = []
        for R, how in ((1, "best"), (64, "best"), (1, "cost"), (64, "cost")):
            v = np.array(res[(R, how, b)])
            cells.append(f"{100 * v.mean():+.2f} ({100 * v.std(ddof=1) / np.sqrt(len(v)):.2f})")
        print(f"| {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
