"""A demo teacher's sampling headroom on *validation* problems: greedy accuracy, coverage@n and
their gap (the demo aims for coverage@32 >= greedy + 20 on test), at the temperature the demo's
own rule picks (majority@8 on the first 32 train problems).

The validation problems are the train-split problems that follow the demo's ``n_train``: never
trained on and disjoint from the test problems, so a teacher design is judged without the test
set. For example::

    OMP_NUM_THREADS=1 python benchmarks/teacher_coverage.py runs/val/shipped --model demo_out/teacher/model
    OMP_NUM_THREADS=1 python benchmarks/teacher_coverage.py runs/val/s12k --model runs/design/s12k/teacher/model

Everything lands in OUT (val.jsonl, the temperature samples, greedy.jsonl, samples.jsonl,
result.json); sampling resumes where an interrupted run stopped.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from thinkfast.config import atomic_write_text
from thinkfast.data import synthetic as syn
from thinkfast.demo import (DemoConfig, choose_temperature, demo_task, demo_task_config, greedy_stage,
                            sample_file, teacher_train_problems)
from thinkfast.eval.grading import grade_rows
from thinkfast.eval.io import read_jsonl
from thinkfast.eval.tasks.synthetic import SyntheticTask
from teacher_design import parse_sets  # benchmarks/ is on sys.path when a script there runs


def headroom(task: SyntheticTask, greedy_rows: list[dict], sample_rows: list[dict],
             steps_of: dict[str, int]) -> dict:
    """Greedy accuracy, coverage over all samples and their gap, overall and per number of steps."""
    greedy = {r["problem_id"]: bool(r["correct"]) for r in grade_rows(task, greedy_rows, "greedy")}
    covered: dict[str, bool] = collections.defaultdict(bool)
    for r in grade_rows(task, sample_rows, "samples"):
        covered[r["problem_id"]] |= bool(r["correct"])
    by_steps: dict[int, list[tuple[bool, bool]]] = collections.defaultdict(list)
    for pid, g in greedy.items():
        by_steps[steps_of[pid]].append((g, covered[pid]))
    n = max(len(greedy), 1)
    g_acc, cov = sum(greedy.values()) / n, sum(covered[p] for p in greedy) / n
    return {"problems": len(greedy), "greedy": g_acc, "coverage": cov, "gap_points": round(100 * (cov - g_acc), 1),
            "by_steps": {k: {"greedy": f"{sum(g for g, _ in v)}/{len(v)}", "coverage": f"{sum(c for _, c in v)}/{len(v)}"}
                         for k, v in sorted(by_steps.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path, required=True, help="a teacher directory (thinkfast format)")
    ap.add_argument("--n-val", type=int, default=300, help="validation problems")
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=None, help="skip the demo's rule; sample at this T")
    ap.add_argument("--teacher-train", action="append", default=[], metavar="KEY=JSON",
                    help="a teacher_train field the model was trained with, e.g. step_weights=[1,1,1,2] "
                         "(default: the shipped task's); validation problems among its training problems are dropped")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig()
    meta = demo_task_config()
    if args.teacher_train:
        meta["teacher_train"] = {**meta.get("teacher_train", {}), **parse_sets(args.teacher_train, "--teacher-train")}
    task = demo_task(meta)
    syn_cfg = task.config
    problems = syn.generate(syn_cfg, "train", cfg.n_train + args.n_val, seed=meta["seed"])
    syn.write_jsonl(problems[: cfg.temp_problems], args.out / "temp.jsonl")
    val_problems = problems[cfg.n_train:]
    if meta.get("teacher_train"):  # the teacher trained on another stream of train-split problems
        seen = {p.question for p in teacher_train_problems(meta, cfg.n_train)}
        kept = [p for p in val_problems if p.question not in seen]
        print(f"{len(val_problems) - len(kept)} validation problems are among the teacher's training problems; dropped")
        val_problems = kept
    syn.write_jsonl(val_problems, args.out / "val.jsonl")
    temperature = args.temperature
    choice = None
    if temperature is None:
        temp_ex = task.load("train", path=str(args.out / "temp.jsonl"))
        choice = choose_temperature(args.model, task, temp_ex, args.out, "teacher", cfg, print)
        temperature = choice["temperature"]
    val = task.load("test", path=str(args.out / "val.jsonl"))
    greedy_stage(args.model, task, val, args.out / "greedy.jsonl", "teacher", cfg, print)
    samples = args.out / f"samples_T{temperature}.jsonl"
    sample_file(args.model, task, val, samples, "teacher", args.n_samples, temperature, cfg, print)
    result = {"model": str(args.model), "temperature": temperature, "temperature_choice": choice,
              "n_samples": args.n_samples,
              **headroom(task, list(read_jsonl(args.out / "greedy.jsonl")), list(read_jsonl(samples)),
                         {e.id: e.meta.get("n_steps") for e in val})}
    atomic_write_text(args.out / "result.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("temperature", "greedy", "coverage", "gap_points", "by_steps")}))


if __name__ == "__main__":
    main()
