"""Continuous batching against the reference path, side by side in one run.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/continuous_batching.py --json cb.json

Three workloads, random weights. The first two compare continuous batching with the reference
path, with chains of varied length forced by an EOS set sized so that a
token ends a chain with probability about 1 / ``mean_len`` per step (random-weight logits are
near uniform), capped by ``max_new_tokens``:

* ``demo``: the demo's sampling shape -- its teacher (the shipped demo teacher's config:
  4 layers, d_model 128, vocab 217, "AAAA"), a hybrid ("AMAM", Mamba-2 mixers) and a Llamba
  ("MMMM", discrete mixers) of the same size; 256 rows decoded at once (the demo's 8 problems x
  32 samples), prompts of 42-78 tokens, up to 400 new tokens, mean chain ~250. The reference
  decodes 8 problems per call; continuous batching takes all problems in one call with 256 slots.
* ``smollm2``: a SmolLM2-135M-shaped Transformer (30 layers, d_model 576, vocab 49,152),
  6 problems x 4 samples, 8 rows at once (2 problems per reference call), prompts of 48-96
  tokens, up to 64 new tokens, mean chain ~30 (sized for a CPU).

* ``shared``: shared prompt state, one prompt of 1024 tokens, n = 64 samples of 32 new tokens,
  on a small Transformer (``SHARED_MODEL``: 4 layers, d_model 256, 2 KV heads of 64, vocab
  1024) -- the reference path (the prompt's KV repeated 64 ways), continuous batching without
  sharing (repeated too) and with it; each run in its own process, its peak memory (RSS on a
  CPU, ``max_memory_allocated`` on CUDA) above the model's, and decode tokens/s (engine
  ``decode_s``).

For each model of the first two: new tokens per second of wall time (prefill + decode, the whole call) and
seconds per problem (wall / problems), reference and continuous, and their ratio; the decode
forward passes each made and their mean rows (a count, free of timing noise); the two runs must
give the same tokens (checked, reported as ``same_tokens``). Timings follow a device sync.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from thinkfast.config import ModelConfig  # noqa: E402
from thinkfast.inference.engine import SamplingParams, generate  # noqa: E402
from thinkfast.models.lm import LanguageModel  # noqa: E402

DEMO = dict(vocab_size=217, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384, max_seq_len=1024,
            tie_embeddings=True)


def _models(workload: str) -> dict[str, LanguageModel]:
    torch.manual_seed(0)
    if workload == "demo":
        return {"teacher": LanguageModel(ModelConfig.from_dict(dict(DEMO, layer_pattern="AAAA"))),
                "hybrid": LanguageModel(ModelConfig.from_dict(dict(DEMO, layer_pattern="AMAM"))),
                "llamba": LanguageModel(ModelConfig.from_dict(dict(DEMO, layer_pattern="MMMM",
                                                                   mamba=dict(kind="discrete"))))}
    return {"smollm2-135m": LanguageModel(ModelConfig.from_name("smollm2-135m", max_seq_len=2048))}


def _eos(vocab: int, mean_len: float) -> list[int]:
    k = max(1, round(vocab / mean_len))
    return list(range(vocab - k, vocab))


def _sync_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _StepCounter:
    """Counts the model's decode forward passes (one token per row) and the rows in them."""

    def __init__(self, model):
        self.steps = self.rows = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        ids = args[0]
        if ids.shape[1] == 1:
            self.steps += 1
            self.rows += ids.shape[0]


