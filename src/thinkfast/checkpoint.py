"""Saving and loading thinkfast models: safetensors weights + a JSON config, never pickle.

A thinkfast model directory holds
    config.json        {"format": "thinkfast", "model": ModelConfig, ...extra}
    model.safetensors  the state dict (the tied LM head is not stored twice)
    tokenizer files    when a tokenizer was given (transformers' own format)
Each file is written to a temporary name and renamed, so a crash never leaves half a file.

Each kind of checkpoint has its own "format" tag: "thinkfast" (a ``LanguageModel``, which
``load_model`` loads), "thinkfast-projected" (a width-compressed student's projections, which
need their teacher: ``load_model`` refuses them with a message saying so), "thinkfast-orm" (a
reward model, ``eval.rewards``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ConfigError, ModelConfig, atomic_write_text, read_json_file
from .models.lm import LanguageModel
from .models.state import CheckpointError, load_state_dict_strict

FORMAT = "thinkfast"
"""The tag of a ``LanguageModel`` directory."""
PROJECTED_FORMAT = "thinkfast-projected"
"""The tag of a width-compressed student's trainable projections and norms
(``compress.projected.ProjectedLM``, under ``thinkfast compress``'s OUT/projected/): not a model
until merged with its teacher."""


def checkpoint_format(path: str | os.PathLike) -> Optional[str]:
    """The "format" tag of the directory ``path`` (None when it has no readable config.json
    holding one)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    try:
        tag = json.loads(cfg.read_text()).get("format")
    except (json.JSONDecodeError, OSError, AttributeError, UnicodeDecodeError):
        return None
    return tag if isinstance(tag, str) else None


def is_thinkfast_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a thinkfast model directory (tagged ``FORMAT``)."""
    return checkpoint_format(path) == FORMAT


def save_model(model: LanguageModel, out_dir: str | os.PathLike, tokenizer: Any = None,
               extra: Optional[dict[str, Any]] = None) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``out_dir``; returns the directory."""
    return save_state(model.config, model.state_dict(), out_dir, tokenizer, extra)


def save_state(config: ModelConfig, state_dict: dict[str, torch.Tensor], out_dir: str | os.PathLike,
               tokenizer: Any = None, extra: Optional[dict[str, Any]] = None, tag: str = FORMAT) -> Path:
    """``save_model`` from a model's config and (full, gathered) state dict, without the model;
    ``tag``: the directory's "format" (``PROJECTED_FORMAT`` for a ``ProjectedLM``'s state). The
    tied LM head is not stored twice."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in state_dict.items()
          if not (config.tie_embeddings and k == "lm_head.weight")}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".model.", suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(sd, tmp, metadata={"format": "pt"})
        os.replace(tmp, out / "model.safetensors")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {"format": tag, "model": config.to_dict()}
    if extra:
        meta.update(extra)
    atomic_write_text(out / "config.json", json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        save_pretrained_files(tokenizer, out)
    return out


def save_pretrained_files(obj: Any, out: str | os.PathLike) -> None:
    """``obj.save_pretrained`` (a transformers tokenizer or model) into a temporary directory
    inside ``out``, then each file renamed into ``out``: transformers writes in place, and a crash
    would leave half a file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".save."))
    try:
        obj.save_pretrained(str(tmp))
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary directory, emptied by the renames


