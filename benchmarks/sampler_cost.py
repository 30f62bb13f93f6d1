"""The sampler's cost per decode step, reference (Gumbel-max over the vocabulary) against 'cdf'
(one uniform per row over the top-k / nucleus candidates), and its share of a decode step.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/sampler_cost.py --json sampler_cost.json

1. Sampler alone at ``--rows`` (default 64; 256 is the demo's rows per step) for V = 49,152 (SmolLM2) and
   128,256 (Llama-3.2-1B), three settings: plain temperature, top-p 0.95, top-k 50 + top-p 0.95,
   on LM-like logits (Zipf: the rank-r token has probability ~ r^-2 at T = 1, ranks shuffled
   over the vocabulary; the 0.95 nucleus is ~12 tokens), and top-p 0.95 on wide logits
   (normal, std 3: a nucleus of thousands of tokens, so the 'cdf' sampler's wider candidates or
   full-sort fallback run). The two samplers alternate on the same logits; each figure is the
   median of ``--repeat`` rounds.
2. Share of a decode step: the model's decode forward pass (random weights, one token per row
   against a 256-token cache) at a smaller batch that a CPU can run -- SmolLM2-135M-shaped at 16
   rows, Llama-3.2-1B-shaped at 4 rows (``--step-rows``) -- and each sampler at the same rows;
   share = sampler / (forward + sampler). Timestamps follow a device sync.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from thinkfast.config import ModelConfig  # noqa: E402
from thinkfast.inference.engine import SamplingParams, sample_next  # noqa: E402
from thinkfast.models.lm import LanguageModel  # noqa: E402

SETTINGS = {"temperature": dict(temperature=1.0), "top_p=0.95": dict(temperature=1.0, top_p=0.95),
            "top_k=50,top_p=0.95": dict(temperature=1.0, top_k=50, top_p=0.95)}
SHAPES = {49152: "smollm2-135m", 128256: "llama3.2-1b"}


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _time(fn, device, reps: int) -> float:
    fn()
    t = _clock(device)
    for _ in range(reps):
        fn()
    return (_clock(device) - t) / reps


def make_logits(kind: str, rows: int, V: int, g: torch.Generator) -> torch.Tensor:
    """(rows, V) float32: 'zipf' (log-probabilities -2 log rank, ranks shuffled per row) or 'wide'
    (normal, std 3)."""
    if kind == "wide":
        return torch.randn(rows, V, generator=g) * 3
    base = -2.0 * torch.log(torch.arange(1, V + 1, dtype=torch.float32))
    return torch.stack([base[torch.randperm(V, generator=g)] for _ in range(rows)])


@torch.inference_mode()
def sampler_times(logits: torch.Tensor, repeat: int, reps: int, settings=None) -> dict:
    """{setting: {sampler: seconds per call}} on logits (R, V), the samplers alternating."""
    keys = torch.arange(logits.shape[0], dtype=torch.int64, device=logits.device) * 977 + 1
    out = {}
    for name, kw in (settings or SETTINGS).items():
        runs = {"gumbel": [], "cdf": []}
        for r in range(repeat):
            for sampler in (("gumbel", "cdf") if r % 2 == 0 else ("cdf", "gumbel")):
                sp = SamplingParams(sampler=sampler, **kw)
                runs[sampler].append(_time(lambda: sample_next(logits, sp, keys, 3), logits.device, reps))
        med = {k: statistics.median(v) for k, v in runs.items()}
        out[name] = dict(gumbel_s=med["gumbel"], cdf_s=med["cdf"], gumbel_over_cdf=med["gumbel"] / med["cdf"])
    return out


@torch.inference_mode()
def step_time(preset: str, rows: int, device: torch.device, repeat: int) -> float:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name(preset, max_seq_len=1024)).to(device).eval()
    cache = model.allocate_cache(rows, 256 + 2 * repeat + 4)
    model(torch.randint(0, 1000, (rows, 256), device=device), cache=cache, logits_to_keep=1)
    tok = torch.randint(0, 1000, (rows, 1), device=device)
    times = []
    for _ in range(repeat):
        t = _clock(device)
        model(tok, cache=cache)
        times.append(_clock(device) - t)
    return statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--step-rows", default="16,4", help="rows of the decode step for V=49152, V=128256")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1, help="calls per timed round")
    ap.add_argument("--no-step", action="store_true", help="skip the model step (the sampler alone)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    res: dict = {"rows": args.rows, "device": str(dev), "threads": args.threads}
    step_rows = [int(x) for x in args.step_rows.split(",")]
    g = torch.Generator().manual_seed(0)
    for (V, preset), srows in zip(SHAPES.items(), step_rows):
        logits = make_logits("zipf", args.rows, V, g).to(dev)
        r = {"sampler_at_rows": sampler_times(logits, args.repeat, args.reps)}
        wide = make_logits("wide", args.rows, V, g).to(dev)
        r["sampler_at_rows"]["top_p=0.95,wide"] = sampler_times(wide, args.repeat, args.reps,
                                                                 {"top_p=0.95": SETTINGS["top_p=0.95"]})["top_p=0.95"]
        del wide
        for name, t in r["sampler_at_rows"].items():
            print(f"V={V} rows={args.rows} {name}: gumbel {t['gumbel_s'] * 1e3:.1f} ms, cdf {t['cdf_s'] * 1e3:.1f} ms"
                  f" ({t['gumbel_over_cdf']:.1f}x)", flush=True)
        if not args.no_step:
            step = step_time(preset, srows, dev, max(3, args.repeat // 2))
            small = sampler_times(logits[:srows], args.repeat, args.reps)
            r["decode_step"] = dict(model=preset, rows=srows, forward_s=step, sampler=small, share={
                name: dict(gumbel=t["gumbel_s"] / (step + t["gumbel_s"]), cdf=t["cdf_s"] / (step + t["cdf_s"]))
                for name, t in small.items()})
            for name, sh in r["decode_step"]["share"].items():
                print(f"V={V} {preset} step at {srows} rows ({step * 1e3:.0f} ms forward) {name}: sampler share "
                      f"gumbel {sh['gumbel'] * 100:.1f}% -> cdf {sh['cdf'] * 100:.1f}%", flush=True)
        res[str(V)] = r
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
