"""Has a demo model learned the look-up of sentence k in the question? Teacher-forced, per marker.

The probe is ``thinkfast.demo.lookup`` (the demo's greedy stage records it for every model). It
reads in seconds, so a distillation run can be judged at any checkpoint, long before its greedy
accuracy:

    python benchmarks/lookup_probe.py MODEL [MODEL ...] --data demo_out/data/test.jsonl

For each model it prints the share of right names after each marker (Second, Third, ...) and, of
the wrong ones, how many name a person of another sentence of the same question (a look-up that
found the wrong line) and how many name nobody in it (no look-up at all); then, per digit place,
the share of right digits of the number each restated sentence copies from the question.
``--json`` writes both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from thinkfast.checkpoint import load_model, load_tokenizer
from thinkfast.demo.lookup import lookup_probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="synthetic problems (JSONL, e.g. the demo's test.jsonl)")
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with open(args.data) as f:
        rows = [json.loads(line) for line in f if line.strip()][: args.problems]
    result = {}
    for path in args.models:
        probe, operands = lookup_probes(load_model(path).eval(), load_tokenizer(path),
                                        [(r["question"], r["answer"]) for r in rows])
        result[str(path)] = {"names": probe, "operands": operands}
        cells = "  ".join(f"{m} {v['right']}/{v['total']}" for m, v in probe.items())
        wrong_other = sum(v["other_sentence"] for v in probe.values())
        wrong_nobody = sum(v["nobody"] for v in probe.values())
        ops = "  ".join(f"{k} {v['right']}/{v['total']}" for k, v in operands.items())
        print(f"{path}: {cells}  (wrong: {wrong_other} another sentence's name, {wrong_nobody} nobody's)"
              f"  | operands: {ops}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
