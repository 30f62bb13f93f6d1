"""Export thinkfast models to checkpoints that standard stacks load and serve, and import them back:
the driver shared by every format.

One target per student kind, each an exact match (the parity tests check logits):

==================================  =====================================  =====================
thinkfast kind                      target                                 served by vLLM
==================================  =====================================  =====================
Transformer (all "A")               ``LlamaForCausalLM``                   yes
hybrid / pure Mamba-2 (``mamba2``)  ``GraniteMoeHybridForCausalLM`` dense  yes
pure discrete Mamba-2 (Llamba)      the Llamba format of cartesia-ai/edge  no (no vLLM model)
hybrid with discrete mixers         none: refused                          --
==================================  =====================================  =====================

Each format lives in its own module, with its config, its one key table (used by export and
import alike) and its import: ``convert.llama`` (LlamaForCausalLM), ``convert.granite``
(GraniteMoeHybrid; why it fits the MambaInLlama mixer and why the other hybrids do not) and
``convert.llamba`` (the Llamba format; why discrete students have no transformers target).
This module picks the target, writes the files and dispatches imports of exported directories.

Every export is written to a temporary directory next to OUT_DIR and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ModelConfig, atomic_directory
from ..runtime import UserError
from .granite import GRANITE, granite_config, granite_problems, import_hf_hybrid, to_granite_state_dict
from .llama import LLAMA, llama_config, to_hf_state_dict
from .llamba import LLAMBA, import_llamba, llamba_config, llamba_problems, to_llamba_state_dict

# Files of a transformers tokenizer, copied next to the exported weights when present.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "vocab.txt", "spiece.model",
)

TARGET_KINDS = (
    "Transformer (all-attention) -> LlamaForCausalLM; "
    "hybrid or pure Mamba-2 with the mamba2 (MambaInLlama) mixer -> GraniteMoeHybridForCausalLM; "
    "pure discrete Mamba-2 (Llamba) -> the Llamba checkpoint format (not served by vLLM)"
)


class ExportError(UserError):
    """A model that has no exact export target, or an output directory that cannot be used."""


# --- target selection ------------------------------------------------------------------------------


def student_kind(cfg: ModelConfig) -> str:
    """'transformer', 'mamba2-hybrid', 'mamba2', 'discrete' or 'discrete-hybrid'."""
    if cfg.kind == "llama":
        return "transformer"
    disc = cfg.mamba.kind == "discrete"
    if cfg.kind == "mamba":
        return "discrete" if disc else "mamba2"
    return "discrete-hybrid" if disc else "mamba2-hybrid"


def export_target(cfg: ModelConfig) -> str:
    """The architecture ``cfg`` exports to exactly, or ``ExportError`` naming why there is none."""
    kind = student_kind(cfg)
    if kind == "transformer":
        return LLAMA
    if kind == "discrete-hybrid":
        raise ExportError(
            "a hybrid with discrete (Llamba) Mamba layers has no exact export target: no shipped "
            "architecture has both attention and the discrete mixer (no dt on the input, identity conv, "
            f"z-gate with bias). Kinds with a target: {TARGET_KINDS}.")
    if kind == "discrete":
        problems, target = llamba_problems(cfg), LLAMBA
    else:
        problems, target = granite_problems(cfg), GRANITE
    if problems:
        raise ExportError(f"this {kind} student has no exact {target} equivalent: " + "; ".join(problems)
                          + f". Kinds with a target: {TARGET_KINDS}.")
    return target


# --- writing ---------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    out_dir: Path
    architecture: str
    kind: str
    served_by_vllm: bool
    tokenizer_files: list[str]


def check_out_dir(out: Path, overwrite: bool, source: Optional[Path] = None) -> None:
    if source is not None and out.resolve() == source.resolve():
        raise ExportError(f"{out} is the model directory itself; choose another OUT_DIR")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty (use --overwrite to replace it)")


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in sorted(sd.items())}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _copy_tokenizer(src: Optional[Path], tokenizer: Any, dst: Path) -> list[str]:
    copied = []
    if src is not None and src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
                copied.append(name)
    if not copied and tokenizer is not None:
        tokenizer.save_pretrained(str(dst))
        copied = sorted(p.name for p in dst.iterdir() if p.name in TOKENIZER_FILES)
    return copied


def export_model(model, out_dir: str | os.PathLike, tokenizer: Any = None,
                 tokenizer_dir: Optional[str | os.PathLike] = None, overwrite: bool = False, dtype: Optional[torch.dtype] = None,
                 source: Optional[str | os.PathLike] = None) -> ExportResult:
    """Write ``model`` (a thinkfast LanguageModel) as the checkpoint of its exact target.

    Tokenizer files come from ``tokenizer_dir`` when it holds any, else ``tokenizer`` is saved.
    ``dtype`` defaults to the model's. Raises ``ExportError`` for a model without an exact target
    and for a non-empty ``out_dir`` without ``overwrite``; nothing is written then.
    """
    cfg = model.config
    target = export_target(cfg)
    out = Path(out_dir)
    check_out_dir(out, overwrite, Path(source) if source is not None else None)
    dtype = dtype or model.dtype
    if target == LLAMA:
        sd, meta = to_hf_state_dict(model), llama_config(cfg, tokenizer, dtype)
    elif target == GRANITE:
        sd, meta = to_granite_state_dict(model), granite_config(cfg, tokenizer, dtype)
    else:
        sd, meta = to_llamba_state_dict(model), llamba_config(cfg)
    with atomic_directory(out) as tmp:  # an existing OUT is replaced only once the new one is whole
        _save_safetensors(sd, tmp / "model.safetensors", dtype)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        copied = _copy_tokenizer(Path(tokenizer_dir) if tokenizer_dir is not None else None, tokenizer, tmp)
        check_out_dir(out, overwrite)  # again: something may have appeared meanwhile
    return ExportResult(out, target, student_kind(cfg), target != LLAMBA, copied)


def stored_dtype(model_dir: Path) -> Optional[torch.dtype]:
    """The dtype a thinkfast directory stores its weights in (its embedding's), None if unknown."""
    f = model_dir / "model.safetensors"
    if not f.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(f), "pt") as st:
            return _ST_DTYPES.get(st.get_slice("embed_tokens.weight").get_dtype())
    except Exception:  # not a thinkfast layout: fall back to the default
        return None


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


# --- import dispatch -------------------------------------------------------------------------------


def exported_architecture(path: str | os.PathLike) -> Optional[str]:
    """'granitemoehybrid' or 'llamba' for a local directory this module imports, else None."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    if meta.get("model_type") == "granitemoehybrid":
        return "granitemoehybrid"
    if meta.get("model_type") == "llamba" or ("ssm_cfg" in meta and "d_model" in meta and "n_layer" in meta):
        return "llamba"
    return None


def import_exported(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: Optional[torch.dtype] = None):
    """(model, tokenizer) for a GraniteMoeHybrid or Llamba directory, None for anything else
    (Llama directories go through ``convert.llama.import_hf``)."""
    arch = exported_architecture(path)
    if arch == "granitemoehybrid":
        return import_hf_hybrid(path, device=device, dtype=dtype)
    if arch == "llamba":
        return import_llamba(path, device=device, dtype=dtype)
    return None
