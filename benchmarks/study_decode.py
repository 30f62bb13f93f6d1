"""Decode tokens/s at the study's shapes: the demo's models where its sampling spends its time,
and a pure-Mamba (Llamba) student beside its same-shape Llama at a 2k-token context.

    python benchmarks/study_decode.py demo    --rounds 3     # (a) the demo's shape
    python benchmarks/study_decode.py context --rounds 3     # (b) batch 64 after a 2048-token prompt

(a) ``demo``: the shipped demo teacher and two students built from it by
``convert.from_attention.student_from_teacher`` as ``thinkfast demo`` shapes them (demo/recipes.py):
Llamba (keep 0, discrete mixers, the demo's decay bias) and the hybrid (keep 0.5, MambaInLlama
mixers; evenly spaced attention layers, where the demo keeps the ones its leave-one-out selection
picks: the same count, so the same cost). Untrained: speed does not depend on the weights' values.
Each call is one engine call of the demo's sampling: ``--problems`` (8) zero-shot test prompts of
the synthetic task x ``--samples`` (32) samples = 256 rows, temperature 0.6, exactly ``--gen``
(250) new tokens (no EOS, so every model decodes the same chain length; the teacher's chains are
155-354 tokens).

(b) ``context``: a Llama of ``--preset`` (random weights, context raised to fit) and its Llamba and
hybrid students, one ``--prompt`` (2048) token prompt, ``--rows`` (64) samples of ``--gen``
(64) tokens from its one prefill (the engine copies the prefilled state to every row, as the study
samples n chains per problem).

Decode tokens/s is the engine's own split of each call (``GenerationOutput.timing``: new tokens /
decode seconds, the prefill apart), on its fast decode step by default (``--decode``). Models
alternate within each round (rotated order), one process, ``--threads`` threads; the table shows
medians, and each model's ratio to the reference model as the median of its per-round ratios.
Cache MB: the inference state each model allocates for the call's rows and positions (KV cache
for attention layers, conv window and SSM state for Mamba layers), summed tensor by tensor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Callable, Optional

import torch


def cache_mb(model, rows: int, positions: int) -> float:
    """MiB of the inference state ``model`` allocates for ``rows`` x ``positions``."""
    cache = model.allocate_cache(rows, positions)
    total = sum(t.numel() * t.element_size() for st in cache.layers for t in vars(st).values()
                if isinstance(t, torch.Tensor))
    return total / 2**20


def students(teacher, decay_bias: Optional[list[float]], seed: int = 0) -> dict[str, Any]:
    """The demo's two student shapes from ``teacher`` (untrained)."""
    from thinkfast.convert.from_attention import student_from_teacher

    mamba = {"decay_bias": decay_bias} if decay_bias else None
    return {"llamba": student_from_teacher(teacher, keep=0.0, kind="discrete", seed=seed, mamba=mamba).eval(),
            "hybrid": student_from_teacher(teacher, keep=0.5, kind="mamba2", seed=seed).eval()}


def prepare(models: dict[str, Any], decode: str) -> dict[str, Any]:
    """``decode`` "fast": q|k|v and gate|up packed (``prepare_for_inference``), as the sampling
    backend does before the engine's fast step; "reference": as built."""
    return {k: m.prepare_for_inference() if decode == "fast" else m for k, m in models.items()}


def one_call(model, prompts: list[list[int]], n: int, gen: int, temperature: float, seed: int,
             decode: str = "fast") -> dict[str, float]:
    from thinkfast.inference.engine import SamplingParams, generate

    out = generate(model, prompts, SamplingParams(n=n, temperature=temperature, max_new_tokens=gen,
                                                  eos_token_ids=[], seed=seed, fast=decode == "fast"))
    t = out[0].timing
    return {"decode_tokens_per_s": t["new_tokens"] / t["decode_s"], "prefill_s": t["prefill_s"],
            "decode_s": t["decode_s"], "rows": t["batch_rows"], "new_tokens": t["new_tokens"]}


def alternate(models: dict[str, Any], call: Callable[[Any, int], dict[str, float]], rounds: int,
              log: Callable[[str], None] = print) -> dict[str, list[dict[str, float]]]:
    """Every model once per round, the order rotated each round; returns each model's calls."""
    names = list(models)
    res: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    call(models[names[0]], -1)  # warm-up (allocator, threads), not counted
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            res[name].append(call(models[name], r))
            log(f"round {r + 1} {name:8s} {res[name][-1]['decode_tokens_per_s']:9.0f} tok/s")
    return res


def round_ratios(res: dict[str, list[dict[str, float]]], ref: str) -> dict[str, list[float]]:
    """Each model's tokens/s over ``ref``'s, round by round (the two ran minutes apart at most,
    so a ratio of one round is less noisy on a shared machine than a ratio of medians)."""
    return {k: [c["decode_tokens_per_s"] / r["decode_tokens_per_s"] for c, r in zip(v, res[ref])]
            for k, v in res.items()}


