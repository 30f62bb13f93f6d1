"""``thinkfast grade``: add ``pred``, ``correct``, ``grade_timeout`` and ``grade_error`` to rows."""

from __future__ import annotations

import argparse
import sys

from .args import output_file, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="JSONL rows with 'gold' (the dataset's gold field) and 'completion'")
    parser.add_argument("--task", default=None, help="gsm8k, math500, synthetic (default: the rows' 'task')")
    parser.add_argument("--out", default=None, type=output_file, help="output JSONL (default: rewrite the input atomically)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="grading worker processes (default: one per core)")
    parser.add_argument("--timeout", type=positive_float, default=5.0,
                        help="CPU seconds per completion before it counts as incorrect (default 5)")


def run(args: argparse.Namespace) -> int:
    from ..eval.grading import grade_file

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    s = grade_file(args.input, args.out, args.task, args.workers, args.timeout, log=log)
    print(f"{s.rows} rows: accuracy {s.accuracy:.4f} ({s.correct}/{s.rows}); {s.no_answer} without an "
          f"answer; {s.timeouts} grading timeouts; {s.errors} grading errors -> {args.out or args.input}",
          file=sys.stderr)
    return 0
