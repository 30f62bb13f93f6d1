"""Agreement of thinkfast's grader and of plain Math-Verify with the labelled corpus, by family.

    python benchmarks/grading/agreement.py [--workers N] [--show-disagreements]

The corpus is ``tests/eval/grading_corpus.py`` (completions correct by construction). "Plain
Math-Verify" is ``verify(parse("$" + gold + "$"), parse(completion))`` with its defaults, run
in-process; thinkfast's grader runs as ``thinkfast grade`` does. Prints a table per family, then
each case where the two disagree.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.eval.grading_corpus import corpus  # noqa: E402
from thinkfast.eval.grading import Grader  # noqa: E402
from thinkfast.eval.tasks.base import Example, get_task  # noqa: E402


def plain_math_verify(gold: str, completion: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(f"${gold}$"), parse(completion)))


def thinkfast_verdicts(cases, workers: int) -> list[bool]:
    out = [False] * len(cases)
    with Grader(workers=workers) as grader:
        for name in ("gsm8k", "math500"):
            task = get_task(name).use_grader(grader)
            idx = [i for i, c in enumerate(cases) if c.task == name]
            graded = task.grade_many([(cases[i].completion, Example("", "", cases[i].gold,
                                                                    task.gold_answer(cases[i].gold))) for i in idx])
            for i, g in zip(idx, graded):
                out[i] = g.verdict.correct
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--show-disagreements", action="store_true", help="list every case either gets wrong")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    cases = corpus()
    ours = thinkfast_verdicts(cases, args.workers)
    plain = [plain_math_verify(c.gold, c.completion) for c in cases]
    fam: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for c, o, p in zip(cases, ours, plain):
        for key in (c.family, "all"):
            f = fam[key]
            f[0] += 1
            f[1] += c.correct
            f[2] += o == c.correct
            f[3] += p == c.correct
    print(f"{len(cases)} cases, {sum(c.correct for c in cases)} correct by construction\n")
    print("| family | cases | correct | thinkfast agrees | plain Math-Verify agrees |")
    print("|---|---|---|---|---|")
    for name in sorted(fam, key=lambda k: (k == "all", k)):
        n, pos, a, b = fam[name]
        print(f"| {name} | {n} | {pos} | {a / n:.1%} ({n - a} off) | {b / n:.1%} ({n - b} off) |")
    if args.show_disagreements:
        for c, o, p in zip(cases, ours, plain):
            if o != c.correct or p != c.correct:
                print(f"\n[{c.family}] label={c.correct} thinkfast={o} plain={p} gold={c.gold!r}\n  {c.completion[-160:]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
