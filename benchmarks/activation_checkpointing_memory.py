"""Peak memory of one KD training forward+backward with and without activation checkpointing.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/activation_checkpointing_memory.py \\
        --layers 2 --seq 2048 --batch 1 --chunk 256 --json ac_memory.json

The model has Llama-3.2-1B's shape (d_model 2048, 32 heads / 8 KV heads, d_ff 8192, vocab
128256, tied embeddings) cut to ``--layers`` blocks: a random Llama teacher and the Llamba
(discrete Mamba-2) student initialised from it, as stage 3 of MOHAWK trains it (objective kd,
``stages.KDObjective``, the chunked KD loss with ``loss.chunk_size = --chunk`` so no (T, V)
logits are held). Each setting runs in a fresh subprocess: the teacher, the student and the
objective are built, ``ru_maxrss`` is read as the baseline (weights, in fp32), then one
forward+backward of the objective's loss runs (with ``train.activation_checkpointing`` the
student's blocks go through ``distributed.checkpoint_activations``, exactly as the trainer does)
and ``ru_maxrss`` is read again. Reported: what autograd keeps for backward at the end of the
forward (distinct non-parameter storages, counted by a saved-tensors hook: allocator-independent),
the resident memory then, the peak, its growth over the baseline (activations, the student's
fp32 gradients, the loss's transient chunks) and the wall time. No optimizer step runs (AdamW's
two fp32 moments would add 2 x the student's weights to both settings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GiB = 1024**3


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rss() -> int:
    """Resident memory now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(a) -> None:
    import torch

    from thinkfast.config import ModelConfig
    from thinkfast.convert.from_attention import student_from_teacher
    from thinkfast.distill import distributed as D
    from thinkfast.distill.config import LossConfig
    from thinkfast.distill.stages import KDObjective
    from thinkfast.models.lm import LanguageModel

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("llama3.2-1b", n_layers=a.layers, max_seq_len=max(a.seq, 2048))
    teacher = LanguageModel(cfg).eval()
    student = student_from_teacher(teacher, 0.0, "discrete")
    obj = KDObjective(student, teacher, LossConfig(chunk_size=a.chunk))
    if a.setting == "on":
        D.checkpoint_activations(obj.checkpoint_units())
    ids = torch.randint(4, cfg.vocab_size, (a.batch, a.seq))
    batch = {"input_ids": ids, "labels": torch.cat([ids[:, 1:], torch.full((a.batch, 1), -100)], 1),
             "valid": torch.ones(a.batch, a.seq, dtype=torch.bool)}
    # What autograd keeps between forward and backward: distinct storages saved for backward
    # that are not parameters (inside a checkpointed block, nothing but its inputs is kept).
    params = {p.untyped_storage().data_ptr() for m in (student, teacher) for p in m.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    base, base_now = maxrss(), rss()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = obj(batch)
    after_forward = rss()
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = maxrss()
    print(json.dumps({"setting": a.setting, "baseline_gib": base / GiB, "peak_gib": peak / GiB,
                      "growth_gib": (peak - base) / GiB, "rss_before_gib": base_now / GiB,
                      "rss_after_forward_gib": after_forward / GiB, "saved_for_backward_gib": sum(kept.values()) / GiB,
                      "seconds": seconds, "loss": float(loss.detach()),
                      "student_params": sum(p.numel() for p in student.parameters()),
                      "teacher_params": sum(p.numel() for p in teacher.parameters())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256, help="loss.chunk_size (positions per logit chunk)")
    p.add_argument("--settings", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--setting", help=argparse.SUPPRESS)  # the subprocess's own setting
    a = p.parse_args()
    if a.setting:
        worker(a)
        return
    results = []
    for setting in a.settings:  # one after the other: never two big processes at once
        cmd = [sys.executable, __file__, "--setting", setting, "--layers", str(a.layers), "--seq", str(a.seq),
               "--batch", str(a.batch), "--chunk", str(a.chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            sys.exit(f"setting {setting} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'activation_checkpointing':>24s} {'saved for backward GiB':>22s} {'RSS after forward GiB':>21s} "
          f"{'peak RSS GiB':>12s} {'growth GiB':>10s} {'s':>7s}")
    for r in results:
        print(f"{r['setting']:>24s} {r['saved_for_backward_gib']:22.3f} {r['rss_after_forward_gib']:21.2f} "
              f"{r['peak_gib']:12.2f} {r['growth_gib']:10.2f} {r['seconds']:7.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items() if k not in ("setting", "json")},
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
