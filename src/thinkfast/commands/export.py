"""thinkfast export MODEL_DIR OUT_DIR: write a student as a checkpoint standard stacks load.

Transformers -> LlamaForCausalLM; hybrids and pure Mamba-2 (mamba2 mixer) ->
GraniteMoeHybridForCausalLM (transformers and vLLM load both, no remote code); pure discrete
(Llamba) students -> the Llamba release's format (not served by vLLM). Kinds without an exact
target are refused. See ``thinkfast.convert.export`` for the mapping.
"""

from __future__ import annotations

import argparse
import json

from .args import add_threads, output_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="thinkfast model directory (e.g. a distill run's model/), or a HF Llama")
    p.add_argument("out_dir", type=output_dir, help="directory to write (config.json, model.safetensors, tokenizer files)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="weights dtype (default: the dtype the model is stored in)")
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import export_dir

    res = export_dir(args.model_dir, args.out_dir, overwrite=args.overwrite, dtype=args.dtype)
    print(json.dumps({
        "out": str(res.out_dir), "architecture": res.architecture, "student_kind": res.kind,
        "served_by_vllm": res.served_by_vllm, "tokenizer_files": res.tokenizer_files,
    }))
    if not res.tokenizer_files:
        print("note: no tokenizer files were found beside the model; add them before serving")
    if not res.served_by_vllm:
        print("note: Llamba-format checkpoints load with cartesia-ai/edge's cartesia_pytorch.Llamba; "
              "vLLM does not serve them")
    return 0
