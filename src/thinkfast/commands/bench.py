"""thinkfast bench: decode tokens/s and peak memory, thinkfast vs transformers, one table + JSON.

    thinkfast bench --preset smollm2-135m --batch 16 --prompt 64 --gen 256 --json bench.json
    thinkfast bench --preset smollm2-135m --kinds llama --engines thinkfast --batch 1 --decode both
"""

from __future__ import annotations

import argparse
import json
import os

from ..config import MODEL_PRESETS
from .args import add_threads, comma_list, output_file, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="smollm2-135m", choices=sorted(MODEL_PRESETS),
                   help="named model size (random weights)")
    p.add_argument("--batch", type=positive_int, default=16)
    p.add_argument("--prompt", type=positive_int, default=64, help="prompt tokens")
    p.add_argument("--gen", type=positive_int, default=256, help="new tokens")
    p.add_argument("--kinds", type=comma_list("llama", "mamba", "hybrid"), default="llama,mamba,hybrid")
    p.add_argument("--engines", type=comma_list("thinkfast", "hf"), default="thinkfast,hf", help="thinkfast and/or hf (transformers generate)")
    add_threads(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8"],
                   help="int8: int8 weight-only linears (thinkfast engine only; hf cases are skipped)")
    p.add_argument("--repeats", type=positive_int, default=1, help="best of N timings")
    p.add_argument("--decode", default="reference", choices=["fast", "reference", "both"],
                   help="thinkfast's decode step; both: reference and fast alternated in one process, with "
                        "the memory bandwidth and each step as a %% of the weights-over-bandwidth roofline")
    p.add_argument("--json", dest="json_out", type=output_file, default=None, help="write every figure and the ratios here")


def run(args: argparse.Namespace) -> int:
    from ..bench.throughput import BenchCase, hardware, ratios, run_in_subprocess
    from ..config import atomic_write_text

    threads = args.threads or os.cpu_count() or 1
    results = []
    for kind in args.kinds:
        for engine in args.engines:
            if engine == "hf" and (kind == "hybrid" or args.dtype == "int8"):
                continue  # transformers has no architecture for our hybrid, nor our int8 linears
            case = BenchCase(engine=engine, kind=kind, preset=args.preset, batch=args.batch, prompt=args.prompt,
                             gen=args.gen, threads=threads, device=args.device, dtype=args.dtype,
                             repeats=args.repeats, decode=args.decode)
            r = run_in_subprocess(case)
            results.append(r)
            if "error" in r:
                print(f"{engine:9s} {kind:7s} failed: {r['error']}", flush=True)
            elif "fast_vs_reference_ratio" in r:
                for name in ("reference", "fast"):
                    print(f"{engine:9s} {kind:7s} {name:9s} decode {r[name + '_decode_tokens_per_s']:9.1f} tok/s  "
                          f"step {r[name + '_decode_step_ms']:7.1f} ms = {r[name + '_step_pct_of_roofline']:5.0f}% "
                          f"of the roofline", flush=True)
                print(f"{engine:9s} {kind:7s} fast/reference {r['fast_vs_reference_ratio']:.2f}x, same tokens "
                      f"{r['same_tokens']}; matmul floor {r['matmul_floor_ms']:.1f} ms; roofline "
                      f"{r['roofline_ms']:.1f} ms ({r['weight_mb']:.0f} MB at {r['read_gbps']:.1f} GB/s read)",
                      flush=True)
            else:
                print(f"{engine:9s} {kind:7s} decode {r['decode_tokens_per_s']:9.1f} tok/s  "
                      f"step {r['decode_step_ms']:7.1f} ms (matmul floor {r['matmul_floor_ms']:7.1f})  "
                      f"prefill {r['prefill_s']:6.2f}s  total {r['total_s']:7.2f}s  "
                      f"peak {r['peak_mem_mb']:7.0f} MB", flush=True)
    rat = ratios(results)
    for k, v in rat.items():
        print(f"{k:32s} {v:6.2f}x")
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(dict(settings=vars(args), hardware=hardware(),
                                                         results=results, ratios=rat), indent=2) + "\n")
    return 0
