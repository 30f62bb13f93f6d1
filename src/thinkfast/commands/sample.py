"""``thinkfast sample``: n completions per problem of a task to JSONL (resumable); with
``--adaptive``, by rounds until each problem's vote is settled (``eval.adaptive_sampling``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..runtime import UserError
from ..eval.sampling import SampleSettings
from .args import (_bounded, _float, add_dataclass_arguments, add_engine_arguments, add_shard_arguments, add_threads,
                   engine_options, key_value, non_negative_float, non_negative_int, output_file, positive_int,
                   probability, shard_spec)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="thinkfast model dir, or a HF Llama (dir / hub id / .gguf); for --backend hf / vllm "
                             "a transformers checkpoint (e.g. the output of thinkfast export)")
    parser.add_argument("--task", required=True, help="gsm8k, math500, synthetic")
    parser.add_argument("--out", required=True, type=output_file, help="samples JSONL; an existing file is resumed")
    add_dataclass_arguments(parser, SampleSettings, ["n", "temperature", "top_p", "top_k", "max_new_tokens", "seed"],
                            types={"n": positive_int, "temperature": non_negative_float, "top_p": probability,
                                   "top_k": non_negative_int, "max_new_tokens": positive_int},
                            defaults={"n": 64}, help={"n": "samples per problem", "top_k": "0 = off"})
    parser.add_argument("--batch-problems", type=positive_int, default=1, help="problems per engine call (default 1)")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N problems")
    parser.add_argument("--data", default=None, help="local JSONL (or a directory of them); default: HF datasets")
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompt-style", default="auto",
                        help="chat, fewshot (or a task's own style); auto = chat when the task and the "
                             "tokenizer support it, else the task's default")
    parser.add_argument("--backend", choices=("thinkfast", "hf", "vllm"), default="thinkfast",
                        help="thinkfast: our engine (default); hf: transformers generate(), a reference; "
                             "vllm: vLLM's offline LLM.generate (pip install 'thinkfast[vllm]', GPU)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "int8"),
                        help="model dtype (default: thinkfast fp32; hf / vllm the checkpoint's); int8: "
                             "int8 weight-only linears with per-channel scales, thinkfast backend only")
    parser.add_argument("--device", default=None,
                        help="default: cuda when available (under torchrun each rank its own GPU), else cpu")
    a = parser.add_argument_group("adaptive sampling (docs/adaptive-sampling.md)")
    a.add_argument("--adaptive", choices=("esc", "beta"), default=None,
                   help="draw --window samples per open problem per round and stop a problem when this rule "
                        "says its vote is settled: esc (a whole window agrees) or beta (the leading answer "
                        "beats the runner-up with posterior probability > --threshold); off by default")
    a.add_argument("--window", type=positive_int, default=None, help="samples per round (default 8)")
    a.add_argument("--max-n", type=positive_int, default=None,
                   help="at most this many samples per problem (default: --n); with --adaptive, --n is this cap")
    a.add_argument("--threshold", type=_confidence, default=None,
                   help="the beta rule's confidence, in [0.5, 1) (default 0.95)")
    add_engine_arguments(parser)
    add_shard_arguments(parser, in_blocks=True)
    add_threads(parser)
    v = parser.add_argument_group("vLLM (--backend vllm; passed to vllm.LLM)")
    v.add_argument("--tensor-parallel-size", type=positive_int, default=None, help="GPUs per model (vLLM's TP)")
    v.add_argument("--data-parallel-size", type=positive_int, default=None,
                   help="vLLM's own data parallelism; thinkfast's --shard / torchrun is the tested way")
    v.add_argument("--gpu-memory-utilization", type=probability, default=None,
                   help="share of GPU memory vLLM may take (vLLM's default when unset)")
    v.add_argument("--max-model-len", type=positive_int, default=None,
                   help="context vLLM plans for (default: the checkpoint's); also caps prompt + new tokens")
    v.add_argument("--vllm-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other vllm.LLM argument, repeatable; VALUE is read as a bool, int, float or JSON "
                        "where it looks like one (e.g. enforce_eager=true, max_num_seqs=512)")
    v.add_argument("--vllm-seed-per-request", action="store_true",
                   help="seed every request from (seed, its prompt), as our engine does: a problem's samples "
                        "do not depend on batching, resuming or sharding, but vLLM samples more slowly")


_confidence = _bounded(_float, "a number in [0.5, 1)", lambda v: 0.5 <= v < 1, "confidence")


def adaptive_rule(args: argparse.Namespace):
    """The ``AdaptiveRule`` of ``--adaptive`` (None without it); its flags without it are refused."""
    from ..eval.adaptive import AdaptiveRule

    given = [f"--{k.replace('_', '-')}" for k in ("window", "max_n", "threshold")
             if getattr(args, k, None) is not None]
    rule = getattr(args, "adaptive", None)
    if rule is None:
        if given:
            raise UserError(f"{', '.join(given)} apply to --adaptive esc|beta only")
        return None
    if rule == "esc" and args.threshold is not None:
        raise UserError("--threshold is the beta rule's; --adaptive esc stops when a whole window agrees")
    if args.backend == "hf" or (args.backend == "vllm" and not args.vllm_seed_per_request):
        raise UserError(f"--adaptive needs samples keyed on (seed, prompt), so that a round continues a "
                        f"problem's samples: --backend thinkfast, or vllm with --vllm-seed-per-request, "
                        f"not --backend {args.backend}")
    return AdaptiveRule(rule, window=args.window or 8, max_n=args.max_n or args.n,
                        threshold=0.95 if args.threshold is None else args.threshold)


VLLM_FLAGS = ("tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization", "max_model_len")


def vllm_kwargs(args: argparse.Namespace) -> dict:
    """The ``vllm.LLM`` arguments of the command line (its vLLM flags and every ``--vllm-arg``)."""
    kw = {k: getattr(args, k) for k in VLLM_FLAGS if getattr(args, k, None) is not None}
    given = [k for k in VLLM_FLAGS if getattr(args, k, None) is not None]
    for key, value in getattr(args, "vllm_arg", None) or []:
        if key in ("model", "tokenizer"):
            raise UserError(f"--vllm-arg {key}=...: the model and its tokenizer come from --model")
        if key in kw:
            flag = f"--{key.replace('_', '-')}" if key in given else f"--vllm-arg {key}"
            raise UserError(f"--vllm-arg {key}={value!r}: {key} is already set by {flag}")
        kw[key] = value
    uses = kw or getattr(args, "vllm_seed_per_request", False)
    if uses and args.backend != "vllm":
        raise UserError(f"vLLM arguments ({', '.join(sorted(kw)) or '--vllm-seed-per-request'}) apply to "
                        f"--backend vllm only, not --backend {args.backend}")
    return kw


def run(args: argparse.Namespace) -> int:
    from ..eval.budget import hardware_string
    from ..eval.io import write_jsonl_atomic
    from ..eval.sampling import encode_prompts, run_sampling
    from ..eval.shards import claim_output, make_manifest, output_for, pin_visible_devices, rank_device, \
        refuse_shard_file
    from ..eval.tasks.base import task_by_name
    from ..inference.backends import open_backend

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    vllm_kw = vllm_kwargs(args)
    engine_kw = engine_options(args)
    if args.backend != "thinkfast" and args.sampler != "gumbel":
        raise UserError(f"--sampler {args.sampler} is the thinkfast engine's, not --backend {args.backend}'s")
    spec = shard_spec(args, log)
    rule = adaptive_rule(args)
    if rule is not None and spec is not None:
        raise UserError("--adaptive runs unsharded: drop --shard (or run one --out per shard of the data)")
    out = output_for(args.out, spec)
    task = task_by_name(args.task)
    try:
        examples = task.load(split=args.split, path=args.data, limit=args.limit)
    except ValueError as e:  # a task's own complaint about its split or data
        raise UserError(f"{args.task}: {e}") from None
    if args.backend == "vllm":  # vLLM picks its GPUs itself: show each rank only its own
        pinned = pin_visible_devices(vllm_kw.get("tensor_parallel_size", 1))
        if pinned is not None:
            log(f"CUDA_VISIBLE_DEVICES={pinned} for this rank")
        device = args.device
    else:
        device = rank_device(args.device)
    backend = open_backend(args.backend, args.model, device=device, dtype=args.dtype, seed=args.seed,
                           vllm_kwargs=vllm_kw, engine_options=engine_kw)
    tok = backend.tokenizer
    if tok is None:
        raise UserError(f"{args.model}: no tokenizer beside the model")
    style = args.prompt_style
    if style == "auto":
        chat = getattr(tok, "chat_template", None) and "chat" in task.prompt_styles
        style = "chat" if chat else task.prompt_styles[0]
    seeding = "call" if args.backend == "vllm" and not args.vllm_seed_per_request else None
    settings = SampleSettings(task=task.name, model=str(args.model), n=rule.max_n if rule else args.n,
                              temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                              seed=args.seed, prompt_style=style, backend=args.backend, seeding=seeding,
                              sampler=args.sampler, dtype=args.dtype)
    everything = examples
    if spec is None:
        refuse_shard_file(out, "sample")
    else:
        spec = spec.with_block(args.batch_problems)  # a shard's engine calls are the unsharded run's
        claim_output(out, make_manifest("sample", spec, {"settings": settings.to_dict()},
                                        [(ex.id, args.n) for ex in everything]))
        examples = [everything[p] for p in spec.positions(len(everything))]
        log(f"{spec}: {len(examples)} of {len(everything)} problems -> {out}")
    prompts = encode_prompts(task, examples, tok, style)
    if rule is not None:
        return _run_adaptive(args, rule, task, examples, prompts, backend, settings, out, log)
    report = run_sampling(examples, prompts, backend.make_generate_fn(settings, task.stop), out,
                          settings, batch_problems=args.batch_problems, context_len=backend.context_len,
                          hardware=hardware_string(backend.device), log=log)
    errors = Path(f"{out}.errors.jsonl")
    if report.failed:
        write_jsonl_atomic(errors, [{"problem_id": pid, "error": why} for pid, why in report.failed])
    elif errors.exists():
        errors.unlink()  # from an earlier run: nothing failed this time
    print(json.dumps({"written": report.written, "skipped": report.skipped, "failed": len(report.failed),
                      "context_limited": len(report.context_limited),
                      "dropped_rows": report.dropped_rows, "out": out}), file=sys.stderr)
    return 0


def _run_adaptive(args: argparse.Namespace, rule: Any, task: Any, examples: list, prompts: list, backend: Any,
                  settings: SampleSettings, out: str, log: Any) -> int:
    from ..eval.adaptive_sampling import run_adaptive_sampling
    from ..eval.budget import hardware_string
    from ..eval.io import write_jsonl_atomic

    report = run_adaptive_sampling(examples, prompts, lambda s: backend.make_generate_fn(s, task.stop), out,
                                   settings, rule, task, batch_problems=args.batch_problems,
                                   context_len=backend.context_len, hardware=hardware_string(backend.device),
                                   log=log)
    errors = Path(f"{out}.errors.jsonl")
    if report.failed:
        write_jsonl_atomic(errors, [{"problem_id": pid, "error": why} for pid, why in report.failed])
    elif errors.exists():
        errors.unlink()
    print(json.dumps({"samples": report.samples, "rounds": report.rounds, "closed_by_rule": report.closed_by_rule,
                      "closed_at_max_n": report.closed_at_max_n, "skipped": report.skipped,
                      "failed": len(report.failed), "dropped_rows": report.dropped_rows, "out": out}),
          file=sys.stderr)
    return 0
