"""Examples -> fixed-length training blocks, packed or padded.

Packing concatenates every example into one stream and cuts it into windows of T+1 tokens that
overlap by one (window i is stream[i*T : i*T + T + 1]), so no target is lost at a cut:
``input_ids = w[:-1]``, ``labels = w[1:]`` with IGNORE wherever the target token gets no loss.
Examples are not masked from each other inside a block (the usual pretraining trade: no padding
waste; the model sees the previous example as context). Without packing each example is one
block, truncated to T+1 tokens and right-padded; a causal model never looks right, so right
padding needs no attention mask.

Glossary: N blocks, T sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .formatting import Formatted

IGNORE = -100


@dataclass
class TokenBlocks:
    """Training blocks: input_ids, labels (N, T) long; valid (N, T) bool = real (non-pad) input."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def batch(self, index: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(index, dtype=torch.long)
        return {"input_ids": self.input_ids[idx], "labels": self.labels[idx], "valid": self.valid[idx]}

    @property
    def n_loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def trim_right_padding(batch: dict[str, torch.Tensor], multiple: int = 16) -> dict[str, torch.Tensor]:
    """``batch`` (every (B, T) tensor of it) cut to its longest row's real length, rounded up to
    ``multiple`` (at most T); other entries are kept as they are.

    Rows are right-padded (``pad_each``) and a causal model never looks right, so every real
    position's output -- and every loss over real positions -- is the same on the cut batch, to
    float rounding; the positions cut hold only padding (``valid`` False, labels IGNORE). Packed
    blocks are full, so nothing is cut. ``multiple`` bounds how many shapes a run sees (compiled
    steps recompile per shape)."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    valid = batch["valid"]  # (B, T) bool
    T = valid.shape[1]
    real = valid.any(0).nonzero()
    length = int(real[-1]) + 1 if real.numel() else 1
    length = min(T, -(-length // multiple) * multiple)
    if length == T:
        return batch
    return {k: v[:, :length] if v.dim() >= 2 and v.shape[:2] == valid.shape else v for k, v in batch.items()}


def _stream(examples: list[Formatted], loss_on: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = [], []
    for ex in examples:
        ids += ex.prompt + ex.response
        mask += [loss_on == "all"] * len(ex.prompt) + [True] * len(ex.response)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)


def windows_to_blocks(windows: torch.Tensor, wmask: torch.Tensor, wreal: torch.Tensor) -> TokenBlocks:
    """windows (N, T+1) long -> blocks of T; wmask (N, T+1) bool: the token earns loss; wreal
    (N, T+1) bool: not padding. Shared by the in-memory blocks and the token store's reader."""
    labels = torch.where(wmask[:, 1:] & wreal[:, 1:], windows[:, 1:], torch.full_like(windows[:, 1:], IGNORE))
    return TokenBlocks(windows[:, :-1].contiguous(), labels.contiguous(), wreal[:, :-1].contiguous())


def pack(examples: list[Formatted], seq_len: int, pad_id: int = 0, loss_on: str = "response") -> TokenBlocks:
    """Concatenate and cut into (N, seq_len) blocks; the last block is right-padded."""
    ids, mask = _stream(examples, loss_on)
    n = ids.numel()
    if n < 2:
        return TokenBlocks(*(torch.zeros(0, seq_len, dtype=d) for d in (torch.long, torch.long, torch.bool)))
    n_blocks = -(-(n - 1) // seq_len)
    total = n_blocks * seq_len + 1
    real = torch.zeros(total, dtype=torch.bool)
    real[:n] = True
    ids = torch.cat([ids, ids.new_full((total - n,), pad_id)])
    mask = torch.cat([mask, mask.new_zeros(total - n)])
    win = lambda x: x.unfold(0, seq_len + 1, seq_len)  # noqa: E731  (N, T+1) views, overlap 1
    return windows_to_blocks(win(ids), win(mask), win(real))


def pad_each(examples: list[Formatted], seq_len: int, pad_id: int = 0,
             loss_on: str = "response") -> tuple[TokenBlocks, int]:
    """One block per example (truncated to seq_len+1 tokens, right-padded); returns the blocks
    and how many examples were truncated."""
    n = len(examples)
    ids = torch.full((n, seq_len + 1), pad_id, dtype=torch.long)
    mask = torch.zeros(n, seq_len + 1, dtype=torch.bool)
    real = torch.zeros(n, seq_len + 1, dtype=torch.bool)
    truncated = 0
    for i, ex in enumerate(examples):
        toks = (ex.prompt + ex.response)[: seq_len + 1]
        m = ([loss_on == "all"] * len(ex.prompt) + [True] * len(ex.response))[: seq_len + 1]
        truncated += len(ex.prompt) + len(ex.response) > seq_len + 1
        ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
        real[i, : len(toks)] = True
    return windows_to_blocks(ids, mask, real), truncated