def run_pair(model, prompts, n, max_new, mean_len, slots, temperature=1.0, seed=0, repeat=1) -> dict:
    """Reference and continuous, ``repeat`` rounds alternating R C, C R, ...: each figure is the
    mean of its runs, so with an even ``repeat`` a load that drifts weighs on both alike."""
    model.eval()
    vocab = model.config.vocab_size
    base = dict(n=n, temperature=temperature, max_new_tokens=max_new, seed=seed, eos_token_ids=_eos(vocab, mean_len))
    per_batch = max(1, slots // n)
    modes = {"reference": ({}, per_batch), "continuous": (dict(continuous=True, max_batch_rows=slots), None)}
    walls: dict = {k: [] for k in modes}
    out, toks = {}, {}
    order = [["reference", "continuous"], ["continuous", "reference"]]
    for name in [m for r in range(repeat) for m in order[r % 2]]:
        kw, bs = modes[name]
        counter = _StepCounter(model)
        t0 = _sync_clock(model.device)
        outs = generate(model, prompts, SamplingParams(**base, **kw), batch_size=bs)
        wall = _sync_clock(model.device) - t0
        counter.handle.remove()
        walls[name].append(wall)
        new = sum(len(s.token_ids) for o in outs for s in o.samples)
        wall = sum(walls[name]) / len(walls[name])
        out[name] = dict(wall_s=wall, walls_s=walls[name], new_tokens=new, tokens_per_s=new / wall,
                         seconds_per_problem=wall / len(prompts),
                         # each output repeats its call's timing: 1 / batch_prompts of it per output
                         engine_prefill_s=sum(o.timing["prefill_s"] / o.timing["batch_prompts"] for o in outs),
                         engine_decode_s=sum(o.timing["decode_s"] / o.timing["batch_prompts"] for o in outs),
                         decode_steps=counter.steps, mean_rows_per_decode_step=counter.rows / max(1, counter.steps))
        toks[name] = [[s.token_ids for s in o.samples] for o in outs]
    lens = [len(t) for o in toks["reference"] for t in o]
    out["same_tokens"] = toks["reference"] == toks["continuous"]
    out["continuous_over_reference_tokens_per_s"] = out["continuous"]["tokens_per_s"] / out["reference"]["tokens_per_s"]
    out["reference_over_continuous_decode_steps"] = out["reference"]["decode_steps"] / out["continuous"]["decode_steps"]
    out["chain_length"] = dict(mean=sum(lens) / len(lens), min=min(lens), max=max(lens))
    out["shape"] = dict(problems=len(prompts), n=n, slots=slots, reference_problems_per_call=per_batch,
                        max_new_tokens=max_new, prompt_tokens=[min(map(len, prompts)), max(map(len, prompts))])
    return out


SHARED_MODEL = dict(vocab_size=1024, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512,
                    max_seq_len=2048, tie_embeddings=True, layer_pattern="AAAA")
SHARED_MODES = {"repeated": {}, "repeated-slots": dict(continuous=True),
                "shared": dict(continuous=True, shared_prompt=True)}


def _peak_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def shared_child(mode: str, prompt_len: int, n: int, max_new: int, device: str) -> dict:
    """One mode of the shared-prompt workload, in its own process (so peak memory is its own)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = LanguageModel(ModelConfig.from_dict(SHARED_MODEL)).to(dev).eval()
    prompt = [random.Random(0).randrange(1000) for _ in range(prompt_len)]
    base = _peak_bytes() if dev.type == "cpu" else 0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    sp = SamplingParams(n=n, temperature=1.0, max_new_tokens=max_new, eos_token_ids=[], seed=0, **SHARED_MODES[mode])
    out = generate(model, [prompt], sp)[0]
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _peak_bytes()
    t = out.timing
    return dict(mode=mode, peak_bytes_over_model=peak - base, decode_s=t["decode_s"], prefill_s=t["prefill_s"],
                decode_tokens_per_s=t["new_tokens"] / t["decode_s"], tokens=[s.token_ids for s in out.samples])


def shared_workload(prompt_len: int, n: int, max_new: int, device: str) -> dict:
    """Repeated (the reference path, and continuous batching without sharing) against shared,
    each mode in a fresh process, in the order repeated, repeated-slots, shared, shared,
    repeated-slots, repeated; figures are means of a mode's two runs."""
    import subprocess
    import sys

    runs: dict = {m: [] for m in SHARED_MODES}
    for mode in list(SHARED_MODES) + list(SHARED_MODES)[::-1]:
        cmd = [sys.executable, __file__, "--shared-child", mode, "--prompt-len", str(prompt_len), "--n", str(n),
               "--max-new", str(max_new), "--device", device]
        runs[mode].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    res: dict = {"shape": dict(model=SHARED_MODEL, prompt_len=prompt_len, n=n, max_new_tokens=max_new, device=device)}
    for mode, rs in runs.items():
        res[mode] = dict(peak_mib_over_model=[r["peak_bytes_over_model"] / 2**20 for r in rs],
                         decode_tokens_per_s=sum(r["decode_tokens_per_s"] for r in rs) / len(rs),
                         decode_s=[r["decode_s"] for r in rs])
    res["same_tokens"] = all(r["tokens"] == runs["repeated"][0]["tokens"] for rs in runs.values() for r in rs)
    res["shared_over_repeated_decode_tokens_per_s"] = (res["shared"]["decode_tokens_per_s"]
                                                       / res["repeated"]["decode_tokens_per_s"])
    res["shared_over_repeated_slots_decode_tokens_per_s"] = (res["shared"]["decode_tokens_per_s"]
                                                             / res["repeated-slots"]["decode_tokens_per_s"])
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="demo,smollm2,shared")
    ap.add_argument("--demo-problems", type=int, default=16, help="problems of 32 samples (8 per reference call)")
    ap.add_argument("--smollm-problems", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="a small run to check the script")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of R C, C R, ...")
    ap.add_argument("--json")
    ap.add_argument("--prompt-len", type=int, default=1024, help="shared workload")
    ap.add_argument("--n", type=int, default=64, help="shared workload: samples of the one prompt")
    ap.add_argument("--max-new", type=int, default=32, help="shared workload")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shared-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.shared_child:
        print(json.dumps(shared_child(args.shared_child, args.prompt_len, args.n, args.max_new, args.device)))
        return {}
    rng = random.Random(0)
    res: dict = {"threads": args.threads, "device": "cpu"}
    for wl in args.workloads.split(","):
        if wl == "shared":
            r = res["shared"] = shared_workload(*((64, 4, 4) if args.quick else (args.prompt_len, args.n, args.max_new)),
                                                args.device)
            print(f"shared prompt {r['shape']['prompt_len']} x n {r['shape']['n']}: " + " | ".join(
                f"{m} peak {r[m]['peak_mib_over_model'][0]:.0f}/{r[m]['peak_mib_over_model'][1]:.0f} MiB, "
                f"decode {r[m]['decode_tokens_per_s']:.0f} tok/s" for m in SHARED_MODES)
                + f" | shared/repeated decode {r['shared_over_repeated_decode_tokens_per_s']:.2f}x"
                + f" | same tokens {r['same_tokens']}", flush=True)
            continue
        for name, model in _models(wl).items():
            V = model.config.vocab_size
            if wl == "demo":
                P, n, slots, max_new, mean = (4, 4, 8, 40, 20) if args.quick else (args.demo_problems, 32, 256, 400, 250)
                plen = (42, 78)
            else:
                P, n, slots, max_new, mean = (2, 2, 2, 8, 4) if args.quick else (args.smollm_problems, 4, 8, 64, 30)
                plen = (48, 96)
            prompts = [[rng.randrange(V - 1) for _ in range(rng.randint(*plen))] for _ in range(P)]
            r = run_pair(model, prompts, n, max_new, mean, slots, repeat=args.repeat)
            res[f"{wl}/{name}"] = r
            print(f"{wl}/{name}: reference {r['reference']['tokens_per_s']:.0f} tok/s "
                  f"{r['reference']['seconds_per_problem']:.3f} s/problem | continuous "
                  f"{r['continuous']['tokens_per_s']:.0f} tok/s {r['continuous']['seconds_per_problem']:.3f} s/problem"
                  f" | ratio {r['continuous_over_reference_tokens_per_s']:.2f}x | decode steps "
                  f"{r['reference']['decode_steps']} / {r['continuous']['decode_steps']}, rows per step "
                  f"{r['reference']['mean_rows_per_decode_step']:.0f} / {r['continuous']['mean_rows_per_decode_step']:.0f}"
                  f" | same tokens {r['same_tokens']} | "
                  f"chains {r['chain_length']['min']}-{r['chain_length']['max']} mean "
                  f"{r['chain_length']['mean']:.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
