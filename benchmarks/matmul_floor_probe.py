"""Can packing or fusing the weights lower the matmul floor of a SmolLM2-135M-shaped Llama decode step?

On this project's 2-core machine the answer varied from run to run (README, "Performance").

Times one pass of the model's Linear products at batch 16 four ways: plain ``F.linear``, MKL's
packed weights (``torch.ops.mkl._mkl_linear``, what inductor's freezing uses on CPU), fused
q|k|v and gate|up products, and both. Best of seven passes each::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/matmul_floor_probe.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from thinkfast.config import ModelConfig
from thinkfast.models.lm import LanguageModel


def best_ms(fn, reps: int = 7) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name(args.preset)).eval()
    B = args.batch
    plain = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    fused = []
    for blk in model.layers:  # a Llama: every mixer is attention
        at, mlp = blk.mixer, blk.mlp
        fused += [torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight]), at.o_proj.weight,
                  torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight]
    fused = [w.contiguous() for w in fused] + [model.lm_head.weight]
    xs = {w.shape[1]: torch.randn(B, w.shape[1]) for w in plain}

    def linear_pass(ws):
        return lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in ws]

    def packed_pass(ws):
        packs = [torch.ops.mkl._mkl_reorder_linear_weight(w, B) for w in ws]
        return lambda: [torch.ops.mkl._mkl_linear(xs[w.shape[1]], p, w, None, B) for w, p in zip(ws, packs)]

    print(f"plain F.linear {best_ms(linear_pass(plain)):.1f} ms | MKL packed {best_ms(packed_pass(plain)):.1f} ms | "
          f"fused {best_ms(linear_pass(fused)):.1f} ms | fused + packed {best_ms(packed_pass(fused)):.1f} ms")


if __name__ == "__main__":
    main()
