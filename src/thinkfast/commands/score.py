"""``thinkfast score``: add reward-model scores to a samples file."""

from __future__ import annotations

import argparse
import os
import sys

from ..runtime import UserError
from .args import add_shard_arguments, add_threads, existing_file, output_file, positive_int, shard_spec

GPU_BATCH, CPU_BATCH = 32, 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=existing_file, help="samples JSONL (rows need 'question' and 'completion')")
    parser.add_argument("--rm", required=True, help="ORM directory (thinkfast train-rm), PRM directory "
                        "(thinkfast train-prm) or a causal LM used as an RLHFlow-style PRM")
    parser.add_argument("--kind", choices=("auto", "orm", "thinkfast-prm", "prm"), default="auto",
                        help="auto = orm when the directory has orm.json, thinkfast-prm when it has prm.json, "
                             "else prm")
    parser.add_argument("--aggregate", choices=("last", "min", "mean", "prod"), default="min",
                        help="PRM step-score aggregation (default min; a thinkfast PRM takes min or last)")
    parser.add_argument("--backbone-kind", choices=("thinkfast", "hf"), default="thinkfast",
                        help="how a PRM is loaded: thinkfast (its dirs and HF Llamas) or any HF causal LM")
    parser.add_argument("--key", default="reward", help="row field to write (default reward)")
    parser.add_argument("--out", type=output_file, default=None, help="output JSONL (default: rewrite the input atomically)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help=f"ORM rows per forward pass, never mixing problems (default {GPU_BATCH} on a GPU, "
                             f"{CPU_BATCH} on the CPU)")
    parser.add_argument("--device", default="auto",
                        help="auto (default): cuda when available (under torchrun each rank its own GPU), else cpu")
    add_shard_arguments(parser)
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.io import iter_jsonl, write_jsonl_atomic
    from ..eval.rewards import load_scorer, score_rows
    from ..eval.shards import (carry_manifest, claim_output, file_digest, make_manifest, output_for, problem_groups,
                               rank_device)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    spec = shard_spec(args, log)
    numbered = list(iter_jsonl(args.input))
    rows = [r for _, r in numbered]
    if spec is None:
        out = args.out or args.input
        mine = list(range(len(rows)))
    else:
        if args.out is None and not spec.auto:
            raise UserError("--shard I needs --out (each shard writes its own file)")
        out = output_for(args.out or args.input, spec)
        if os.path.abspath(out) == os.path.abspath(args.input):
            raise UserError(f"--out {out} is the input; a shard writes its own file")
        groups = problem_groups(args.input)
        mine = [i for p in spec.positions(len(groups)) for i in groups[p][1]]
    for i in mine:
        lineno, r = numbered[i]
        if not isinstance(r.get("question"), str) or not isinstance(r.get("completion"), str):
            raise UserError(f"{args.input}:{lineno}: row needs string 'question' and 'completion' fields")
    if spec is not None:
        identity = {"input_sha256": file_digest(args.input), "rm": str(args.rm), "kind": args.kind,
                    "aggregate": args.aggregate, "backbone_kind": args.backbone_kind, "key": args.key}
        claim_output(out, make_manifest("score", spec, identity, [(pid, len(ix)) for pid, ix in groups]))
        log(f"{spec}: {len(mine)} of {len(rows)} rows -> {out}")
    device = rank_device(args.device)
    batch = args.batch_size or (GPU_BATCH if device.startswith("cuda") else CPU_BATCH)
    scorer = load_scorer(args.rm, args.kind, args.aggregate, device, args.backbone_kind)
    # A batch never holds two problems' rows: a row's reward then does not depend on which other
    # problems are in the file (nor on the padding they bring), so a sharded run scores as an
    # unsharded one does.
    scored, failed, every = [], 0, max(1, len(mine) // 20)
    for run_rows in _problem_runs([rows[i] for i in mine]):
        part, bad = score_rows(scorer, run_rows, args.key, batch)
        before, failed = len(scored), failed + bad
        scored += part
        if len(scored) // every > before // every or len(scored) == len(mine):
            log(f"{len(scored)}/{len(mine)} scored")
    write_jsonl_atomic(out, scored)
    if spec is None:
        carry_manifest(args.input, out)
    if failed:
        print(f"{failed} rows could not be scored (reward 0, see '{args.key}_error')", file=sys.stderr)
    return 0


def _problem_runs(rows):
    """Consecutive rows with the same ``problem_id`` (rows without one form runs of their own)."""
    run, last = [], object()
    for r in rows:
        pid = r.get("problem_id")
        if run and pid != last:
            yield run
            run = []
        run.append(r)
        last = pid
    if run:
        yield run
