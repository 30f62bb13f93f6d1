"""``thinkfast tokenize SOURCE --tokenizer T --out DIR``: tokenise training data once into a
memory-mapped token store that recipes read as ``data.train: store:DIR``.

SOURCE is a JSONL file or ``hf:NAME[:CONFIG]`` (streamed through ``datasets``, never held in
memory). The format options are those of a recipe's ``data`` section; which tokens earn a loss
(``data.loss_on``) is decided when training reads the store, not here.
"""

from __future__ import annotations

import argparse
import sys
import time

from .args import add_threads, data_source, existing_dir, output_dir, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=data_source, metavar="SOURCE", help="a JSONL file, or hf:NAME[:CONFIG]")
    parser.add_argument("--out", required=True, type=output_dir, help="the store directory to write")
    parser.add_argument("--tokenizer", type=existing_dir, default=None,
                        help="tokenizer directory (not needed when the rows are token ids)")
    parser.add_argument("--split", default="train", help="split of an hf: dataset (default: train)")
    parser.add_argument("--format", default="auto",
                        help="row format, as data.format: auto | tokens | token_pair | chat | prompt_response | "
                             "prompt_completion | question_answer | text")
    parser.add_argument("--prompt-template", default=None, help='e.g. "Question: {question}\\nAnswer:"')
    parser.add_argument("--response-template", default=None, help='e.g. " {answer}"')
    parser.add_argument("--chat-template", default="auto", choices=("auto", "always", "never"),
                        help="use the tokenizer's chat template (as data.chat_template; default: auto)")
    parser.add_argument("--no-bos", action="store_true", help="do not add BOS to each example")
    parser.add_argument("--no-eos", action="store_true", help="do not add EOS to each example")
    parser.add_argument("--max-examples", type=positive_int, default=None, help="stop after this many rows")
    parser.add_argument("--vocab-size", type=positive_int, default=None,
                        help="vocabulary size of token-id rows without --tokenizer (picks uint16 when it "
                             "fits; default uint32)")
    parser.add_argument("--shard-tokens", type=positive_int, default=None,
                        help="tokens per shard file (default 2^30)")
    parser.add_argument("--overwrite", action="store_true", help="replace a token store already in --out")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from ..data.store import DEFAULT_SHARD_TOKENS, formatter_for, stream_rows, token_dtype, tokenizer_identity, write_store
    from ..data.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    fmt, settings = formatter_for(tok, args.format, args.prompt_template, args.response_template,
                                  args.chat_template, not args.no_bos, not args.no_eos)
    info = {"source": args.source, "split": args.split if args.source.startswith("hf:") else None,
            "max_examples": args.max_examples, "format": settings,
            "tokenizer": tokenizer_identity(tok, args.tokenizer), "written_by": "thinkfast tokenize"}
    dtype = token_dtype(len(tok) if tok is not None else args.vocab_size)
    t0, last = time.perf_counter(), [0.0]

    def progress(rows: int, tokens: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 10 and sys.stderr.isatty():
            print(f"\r{rows} rows, {tokens} tokens, {tokens / max(now - t0, 1e-9):.0f} tokens/s",
                  end="", file=sys.stderr, flush=True)
            last[0] = now

    manifest = write_store(stream_rows(args.source, args.split, args.max_examples), args.out, fmt, dtype=dtype,
                           info=info, shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS,
                           overwrite=args.overwrite, on_progress=progress)
    if last[0]:
        print(file=sys.stderr)
    print(f"{args.out}: {manifest['n_examples']} examples, {manifest['n_tokens']} tokens "
          f"({manifest['n_response_tokens']} response), {manifest['dtype']}, {len(manifest['shards'])} shard(s), "
          f"{time.perf_counter() - t0:.1f} s")
    return 0
