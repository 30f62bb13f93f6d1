"""Has a demo model learned the look-up of sentence k in the question? Teacher-forced, per marker.

Each line of a synthetic chain of thought restates sentence k of the question: "Third Vic has 28
more apples than Tom." The name after the marker ("Third") can only come from the question, so
whether the model predicts it, with the reference chain fed in, is a direct probe of the look-up,
the step a small model learns last (docs/demo-study.md). It reads in seconds, so a distillation
run can be judged at any checkpoint, long before its greedy accuracy:

    python benchmarks/lookup_probe.py MODEL [MODEL ...] --data demo_out/data/test.jsonl

For each model it prints the share of right names after each marker (Second, Third, ...) and, of
the wrong ones, how many name a person of another sentence of the same question (a look-up that
found the wrong line) and how many name nobody in it (no look-up at all). ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from thinkfast.checkpoint import load_model, load_tokenizer

MARKERS = ("Second", "Third", "Fourth", "Fifth", "Sixth")
"""The markers probed: "First" is left out, its name is the question's first word after the prompt."""


@torch.inference_mode()
def lookup_probe(model, tok, rows: list[dict]) -> dict:
    """{marker: {"right", "total", "other_sentence", "nobody"}} over ``rows`` (synthetic problems
    with ``question``, ``answer`` and ``steps``), teacher-forced in the training layout."""
    out = {m: {"right": 0, "total": 0, "other_sentence": 0, "nobody": 0} for m in MARKERS}
    for r in rows:
        p = tok("Question: " + r["question"] + "\nAnswer:", add_special_tokens=False)["input_ids"]
        a = tok(" " + r["answer"] + "\n\n", add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([p + a])).logits[0]  # (T, V)
        pred = logits[len(p) - 1:-1].argmax(-1).tolist()  # pred[i] predicts a[i]
        names = [s["name"] for s in r["steps"]]
        for i in range(len(a) - 1):
            marker = tok.decode([a[i]]).strip()
            if marker not in out:
                continue
            cell = out[marker]
            cell["total"] += 1
            if pred[i + 1] == a[i + 1]:
                cell["right"] += 1
            elif tok.decode([pred[i + 1]]).strip() in names:
                cell["other_sentence"] += 1
            else:
                cell["nobody"] += 1
    return {m: v for m, v in out.items() if v["total"]}


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
        probe = lookup_probe(load_model(path).eval(), load_tokenizer(path), rows)
        result[str(path)] = probe
        cells = "  ".join(f"{m} {v['right']}/{v['total']}" for m, v in probe.items())
        wrong_other = sum(v["other_sentence"] for v in probe.values())
        wrong_nobody = sum(v["nobody"] for v in probe.values())
        print(f"{path}: {cells}  (wrong: {wrong_other} another sentence's name, {wrong_nobody} nobody's)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
