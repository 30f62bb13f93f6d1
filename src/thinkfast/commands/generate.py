"""thinkfast generate --model PATH "prompt" ...: sample completions and print them."""

from __future__ import annotations

import argparse
import json

from .args import add_engine_arguments, add_threads, engine_options, non_negative_float, non_negative_int, positive_int, probability


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="thinkfast model dir or HF Llama")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--n", type=positive_int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=non_negative_float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=probability, default=1.0)
    p.add_argument("--top-k", type=non_negative_int, default=0, help="0 = off")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--stop", action="append", default=[])
    p.add_argument("--json", action="store_true", help="print one JSON object per sample")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "int8"),
                   help="weights' precision (default: as stored, fp32 for HF Llamas); int8: int8 weight-only "
                        "linears with per-channel scales (docs/performance.md)")
    add_engine_arguments(p)
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_pretrained
    from ..inference.engine import SamplingParams, generate
    from ..runtime import UserError

    from ..inference.quant import inference_dtype, quantize_for_inference

    options = engine_options(args)
    model, tok = load_pretrained(args.model, dtype=inference_dtype(args.dtype))
    if args.dtype == "int8":
        quantize_for_inference(model, "int8")
    if tok is None:
        raise UserError(f"{args.model} has no tokenizer: text prompts need one")
    sp = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, stop=args.stop,
                        sampler=args.sampler, **options)
    try:
        outs = generate(model, args.prompts, sp, tokenizer=tok)
    except ValueError as e:
        raise UserError(str(e)) from None
    for i, o in enumerate(outs):
        for j, s in enumerate(o.samples):
            if args.json:
                print(json.dumps(dict(prompt=i, sample=j, text=s.text, tokens=len(s.token_ids),
                                      finish_reason=s.finish_reason, **o.timing)))
            else:
                print(f"--- prompt {i} sample {j} ({len(s.token_ids)} tokens, {s.finish_reason})\n{s.text}")
    return 0
