"""``thinkfast train-rm``: train an outcome reward model on graded samples (balanced classes)."""

from __future__ import annotations

import argparse
import sys

from ..runtime import UserError
from .args import add_threads, existing_file, non_negative_int, output_dir, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=existing_file, help="graded samples JSONL (rows: question, completion, correct)")
    parser.add_argument("--backbone", required=True, help="thinkfast model dir or HF model")
    parser.add_argument("--backbone-kind", choices=("thinkfast", "hf"), default="thinkfast")
    parser.add_argument("--out", required=True, type=output_dir, help="ORM directory to write (atomically)")
    parser.add_argument("--epochs", type=positive_int, default=2)
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-len", type=positive_int, default=2048, help="tokens kept per example (the end)")
    parser.add_argument("--max-per-class", type=positive_int, default=None)
    parser.add_argument("--train-backbone", action="store_true", help="fine-tune the backbone too (slow)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--device", default="cpu")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.io import read_jsonl
    from ..eval.rewards import OutcomeRewardModel, TrainRMConfig, balanced_examples, load_backbone, train_orm

    rows = []
    for path in args.inputs:
        for i, r in enumerate(read_jsonl(path), start=1):
            if "correct" not in r or not isinstance(r.get("question"), str) or not isinstance(r.get("completion"), str):
                raise UserError(f"{path}: row {i} needs 'question', 'completion' and 'correct' "
                                "(grade the samples first with `thinkfast grade`)")
            rows.append(r)
    cfg = TrainRMConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                        train_backbone=args.train_backbone, max_per_class=args.max_per_class)
    data = balanced_examples(rows, cfg.seed, cfg.max_per_class)
    backbone, tok = load_backbone(args.backbone, args.backbone_kind, args.device)
    orm = OutcomeRewardModel(backbone, tok, max_len=args.max_len, backbone_path=str(args.backbone)).to(args.device)
    print(f"training on {len(data)} examples ({len(data) // 2} per class)", file=sys.stderr)
    train_orm(orm, data, cfg, log=lambda s: print(s, file=sys.stderr))
    orm.save(args.out, save_backbone=cfg.train_backbone)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
