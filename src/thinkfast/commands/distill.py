"""``thinkfast distill --config RECIPE.yaml [key.sub=value ...]``: pretraining, SFT, MOHAWK and KD.

Runs the same way alone and under ``torchrun --nproc_per_node N -m thinkfast.cli distill ...``.
``thinkfast distill --plan RECIPE.yaml [--devices N]`` prints what each stage needs (parameters,
tokens per step, per-device memory) without training or loading weights (``distill.plan``).
"""

from __future__ import annotations

import argparse
import json
import os

from .args import add_threads, existing_file, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=existing_file, help="a recipe YAML (see configs/distill/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides, e.g. teacher=runs/teacher/model train.steps=200 stages.kd.train.lr=1e-4")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--plan", type=existing_file, metavar="RECIPE",
                        help="print each stage's parameters, tokens per step and per-device memory, and exit "
                             "(nothing is trained, no weights are read)")
    parser.add_argument("--devices", type=positive_int, default=1,
                        help="--plan: processes (GPUs) the recipe will run on; train.distributed says how")
    parser.add_argument("--teacher-config", metavar="PRESET|FILE",
                        help="--plan: the teacher's shapes when the recipe's teacher directory does not exist "
                             "yet: a preset name (llama3.2-1b) or a config.json (thinkfast or Hugging Face)")
    parser.add_argument("--json", action="store_true", help="--plan: print the plan as JSON")
    add_threads(parser)


def _shapes(args, cfg):
    """(teacher ModelConfig or None, init-directory ModelConfig or None, where the shapes came from)."""
    from ..checkpoint import read_config
    from ..config import ModelConfig
    from ..data.jsonl import read_utf8
    from ..distill.plan import shapes_from_mapping
    from ..runtime import UserError

    teacher, source = None, ""
    if not cfg.teacher and cfg.student.init != "teacher":
        pass  # no teacher in this recipe (pretraining, SFT): --teacher-config does not apply
    elif args.teacher_config:
        spec = args.teacher_config
        if os.path.isfile(spec):
            try:
                teacher = shapes_from_mapping(json.loads(read_utf8(spec)), spec)
            except json.JSONDecodeError as e:
                raise UserError(f"{spec}: not valid JSON ({e.msg})") from None
        else:
            teacher = ModelConfig.from_name(spec)
        source = f"--teacher-config {spec}"
    elif cfg.teacher and os.path.isdir(cfg.teacher):
        teacher, source = read_config(cfg.teacher)[0], f"{cfg.teacher}/config.json"
    elif cfg.teacher and cfg.student.init == "teacher":
        raise UserError(f"--plan: the teacher directory {cfg.teacher} does not exist; give its shapes with "
                        f"--teacher-config (a preset such as llama3.2-1b, or a config.json)")
    init = None
    if cfg.student.init not in ("teacher", "new"):
        if not os.path.isdir(cfg.student.init):
            raise UserError(f"--plan: student.init {cfg.student.init} does not exist yet; the plan reads the "
                            f"student's shapes from its config.json (run the stage that writes it first)")
        init = read_config(cfg.student.init)[0]
        source = source or f"{cfg.student.init}/config.json"
    return teacher, init, source or "student.model"


def run(args: argparse.Namespace) -> int:
    from ..distill.config import config_to_yaml, load_config
    from ..runtime import UserError

    if args.plan:
        from ..distill.plan import format_plan, plan_dict, plan_recipe

        cfg = load_config(args.plan, args.overrides)
        teacher, init, source = _shapes(args, cfg)
        try:
            plan = plan_recipe(cfg, teacher, args.devices, cfg.train.device != "cpu", init, source)
        except ValueError as e:
            raise UserError(f"--plan: {e}") from None
        print(json.dumps(plan_dict(plan), indent=1) if args.json else format_plan(plan), end="\n" if args.json else "")
        return 0
    if not args.config:
        raise UserError("thinkfast distill needs --config RECIPE.yaml (or --plan RECIPE.yaml)")
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
