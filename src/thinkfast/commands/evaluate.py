"""``thinkfast evaluate``: coverage, majority, Best-of-N, budgets and Pareto fronts to one JSON."""

from __future__ import annotations

import argparse
import sys

from ..eval.evaluation import EvalSettings
from .args import add_dataclass_arguments, comma_list, dataclass_from_args, existing_file, non_negative_int, \
    output_file, positive_int, _bounded, _float

confidence = _bounded(_float, "a number in [0.5, 1)", lambda v: 0.5 <= v < 1, "confidence")

SETTINGS = ["reward_key", "n_boot", "max_subsets", "seed"]
"""The ``EvalSettings`` fields that are flags."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=existing_file, help="samples JSONL files (graded or not; one per model)")
    parser.add_argument("--out", required=True, type=output_file, help="metrics JSON to write (atomically)")
    parser.add_argument("--task", default=None, help="task of every run (default: the rows' 'task')")
    add_dataclass_arguments(parser, EvalSettings, SETTINGS,
                            types={"n_boot": positive_int, "max_subsets": positive_int, "seed": non_negative_int},
                            help={"reward_key": "row field holding the reward", "seed": "seed of the resampling"})
    a = parser.add_argument_group("adaptive majority, simulated on each problem's samples, averaged over orderings "
                                  "of them (docs/adaptive-sampling.md)")
    a.add_argument("--adaptive", type=comma_list("esc", "beta", "none"), default=["esc", "beta"],
                   help="rules to simulate, as methods adaptive-esc / adaptive-beta (default: esc,beta; none: off)")
    a.add_argument("--adaptive-window", type=positive_int, default=8,
                   help="samples per round; a rule is checked after each round (default 8)")
    a.add_argument("--adaptive-threshold", type=confidence, default=0.95,
                   help="the beta rule's confidence that the leading answer beats the runner-up (default 0.95)")
    a.add_argument("--adaptive-max-n", type=positive_int, default=None,
                   help="at most this many samples per problem (default and cap: the file's n)")
    a.add_argument("--adaptive-orderings", type=positive_int, default=EvalSettings.adaptive_orderings,
                   help="orderings of each problem's samples the simulation averages over: the index order and "
                        f"seeded random permutations; 1: the index order alone (default {EvalSettings.adaptive_orderings})")


def adaptive_rules(args: argparse.Namespace) -> list:
    """The ``AdaptiveRule``s of ``--adaptive`` (max_n: a big cap, cut to each file's n)."""
    from ..eval.adaptive import AdaptiveRule

    names = [] if "none" in args.adaptive else list(dict.fromkeys(args.adaptive))
    return [AdaptiveRule(r, window=args.adaptive_window, max_n=args.adaptive_max_n or 1 << 30,
                         threshold=args.adaptive_threshold) for r in names]


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluation import evaluate_files
    from ..eval.io import write_json_atomic

    settings = dataclass_from_args(EvalSettings, args, SETTINGS, adaptive_orderings=args.adaptive_orderings)
    result = evaluate_files(args.runs, args.task, settings, log=lambda s: print(s, file=sys.stderr),
                            adaptive=adaptive_rules(args))
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
