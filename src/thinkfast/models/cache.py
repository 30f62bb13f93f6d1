"""Inference state behind one interface.

Attention layers keep a pre-allocated KV cache; Mamba layers keep their conv window and SSM
state, whose size does not grow with the context. ``InferenceCache`` holds one state per layer
plus what the model needs across layers (the key padding mask, each row's next position).
Every state supports ``select(index)``: reorder / repeat / drop batch rows, which is how one
prefill is copied n ways and how finished rows are dropped.

Glossary: B batch, G kv heads, S max cached length, hd head dim, Cd conv channels, K conv kernel,
H SSM heads, P head dim, N state size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


class AttentionState:
    """k, v (B, G, S_max, hd), filled up to ``length``."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        end = self.length + T
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def select(self, index: torch.Tensor) -> None:
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class MambaState:
    """conv (B, K-1, Cd) last conv inputs, oldest first (channels last, so a decode step reads
    and shifts whole contiguous (B, Cd) slices); ssm (B, H, P, N) fp32. ``seen``: any token
    processed."""

    def __init__(self, batch: int, conv_dim: int, kernel: int, n_heads: int, head_dim: int,
                 d_state: int, dtype, device):
        self.conv = torch.zeros(batch, kernel - 1, conv_dim, dtype=dtype, device=device)
        self.ssm = torch.zeros(batch, n_heads, head_dim, d_state, dtype=torch.float32, device=device)
        self.seen = False

    def select(self, index: torch.Tensor) -> None:
        self.conv = self.conv.index_select(0, index)
        self.ssm = self.ssm.index_select(0, index)

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * 4


LayerState = Union[AttentionState, MambaState]


@dataclass
class InferenceCache:
    layers: list[LayerState]
    key_mask: torch.Tensor
    """(B, S_max) bool: which cached positions are real tokens (False = left padding)."""
    next_pos: torch.Tensor
    """(B,) long: RoPE position of each row's next token (= real tokens seen so far)."""
    length: int = 0
    """Positions used so far, pads included (same for every row)."""
    padded: bool = False
    """Some cached position is padding: decode steps need an attention mask."""

    @property
    def capacity(self) -> int:
        return self.key_mask.shape[1]

    @property
    def batch_size(self) -> int:
        return self.key_mask.shape[0]

    def select(self, index: torch.Tensor) -> "InferenceCache":
        """Keep rows ``index`` (B',) in that order: repeat_interleave for n samples, a subset to
        drop finished rows. In place; returns self."""
        index = index.to(self.key_mask.device)
        for st in self.layers:
            st.select(index)
        self.key_mask = self.key_mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        return self

    def nbytes(self) -> int:
        return sum(st.nbytes() for st in self.layers)
