"""``thinkfast train-rm``: train an outcome reward model on graded samples (balanced classes)."""

from __future__ import annotations

import argparse
import sys

from ..eval.rewards import TrainRMConfig
from .args import (add_dataclass_arguments, add_threads, dataclass_from_args, existing_file, non_negative_int,
                   output_dir, positive_float, positive_int)

SETTINGS = ["epochs", "lr", "batch_size", "max_per_class", "train_backbone", "seed"]
"""The ``TrainRMConfig`` fields that are flags."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=existing_file, help="graded samples JSONL (rows: question, completion, correct)")
    parser.add_argument("--backbone", required=True, help="thinkfast model dir or HF model")
    parser.add_argument("--backbone-kind", choices=("thinkfast", "hf"), default="thinkfast")
    parser.add_argument("--out", required=True, type=output_dir, help="ORM directory to write (atomically)")
    add_dataclass_arguments(parser, TrainRMConfig, SETTINGS[:3],
                            types={"epochs": positive_int, "lr": positive_float, "batch_size": positive_int})
    parser.add_argument("--max-len", type=positive_int, default=2048, help="tokens kept per example (the end)")
    add_dataclass_arguments(parser, TrainRMConfig, SETTINGS[3:],
                            types={"max_per_class": positive_int, "seed": non_negative_int},
                            help={"seed": "seed of the class balancing, the data order and the head's init"})
    parser.add_argument("--device", default="cpu")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.io import read_graded_rows
    from ..eval.rewards import OutcomeRewardModel, balanced_examples, load_backbone, train_orm

    rows = read_graded_rows(args.inputs)
    cfg = dataclass_from_args(TrainRMConfig, args, SETTINGS)
    data = balanced_examples(rows, cfg.seed, cfg.max_per_class)
    backbone, tok = load_backbone(args.backbone, args.backbone_kind, args.device)
    orm = OutcomeRewardModel(backbone, tok, max_len=args.max_len, backbone_path=str(args.backbone)).to(args.device)
    print(f"training on {len(data)} examples ({len(data) // 2} per class)", file=sys.stderr)
    train_orm(orm, data, cfg, log=lambda s: print(s, file=sys.stderr))
    orm.save(args.out, save_backbone=cfg.train_backbone)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
