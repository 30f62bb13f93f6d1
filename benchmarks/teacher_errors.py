"""Where a demo teacher's chain of thought goes wrong, teacher-forced.

For the first ``--problems`` test problems, feeds ``Question: q\\nAnswer: cot\\n\\n`` (the training
layout) and reports the response-token accuracy, the chains with no error, and the commonest
contexts (the three tokens before) of a wrong argmax prediction -- e.g. ``'/Third,' 40`` says the
name after the marker "Third," was wrong in 40 chains: the look-up of sentence 3 in the question.

    python benchmarks/teacher_errors.py --model demo_out/teacher/model --data demo_out/data/test.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from thinkfast.checkpoint import load_model, load_tokenizer
from thinkfast.demo.lookup import teacher_forced


def answer_predictions(model, tok, row: dict) -> tuple[list[int], torch.Tensor]:
    """The chain's token ids (the training layout's response) and the model's argmax prediction
    of each, with the question and the chain before it fed in (teacher forcing)."""
    a, pred = teacher_forced(model, tok, row["question"], row["answer"])
    return a, torch.tensor(pred)  # (len(a),)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="JSONL with question / answer")
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    model, tok = load_model(args.model).eval(), load_tokenizer(args.model)
    with open(args.data) as f:
        rows = [json.loads(line) for line in f if line.strip()][: args.problems]
    errors: collections.Counter[str] = collections.Counter()
    total = wrong_total = perfect = 0
    for r in rows:
        a, pred = answer_predictions(model, tok, r)
        wrong = (pred != torch.tensor(a)).nonzero().flatten().tolist()
        total, wrong_total, perfect = total + len(a), wrong_total + len(wrong), perfect + (not wrong)
        for w in wrong:
            errors[tok.decode(a[max(0, w - 3):w]).replace("\n", "/")] += 1
    print(f"response-token accuracy {1 - wrong_total / total:.4f}; chains with no error {perfect}/{len(rows)}")
    for ctx, n in errors.most_common(args.top):
        print(f"{n:5d}  after {ctx!r}")


if __name__ == "__main__":
    main()
