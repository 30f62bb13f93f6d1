"""Try a synthetic-task design for the demo teacher: write its data, train the teacher recipe on
it, and report greedy accuracy on 100 test problems by number of operations.

The design is the shipped ``assets/demo_task.json`` with ``--set`` changes; the training is
``assets/demo_teacher_recipe.yaml`` with ``--override`` changes (the same dotted keys as
``thinkfast distill``). The README's table of layouts was made with it, e.g.::

    python benchmarks/teacher_design.py runs/design/C --set marker_comma=false --set 'sentence_sep="\\n"' \\
        --set max_steps=5 --override train.steps=3000
    python benchmarks/teacher_design.py runs/design/C --eval-only --model runs/design/C/teacher/model ...

Everything lands in OUT (data, tokenizer, teacher, greedy.jsonl, result.json).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

from thinkfast.data import synthetic as syn
from thinkfast.data.tokenizer import build_tokenizer
from thinkfast.demo import TEACHER_RECIPE, DemoConfig, demo_task_config, greedy_stage
from thinkfast.distill.config import load_config
from thinkfast.distill.recipe import run_recipe
from thinkfast.eval.grading import grade_rows
from thinkfast.eval.io import read_jsonl
from thinkfast.eval.tasks.synthetic import SyntheticTask


def greedy_by_steps(model: Path, task: SyntheticTask, examples: list, out: Path) -> tuple[float, dict[int, str]]:
    """Greedy accuracy of ``model`` on ``examples`` (written to OUT/greedy.jsonl, redone each time)
    and the right / asked count per number of operations, e.g. {2: "25/25", 3: "17/22"}."""
    greedy = out / "greedy.jsonl"
    if greedy.exists():
        greedy.unlink()
    res = greedy_stage(model, task, examples, greedy, out.name, DemoConfig(batch_problems=100), print)
    by_steps: dict[int, list[bool]] = collections.defaultdict(list)
    steps_of = {e.id: e.meta.get("n_steps") for e in examples}
    for r in grade_rows(task, read_jsonl(greedy), str(greedy)):
        by_steps[steps_of[r["problem_id"]]].append(bool(r["correct"]))
    return res["accuracy"], {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_steps.items())}


def parse_sets(pairs: list[str], option: str) -> dict:
    """``KEY=JSON`` command-line pairs as a dict; a malformed pair is a clear error naming it."""
    out = {}
    for kv in pairs:
        key, eq, value = kv.partition("=")
        try:
            if not (key and eq):
                raise ValueError("expected KEY=JSON")
            out[key] = json.loads(value)
        except ValueError as e:
            raise SystemExit(f"{option} {kv!r}: {e}") from None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="a SyntheticConfig field, e.g. max_steps=4 (value parsed as JSON)")
    ap.add_argument("--shots", type=int, default=None, help="few-shot examples (default: the shipped task's)")
    ap.add_argument("--override", action="append", default=[], help="a recipe override, e.g. train.steps=3000")
    ap.add_argument("--eval-only", action="store_true", help="skip training; evaluate --model")
    ap.add_argument("--model", type=Path, default=None, help="default: OUT/teacher/model")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=100)
    args = ap.parse_args()

    meta = demo_task_config()
    fields = {**meta["config"], **parse_sets(args.set, "--set")}
    cfg = syn.SyntheticConfig.from_dict(fields)
    shots = meta.get("n_shots", 0) if args.shots is None else args.shots
    args.out.mkdir(parents=True, exist_ok=True)
    paths = syn.write_splits(args.out / "data", cfg, n_train=args.n_train, n_test=args.n_test, seed=meta["seed"])
    tok = build_tokenizer(texts=syn.tokenizer_texts(cfg))
    tok.save_pretrained(str(args.out / "tokenizer"))
    train_s = None
    if not args.eval_only:
        recipe = load_config(TEACHER_RECIPE, [f"out_dir={args.out / 'teacher'}", f"tokenizer={args.out / 'tokenizer'}",
                                              f"data.train={paths['train']}", *args.override])
        t0 = time.perf_counter()
        run_recipe(recipe)
        train_s = time.perf_counter() - t0
    task = SyntheticTask(cfg, seed=meta["seed"], n_shots=shots)
    examples = task.load("test", path=str(paths["test"]))
    model = args.model or args.out / "teacher" / "model"
    accuracy, by_steps = greedy_by_steps(model, task, examples, args.out)
    result = {"config": cfg.to_dict(), "shots": shots, "overrides": args.override, "train_seconds": train_s,
              "greedy": accuracy, "by_steps": by_steps}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("greedy", "by_steps", "train_seconds")}))


if __name__ == "__main__":
    main()
