"""``thinkfast sample``: n completions per problem of a task to JSONL (resumable)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime import UserError
from .args import add_threads, non_negative_float, non_negative_int, output_file, positive_int, probability


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="thinkfast model dir, or a HF Llama (dir / hub id / .gguf); for --backend hf / vllm "
                             "a transformers checkpoint (e.g. the output of thinkfast export)")
    parser.add_argument("--task", required=True, help="gsm8k, math500, synthetic")
    parser.add_argument("--n", type=positive_int, default=64, help="samples per problem (default 64)")
    parser.add_argument("--out", required=True, type=output_file, help="samples JSONL; an existing file is resumed")
    parser.add_argument("--temperature", type=non_negative_float, default=1.0)
    parser.add_argument("--top-p", type=probability, default=1.0)
    parser.add_argument("--top-k", type=non_negative_int, default=0, help="0 = off")
    parser.add_argument("--max-new-tokens", type=positive_int, default=512)
    parser.add_argument("--seed", type=int, default=0)
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
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="model dtype (default: thinkfast fp32; hf / vllm the checkpoint's)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.budget import hardware_string
    from ..eval.io import write_jsonl_atomic
    from ..eval.sampling import SampleSettings, encode_prompts, run_sampling
    from ..eval.tasks.base import task_by_name
    from ..inference.backends import open_backend

    task = task_by_name(args.task)
    try:
        examples = task.load(split=args.split, path=args.data, limit=args.limit)
    except ValueError as e:  # a task's own complaint about its split or data
        raise UserError(f"{args.task}: {e}") from None
    backend = open_backend(args.backend, args.model, device=args.device, dtype=args.dtype, seed=args.seed)
    tok = backend.tokenizer
    if tok is None:
        raise UserError(f"{args.model}: no tokenizer beside the model")
    style = args.prompt_style
    if style == "auto":
        chat = getattr(tok, "chat_template", None) and "chat" in task.prompt_styles
        style = "chat" if chat else task.prompt_styles[0]
    settings = SampleSettings(task=task.name, model=str(args.model), n=args.n, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                              seed=args.seed, prompt_style=style, backend=args.backend)
    prompts = encode_prompts(task, examples, tok, style)
    report = run_sampling(examples, prompts, backend.make_generate_fn(settings, task.stop), args.out,
                          settings, batch_problems=args.batch_problems, context_len=backend.context_len,
                          hardware=hardware_string(backend.device), log=lambda s: print(s, file=sys.stderr))
    errors = Path(f"{args.out}.errors.jsonl")
    if report.failed:
        write_jsonl_atomic(errors, [{"problem_id": pid, "error": why} for pid, why in report.failed])
    elif errors.exists():
        errors.unlink()  # from an earlier run: nothing failed this time
    print(json.dumps({"written": report.written, "skipped": report.skipped, "failed": len(report.failed),
                      "context_limited": len(report.context_limited),
                      "dropped_rows": report.dropped_rows, "out": args.out}), file=sys.stderr)
    return 0
