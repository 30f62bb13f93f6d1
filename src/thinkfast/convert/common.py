"""Helpers every checkpoint format shares: dtype names, tokenizer ids, reading safetensors
directories and checking their keys, loading a tokenizer next to the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from ..runtime import UserError

EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """The config.json ``torch_dtype`` name of an export dtype."""
    return {v: k for k, v in EXPORT_DTYPES.items()}[dtype]


def token_ids(tokenizer: Any) -> dict[str, Optional[int]]:
    """bos / eos / pad token ids of ``tokenizer`` (all None without one), for config.json."""
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory: model.safetensors or a sharded index."""
    from safetensors.torch import load_file

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(path / f)))
        return sd
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise UserError(f"{path}: only safetensors weights are read (pickled .bin/.pt files are not loaded)")
    raise UserError(f"{path}: no model.safetensors (or model.safetensors.index.json)")


def check_keys(sd: dict[str, torch.Tensor], want: set[str], optional: set[str], source: str, what: str) -> None:
    """Refuse a checkpoint whose keys are not ``want`` (``optional`` ones may be absent or present)."""
    missing = sorted(want - set(sd) - optional)
    unexpected = sorted(set(sd) - want - optional)
    if missing or unexpected:
        raise UserError(f"{source} is not a {what} checkpoint of its own config: "
                        f"missing keys {missing}; unexpected keys {unexpected}")


def load_tokenizer(path: Path):
    """The tokenizer saved in ``path``, None when there is none or it does not load."""
    from ..data import tokenizer as T

    if path.is_dir() and not T.has_tokenizer(path):
        return None
    try:
        return T.load_tokenizer(path)
    except (OSError, ValueError, TypeError):
        return None
