"""What every reward model shares: the ``Scorer`` interface, the text layout of a question and
its solution, the backbone a reward head reads (load, save, hidden size), and reasoning steps
(splitting a solution into steps, aggregating step scores). ``eval.rewards`` (ORM, transformers
PRMs) and ``eval.prm`` (the Math-Shepherd PRM) both build on it."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import torch.nn as nn

from ..config import atomic_directory
from ..runtime import UserError

AGGREGATIONS = ("last", "min", "mean", "prod")


class Scorer(Protocol):
    def score(self, questions: Sequence[str], completions: Sequence[str]) -> list[float]:
        """One reward per (question, completion); higher is better."""
        ...


# --- text layout shared by training and scoring --------------------------------------------------


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_dialogue(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation: the chat template when there is one, else plain turns."""
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template has BOS
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer(text)["input_ids"])


def pad_id(tokenizer: Any) -> int:
    for tok_id in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tok_id is not None:
            return int(tok_id)
    return 0


def is_thinkfast(model: nn.Module) -> bool:
    from ..models.lm import LanguageModel

    return isinstance(model, LanguageModel)


def hidden_size(backbone: nn.Module) -> int:
    cfg = backbone.config
    return int(getattr(cfg, "d_model", None) or getattr(cfg, "hidden_size"))


def load_backbone(path: str, kind: str = "thinkfast", device: str = "cpu") -> tuple[nn.Module, Any]:
    """(model, tokenizer): ``thinkfast`` reads thinkfast dirs and imports HF Llamas;
    ``hf`` loads any transformers causal LM as is."""
    if kind == "thinkfast":
        from ..checkpoint import load_pretrained

        model, tok = load_pretrained(path, device=device)
    elif kind == "hf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path).to(device)
        tok = AutoTokenizer.from_pretrained(path)
    else:
        raise UserError(f"unknown backbone kind {kind!r} (thinkfast, hf)")
    if tok is None:
        raise UserError(f"{path}: no tokenizer beside the model")
    return model, tok


def write_backbone(backbone: nn.Module, tokenizer: Any, out: Path) -> None:
    if is_thinkfast(backbone):
        from ..checkpoint import save_model

        save_model(backbone, out, tokenizer=tokenizer)
    else:
        from ..checkpoint import save_pretrained_files

        save_pretrained_files(backbone, out)
        save_pretrained_files(tokenizer, out)


def save_head_dir(out_dir: str | os.PathLike, meta_file: str, meta: dict[str, Any], head: nn.Module,
                  backbone: nn.Module, tokenizer: Any, backbone_path: Optional[str], save_backbone: bool) -> Path:
    """Write a reward model directory atomically (built beside it, then renamed into place): the
    head as ``head.safetensors``, the backbone under ``backbone/`` when ``save_backbone`` (else
    the path it is reloaded from), and ``meta_file`` holding ``meta`` plus the backbone fields."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(tmp / "head.safetensors"))
        if save_backbone:
            write_backbone(backbone, tokenizer, tmp / "backbone")
        elif backbone_path is None:
            raise ValueError("a frozen backbone must have a path to be reloaded from")
        full = {"format": meta["format"], "backbone": "backbone" if save_backbone else backbone_path,
                "backbone_kind": "thinkfast" if is_thinkfast(backbone) else "hf",
                **{k: v for k, v in meta.items() if k != "format"}}
        (tmp / meta_file).write_text(json.dumps(full, indent=2) + "\n")
    return out


def read_head_dir(path: str | os.PathLike, meta_file: str, fmt: str, what: str, short: str,
                  device: str = "cpu") -> tuple[dict[str, Any], nn.Module, Any, str, dict[str, Any]]:
    """(meta, backbone, tokenizer, backbone path, head state dict) of a directory written by
    ``save_head_dir``; ``what`` / ``short`` name the model in errors ("outcome reward model", "ORM")."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / meta_file).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not {what} directory ({e})") from None
    if meta.get("format") != fmt:
        raise UserError(f"{path}/{meta_file}: not a thinkfast {short}")
    bb_path = meta["backbone"]
    bb_path = str(path / bb_path) if not os.path.isabs(bb_path) and (path / bb_path).exists() else bb_path
    backbone, tok = load_backbone(bb_path, meta["backbone_kind"], device)
    return meta, backbone, tok, bb_path, load_file(str(path / "head.safetensors"))


STEP_SPLITS = ("blank", "line", "sentence")


def step_spans(completion: str, how: str = "blank") -> list[tuple[int, int]]:
    """(start, end) character spans of the reasoning steps, each stripped of surrounding
    whitespace, empty ones dropped: ``blank`` paragraphs separated by blank lines (RLHFlow's
    PRM layout), ``line`` lines (the synthetic task: one step a line), ``sentence`` sentences
    (a '.', '!' or '?' followed by whitespace, or a line break, ends one)."""
    seps = {"blank": r"\n\s*\n", "line": r"\n", "sentence": r"(?<=[.!?])\s+|\n"}
    if how not in seps:
        raise ValueError(f"step split must be one of {STEP_SPLITS}, got {how!r}")
    bounds, start = [], 0
    for m in re.finditer(seps[how], completion):
        bounds.append((start, m.start()))
        start = m.end()
    bounds.append((start, len(completion)))
    out = []
    for a, b in bounds:
        piece = completion[a:b]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            out.append((a + lead, a + len(piece.rstrip())))
    return out


def split_steps(completion: str, how: str = "blank") -> list[str]:
    """Reasoning steps (``step_spans``): by default paragraphs separated by blank lines."""
    return [completion[a:b] for a, b in step_spans(completion, how)]


def aggregate_steps(scores: Sequence[float], how: str) -> float:
    """One reward from step scores: last, min, mean or prod (0.0 for a solution with no steps)."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    if not scores:
        return 0.0
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    if how == "mean":
        return float(sum(scores) / len(scores))
    return float(math.prod(scores))
