"""Choose the demo ORM's training on VALIDATION samples: train it on graded teacher samples of
train problems (as the demo's orm stage does), then score the teacher's samples of validation
problems and report Best-of-n against majority and coverage there.

    OMP_NUM_THREADS=1 python benchmarks/orm_design.py OUT --teacher demo_out/teacher/model \\
        --train demo_out/orm/teacher_train_samples.jsonl --val runs/val/seed3/samples_T0.8.jsonl \\
        --problems 100 --epochs 20 --lr 3e-3 [--train-backbone]

``--val`` is a samples file of validation problems (``benchmarks/teacher_coverage.py`` writes
one); nothing here reads test problems. Writes OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from thinkfast.eval.grading import grade_rows
from thinkfast.eval.io import read_jsonl
from thinkfast.eval.rewards import OutcomeRewardModel, TrainRMConfig, balanced_examples, load_backbone, train_orm
from thinkfast.eval.tasks.base import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--train", required=True, help="graded or ungraded teacher samples of train problems")
    ap.add_argument("--val", required=True, help="teacher samples of validation problems")
    ap.add_argument("--problems", type=int, default=100, help="validation problems scored (the first ones)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-backbone", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task("synthetic")

    rows = grade_rows(task, read_jsonl(args.train), args.train)
    cfg = TrainRMConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                        train_backbone=args.train_backbone)
    data = balanced_examples(rows, cfg.seed)
    backbone, tok = load_backbone(args.teacher, "thinkfast")
    orm = OutcomeRewardModel(backbone, tok, max_len=backbone.config.max_seq_len, backbone_path=args.teacher)
    t0 = time.perf_counter()
    losses = train_orm(orm, data, cfg, log=print)
    train_s = time.perf_counter() - t0

    val = grade_rows(task, read_jsonl(args.val), args.val)
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in val:
        by_problem[r["problem_id"]].append(r)
    pids = list(by_problem)[: args.problems]
    chosen = [r for p in pids for r in by_problem[p]]
    t0 = time.perf_counter()
    scores = orm.score([r["question"] for r in chosen], [r["completion"] for r in chosen], batch_size=32)
    score_s = time.perf_counter() - t0
    for r, s in zip(chosen, scores):
        r["reward"] = s

    bon = maj = cov = 0
    pos_scores, neg_scores = [], []
    for p in pids:
        rs = by_problem[p]
        bon += bool(max(rs, key=lambda r: r["reward"])["correct"])
        votes = Counter(r["pred"] for r in rs if r["pred"] is not None)
        if votes:
            top = votes.most_common(1)[0][0]
            maj += any(r["correct"] for r in rs if r["pred"] == top)
        cov += any(r["correct"] for r in rs)
        pos_scores += [r["reward"] for r in rs if r["correct"]]
        neg_scores += [r["reward"] for r in rs if not r["correct"]]
    # AUC: P(a correct sample outscores an incorrect one), over all pairs (ties count half)
    pos, neg = torch.tensor(pos_scores), torch.tensor(neg_scores)
    auc = float(((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean()) \
        if len(pos) and len(neg) else None
    n = len(pids)
    result = {"train": args.train, "val": args.val, "problems": n, "samples_per_problem": len(chosen) / n,
              "epochs": args.epochs, "lr": args.lr, "train_backbone": args.train_backbone,
              "examples": len(data), "loss": losses, "train_s": train_s, "score_s": score_s,
              "best_of_n": bon / n, "majority": maj / n, "coverage": cov / n, "auc": auc}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "loss"}, indent=1))


if __name__ == "__main__":
    main()
