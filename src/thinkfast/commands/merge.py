"""``thinkfast merge``: put the shard files of a sharded sample / grade / score run back together."""

from __future__ import annotations

import argparse
import sys

from .args import output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", metavar="SHARD_FILE",
                        help="every shard file of one run (each has its FILE.shard.json manifest beside it)")
    parser.add_argument("--out", required=True, type=output_file,
                        help="merged JSONL: the rows in the unsharded run's order (written atomically)")


def run(args: argparse.Namespace) -> int:
    from ..eval.shards import merge_shards

    merge_shards(args.shards, args.out, log=lambda m: print(m, file=sys.stderr))
    return 0
