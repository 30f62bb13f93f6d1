"""Seconds of the demo's own verifier stages, ORM then PRM, one after another in one process:
``train_orm_stage`` against ``prm_stage`` (labels and training), then ``score_stage`` of each on
the same 3200 validation samples, with the demo's default settings (``DemoConfig``).

It reads the samples benchmarks/verifier_comparison.py drew into its OUT (the ORM stage's
teacher samples of train problems, ``teacher_train_samples.jsonl``, and the validation samples):

    OMP_NUM_THREADS=1 python benchmarks/demo_verifier_cost.py VC_OUT OUT [--temperature 0.6]

Writes OUT/stage_cost.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from thinkfast.config import atomic_write_text
from thinkfast.demo import SHIPPED_TEACHER, DemoConfig, demo_task
from thinkfast.demo.sampling import prm_stage, score_stage, train_orm_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("samples_dir", type=Path, help="verifier_comparison.py's OUT")
    ap.add_argument("out", type=Path)
    ap.add_argument("--temperature", type=float, default=0.6)
    args = ap.parse_args()
    torch.set_num_threads(1)
    src, out = args.samples_dir, args.out
    task = demo_task()
    examples = task.load("train", path=str(src / "data" / "train.jsonl"))
    samples = src / "teacher_train_samples.jsonl"
    val = src / f"val_samples_T{args.temperature}.jsonl"
    res: dict[str, float] = {}
    for verifier in ("orm", "prm"):
        cfg = DemoConfig(verifier=verifier)
        t0 = time.perf_counter()
        if verifier == "orm":
            train_orm_stage(SHIPPED_TEACHER, task, samples, out / "orm" / "model", cfg, print)
        else:
            r = prm_stage(SHIPPED_TEACHER, task, examples, samples, out / "prm" / "model", args.temperature, cfg,
                          print)
            res["prm_label"], res["prm_train"] = round(r["label_s"], 1), round(r["train_s"], 1)
        res[f"train_{verifier}_stage"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        kind = {"orm": "orm", "prm": "thinkfast-prm"}[verifier]
        score_stage(task, val, out / f"val.{verifier}.jsonl", out / verifier / "model", kind, cfg.prm_aggregate)
        res[f"score_{verifier}_val"] = round(time.perf_counter() - t0, 1)
        print(res, flush=True)
    atomic_write_text(out / "stage_cost.json", json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
