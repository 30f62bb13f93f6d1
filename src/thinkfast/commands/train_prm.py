"""``thinkfast train-prm``: train a process reward model on graded samples, its step labels made
by Monte-Carlo rollouts of the policy (Math-Shepherd; no human labels)."""

from __future__ import annotations

import argparse
import json
import sys

from ..eval.prm import PRM_AGGREGATIONS, PRMRecipe, TrainPRMConfig
from ..eval.rewards import STEP_SPLITS
from ..runtime import UserError
from .args import (add_dataclass_arguments, add_threads, dataclass_from_args, existing_file, non_negative_int,
                   output_dir, positive_float, positive_int)

TRAIN = ["epochs", "lr", "batch_size", "train_backbone", "label", "seed"]
"""The ``TrainPRMConfig`` fields that are flags."""
RECIPE = ["problems", "samples_per_problem", "rollouts", "temperature", "max_new_tokens", "batch_rows", "add_bos"]
"""The ``PRMRecipe`` fields that are flags (split, aggregate and prompt style have their own)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=existing_file,
                        help="graded samples JSONL of TRAIN problems (rows: problem_id, question, gold, answer, "
                             "completion, correct)")
    parser.add_argument("--policy", required=True,
                        help="thinkfast model dir that wrote the samples: it rolls out the steps and is the backbone")
    parser.add_argument("--task", default="demo",
                        help="demo (the demo's synthetic task, default), synthetic, gsm8k or math500")
    parser.add_argument("--out", required=True, type=output_dir, help="PRM directory to write (atomically)")
    parser.add_argument("--split", choices=STEP_SPLITS, default="line",
                        help="what a step is: line (the synthetic task), blank (paragraphs) or sentence")
    parser.add_argument("--aggregate", choices=PRM_AGGREGATIONS, default="min",
                        help="the saved chain score: min or last step (thinkfast score --aggregate overrides it)")
    parser.add_argument("--prompt-style", default="fewshot", help="the style the samples were prompted with")
    add_dataclass_arguments(parser, PRMRecipe, RECIPE,
                            types={"problems": positive_int, "samples_per_problem": positive_int,
                                   "rollouts": positive_int, "temperature": positive_float,
                                   "max_new_tokens": positive_int, "batch_rows": positive_int})
    add_dataclass_arguments(parser, TrainPRMConfig, TRAIN,
                            types={"epochs": positive_int, "lr": positive_float, "batch_size": positive_int,
                                   "seed": non_negative_int},
                            help={"epochs": "passes over the labelled steps", "lr": "AdamW learning rate",
                                  "seed": "seed of the rollouts, the data order and the head's init"})
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.io import read_graded_rows
    from ..eval.prm import train_prm_from_samples

    if args.label not in ("soft", "hard"):
        raise UserError("--label must be soft or hard")
    if args.task == "demo":
        from ..demo import demo_task

        task = demo_task()
    else:
        from ..eval.tasks.base import task_by_name

        task = task_by_name(args.task)
    rows = read_graded_rows(args.inputs)
    train = dataclass_from_args(TrainPRMConfig, args, TRAIN)
    recipe = dataclass_from_args(PRMRecipe, args, RECIPE, split=args.split, aggregate=args.aggregate,
                                 prompt_style=args.prompt_style, seed=args.seed, train=train)
    summary = train_prm_from_samples(args.policy, task, rows, args.out, recipe,
                                     log=lambda s: print(s, file=sys.stderr))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("loss", "recipe")}))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
