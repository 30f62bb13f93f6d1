"""Decode speed of the demo's three models at the demo's sampling shape, and what two engine
choices buy there, each measured side by side with its reference in one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/engine_speed.py demo_out --threads 1
    OMP_WAIT_POLICY=PASSIVE python benchmarks/engine_speed.py --decode-paths --threads 2

1. The Mamba conv step: thinkfast's ``_conv_step`` (window stored (B, K-1, Cd), one tap at a
   time) against the same sum written as a product and a sum over a trailing K-1 axis on a
   (B, Cd, K-1) window, on the Llamba student's first mixer at batch 256.
2. The engine on 8 test problems x 32 samples at T = 0.8 (the demo's rows per call): each model
   with the stop-string filter (``StopChecker.may_complete``) and with every row checked, which
   must give the same tokens.

3. ``--decode-paths`` (no demo directory needed): the engine's reference decode step against its
   fast one (``SamplingParams.fast`` on a model packed by ``prepare_for_inference``) for the
   demo teacher (``assets/demo_teacher``) and a Llamba and a 50% hybrid student built from it
   untrained (``student_from_teacher``; speed does not depend on training), 8 prompts x 32
   samples = 256 rows, greedy with no EOS so every row decodes ``--gen`` tokens; rounds
   alternate the two paths, medians reported, and the tokens must agree. Wall time and this
   process's CPU time both: on a machine shared with other jobs the CPU time is the steadier.

Prints a table and writes JSON (``--json``) with every figure and ratio. ``--profile MODEL``
instead prints where one engine call of that model spends its time (cProfile, top functions).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from thinkfast.checkpoint import load_pretrained  # noqa: E402
from thinkfast.demo import demo_prompt_ids, demo_task  # noqa: E402
from thinkfast.inference import engine  # noqa: E402
from thinkfast.models.cache import MambaState  # noqa: E402


def _time(fn, repeat: int) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def conv_step_reference(mixer, xbc: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """The conv step as a product and a sum over a (B, Cd, K-1) window (the earlier layout)."""
    w = mixer.conv1d.weight[:, 0]  # (Cd, K)
    out = (window * w[:, :-1]).sum(-1) + xbc * w[:, -1] + mixer.conv1d.bias
    window.copy_(torch.cat([window[..., 1:], xbc[..., None]], dim=-1))
    return torch.nn.functional.silu(out) if mixer.conv_activation == "silu" else out


@torch.inference_mode()
def conv_step(llamba_dir: Path, batch: int, repeat: int) -> dict:
    model, _ = load_pretrained(str(llamba_dir))
    mixer = next(layer.mixer for layer in model.layers if hasattr(layer.mixer, "_conv_step"))
    Cd, K = mixer.conv1d.weight.shape[0], mixer.conv1d.kernel_size[0]
    g = torch.Generator().manual_seed(0)
    xbc = torch.randn(batch, Cd, generator=g)
    state = MambaState(batch, Cd, K, 1, 1, 1, dtype=torch.float32, device="cpu")
    state.conv.copy_(torch.randn(batch, K - 1, Cd, generator=g))
    ref_window = state.conv.transpose(1, 2).contiguous()
    # one step each from the same window: the same outputs
    fast = mixer._conv_step(xbc, state)
    ref = conv_step_reference(mixer, xbc, ref_window)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    t_fast = _time(lambda: mixer._conv_step(xbc, state), repeat)
    t_ref = _time(lambda: conv_step_reference(mixer, xbc, ref_window), repeat)
    return {"batch": batch, "conv_dim": Cd, "kernel": K, "thinkfast_us": t_fast * 1e6,
            "reference_us": t_ref * 1e6, "conv_step_vs_reference_ratio": t_ref / t_fast}


def demo_sampling(out_dir: Path, problems: int, n: int, tokenizer) -> tuple[list[list[int]], engine.SamplingParams]:
    """The demo's prompts (token ids) for its first ``problems`` test problems, and its sampling
    settings at T = 0.8 with ``n`` samples each."""
    task = demo_task()
    examples = task.load("test", path=str(out_dir / "data" / "test.jsonl"), limit=problems)
    prompts = demo_prompt_ids(task, examples, tokenizer)
    return prompts, engine.SamplingParams(n=n, temperature=0.8, max_new_tokens=400, stop=task.stop, seed=0)


def warm_up(model, prompts, tokenizer) -> None:
    engine.generate(model, prompts[:1], engine.SamplingParams(n=2, max_new_tokens=8), tokenizer=tokenizer)


@torch.inference_mode()
def engine_runs(out_dir: Path, problems: int, n: int) -> dict:
    every_row = lambda self, t: torch.ones_like(t, dtype=torch.bool)  # noqa: E731
    filtered = engine.StopChecker.may_complete
    res = {}
    for name in ("teacher", "llamba", "hybrid"):
        model, tok = load_pretrained(str(out_dir / name / "model"))
        prompts, params = demo_sampling(out_dir, problems, n, tok)
        warm_up(model, prompts, tok)
        row, tokens = {}, {}
        for label, fn in (("filter", filtered), ("every_row", every_row)):
            engine.StopChecker.may_complete = fn
            try:
                t = time.perf_counter()
                outs = engine.generate(model, prompts, params, tokenizer=tok)
                seconds = time.perf_counter() - t
            finally:
                engine.StopChecker.may_complete = filtered
            tokens[label] = [s.token_ids for o in outs for s in o.samples]
            new = sum(map(len, tokens[label]))
            row[label] = {"seconds": seconds, "new_tokens": new, "tokens_per_s": new / seconds}
        row["same_tokens"] = tokens["filter"] == tokens["every_row"]
        row["stop_filter_vs_every_row_ratio"] = row["every_row"]["seconds"] / row["filter"]["seconds"]
        res[name] = row
    for name in ("llamba", "hybrid"):
        res[name][f"{name}_vs_teacher_ratio"] = (res[name]["filter"]["tokens_per_s"]
                                                 / res["teacher"]["filter"]["tokens_per_s"])
    return res


@torch.inference_mode()
def decode_paths(problems: int, n: int, prompt: int, gen: int, rounds: int) -> dict:
    import copy
    import statistics
    from importlib.resources import files

    from thinkfast.convert.from_attention import student_from_teacher

    teacher, _ = load_pretrained(str(files("thinkfast") / "assets" / "demo_teacher"))
    models = {"teacher": teacher, "llamba": student_from_teacher(teacher, 0.0, "discrete"),
              "hybrid": student_from_teacher(teacher, 0.5, "mamba2")}
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, teacher.config.vocab_size, (problems, prompt), generator=g).tolist()
    res = {}
    for name, ref in models.items():
        ref = ref.eval()
        paths = {"reference": (ref, False), "fast": (copy.deepcopy(ref).prepare_for_inference(), True)}

        def run(path, new):
            m, fast = paths[path]
            sp = engine.SamplingParams(n=n, temperature=0, max_new_tokens=new, eos_token_ids=[], fast=fast)
            return engine.generate(m, prompts, sp)

        same = all(a.token_ids == b.token_ids for o, p in zip(run("reference", 16), run("fast", 16))
                   for a, b in zip(o.samples, p.samples))
        times = {k: [] for k in paths}
        cpu = {k: [] for k in paths}
        for _ in range(rounds):
            for path in paths:
                t, c = time.perf_counter(), time.process_time()
                run(path, 1)
                t1, c1 = time.perf_counter() - t, time.process_time() - c
                t, c = time.perf_counter(), time.process_time()
                run(path, gen)
                times[path].append(time.perf_counter() - t - t1)
                cpu[path].append(time.process_time() - c - c1)
        row = {"same_tokens": same, "pattern": ref.config.layer_pattern}
        for path, ts in times.items():
            row[f"{path}_tokens_per_s"] = problems * n * (gen - 1) / statistics.median(ts)
            row[f"{path}_cpu_s"] = statistics.median(cpu[path])
        row["fast_vs_reference_ratio"] = row["fast_tokens_per_s"] / row["reference_tokens_per_s"]
        row["fast_vs_reference_cpu_ratio"] = row["reference_cpu_s"] / row["fast_cpu_s"]
        res[name] = row
    return res


@torch.inference_mode()
def profile(out_dir: Path, name: str, problems: int, n: int, top: int = 15) -> None:
    import cProfile
    import pstats

    model, tok = load_pretrained(str(out_dir / name / "model"))
    prompts, params = demo_sampling(out_dir, problems, n, tok)
    warm_up(model, prompts, tok)
    prof = cProfile.Profile()
    prof.enable()
    engine.generate(model, prompts, params, tokenizer=tok)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("demo_out", type=Path, nargs="?", help="a finished `thinkfast demo` directory")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--profile", choices=("teacher", "llamba", "hybrid"), default=None)
    ap.add_argument("--decode-paths", action="store_true", help="reference vs fast decode step (section 3)")
    ap.add_argument("--prompt", type=int, default=128, help="--decode-paths: prompt tokens")
    ap.add_argument("--gen", type=int, default=128, help="--decode-paths: new tokens per row")
    ap.add_argument("--rounds", type=int, default=3, help="--decode-paths: alternating rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.decode_paths:
        res = decode_paths(args.problems, args.n, args.prompt, args.gen, args.rounds)
        print(f"decode, {args.problems} prompts x {args.n} samples, prompt {args.prompt}, gen {args.gen}, "
              f"{args.threads} thread(s), median of {args.rounds} rounds:")
        print("| model | pattern | reference tok/s | fast tok/s | fast / reference (wall) | decode CPU s, "
              "reference / fast | fast / reference (CPU) | same tokens |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in res.items():
            print(f"| {name} | {r['pattern']} | {r['reference_tokens_per_s']:.0f} | {r['fast_tokens_per_s']:.0f} | "
                  f"{r['fast_vs_reference_ratio']:.2f}x | {r['reference_cpu_s']:.2f} / {r['fast_cpu_s']:.2f} | "
                  f"{r['fast_vs_reference_cpu_ratio']:.2f}x | {r['same_tokens']} |")
        if args.json:
            args.json.write_text(json.dumps({"threads": args.threads, "decode_paths": res}, indent=2) + "\n")
        return
    if args.demo_out is None:
        ap.error("demo_out is needed unless --decode-paths")
    if args.profile:
        profile(args.demo_out, args.profile, args.problems, args.n)
        return
    result = {"threads": args.threads, "conv_step": conv_step(args.demo_out / "llamba" / "model", 256, args.repeat),
              "engine": engine_runs(args.demo_out, args.problems, args.n)}
    c = result["conv_step"]
    print(f"conv step, batch {c['batch']}, {c['conv_dim']} channels, kernel {c['kernel']}: "
          f"{c['thinkfast_us']:.0f} us against {c['reference_us']:.0f} us "
          f"(conv_step_vs_reference_ratio {c['conv_step_vs_reference_ratio']:.2f}x)")
    print(f"engine, {args.problems} problems x {args.n} samples, T = 0.8, {args.threads} thread(s):")
    print("| model | tokens/s (stop filter) | tokens/s (every row checked) | filter ratio | same tokens | vs teacher |")
    print("|---|---|---|---|---|---|")
    for name, r in result["engine"].items():
        vs = r.get(f"{name}_vs_teacher_ratio")
        print(f"| {name} | {r['filter']['tokens_per_s']:.0f} | {r['every_row']['tokens_per_s']:.0f} | "
              f"{r['stop_filter_vs_every_row_ratio']:.2f}x | {r['same_tokens']} | "
              f"{'-' if vs is None else f'{vs:.2f}x'} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