def table(res: dict[str, list[dict[str, float]]], mem: dict[str, float], params: dict[str, int], ref: str) -> str:
    rat = round_ratios(res, ref)
    lines = [f"| model | params | decode tokens/s (median, range) | vs {ref} (median of rounds, range) | cache MB |",
             "|---|---|---|---|---|"]
    for k, v in res.items():
        tps = [c["decode_tokens_per_s"] for c in v]
        lines.append(f"| {k} | {params[k] / 1e6:.2f}M | {statistics.median(tps):.0f} ({min(tps):.0f}-{max(tps):.0f}) | "
                     f"{statistics.median(rat[k]):.2f}x ({min(rat[k]):.2f}-{max(rat[k]):.2f}) | {mem[k]:.1f} |")
    return "\n".join(lines)


def run_demo_shape(a: argparse.Namespace) -> dict[str, Any]:
    from thinkfast.demo.config import DemoConfig, demo_task
    from thinkfast.demo.recipes import load_shipped_teacher, shipped_teacher_task
    from thinkfast.demo.sampling import demo_prompt_ids

    teacher, tok = load_shipped_teacher()
    models = {"teacher": teacher.eval(), **students(teacher, DemoConfig().llamba_decay_bias)}
    task = demo_task(shipped_teacher_task())
    prompts = demo_prompt_ids(task, task.load("test", limit=a.problems), tok)
    positions = max(map(len, prompts)) + a.gen
    mem = {k: cache_mb(m, a.problems * a.samples, positions) for k, m in models.items()}
    models = prepare(models, a.decode)
    print(f"{a.problems} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens) x {a.samples} samples, "
          f"{a.gen} new tokens, {a.threads} thread(s), {a.decode} decode", flush=True)
    with torch.inference_mode():
        res = alternate(models, lambda m, r: one_call(m, prompts, a.samples, a.gen, 0.6, a.seed + r, a.decode), a.rounds)
    return dict(results=res, cache_mb=mem, params={k: sum(p.numel() for p in m.parameters()) for k, m in models.items()})


def run_context(a: argparse.Namespace) -> dict[str, Any]:
    from thinkfast.config import ModelConfig
    from thinkfast.models.lm import LanguageModel

    cfg = ModelConfig.from_name(a.preset)
    cfg = ModelConfig.from_name(a.preset, layer_pattern="A" * cfg.n_layers,
                                max_seq_len=max(cfg.max_seq_len, a.prompt + a.gen))
    torch.manual_seed(a.seed)
    llama = LanguageModel(cfg).eval()
    models = {"llama": llama, **students(llama, None, a.seed)}
    g = torch.Generator().manual_seed(a.seed)
    prompt = torch.randint(0, cfg.vocab_size, (1, a.prompt), generator=g).tolist()
    mem = {k: cache_mb(m, a.rows, a.prompt + a.gen) for k, m in models.items()}
    models = prepare(models, a.decode)
    print(f"{a.preset}: 1 prompt of {a.prompt} tokens x {a.rows} rows, {a.gen} new tokens, "
          f"{a.threads} thread(s), {a.decode} decode", flush=True)
    with torch.inference_mode():
        res = alternate(models, lambda m, r: one_call(m, prompt, a.rows, a.gen, 1.0, a.seed + r, a.decode), a.rounds)
    return dict(results=res, cache_mb=mem, params={k: sum(p.numel() for p in m.parameters()) for k, m in models.items()})


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("demo", help="(a) the demo's models at its sampling shape")
    d.add_argument("--problems", type=int, default=8)
    d.add_argument("--samples", type=int, default=32)
    d.add_argument("--gen", type=int, default=250)
    c = sub.add_parser("context", help="(b) Llama vs its Mamba students after a long prompt")
    c.add_argument("--preset", default="demo")
    c.add_argument("--prompt", type=int, default=2048)
    c.add_argument("--rows", type=int, default=64)
    c.add_argument("--gen", type=int, default=64)
    for s in (d, c):
        s.add_argument("--rounds", type=int, default=3)
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--decode", default="fast", choices=["fast", "reference"], help="the engine's decode step")
        s.add_argument("--json", dest="json_out", default=None)
    a = p.parse_args(argv)
    if min(a.rounds, a.threads, a.gen) < 1:
        p.error("--rounds, --threads and --gen must be >= 1")
    return a


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    out = run_demo_shape(a) if a.what == "demo" else run_context(a)
    ref = "teacher" if a.what == "demo" else "llama"
    print()
    print(table(out["results"], out["cache_mb"], out["params"], ref))
    if a.json_out:
        from thinkfast.bench.throughput import hardware
        from thinkfast.config import atomic_write_text

        atomic_write_text(a.json_out, json.dumps(dict(settings=vars(a), hardware=hardware(), **out), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