def read_config(model_dir: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, the whole config.json) of a thinkfast model directory, or of a compressed
    student's projections (its "format" says which; both hold the student's ModelConfig), checked
    strictly: any problem is a CheckpointError naming the file (and the key, for a bad setting)."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a directory: a thinkfast model is a directory "
                              "holding config.json and model.safetensors")
    meta = read_json_file(path, CheckpointError, missing="not a thinkfast model directory")
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, PROJECTED_FORMAT) or "model" not in meta:
        raise CheckpointError(f"{path} is not a thinkfast config (no \"format\": \"thinkfast\")")
    try:
        return ModelConfig.from_dict(meta["model"], source=path, where="model"), meta
    except ConfigError as e:  # already names the file and the key
        raise CheckpointError(str(e)) from None


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: Optional[torch.dtype] = None) -> LanguageModel:
    """Load a thinkfast model directory written by ``save_model``. A compressed student's
    projections are refused with a message saying what they are (``refuse_projected``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg, meta = read_config(model_dir)
    if meta["format"] == PROJECTED_FORMAT:
        refuse_projected(model_dir)
    weights = Path(model_dir) / "model.safetensors"
    try:
        sd = load_file(str(weights))
    except FileNotFoundError:
        raise CheckpointError(f"{weights} not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or not a safetensors file: {e}") from None
    if is_projected_state(sd):  # projections written before they had their own tag
        refuse_projected(model_dir)
    model = LanguageModel(cfg)
    load_state_dict_strict(model, sd, str(weights))
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def is_projected_state(sd: dict[str, Any]) -> bool:
    """Whether a state dict holds a ``ProjectedLM``'s projections (its embedding projection is
    ``embed``) rather than a ``LanguageModel``'s weights (``embed_tokens.weight``)."""
    return "embed" in sd and "embed_tokens.weight" not in sd


def refuse_projected(model_dir: str | os.PathLike) -> None:
    """The error for a directory of a width-compressed student's projections, which loads only
    over its teacher."""
    raise CheckpointError(
        f"{model_dir} holds the trainable projections of a width-compressed student "
        f"(\"format\": \"{PROJECTED_FORMAT}\", written under `thinkfast compress`'s OUT/projected/), "
        "not a model: they give weights only together with their teacher. Use the merged student "
        "`thinkfast compress` writes to OUT/model (an ordinary thinkfast model directory), or run the "
        "same `thinkfast compress` recipe again to resume from these projections")


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    """The tokenizer saved beside a model (transformers' format), or None when the directory has
    no tokenizer files at all; an incomplete or corrupt one is a UserError naming what is wrong."""
    from .data import tokenizer as T

    if Path(path).is_dir() and not T.has_tokenizer(path):
        return None
    return T.load_tokenizer(path, trust_remote_code=trust_remote_code)


def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: Optional[torch.dtype] = None, trust_remote_code: bool = False):
    """(model, tokenizer) from a thinkfast directory, a GraniteMoeHybrid / Llamba directory that
    ``thinkfast export`` wrote, or anything transformers loads as a Llama (a local HF directory,
    a hub id when online, a .gguf file); tokenizer may be None. The one loader every command uses.
    A directory of a compressed student's projections is refused (``refuse_projected``)."""
    if checkpoint_format(path) == PROJECTED_FORMAT:
        refuse_projected(path)
    if is_thinkfast_dir(path):
        return load_model(path, device, dtype), load_tokenizer(path, trust_remote_code)
    from .convert.export import import_exported
    from .convert.llama import import_hf

    if os.path.isdir(path):  # a GraniteMoeHybrid / Llamba directory written by `thinkfast export`
        exported = import_exported(path, device=device, dtype=dtype)
        if exported is not None:
            return exported

    return import_hf(str(path), device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def export_dir(model_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
               dtype: Optional[str] = None):
    """``thinkfast export``: load a thinkfast model directory (or anything ``load_pretrained``
    reads) and export it. ``dtype``: float32 / bfloat16 / float16, default the stored dtype."""
    from .convert.common import EXPORT_DTYPES
    from .convert.export import ExportError, check_out_dir, export_model, stored_dtype

    src = Path(model_path)
    check_out_dir(Path(out_dir), overwrite, src)  # refuse before the (slow) load
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose from {sorted(EXPORT_DTYPES)}")
    model, tok = load_pretrained(str(model_path))
    want = EXPORT_DTYPES[dtype] if dtype else (stored_dtype(src) if src.is_dir() else None) or torch.float32
    return export_model(model, out_dir, tokenizer=tok, tokenizer_dir=src if src.is_dir() else None,
                        overwrite=overwrite, dtype=want, source=src)
