"""``thinkfast evaluate``: coverage, majority, Best-of-N, budgets and Pareto fronts to one JSON."""

from __future__ import annotations

import argparse
import sys

from .args import existing_file, non_negative_int, output_file, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=existing_file, help="samples JSONL files (graded or not; one per model)")
    parser.add_argument("--out", required=True, type=output_file, help="metrics JSON to write (atomically)")
    parser.add_argument("--task", default=None, help="task of every run (default: the rows' 'task')")
    parser.add_argument("--reward-key", default="reward", help="row field holding the reward (default reward)")
    parser.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--max-subsets", type=positive_int, default=256,
                        help="k-subsets per problem for voting metrics (all when fewer; default 256)")
    parser.add_argument("--seed", type=non_negative_int, default=0)


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluation import EvalSettings, evaluate_files
    from ..eval.io import write_json_atomic

    settings = EvalSettings(n_boot=args.n_boot, max_subsets=args.max_subsets, seed=args.seed,
                            reward_key=args.reward_key)
    result = evaluate_files(args.runs, args.task, settings, log=lambda s: print(s, file=sys.stderr))
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
