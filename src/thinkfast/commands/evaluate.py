"""``thinkfast evaluate``: coverage, majority, Best-of-N, budgets and Pareto fronts to one JSON."""

from __future__ import annotations

import argparse
import sys

from ..eval.evaluation import EvalSettings
from .args import add_dataclass_arguments, dataclass_from_args, existing_file, non_negative_int, output_file, positive_int

SETTINGS = ["reward_key", "n_boot", "max_subsets", "seed"]
"""The ``EvalSettings`` fields that are flags."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=existing_file, help="samples JSONL files (graded or not; one per model)")
    parser.add_argument("--out", required=True, type=output_file, help="metrics JSON to write (atomically)")
    parser.add_argument("--task", default=None, help="task of every run (default: the rows' 'task')")
    add_dataclass_arguments(parser, EvalSettings, SETTINGS,
                            types={"n_boot": positive_int, "max_subsets": positive_int, "seed": non_negative_int},
                            help={"reward_key": "row field holding the reward", "seed": "seed of the resampling"})


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluation import evaluate_files
    from ..eval.io import write_json_atomic

    settings = dataclass_from_args(EvalSettings, args, SETTINGS)
    result = evaluate_files(args.runs, args.task, settings, log=lambda s: print(s, file=sys.stderr))
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
