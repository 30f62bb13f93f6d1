"""thinkfast convert HF_PATH OUT_DIR: import a Hugging Face Llama (dir, hub id or .gguf)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import UserError
from .args import output_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hf_path", help="HF model directory, hub id (when online) or .gguf file")
    p.add_argument("out_dir", type=output_dir, help="thinkfast model directory to write")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run code shipped with the checkpoint (off by default)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import is_thinkfast_dir, load_pretrained, save_model

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty (use --overwrite)")
    if is_thinkfast_dir(args.hf_path):
        raise UserError(f"{args.hf_path} is already a thinkfast model directory (load it as it is)")
    model, tok = load_pretrained(args.hf_path, trust_remote_code=args.trust_remote_code)
    save_model(model, out, tokenizer=tok, extra={"source": str(args.hf_path)})
    print(f"wrote {out}: {model.config.kind}, {model.num_parameters() / 1e6:.1f}M parameters"
          + ("" if tok is not None else " (no tokenizer found)"))
    return 0
