"""``thinkfast report``: Markdown + PNG plots from metrics JSON files."""

from __future__ import annotations

import argparse
import sys

from ..runtime import UserError
from .args import existing_file, output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metrics", nargs="+", type=existing_file, help="metrics JSON files written by `thinkfast evaluate`")
    parser.add_argument("--out", required=True, type=output_dir, help="directory for report.md and the PNGs")


def run(args: argparse.Namespace) -> int:
    from ..eval.io import read_json
    from ..eval.report import write_report

    docs = [read_json(p) for p in args.metrics]
    for p, d in zip(args.metrics, docs):
        if not isinstance(d, dict) or not isinstance(d.get("runs"), list):
            raise UserError(f"{p}: not a metrics file from `thinkfast evaluate` (no 'runs' list)")
    path = write_report(docs, args.out)
    print(f"wrote {path}", file=sys.stderr)
    return 0
