"""``thinkfast demo``: the whole study on one CPU (``thinkfast.demo.run_demo``; docs/demo-study.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_threads, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output directory, created if missing; it must be empty or hold "
                   "an earlier demo run (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline in minutes; "
                   "its numbers are meaningless")
    p.add_argument("--force", action="store_true",
                   help="redo every stage (and accept a different configuration): removes the demo's own "
                        "files from --out and keeps anything else there")
    p.add_argument("--retrain-teacher", action="store_true",
                   help="train the teacher with thinkfast's own recipe instead of loading the shipped one")
    add_threads(p, default=1,
                help="PyTorch threads (default 1: at the demo's model size one thread distils faster than "
                     "two, see docs/demo-study.md)")
    from ..demo.config import PRECISIONS, VERIFIERS

    p.add_argument("--verifier", choices=VERIFIERS, default=None,
                   help="the verifier whose scores Best-of-N and weighted Best-of-N use: prm (the default, "
                        "validation's pick), a process reward model whose step labels come from teacher "
                        "rollouts, scored by its last step, or orm, an outcome reward model on the frozen "
                        "teacher (docs/verifiers.md)")
    p.add_argument("--train-precision", choices=PRECISIONS, default=None,
                   help="the students' training precision: auto (the default) trains in bf16 mixed precision "
                        "on a CPU with native bf16 (AVX-512 BF16 or AMX), about twice as fast, and in fp32 "
                        "elsewhere")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="processes for the stages that time nothing (the students, the ORM, scoring), run "
                        "side by side (default: one per core, each with --threads threads, at most 2; 1 runs "
                        "every stage one after another)")


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    out = Path(args.out)
    results = run_demo(out, quick=args.quick, force=args.force, retrain_teacher=args.retrain_teacher,
                       jobs=args.jobs, verifier=args.verifier, train_precision=args.train_precision)
    if args.quick:
        print("--quick: tiny budgets, the numbers below are meaningless")
    for name, run in results["runs"].items():
        print(f"{name:8s} greedy {results['greedy'][name]['accuracy']:.3f}  coverage@1 {run['metrics']['coverage'][0]['mean']:.3f}  "
              f"coverage@{run['n']} {run['metrics']['coverage'][-1]['mean']:.3f}  "
              f"majority@{run['n']} {run['metrics']['majority'][-1]['mean']:.3f}")
    print(f"report: {out / 'report.md'}\nresults: {out / 'results.json'}")
    return 0
