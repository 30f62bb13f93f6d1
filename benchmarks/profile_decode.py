"""Where a decode step's time goes, for the demo's three models at the demo's sampling shape.

Builds the demo teacher's shape (``ModelConfig`` preset "demo": d=128, 4 layers, 4 query / 2 KV
heads) as a Transformer, a pure discrete-Mamba (Llamba) stack and a 50% mamba2 hybrid, fills a
cache with a prompt, then profiles ``--steps`` one-token decode steps with ``torch.profiler`` and
prints each model's mean step time and its top operators by self CPU time, for the reference
decode step and the fast one (``LanguageModel.prepare_for_inference`` and ``forward(fast=True)``),
with the operator count per step and the self CPU time outside the matrix products.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/profile_decode.py --batch 256 --prompt 460 --threads 1
    OMP_WAIT_POLICY=PASSIVE python benchmarks/profile_decode.py --preset smollm2-135m --models teacher \
        --batch 1 --prompt 64 --threads 2
"""

from __future__ import annotations

import argparse
import copy
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
    ap.add_argument("--paths", default="reference,fast", help="reference and/or fast")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        pattern, kind = MODELS[name]
        ref = build(pattern, kind, args.preset)
        for path in args.paths.split(","):
            fast = path == "fast"
            model = copy.deepcopy(ref).prepare_for_inference() if fast else ref
            cache = model.allocate_cache(args.batch, args.prompt + args.steps + 8)
            ids = torch.randint(4, model.config.vocab_size, (args.batch, args.prompt))
            model(ids, cache=cache, logits_to_keep=1)  # prefill
            tok = torch.randint(4, model.config.vocab_size, (args.batch, 1))
            for _ in range(3):  # warm-up
                model(tok, cache=cache, fast=fast)
            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    model(tok, cache=cache, fast=fast)
            step_ms = 1000 * (time.perf_counter() - t0) / args.steps
            ev = prof.key_averages()
            n_ops = sum(e.count for e in ev if e.key.startswith("aten::")) / args.steps
            mm = sum(e.self_cpu_time_total for e in ev if e.key in ("aten::mm", "aten::addmm"))
            other = (sum(e.self_cpu_time_total for e in ev) - mm) / args.steps / 1000
            print(f"\n== {name} ({pattern}, {kind}), {path}: {step_ms:.1f} ms per decode step under the profiler "
                  f"(batch {args.batch}, context {args.prompt}); {n_ops:.0f} aten ops per step, "
                  f"{mm / args.steps / 1000:.1f} ms self CPU in mm/addmm, {other:.1f} ms in the rest")
            print(ev.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))
            del model


if __name__ == "__main__":
    main()
