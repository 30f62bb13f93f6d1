"""Tiny teachers and token data for the compression tests (CPU, seconds).

A module with a unique name (not conftest) so test files can import it unambiguously."""

from __future__ import annotations

from pathlib import Path

import token_data
import torch

from thinkfast.config import ModelConfig
from thinkfast.models.lm import LanguageModel

VOCAB = 48


def tiny_teacher(seed: int = 0, **kw) -> LanguageModel:
    """A random Llama (width 32, 2 layers, GQA) whose logits are far from uniform."""
    base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
                init_std=0.15)
    base.update(kw)
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig(**base)).eval()
    with torch.no_grad():  # norms away from ones, so the selected norm weights matter
        for n in [m for blk in model.layers for m in (blk.input_norm, blk.post_norm)] + [model.norm]:
            n.weight.uniform_(0.5, 1.5)
    return model


def write_token_data(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Rows of token ids: a prompt [1, a] and a response counting up from a (learnable)."""
    return token_data.write_token_data(path, VOCAB, n=n, seed=seed)


def batches(n_seq: int = 6, T: int = 12, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n_seq, T), generator=g)
    return [{"input_ids": ids[i:i + 3], "valid": torch.ones(len(ids[i:i + 3]), T, dtype=torch.bool)}
            for i in range(0, n_seq, 3)]
