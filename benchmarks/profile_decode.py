"""Where a decode step's time goes, for the demo's three models at the demo's sampling shape.

Builds the demo teacher's shape (``ModelConfig`` preset "demo": d=128, 4 layers, 4 query / 2 KV
heads) as a Transformer, a pure discrete-Mamba (Llamba) stack and a 50% mamba2 hybrid, fills a
cache with a prompt, then profiles ``--steps`` one-token decode steps with ``torch.profiler`` and
prints each model's mean step time and its top operators by self CPU time.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/profile_decode.py --batch 256 --prompt 460 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from thinkfast.config import ModelConfig  # noqa: E402
from thinkfast.models.lm import LanguageModel  # noqa: E402

MODELS = {"teacher": ("AAAA", "mamba2"), "llamba": ("MMMM", "discrete"), "hybrid": ("AMAM", "mamba2")}


def build(pattern: str, kind: str, preset: str = "demo") -> LanguageModel:
    n_layers = ModelConfig.from_name(preset).n_layers
    pattern = (pattern * n_layers)[:n_layers]  # the 4-layer pattern repeated to the preset's depth
    cfg = ModelConfig.from_name(preset, layer_pattern=pattern, mamba={"kind": kind})
    torch.manual_seed(0)
    return LanguageModel(cfg).eval()


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=460)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--preset", default="demo", help="a ModelConfig preset, e.g. smollm2-135m")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        pattern, kind = MODELS[name]
        model = build(pattern, kind, args.preset)
        cache = model.allocate_cache(args.batch, args.prompt + args.steps + 8)
        ids = torch.randint(4, model.config.vocab_size, (args.batch, args.prompt))
        model(ids, cache=cache, logits_to_keep=1)  # prefill
        tok = torch.randint(4, model.config.vocab_size, (args.batch, 1))
        for _ in range(3):  # warm-up
            model(tok, cache=cache)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                model(tok, cache=cache)
        step_ms = 1000 * (time.perf_counter() - t0) / args.steps
        print(f"\n== {name} ({pattern}, {kind}): {step_ms:.1f} ms per decode step under the profiler "
              f"(batch {args.batch}, context {args.prompt})")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top,
                                        max_name_column_width=40))


if __name__ == "__main__":
    main()
