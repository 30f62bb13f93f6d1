"""Peak memory and wall time of one KD loss forward+backward: full logits vs chunked, on CPU.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/kd_loss_memory.py \\
        --seq 1024 2048 4096 --vocab 128256 --dim 2048 --chunk 1024

Each (variant, T) runs in a fresh subprocess. There the inputs are allocated first (student and
teacher head weights (V, D) and final hidden states (B, T, D), filled in place so that creating
them leaves no transient peak), ``ru_maxrss`` is read as the baseline, then one forward+backward
of the loss runs (gradients wrt the student's hidden states and head weight) and ``ru_maxrss`` is
read again. The figure reported is the growth: the peak resident memory the loss itself needed,
including the (V, D) fp32 weight gradient that both variants produce.

  reference  ``losses.distillation_loss`` on ``F.linear(h, W)`` logits, i.e. what the KD objective
             did before: full (B, T, V) student and teacher logits.
  chunked    ``chunked_loss.chunked_distillation_loss`` on the same h and W.

Before starting a subprocess the expected growth is estimated (reference: ~10 fp32 (B, T, V)
tensors; chunked: a few (chunk, V) tensors and the weight gradient) and compared with the
machine's available memory and ``--budget-gb``; a size that would not fit is skipped and said
so, never attempted. Results are printed as a table and, with ``--json``, written to a file.
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


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def estimate(variant: str, B: int, T: int, V: int, D: int, chunk: int) -> int:
    """Expected peak growth in bytes (deliberately on the high side)."""
    weight_grad = V * D * 4
    if variant == "reference":
        return 10 * B * T * V * 4 + weight_grad
    return 8 * min(chunk, B * T) * V * 4 + 2 * weight_grad + 4 * B * T * D * 4


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(a) -> None:
    import torch
    import torch.nn.functional as F

    from thinkfast.distill.chunked_loss import chunked_distillation_loss
    from thinkfast.distill.losses import distillation_loss

    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    B, T, V, D = a.batch, a.seq_one, a.vocab, a.dim
    # Filled in place: no temporary of the weights' size, so the baseline peak is the inputs.
    ws = torch.empty(V, D).normal_(0.0, 0.02, generator=g).requires_grad_(True)
    wt = torch.empty(V, D).normal_(0.0, 0.02, generator=g)
    hs = torch.empty(B, T, D).normal_(generator=g).requires_grad_(True)
    ht = torch.empty(B, T, D).normal_(generator=g)
    labels = torch.empty(B, T, dtype=torch.long).random_(0, V, generator=g)
    kw = dict(kind=a.kind, temperature=a.temperature, kl_weight=1.0, ce_weight=a.ce_weight)
    base = maxrss()
    t0 = time.perf_counter()
    if a.worker == "reference":
        with torch.no_grad():
            t_logits = F.linear(ht, wt)
        total = distillation_loss(F.linear(hs, ws), t_logits, labels, **kw)[0]
    else:
        total = chunked_distillation_loss(hs, ws, ht, wt, labels, chunk_size=a.chunk, **kw)[0]
    t1 = time.perf_counter()
    total.backward()
    t2 = time.perf_counter()
    peak = maxrss()
    print(json.dumps({"variant": a.worker, "T": T, "loss": float(total), "baseline_gib": base / GiB,
                      "growth_gib": (peak - base) / GiB, "forward_s": t1 - t0, "backward_s": t2 - t1,
                      "wall_s": t2 - t0, "grad_w_norm": float(ws.grad.norm())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--kind", default="forward", choices=["forward", "reverse"])
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--ce-weight", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--budget-gb", type=float, default=20.0, help="GiB; never start a run expected to need more")
    p.add_argument("--variants", nargs="+", default=["reference", "chunked"])
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--seq-one", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return

    inputs_gb = (2 * a.vocab * a.dim + 2 * a.batch * max(a.seq) * a.dim) * 4 / GiB
    print(f"V={a.vocab} D={a.dim} B={a.batch} chunk={a.chunk} kind={a.kind} temperature={a.temperature} "
          f"ce_weight={a.ce_weight} threads={a.threads}; inputs ~{inputs_gb:.2f} GiB (not counted)", flush=True)
    results = []
    for T in a.seq:
        for variant in a.variants:
            need = estimate(variant, a.batch, T, a.vocab, a.dim, a.chunk)
            avail = mem_available() - int(inputs_gb * GiB)
            limit = min(a.budget_gb * GiB, 0.7 * avail)
            if need > limit:
                row = {"variant": variant, "T": T, "skipped": f"expected {need / GiB:.1f} GiB > limit "
                       f"{limit / GiB:.1f} GiB (budget {a.budget_gb} GiB, 70% of {avail / GiB:.1f} GiB available)"}
                print(json.dumps(row), flush=True)
                results.append(row)
                continue
            cmd = [sys.executable, __file__, "--worker", variant, "--seq-one", str(T), "--batch", str(a.batch),
                   "--vocab", str(a.vocab), "--dim", str(a.dim), "--chunk", str(a.chunk), "--kind", a.kind,
                   "--temperature", str(a.temperature), "--ce-weight", str(a.ce_weight),
                   "--threads", str(a.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                row = {"variant": variant, "T": T, "failed": proc.stderr[-2000:]}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["expected_gib"] = need / GiB
            print(json.dumps(row), flush=True)
            results.append(row)

    print("\n| T | variant | peak growth (GiB) | forward (s) | backward (s) | total (s) | loss |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "growth_gib" in r:
            print(f"| {r['T']} | {r['variant']} | {r['growth_gib']:.2f} | {r['forward_s']:.1f} | "
                  f"{r['backward_s']:.1f} | {r['wall_s']:.1f} | {r['loss']:.6f} |")
        else:
            print(f"| {r['T']} | {r['variant']} | {r.get('skipped') or 'failed'} | | | | |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
