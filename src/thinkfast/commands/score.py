"""``thinkfast score``: add reward-model scores to a samples file."""

from __future__ import annotations

import argparse
import sys

from ..runtime import UserError
from .args import add_threads, existing_file, output_file, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=existing_file, help="samples JSONL (rows need 'question' and 'completion')")
    parser.add_argument("--rm", required=True, help="ORM directory (thinkfast train-rm) or a causal LM used as a PRM")
    parser.add_argument("--kind", choices=("auto", "orm", "prm"), default="auto",
                        help="auto = orm when the directory has orm.json, else prm")
    parser.add_argument("--aggregate", choices=("last", "min", "mean", "prod"), default="min",
                        help="PRM step-score aggregation (default min)")
    parser.add_argument("--backbone-kind", choices=("thinkfast", "hf"), default="thinkfast",
                        help="how a PRM is loaded: thinkfast (its dirs and HF Llamas) or any HF causal LM")
    parser.add_argument("--key", default="reward", help="row field to write (default reward)")
    parser.add_argument("--out", type=output_file, default=None, help="output JSONL (default: rewrite the input atomically)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--device", default="cpu")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.io import read_jsonl, write_jsonl_atomic
    from ..eval.rewards import load_scorer, score_rows

    rows = read_jsonl(args.input)
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("completion"), str):
            raise UserError(f"{args.input}: row {i} needs string 'question' and 'completion' fields")
    scorer = load_scorer(args.rm, args.kind, args.aggregate, args.device, args.backbone_kind)
    out, failed = score_rows(scorer, rows, args.key, args.batch_size, log=lambda m: print(m, file=sys.stderr))
    write_jsonl_atomic(args.out or args.input, out)
    if failed:
        print(f"{failed} rows could not be scored (reward 0, see '{args.key}_error')", file=sys.stderr)
    return 0
