"""Which int8 weight-only matmul is fastest here? One pass of a SmolLM2-135M-shaped Llama's Linear
products (LM head included, the matmul floor of a decode step) at batch 1, 16 and 64, every variant
side by side in one process, alternated, median of the rounds::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/quant_kernels.py --threads 2

Variants: fp32 and bf16 ``F.linear``; int8 dequantize-then-``F.linear`` (the reference);
``torch.ops.aten._weight_int8pack_mm`` (PyTorch's CPU weight-only kernel) on bf16 inputs, as
``Int8Linear`` calls it, and on fp32 inputs; dequantize to bf16 then a bf16 ``F.linear``; dynamic per-row int8
activations with ``torch._int_mm``; and torchao's ``Int8WeightOnlyConfig`` /
``Int8DynamicActivationInt8WeightConfig`` when torchao imports (it is optional, never required).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from thinkfast.config import ModelConfig
from thinkfast.inference.quant import Int8Linear, quantize_for_inference


def linears_of(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear))]


class Int8PackFp32(nn.Module):
    """``_weight_int8pack_mm`` fed fp32 inputs directly (what ``Int8Linear`` avoids)."""

    def __init__(self, m: Int8Linear):
        super().__init__()
        self.m, self.in_features = m, m.in_features

    def forward(self, x):
        return torch.ops.aten._weight_int8pack_mm(x, self.m.qweight, self.m.scale)


class DequantBf16(Int8PackFp32):
    """Dequantize to bf16 each call, then a bf16 ``F.linear`` (AMX where the CPU has it)."""

    def forward(self, x):
        w = self.m.qweight.to(torch.bfloat16) * self.m.scale.to(torch.bfloat16)[:, None]
        return torch.nn.functional.linear(x.to(torch.bfloat16), w).float()


def one_pass(mods: list[nn.Module], xs: dict[int, torch.Tensor]) -> None:
    for m in mods:
        m(xs[m.in_features])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from thinkfast.models.lm import LanguageModel

    base = LanguageModel(ModelConfig.from_name("smollm2-135m")).eval()
    variants: dict[str, tuple[list[nn.Module], torch.dtype]] = {
        "fp32": (linears_of(base), torch.float32),
        "bf16": (linears_of(copy.deepcopy(base).to(torch.bfloat16)), torch.bfloat16),
    }
    for k in ("reference", "int8pack", "dynamic"):
        variants[f"int8_{k}"] = (linears_of(quantize_for_inference(copy.deepcopy(base), "int8", kernel=k)),
                                 torch.float32)
    variants["int8pack_fp32_inputs"] = ([Int8PackFp32(m) for m in variants["int8_int8pack"][0]], torch.float32)
    variants["int8_dequant_bf16"] = ([DequantBf16(m) for m in variants["int8_int8pack"][0]], torch.float32)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        for name, cfg in (("torchao_int8_weight_only", Int8WeightOnlyConfig()),
                          ("torchao_int8_dynamic", Int8DynamicActivationInt8WeightConfig())):
            m = copy.deepcopy(base)
            m.lm_head.weight = nn.Parameter(m.lm_head.weight.detach().clone())  # untie: torchao swaps weights
            quantize_(m, cfg)
            variants[name] = (linears_of(m), torch.float32)
    except Exception as e:  # noqa: BLE001 -- optional dependency: report and go on
        print(f"torchao not measured: {type(e).__name__}: {e}")
    results = {}
    with torch.inference_mode():
        for b in (int(x) for x in a.batches.split(",")):
            xs = {dt: {k: torch.randn(b, k, dtype=dt) for k in (576, 1536)} for dt in (torch.float32, torch.bfloat16)}
            times: dict[str, list[float]] = {n: [] for n in variants}
            for mods, dt in variants.values():
                one_pass(mods, xs[dt])  # warm-up
            for _ in range(a.rounds):
                for n, (mods, dt) in variants.items():
                    t0 = time.perf_counter()
                    one_pass(mods, xs[dt])
                    times[n].append(1000 * (time.perf_counter() - t0))
            med = {n: statistics.median(t) for n, t in times.items()}
            results[b] = med
            print(f"batch {b:3d}: " + "  ".join(f"{n} {v:7.1f} ms ({med['fp32'] / v:4.2f}x)" for n, v in med.items()),
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(threads=a.threads, rounds=a.rounds, torch=torch.__version__, median_ms=results), f, indent=2)


if __name__ == "__main__":
    main()
