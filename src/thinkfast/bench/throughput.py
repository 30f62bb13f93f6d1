"""Decode throughput and peak memory: thinkfast's engine side by side with transformers.

Each measurement runs in a fresh subprocess (``python -m thinkfast.bench.throughput ONE.json``),
so peak memory (max RSS on CPU, max allocated on CUDA) belongs to that run alone and no run
warms another's caches. Weights are random but seeded, and transformers' Llama gets exactly the
thinkfast Llama's weights through the exporter.

Decode tokens/s = batch * (gen - 1) / (T(gen) - T(1)): the time of a generate() with ``gen``
new tokens minus one with a single new token (the prefill), measured the same way for every
engine, greedy, no early stopping.

Each case also times its model's **matmul floor**: one pass of every ``nn.Linear`` weight of the
model (LM head included) over a (batch, in_features) input, in model order, best of five. A decode
step must do at least these products, so no engine's step beats its floor, and
``hf_step_ms / thinkfast_floor_ms`` caps the speed-up any rewrite of the rest could reach
(``*_vs_hf_ratio_ceiling``).

``decode="both"`` (``thinkfast bench --decode both``) instead times thinkfast's reference and fast
decode steps (``SamplingParams.fast`` on a packed model) alternated in one process, and the
batch's step against the bandwidth roofline: weight bytes over the measured read bandwidth.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

KIND_PATTERN = {"llama": "A", "mamba": "M", "hybrid": "AM"}


@dataclass
class BenchCase:
    engine: str  # "thinkfast" | "hf"
    kind: str  # "llama" | "mamba" | "hybrid"
    preset: str
    batch: int
    prompt: int
    gen: int
    threads: int
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 | int8 (thinkfast only: int8 weight-only linears)
    seed: int = 0
    repeats: int = 1
    decode: str = "reference"  # thinkfast's decode step: "fast" | "reference" | "both" (alternated in one process)


def _pattern(kind: str, n_layers: int) -> str:
    unit = KIND_PATTERN[kind]
    return (unit * n_layers)[:n_layers]


def _build_thinkfast(case: BenchCase):
    from ..config import ModelConfig
    from ..models.lm import LanguageModel

    cfg = ModelConfig.from_name(case.preset)
    cfg = cfg.with_pattern(_pattern(case.kind, cfg.n_layers))
    torch.manual_seed(case.seed)
    return LanguageModel(cfg).eval()


def _build_hf(case: BenchCase):
    """transformers' model for the case: Llama with the same weights, or a Mamba2 of the same
    width, depth, heads and state (transformers' Mamba2 blocks have no MLP, so it does less work)."""
    dtype = getattr(torch, case.dtype)
    if case.kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        from ..convert.llama import to_hf_state_dict

        ours = _build_thinkfast(case)
        c = ours.config
        hf_cfg = LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
            num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
            head_dim=c.head_dim, max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
            rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
        )
        model = LlamaForCausalLM(hf_cfg)
        model.load_state_dict(to_hf_state_dict(ours), strict=False)
        model.tie_weights()
        return model.eval().to(dtype)
    if case.kind == "mamba":
        from transformers import Mamba2Config, Mamba2ForCausalLM

        from ..config import ModelConfig

        c = ModelConfig.from_name(case.preset)
        hf_cfg = Mamba2Config(
            vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
            num_heads=c.n_heads, head_dim=c.head_dim, state_size=c.head_dim, n_groups=c.n_heads,
            expand=max(1, c.n_heads * c.head_dim // c.d_model), conv_kernel=4, chunk_size=64,
            tie_word_embeddings=c.tie_embeddings,
        )
        torch.manual_seed(case.seed)
        return Mamba2ForCausalLM(hf_cfg).eval().to(dtype)
    raise ValueError(f"transformers has no architecture for a thinkfast {case.kind}")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_floor_ms(model: torch.nn.Module, batch: int, repeats: int = 5) -> float:
    """Milliseconds for one pass of the model's Linear products at ``batch`` rows (best of
    ``repeats``). The pass streams every weight once, as a decode step does, so the weights do not
    sit in cache between products (a model of this size is far larger than the CPU's caches)."""
    from ..inference.quant import Int8Linear

    linears = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
    p = next(model.parameters())
    xs = {m.in_features: torch.randn(batch, m.in_features, device=p.device, dtype=p.dtype) for m in linears}

    def one_pass():
        for m in linears:
            m(xs[m.in_features])
        if p.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        one_pass()  # warm-up
        return 1000 * min(_timed(one_pass) for _ in range(repeats))


def read_bandwidth_gbps(mb: int = 512, repeats: int = 5) -> float:
    """Memory read bandwidth, GB/s: a sum over an ``mb`` MiB fp32 tensor (far larger than the
    caches), best of ``repeats``, at the process's torch threads."""
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    return x.numel() * 4 / min(_timed(x.sum) for _ in range(repeats)) / 1e9


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step must read: every parameter once (shared ones once), except an
    embedding table that is not also the LM head (a step reads only its rows)."""
    emb = getattr(model, "embed_tokens", None)
    head = getattr(model, "lm_head", None)
    skip = emb.weight if emb is not None and (head is None or head.weight is not emb.weight) else None
    seen, total = set(), 0
    for p in model.parameters():
        if p is skip or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def measure_both(case: BenchCase) -> dict[str, Any]:
    """thinkfast's reference and fast decode steps side by side in this process: the model and a
    packed copy (``prepare_for_inference``), ``max(repeats, 3)`` rounds alternating the two,
    medians of the per-round decode times; with the memory bandwidth and each step as a % of the
    bandwidth roofline (weight bytes / bandwidth)."""
    import copy
    import statistics

    from ..inference.engine import SamplingParams, generate
    from ..inference.quant import inference_dtype, quantize_for_inference

    torch.set_num_threads(case.threads)
    dev = torch.device(case.device)
    g = torch.Generator().manual_seed(case.seed + 1)
    ref = _build_thinkfast(case).to(dev, inference_dtype(case.dtype))
    fast = copy.deepcopy(ref).prepare_for_inference()
    if case.dtype == "int8":
        quantize_for_inference(ref, "int8")
        quantize_for_inference(fast, "int8")
    prompts = torch.randint(0, ref.config.vocab_size, (case.batch, case.prompt), generator=g).tolist()
    models = {"reference": (ref, False), "fast": (fast, True)}

    def run(name, n):
        m, f = models[name]
        return generate(m, prompts, SamplingParams(temperature=0, max_new_tokens=n, eos_token_ids=[], fast=f))

    same = [s.token_ids for o in run("reference", 8) for s in o.samples] == \
        [s.token_ids for o in run("fast", 8) for s in o.samples]
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(max(case.repeats, 3)):
        for name in models:
            t1 = _timed(lambda: run(name, 1))
            times[name].append(max(_timed(lambda: run(name, case.gen)) - t1, 1e-9))
    bw = read_bandwidth_gbps()
    roof_ms = 1000 * weight_bytes(fast) / (bw * 1e9)
    out = dict(asdict(case), params=ref.num_parameters(), same_tokens=same, read_gbps=bw,
               weight_mb=weight_bytes(fast) / 2**20, roofline_ms=roof_ms,
               matmul_floor_ms=matmul_floor_ms(fast, case.batch))
    for name, ts in times.items():
        d = statistics.median(ts)
        step = 1000 * d / max(case.gen - 1, 1)
        out[f"{name}_decode_tokens_per_s"] = case.batch * (case.gen - 1) / d
        out[f"{name}_decode_step_ms"] = step
        out[f"{name}_step_pct_of_roofline"] = 100 * step / roof_ms
    out["fast_vs_reference_ratio"] = out["fast_decode_tokens_per_s"] / out["reference_decode_tokens_per_s"]
    return out


def measure(case: BenchCase) -> dict[str, Any]:
    """Run one case in this process; returns its figures."""
    if case.engine == "thinkfast" and case.decode == "both":
        return measure_both(case)
    torch.set_num_threads(case.threads)
    dev = torch.device(case.device)
    from ..inference.quant import inference_dtype, quantize_for_inference

    dtype = inference_dtype(case.dtype)
    g = torch.Generator().manual_seed(case.seed + 1)
    if case.engine == "thinkfast":
        from ..inference.engine import SamplingParams, generate

        model = _build_thinkfast(case).to(dev, dtype)
        if case.decode == "fast":
            model.prepare_for_inference()
        if case.dtype == "int8":
            quantize_for_inference(model, "int8")
        vocab = model.config.vocab_size
        prompts = torch.randint(0, vocab, (case.batch, case.prompt), generator=g).tolist()

        def run(n):
            generate(model, prompts, SamplingParams(temperature=0, max_new_tokens=n, eos_token_ids=[],
                                                    fast=case.decode == "fast"))
    else:
        if case.dtype == "int8":
            raise ValueError("int8 weight-only linears are thinkfast's; transformers runs float32 / bfloat16")
        model = _build_hf(case).to(dev)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (case.batch, case.prompt), generator=g).to(dev)
        mask = torch.ones_like(ids)

        def run(n):
            with torch.inference_mode():
                model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=None, pad_token_id=0, use_cache=True)
    n_params = sum(p.numel() for p in model.parameters())
    run(2)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t_prefill = min(_timed(lambda: run(1)) for _ in range(case.repeats))
    t_total = min(_timed(lambda: run(case.gen)) for _ in range(case.repeats))
    decode_s = max(t_total - t_prefill, 1e-9)
    out = dict(asdict(case), params=n_params, prefill_s=t_prefill, total_s=t_total, decode_s=decode_s,
               decode_tokens_per_s=case.batch * (case.gen - 1) / decode_s,
               decode_step_ms=1000 * decode_s / max(case.gen - 1, 1),
               matmul_floor_ms=matmul_floor_ms(model, case.batch))
    if dev.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource

        out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def run_in_subprocess(case: BenchCase, timeout: Optional[float] = None) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["OMP_NUM_THREADS"] = str(case.threads)
    proc = subprocess.run([sys.executable, "-m", "thinkfast.bench.throughput", json.dumps(asdict(case))],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        return dict(asdict(case), error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hardware() -> dict[str, Any]:
    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), torch=torch.__version__)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """Decode-throughput ratios named after the two things compared, and for each thinkfast-vs-hf
    pair its ceiling: transformers' decode step over thinkfast's matmul floor."""
    ok = [r for r in results if "decode_tokens_per_s" in r]
    tps = {(r["engine"], r["kind"]): r["decode_tokens_per_s"] for r in ok}
    by = {(r["engine"], r["kind"]): r for r in ok}
    out = {}
    for kind, name in (("llama", "llama"), ("mamba", "mamba"), ("hybrid", "hybrid")):
        if ("thinkfast", kind) in tps and ("hf", kind) in tps:
            out[f"{name}_vs_hf_ratio"] = tps[("thinkfast", kind)] / tps[("hf", kind)]
            floor = by[("thinkfast", kind)].get("matmul_floor_ms")
            if floor:
                out[f"{name}_vs_hf_ratio_ceiling"] = by[("hf", kind)]["decode_step_ms"] / floor
    for kind in ("mamba", "hybrid"):
        if ("thinkfast", kind) in tps and ("thinkfast", "llama") in tps:
            out[f"{kind}_vs_llama_ratio"] = tps[("thinkfast", kind)] / tps[("thinkfast", "llama")]
    return out


if __name__ == "__main__":
    case = BenchCase(**json.loads(sys.argv[1]))
    print(json.dumps(measure(case)))
