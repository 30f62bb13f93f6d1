"""Grading throughput: completions per second with 1 and N worker processes, same verdicts.

    python benchmarks/grading/throughput.py [--n 10000] [--workers 2]

The completions are the labelled corpus (``tests/eval/grading_corpus.py``), each made unique by
a numbered sentence in its chain so no verdict comes from the cache, cycled to ``--n``. Both runs
grade the same list; the script asserts that their ``pred`` and verdicts are identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.eval.grading_corpus import corpus  # noqa: E402
from thinkfast.eval.grading import Grader  # noqa: E402
from thinkfast.eval.tasks.base import Example, get_task  # noqa: E402


def run(items, workers: int):
    with Grader(workers=workers) as grader:
        task = get_task("math500").use_grader(grader)
        task.grade_many([("\\boxed{1}", Example("", "", "1", "1"))] * workers)  # workers started
        t0 = time.perf_counter()
        graded = task.grade_many(items)
        return graded, time.perf_counter() - t0, dict(grader.stats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cases = [c for c in corpus() if c.task == "math500"]
    items = []
    for i in range(args.n):
        c = cases[i % len(cases)]
        items.append((f"Attempt {i}: let us reason.\n" + c.completion, Example("", "", c.gold, c.gold)))
    chars = sum(len(t) for t, _ in items)
    print(f"{args.n} completions, {chars / args.n:.0f} characters on average")
    results = {}
    for w in sorted({1, args.workers}):
        graded, seconds, stats = run(items, w)
        results[w] = graded
        print(f"workers={w}: {seconds:.1f} s, {args.n / seconds:.0f} completions/s, "
              f"timeouts {stats['timeout']}, errors {stats['error']}")
    first = results[1]
    assert all(r == first for r in results.values()), "results differ between worker counts"
    print("identical results across worker counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
