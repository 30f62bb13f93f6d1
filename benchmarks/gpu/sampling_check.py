"""The sampling engine at the GPU shape: a Llama-3.2-1B-shaped teacher and its hybrid and Llamba
students (random weights), with and without continuous batching (and with shared prompt state).

    python benchmarks/gpu/sampling_check.py --out sampling_check.json          # one H200, < 8 min
    python benchmarks/gpu/sampling_check.py --device cpu --tiny --out smoke.json  # the smoke run

Workload (full size): 16 prompts of 256 tokens x n = 32 samples (512 rows), 256 rows decoded at
once, up to 512 new tokens, temperature 1; random-weight logits are near uniform, so an EOS set of
V / 256 token ids ends a chain with probability ~1/256 per step (chains of varied length, mean
~220 with the 512 cap). Modes:

* ``reference``: 8 prompts per call (256 rows), each call decoded until its last row ends;
* ``continuous``: one call, 256 slots refilled from the waiting samples;
* ``continuous+shared``: the same with one KV copy per prompt (attention models only).

Per model and mode: new tokens/s over the call's wall time, the engine's prefill_s and decode_s
(each after a CUDA sync), decode steps and mean rows per step, peak memory, and whether the
tokens equal the reference's (bf16 matmuls may round differently at other batch sizes, so this
is reported, not asserted). Then the sampler alone at V = 128,256 and 256 rows: Gumbel-max
against 'cdf'. JSON goes to ``--out`` after every model (a timeout leaves what was done).
``--budget-s`` skips what would start after that many seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from thinkfast.config import ModelConfig
from thinkfast.inference.engine import SamplingParams, generate, sample_next
from thinkfast.models.lm import LanguageModel


def _clock(dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def model_configs(tiny: bool) -> dict[str, ModelConfig]:
    if tiny:
        base = dict(vocab_size=256, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=512)
        return {"teacher": ModelConfig.from_dict(dict(base, layer_pattern="AAAA")),
                "hybrid": ModelConfig.from_dict(dict(base, layer_pattern="AMAM")),
                "llamba": ModelConfig.from_dict(dict(base, layer_pattern="MMMM", mamba=dict(kind="discrete")))}
    L = 16
    return {"teacher": ModelConfig.from_name("llama3.2-1b", max_seq_len=2048, layer_pattern="A" * L),
            "hybrid": ModelConfig.from_name("llama3.2-1b", max_seq_len=2048, layer_pattern="AM" * (L // 2)),
            "llamba": ModelConfig.from_name("llama3.2-1b", max_seq_len=2048, layer_pattern="M" * L,
                                            mamba=dict(kind="discrete"))}


class _StepCounter:
    def __init__(self, model):
        self.steps = self.rows = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if args[0].shape[1] == 1:
            self.steps += 1
            self.rows += args[0].shape[0]


def run_mode(model, prompts, base: dict, mode: str, slots: int, n: int) -> tuple[dict, list]:
    dev = model.device
    kw = {"reference": {}, "continuous": dict(continuous=True, max_batch_rows=slots),
          "continuous+shared": dict(continuous=True, max_batch_rows=slots, shared_prompt=True)}[mode]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    counter = _StepCounter(model)
    t0 = _clock(dev)
    outs = generate(model, prompts, SamplingParams(n=n, **base, **kw), batch_size=max(1, slots // n))
    wall = _clock(dev) - t0
    counter.handle.remove()
    new = sum(len(s.token_ids) for o in outs for s in o.samples)
    per_out = [o.timing for o in outs]  # each output repeats its call's timing: 1 / batch_prompts each
    rec = dict(wall_s=wall, new_tokens=new, tokens_per_s=new / wall,
               prefill_s=sum(t["prefill_s"] / t["batch_prompts"] for t in per_out),
               decode_s=sum(t["decode_s"] / t["batch_prompts"] for t in per_out),
               decode_steps=counter.steps, mean_rows_per_step=counter.rows / max(1, counter.steps),
               peak_gib=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None)
    return rec, [[s.token_ids for s in o.samples] for o in outs]


@torch.inference_mode()
def sampler_check(dev: torch.device, rows: int, V: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    logits = (-2.0 * torch.log(torch.arange(1, V + 1, dtype=torch.float32)))[torch.randperm(V, generator=g)]
    logits = logits.expand(rows, V).contiguous().to(dev)
    keys = torch.arange(rows, dtype=torch.int64, device=dev)
    out = {}
    for setting, kw in {"temperature": {}, "top_p=0.95": dict(top_p=0.95), "top_k=50": dict(top_k=50)}.items():
        for sampler in ("gumbel", "cdf"):
            sp = SamplingParams(sampler=sampler, **kw)
            sample_next(logits, sp, keys, 0)
            t = _clock(dev)
            for i in range(reps):
                sample_next(logits, sp, keys, i)
            out[f"{setting}/{sampler}_ms"] = (_clock(dev) - t) / reps * 1e3
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models and workload (the CPU smoke run)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="teacher,hybrid,llamba")
    ap.add_argument("--budget-s", type=float, default=420.0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu --tiny for the smoke run")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if args.tiny:
        P, n, slots, plen, max_new, V_sampler, rows_sampler = 4, 4, 8, 8, 12, 1024, 8
    else:
        P, n, slots, plen, max_new, V_sampler, rows_sampler = 16, 32, 256, 256, 512, 128256, 256
    res: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "dtype": str(dtype),
                 "shape": dict(prompts=P, n=n, slots=slots, prompt_tokens=plen, max_new_tokens=max_new,
                               reference_prompts_per_call=slots // n), "models": {}, "skipped": []}

    def save():
        res["elapsed_s"] = time.perf_counter() - start
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)

    for name in args.models.split(","):
        if time.perf_counter() - start > args.budget_s:
            res["skipped"].append(name)
            continue
        cfg = model_configs(args.tiny)[name]
        torch.manual_seed(0)
        with torch.device(dev):
            model = LanguageModel(cfg).to(dtype).eval()
        V = cfg.vocab_size
        gen = torch.Generator().manual_seed(1)
        mean_len = 6 if args.tiny else 256  # EOS ids: about 1 / mean_len of the (near-uniform) mass
        n_eos = max(1, V // mean_len)
        prompts = [torch.randint(0, V - n_eos, (plen,), generator=gen).tolist() for _ in range(P)]
        base = dict(temperature=1.0, max_new_tokens=max_new, seed=0, eos_token_ids=list(range(V - n_eos, V)))
        modes = ["reference", "continuous"] + (["continuous+shared"] if "A" in cfg.layer_pattern else [])
        rec, ref_tokens = {}, None
        for mode in modes:
            if time.perf_counter() - start > args.budget_s:
                res["skipped"].append(f"{name}/{mode}")
                continue
            r, toks = run_mode(model, prompts, base, mode, slots, n)
            if ref_tokens is None:
                ref_tokens = toks
                lens = [len(t) for o in toks for t in o]
                rec["chain_length"] = dict(mean=sum(lens) / len(lens), min=min(lens), max=max(lens))
            r["same_tokens_as_reference"] = toks == ref_tokens
            rec[mode] = r
            print(f"{name} {mode}: {r['tokens_per_s']:.0f} tokens/s ({r['new_tokens']} tokens, wall {r['wall_s']:.1f} s,"
                  f" prefill {r['prefill_s']:.2f} s, decode {r['decode_s']:.1f} s, {r['decode_steps']} steps of "
                  f"{r['mean_rows_per_step']:.0f} rows, same tokens {r['same_tokens_as_reference']})", flush=True)
        if "reference" in rec and "continuous" in rec:
            rec["continuous_over_reference_tokens_per_s"] = rec["continuous"]["tokens_per_s"] / rec["reference"]["tokens_per_s"]
        res["models"][name] = rec
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        save()
    if time.perf_counter() - start <= args.budget_s:
        res["sampler"] = dict(rows=rows_sampler, vocab=V_sampler, **sampler_check(dev, rows_sampler, V_sampler, 5))
        print("sampler:", {k: round(v, 2) for k, v in res["sampler"].items()}, flush=True)
    else:
        res["skipped"].append("sampler")
    save()
    return res


if __name__ == "__main__":
    main()
