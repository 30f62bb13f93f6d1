"""``thinkfast distill --config RECIPE.yaml [key.sub=value ...]``: pretraining, SFT, MOHAWK and KD.

Runs the same way alone and under ``torchrun --nproc_per_node N -m thinkfast.cli distill ...``.
"""

from __future__ import annotations

import argparse

from .args import add_threads, existing_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=existing_file, help="a recipe YAML (see configs/distill/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides, e.g. teacher=runs/teacher/model train.steps=200 stages.kd.train.lr=1e-4")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from ..distill.config import config_to_yaml, load_config

    cfg = load_config(args.config, args.overrides)  # a bad recipe is a ConfigError, a UserError
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from ..distill.recipe import run_recipe

    summary = run_recipe(cfg)
    if summary.get("interrupted"):
        print("stopped early (train.stop_after); run the same command again to resume")
        return 0
    for r in summary["stages"]:
        eval_loss = "-" if r["eval_loss"] is None else f"{r['eval_loss']:.4f}"
        print(f"{r['stage']:>12}: {r['steps']} steps, {r['tokens']} tokens, {r['wall_s']:.1f} s, "
              f"final loss {r['final_loss']:.4f}, eval loss {eval_loss}")
    print(f"student: {summary['model_dir']}")
    return 0
