"""``thinkfast grade``: add ``pred``, ``correct`` and ``grade_timeout`` to samples rows."""

from __future__ import annotations

import argparse
import sys

from ..runtime import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="JSONL rows with 'gold' (the dataset's gold field) and 'completion'")
    parser.add_argument("--task", default=None, help="gsm8k, math500, synthetic (default: the rows' 'task')")
    parser.add_argument("--out", default=None, help="output JSONL (default: rewrite the input atomically)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per Math-Verify check (default 5)")


def run(args: argparse.Namespace) -> int:
    from ..eval.grading import configure_default_grader, grade_rows, summarize
    from ..eval.io import read_jsonl, write_jsonl_atomic
    from ..eval.tasks.common import task_by_name

    rows = read_jsonl(args.input)
    name = args.task or (rows[0].get("task") if rows else None)
    if not name:
        raise UserError(f"{args.input}: rows name no task; pass --task")
    configure_default_grader(timeout_s=args.timeout)
    graded = grade_rows(task_by_name(name), rows, source=args.input)
    write_jsonl_atomic(args.out or args.input, graded)
    s = summarize(graded)
    print(f"{s.rows} rows: accuracy {s.accuracy:.4f} ({s.correct}/{s.rows}); {s.no_answer} without an "
          f"answer; {s.timeouts} grading timeouts; {s.errors} grading errors -> {args.out or args.input}",
          file=sys.stderr)
    return 0
