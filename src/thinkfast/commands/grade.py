"""``thinkfast grade``: add ``pred``, ``correct``, ``grade_timeout`` and ``grade_error`` to rows."""

from __future__ import annotations

import argparse
import os
import sys

from ..runtime import UserError
from .args import add_shard_arguments, output_file, positive_float, positive_int, shard_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="JSONL rows with 'gold' (the dataset's gold field) and 'completion'")
    parser.add_argument("--task", default=None, help="gsm8k, math500, synthetic (default: the rows' 'task')")
    parser.add_argument("--out", default=None, type=output_file, help="output JSONL (default: rewrite the input atomically)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="grading worker processes (default: one per core, shared among torchrun's ranks)")
    parser.add_argument("--timeout", type=positive_float, default=5.0,
                        help="CPU seconds per completion before it counts as incorrect (default 5)")
    add_shard_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.grading import grade_file
    from ..eval.shards import carry_manifest, default_workers

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    spec = shard_spec(args, log)
    workers = args.workers or default_workers()
    if spec is None:
        out = args.out or args.input
        s = grade_file(args.input, args.out, args.task, workers, args.timeout, log=log)
        carry_manifest(args.input, out)
    else:
        out, s = _grade_shard(args, spec, workers, log)
    print(f"{s.rows} rows: accuracy {s.accuracy:.4f} ({s.correct}/{s.rows}); {s.no_answer} without an "
          f"answer; {s.timeouts} grading timeouts; {s.errors} grading errors -> {out}", file=sys.stderr)
    return 0


def _grade_shard(args: argparse.Namespace, spec, workers: int, log):
    """Grade the rows of this shard's problems of ``args.input`` into their own file."""
    from ..eval.grading import GradeSummary, grade_file, progress_path, summarize
    from ..eval.io import iter_jsonl, read_jsonl, write_jsonl_atomic
    from ..eval.shards import claim_output, file_digest, make_manifest, output_for, problem_groups

    if args.out is None and not spec.auto:
        raise UserError("--shard I needs --out (each shard writes its own file)")
    out = output_for(args.out or args.input, spec)
    if os.path.abspath(out) == os.path.abspath(args.input):
        raise UserError(f"--out {out} is the input; a shard writes its own file")
    numbered = list(iter_jsonl(args.input))
    rows = [r for _, r in numbered]
    if not rows:
        raise UserError(f"{args.input}: no rows to grade (the file is empty)")
    task = args.task or rows[0].get("task")
    if not task:
        raise UserError(f"{args.input}: rows name no task; pass --task")
    groups = problem_groups(args.input)
    mine = [i for p in spec.positions(len(groups)) for i in groups[p][1]]
    for i in mine:  # checked here, so the error names the input's own line
        lineno, row = numbered[i]
        for key in ("gold", "completion"):
            if row.get(key) is None and not (key == "completion" and key in row):
                raise UserError(f"{args.input}:{lineno}: row has no {key!r} field")
    identity = {"input_sha256": file_digest(args.input), "task": task, "timeout": args.timeout}
    claim_output(out, make_manifest("grade", spec, identity, [(pid, len(ix)) for pid, ix in groups]))
    log(f"{spec}: {len(mine)} of {len(rows)} rows ({len(spec.positions(len(groups)))} of {len(groups)} problems) "
        f"-> {out}")
    if not mine:
        write_jsonl_atomic(out, [])
        return out, GradeSummary(0, 0, 0, 0, 0)
    if os.path.exists(out) and not os.path.exists(progress_path(out)):  # finished by an earlier run?
        done = read_jsonl(out)
        if [(r.get("problem_id"), r.get("completion")) for r in done] == \
                [(rows[i].get("problem_id"), rows[i].get("completion")) for i in mine] and \
                all("correct" in r for r in done):
            log(f"{out}: already graded")
            return out, summarize(done)
    # The shard's rows go to a file of their own beside the output; grade_file grades it into
    # ``out`` resumably (its progress file is keyed on ``out``) and the file is removed after.
    part = f"{out}.input.jsonl"
    write_jsonl_atomic(part, [rows[i] for i in mine])
    s = grade_file(part, out, task, workers, args.timeout, log=log)
    os.unlink(part)
    return out, s
