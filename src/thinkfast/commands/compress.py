"""``thinkfast compress --config configs/compress/RECIPE.yaml [key.sub=value ...]``: a narrower
student from a frozen teacher through trained width projections (RED / Low-Rank Clone)."""

from __future__ import annotations

import argparse

from .args import add_threads, existing_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=existing_file, help="a compress recipe YAML (see configs/compress/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides, e.g. teacher=runs/teacher/model d_s=64 init=gaussian train.steps=200")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..compress.config import load_config

    cfg = load_config(args.config, args.overrides)  # a bad recipe is a ConfigError, a UserError
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from ..compress.recipe import run_compress

    r = run_compress(cfg)
    if r.get("interrupted"):
        print("stopped early (train.stop_after); run the same command again to resume")
        return 0
    eval_loss = "-" if r.get("eval_loss") is None else f"{r['eval_loss']:.4f}"
    print(f"compress ({r['init']}, d_s={r['d_s']} of {r['teacher_d_model']}): {r['steps']} steps, "
          f"{r['tokens']} tokens, {r['wall_s']:.1f} s, final loss {r['final_loss']:.4f}, eval loss {eval_loss}")
    print(f"student: {r['model_dir']}")
    return 0
