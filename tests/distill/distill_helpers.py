"""Tiny teachers, data files and recipes for the distillation tests (CPU, seconds).

A module with a unique name (not conftest) so test files can import it unambiguously."""

from __future__ import annotations

from pathlib import Path

import token_data
import torch

from thinkfast.config import ModelConfig
from thinkfast.models.lm import LanguageModel

VOCAB = 48


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
                init_std=0.15)
    base.update(kw)
    return ModelConfig(**base)


def tiny_teacher(seed: int = 0, **kw) -> LanguageModel:
    """A random Llama whose logits are far from uniform (init_std 0.15), so KD has signal."""
    torch.manual_seed(seed)
    return LanguageModel(tiny_config(**kw)).eval()


def write_token_data(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Rows of token ids: a prompt [1, a] and a response counting up from a (learnable)."""
    return token_data.write_token_data(path, VOCAB, n=n, seed=seed)


def recipe(tmp: Path, teacher_dir: Path, data: Path, stages: list[dict], **top) -> dict:
    """A recipe mapping for ``build_config`` with tiny, quiet defaults."""
    train = {"steps": 6, "batch_size": 4, "lr": 3e-3, "progress": False, "log_every": 1, "save_every": 0,
             "schedule": "constant"}
    train.update(top.pop("train", {}))
    out = {"out_dir": str(tmp / "run"), "teacher": str(teacher_dir),
           "student": {"init": "teacher", "keep": 0.0, "kind": "discrete"},
           "data": {"train": str(data), "seq_len": 16, "eval_fraction": 0.1},
           "train": train, "stages": stages}
    out.update(top)
    return out


