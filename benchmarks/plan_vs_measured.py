"""``thinkfast distill --plan``'s memory estimate against a measured training step, on CPU.

Each setting builds a 2-layer model of a real teacher's shapes (Llama-3.2-1B: d_model 2048, 32
heads, 8 KV heads, d_ff 8192, vocab 128,256; Llama-3.2-3B: d_model 3072, 24 heads of 128, 8 KV
heads, d_ff 8192), random weights, and runs two optimizer steps of the real ``Trainer.train_step``
(fp32, one process, accumulation 1: the second step is the steady state, with AdamW's moments
allocated) in a fresh subprocess. Measured: the child's peak RSS minus the peak RSS of an idle
child that imported the same modules. Estimated: ``distill.plan.plan_stage`` for the same stage
(devices 1, CPU: an fp32 teacher and no foreach temporary).

    python benchmarks/plan_vs_measured.py                 # every setting, one at a time
    python benchmarks/plan_vs_measured.py --only kd_hybrid_1b --json out.json

Every child stays under about 8 GiB (512 tokens or fewer, micro-batch 1, the chunked loss with
512-position chunks except in the one full-logits setting). Allocator slack is part of what is measured and not of the
estimate, so a ratio somewhat above 1 is expected.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"1b": ROOT / "configs/distill/paper/llama-3.2-1b.config.json",
          "3b": ROOT / "configs/distill/paper/llama-3.2-3b.config.json"}

# name: (teacher shape, student pattern, mixer kind, objective, trainable, seq_len, activation ckpt, chunk_size)
SETTINGS = {
    "kd_hybrid_1b": ("1b", "MA", "mamba2", "kd", "mixers", 512, False, 512),
    "kd_hybrid_1b_ckpt": ("1b", "MA", "mamba2", "kd", "mixers", 512, True, 512),
    "kd_hybrid_1b_full_logits": ("1b", "MA", "mamba2", "kd", "mixers", 512, False, 0),
    "hidden_llamba_1b": ("1b", "MM", "discrete", "hidden", "auto", 512, False, 512),
    "matrix_llamba_1b": ("1b", "MM", "discrete", "matrix", "auto", 512, False, 512),
    "sft_llamba_1b_all": ("1b", "MM", "discrete", "lm", "all", 256, False, 256),
    "kd_hybrid_3b": ("3b", "MA", "mamba2", "kd", "mixers", 512, False, 512),
}
"""name: (teacher shape, student pattern, mixer kind, objective, trainable, seq_len, activation
checkpointing, loss.chunk_size). KD trains the Mamba mixers only (MambaInLlama's distillation
stage, as the paper recipes do): with every weight trainable a 2-layer 1B-shaped KD step needs
more than 8 GiB (the 128,256 x 2048 embedding alone is 1 GiB per fp32 copy), so all-trainable
memory is measured on the SFT stage, which has no teacher."""
GiB = 1024**3


def _imports():
    import torch  # noqa: F401

    from thinkfast.distill import plan, stages, trainer  # noqa: F401


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _teacher_config(shape: str):
    from thinkfast.distill.plan import shapes_from_mapping

    data = json.loads(SHAPES[shape].read_text())
    data["num_hidden_layers"] = 2
    data["max_position_embeddings"] = 4096
    return shapes_from_mapping(data)


def _recipe(name: str):
    from thinkfast.distill.config import build_config

    shape, pattern, kind, objective, trainable, T, ckpt, chunk = SETTINGS[name]
    return build_config({
        "teacher": "unused", "student": {"init": "teacher", "keep": pattern, "kind": kind},
        "data": {"train": "unused", "seq_len": T},
        "train": {"steps": 2, "batch_size": 1, "micro_batch_size": 1, "lr": 1e-4, "activation_checkpointing": ckpt,
                  "progress": False, "device": "cpu", "save_every": 0, "log_every": 1},
        "stages": [{"name": objective, "objective": objective, "trainable": trainable,
                    "loss": {"chunk_size": chunk}}],
    })


def estimate(name: str) -> dict:
    from thinkfast.distill.plan import initial_student, plan_stage

    cfg = _recipe(name)
    teacher = _teacher_config(SETTINGS[name][0])
    student = initial_student(cfg, teacher)
    s = plan_stage(cfg, 0, student, teacher if cfg.stages[0].objective != "lm" else None, 1, accelerator=False)
    m = s.memory
    return {"peak": m.peak, "weights": m.weights, "teacher": m.teacher, "gradients": m.gradients,
            "optimizer": m.optimizer, "activations": m.activations, "loss": m.loss_buffers if
            cfg.stages[0].loss.chunk_size else m.loss_buffers_full_logits, "student_params": s.student_params,
            "trainable_params": s.trainable_params}


def child(name: str) -> dict:
    """Run the setting (or only the imports for ``baseline``) and report the peak RSS."""
    _imports()
    if name == "baseline":
        return {"peak_rss": _peak_rss()}
    import tempfile

    import torch

    from thinkfast.data.dataset import DataBundle
    from thinkfast.data.packing import TokenBlocks
    from thinkfast.distill import distributed as D
    from thinkfast.distill.config import resolve_train
    from thinkfast.distill.plan import initial_student
    from thinkfast.distill.stages import build_objective
    from thinkfast.distill.trainer import Trainer
    from thinkfast.models.lm import LanguageModel

    torch.manual_seed(0)
    cfg = _recipe(name)
    stage = cfg.stages[0]
    tcfg = _teacher_config(SETTINGS[name][0])
    teacher = LanguageModel(tcfg).eval() if stage.objective != "lm" else None
    student = LanguageModel(initial_student(cfg, tcfg))
    obj = build_objective(stage, student, teacher, cfg.student.kind)
    T = stage.seq_len or cfg.data.seq_len
    ids = torch.randint(0, tcfg.vocab_size, (1, T))
    blocks = TokenBlocks(ids, ids.clone(), torch.ones(1, T, dtype=torch.bool))
    tc = resolve_train(cfg, 0)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(obj, DataBundle(blocks, None), tc, tmp, D.DistEnv(), name=name)
        tr.build()  # the model and optimizer fit() would train (fit() would also write checkpoints)
        t0 = time.perf_counter()
        losses = [tr.train_step()["loss"] for _ in range(tc.steps)]
    return {"peak_rss": _peak_rss(), "losses": losses, "wall_s": time.perf_counter() - t0}


def _run_child(name: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=sorted(SETTINGS), help="run only these settings")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--reestimate", metavar="JSON",
                   help="print the current plan's estimates against the measurements stored in JSON "
                        "(written by --json) instead of measuring again")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    if args.reestimate:
        data = json.loads(Path(args.reestimate).read_text())
        print(f"measurements from {args.reestimate} (baseline {data['baseline_rss'] / GiB:.2f} GiB); estimates now")
        print(f"{'setting':26s} {'T':>5s} {'estimate':>9s} {'measured':>9s} {'ratio':>6s}")
        for row in data["rows"]:
            est = estimate(row["setting"])
            print(f"{row['setting']:26s} {SETTINGS[row['setting']][5]:5d} {est['peak'] / GiB:9.2f} "
                  f"{row['measured'] / GiB:9.2f} {row['measured'] / est['peak']:6.2f}")
        return 0
    base = _run_child("baseline")["peak_rss"]
    print(f"baseline (idle child with torch and thinkfast imported): {base / GiB:.2f} GiB peak RSS")
    print(f"{'setting':26s} {'T':>5s} {'estimate':>9s} {'measured':>9s} {'ratio':>6s}  (GiB; ratio = measured / estimate)")
    rows = []
    for name in args.only or SETTINGS:
        est = estimate(name)
        got = _run_child(name)
        measured = got["peak_rss"] - base
        ratio = measured / est["peak"]
        rows.append({"setting": name, "spec": SETTINGS[name], "estimate": est, "measured": measured,
                     "ratio": ratio, "wall_s": got["wall_s"], "losses": got["losses"]})
        print(f"{name:26s} {SETTINGS[name][5]:5d} {est['peak'] / GiB:9.2f} {measured / GiB:9.2f} {ratio:6.2f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline_rss": base, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
