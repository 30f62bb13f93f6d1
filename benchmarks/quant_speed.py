"""Decode tokens/s of thinkfast's engine with fp32, bf16 and int8 weight-only weights, side by side.

A SmolLM2-135M-shaped Llama (random, seeded weights), each measurement in a fresh subprocess as
``thinkfast bench`` runs them (``thinkfast.bench.throughput``); the dtypes alternate within each
round and the table reports each one's median over the rounds, and its ratio to fp32::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/quant_speed.py --threads 2 --batches 1,16,64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics

from thinkfast.bench.throughput import BenchCase, run_in_subprocess

DTYPES = ("float32", "bfloat16", "int8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    table = {}
    for b in (int(x) for x in a.batches.split(",")):
        tps: dict[str, list[float]] = {d: [] for d in DTYPES}
        for _ in range(a.rounds):
            for d in DTYPES:
                r = run_in_subprocess(BenchCase(engine="thinkfast", kind="llama", preset=a.preset, batch=b,
                                                prompt=a.prompt, gen=a.gen, threads=a.threads, dtype=d))
                if "error" in r:
                    raise SystemExit(f"{d} batch {b}: {r['error']}")
                tps[d].append(r["decode_tokens_per_s"])
        med = {d: statistics.median(v) for d, v in tps.items()}
        table[b] = dict(median_tokens_per_s=med, runs=tps, vs_fp32={d: med[d] / med["float32"] for d in DTYPES})
        print(f"batch {b:3d}: " + "  ".join(f"{d} {med[d]:7.1f} tok/s ({med[d] / med['float32']:4.2f}x)"
                                            for d in DTYPES), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(vars(a), table=table), f, indent=2)


if __name__ == "__main__":
    main()
