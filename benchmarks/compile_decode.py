"""Does ``torch.compile`` (inductor, C++ backend on CPU) of the decode step pay for itself?

Builds a model (``--preset``, a Transformer by default), packs it for inference, and times one
decode step three ways at ``--batch`` rows: the eager reference step, the eager fast step
(``forward(fast=True)``), and the fast step under ``torch.compile(dynamic=True)`` (the cache
length changes every step, so a static-shape compile would recompile each step). Reports the
compile time (the first compiled steps, until the step time settles) and the steady-state step
of each, rounds alternated, medians, and the number of tokens after which compile breaks even.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/compile_decode.py --preset demo --batch 1 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from thinkfast.config import ModelConfig  # noqa: E402
from thinkfast.models.lm import LanguageModel  # noqa: E402


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--pattern", default="A", help="layer pattern unit, repeated to the preset's depth")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_layers = ModelConfig.from_name(args.preset).n_layers
    cfg = ModelConfig.from_name(args.preset, layer_pattern=(args.pattern * n_layers)[:n_layers])
    torch.manual_seed(0)
    ref = LanguageModel(cfg).eval()
    fast = copy.deepcopy(ref).prepare_for_inference()
    need = args.prompt + args.steps * (2 * args.rounds + 4) + 64
    tok = torch.randint(4, cfg.vocab_size, (args.batch, 1))
    prompt = torch.randint(4, cfg.vocab_size, (args.batch, args.prompt))

    def fresh(model):
        cache = model.allocate_cache(args.batch, need)
        model(prompt, cache=cache, logits_to_keep=1)
        return cache

    def step_fast(cache):
        return fast(tok, cache=cache, fast=True).logits

    compiled = torch.compile(step_fast, dynamic=True)
    caches = {"reference": fresh(ref), "fast": fresh(fast), "compiled": fresh(fast)}
    fns = {"reference": lambda c: ref(tok, cache=c).logits, "fast": step_fast, "compiled": compiled}
    t = time.perf_counter()
    first = []
    for _ in range(4):  # the first call compiles; the next ones may recompile once for dynamic shapes
        t1 = time.perf_counter()
        out = compiled(caches["compiled"])
        first.append(time.perf_counter() - t1)
    compile_s = time.perf_counter() - t
    c_ref = fresh(fast)
    for _ in range(4):
        want = step_fast(c_ref)
    print(f"compiled step vs eager fast step, max |diff| of logits: {(out - want).abs().max().item():.2e}")
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            t1 = time.perf_counter()
            for _ in range(args.steps):
                fn(caches[k])
            times[k].append(1000 * (time.perf_counter() - t1) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.preset} ({cfg.layer_pattern}), batch {args.batch}, {args.threads} threads: compile "
          f"{compile_s:.1f} s (first calls {', '.join(f'{x:.1f}' for x in first)} s)")
    for k, v in med.items():
        print(f"  {k:9s} step {v:7.2f} ms  (rounds {', '.join(f'{x:.2f}' for x in times[k])})")
    gain = med["fast"] - med["compiled"]
    print(f"  compiled / fast step {med['compiled'] / med['fast']:.2f}x; break-even after "
          + (f"{compile_s * 1000 / gain:.0f} decode steps" if gain > 0 else "never (no gain per step)"))


if __name__ == "__main__":
    main()
