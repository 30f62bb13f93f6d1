"""Left padding, shared by the engine, the hf backend and ``eval.rewards``."""

from __future__ import annotations

from typing import Sequence

import torch


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int = 0,
             mask_dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T) on the CPU, left-padded with ``pad_id`` so every
    last real token is at -1; the mask is 1 (True) on real tokens."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=mask_dtype)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[b, T - len(s):] = 1
    return ids, mask
