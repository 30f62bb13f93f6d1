"""Try a distillation design for one of the demo's students: run the demo's recipe for it with
``--override`` changes, then report greedy accuracy (by number of operations) and the
teacher-forced response-token accuracy on *validation* problems.

It reads a finished demo directory (default ``demo_out``: its data and teacher), so the students
are compared on exactly what the demo uses. The validation problems are the 100 train-split
problems that follow the demo's ``n_train``: never trained on, and disjoint from the test
problems by construction, so a recipe is chosen without looking at the test set
(``--split test`` scores the test problems instead). For example::

    OMP_NUM_THREADS=1 python benchmarks/student_design.py runs/student/base --kind llamba
    OMP_NUM_THREADS=1 python benchmarks/student_design.py runs/student/kd2k --kind llamba \\
        --override stages.kd.train.steps=2000
    python benchmarks/student_design.py runs/student/base --eval-only runs/student/base/student/model

Overrides use ``thinkfast distill``'s dotted keys (stages by name). Everything lands in OUT.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from thinkfast.checkpoint import load_model, load_tokenizer
from teacher_design import greedy_by_steps  # benchmarks/ is on sys.path when a script there runs
from teacher_errors import answer_predictions

from thinkfast.data import synthetic as syn
from thinkfast.demo import DemoConfig, demo_task, demo_task_config, hybrid_recipe, llamba_recipe
from thinkfast.distill.config import apply_overrides, build_config
from thinkfast.distill.recipe import run_recipe
from thinkfast.eval.io import read_jsonl


def teacher_forced_accuracy(model_dir: Path, rows: list[dict]) -> float:
    """Share of response tokens whose argmax is right when the reference chain is fed in."""
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    right = total = 0
    for r in rows:
        a, pred = answer_predictions(model, tok, r)
        right += int((pred == torch.tensor(a)).sum())
        total += len(a)
    return right / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kind", choices=["llamba", "hybrid"], default="llamba")
    ap.add_argument("--demo", type=Path, default=Path("demo_out"), help="a finished demo run (data, teacher)")
    ap.add_argument("--override", action="append", default=[],
                    help="a recipe override, e.g. stages.kd.train.steps=2000")
    ap.add_argument("--train-precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="the demo's DemoConfig.train_precision (auto: bf16 on a CPU with native bf16)")
    ap.add_argument("--n-test", type=int, default=100, help="problems scored")
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--eval-only", type=Path, default=None, metavar="MODEL", help="score MODEL; train nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.eval_only:
        model, result, train_s = args.eval_only, {"stages": []}, 0.0
    else:
        model, result, train_s = train_student(args)

    meta = demo_task_config()
    task = demo_task(meta)
    syn_cfg = task.config
    if args.split == "test":
        path = args.demo / "data" / "test.jsonl"
    else:
        n_train = json.loads((args.demo / "data" / "config.json").read_text())["n_train"]
        problems = syn.generate(syn_cfg, "train", n_train + args.n_test, seed=meta["seed"])[n_train:]
        path = args.out / "val.jsonl"
        syn.write_jsonl(problems, path)
    examples = task.load("test", path=str(path))[: args.n_test]
    accuracy, by_steps = greedy_by_steps(model, task, examples, args.out)
    tf = teacher_forced_accuracy(model, list(read_jsonl(path))[:50])
    out = {"kind": args.kind, "overrides": args.override, "split": args.split, "model": str(model),
           "train_seconds": round(train_s),
           "stages": [{k: s[k] for k in ("stage", "steps", "wall_s", "final_loss", "eval_loss")}
                      for s in result["stages"]],
           "greedy": accuracy, "by_steps": by_steps, "teacher_forced_token_accuracy": tf}
    name = "result.json" if not args.eval_only else f"eval_{args.split}.json"
    (args.out / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("split", "greedy", "by_steps", "teacher_forced_token_accuracy",
                                          "train_seconds")}))


def train_student(args) -> tuple[Path, dict, float]:
    """Run the demo's recipe for ``args.kind`` with the overrides; (model dir, run result, seconds)."""
    cfg = DemoConfig(train_precision=args.train_precision).resolved()
    teacher, train = args.demo / "teacher" / "model", args.demo / "data" / "train.jsonl"
    if args.kind == "llamba":
        recipe = llamba_recipe(cfg, args.out / "student", teacher, train).to_dict()
    else:  # the attention layers the demo's select stage chose
        recipe = hybrid_recipe(cfg, args.out / "student", teacher, train,
                               str(args.demo / "select" / "layers.json")).to_dict()
    recipe = build_config(apply_overrides(recipe, args.override))
    t0 = time.perf_counter()
    result = run_recipe(recipe)
    return Path(result["model_dir"]), result, time.perf_counter() - t0


if __name__ == "__main__":
    main()
