"""Long-context token weights: more loss on the tokens that need the far context.

Most tokens of a chain of thought are predictable from the last few dozen tokens; a few (the name
a restated sentence copies from the question, an operand carried from a line above) can only be
predicted from far back, and those are the ones a recurrent student finds hard to learn. A plain
mean over positions gives each of them one share in a few hundred, and whether a student learns
them becomes a matter of its seed (docs/demo-study.md, "What a failing Llamba is missing").

LongCE ("What is Wrong with Perplexity for Long-context Language Modeling?", Fang et al., 2024)
finds such key tokens by a long-short difference and weights the loss by it. Here the teacher
scores them, once per batch and without gradients:

    LSD_t = log p_teacher(y_t | the whole prefix) - log p_teacher(y_t | a short context)
    w_t   = min(exp(LSD_t), cap)

so a token the teacher needs the far context for weighs up to ``cap``; one the short context
predicts as well weighs 1, and one it predicts better weighs less. The losses then average
w_t * loss_t over the counted positions (``losses._masked_mean``).

The short context is a truncation, not a mask, so it means the same for any teacher (attention,
Mamba or hybrid): the sequence is cut into blocks of ``window`` tokens, and each block j >= 1 is
read in a fresh pass over blocks j-1 and j together. A position of block j therefore sees between
window + 1 and 2 * window tokens (itself included); positions of block 0 see their whole prefix
and weigh exactly 1. The cost is one teacher forward over twice the tokens, without gradients.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .chunked_loss import DEFAULT_CHUNK, has_head, head_inputs
from .losses import token_mask


def _final_hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, D) inputs of the LM head, or the (B, T, V) logits of a model without a separate head."""
    if has_head(model):
        return head_inputs(model, ids)[1]
    return model(ids).logits


def short_context_windows(ids: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T) -> (B * (nb - 1), 2 * window): blocks j-1 and j side by side for j = 1 .. nb - 1,
    nb = ceil(T / window); the last window is right-padded with token 0 (a causal model never
    reads it)."""
    B, T = ids.shape
    nb = -(-T // window)
    padded = F.pad(ids, (0, nb * window - T))  # (B, nb * W)
    return padded.unfold(1, 2 * window, window).reshape(-1, 2 * window)  # (B * (nb-1), 2W)


@torch.no_grad()
def short_context_hidden(model: nn.Module, ids: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T, D) what ``_final_hidden`` gives when position t sees only tokens from
    window * (t // window - 1) on (at least window + 1, at most 2 * window of them); block 0 (the
    first ``window`` positions) keeps its whole prefix, which is shorter than that."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    B, T = ids.shape
    full0 = _final_hidden(model, ids[:, :window])  # block 0 reads its whole prefix
    if T <= window:
        return full0
    wins = short_context_windows(ids, window)
    h = _final_hidden(model, wins)[:, window:]  # (B * (nb-1), W, D): block j's positions, seeing j-1 too
    h = h.reshape(B, -1, h.shape[-1])[:, : T - window]  # (B, T - W, D): positions W .. T-1
    return torch.cat([full0, h], dim=1)  # (B, T, D)


def _label_logprobs(hidden: torch.Tensor, head: Optional[nn.Linear], idx: torch.Tensor, y: torch.Tensor,
                    chunk: int) -> torch.Tensor:
    """(N,) fp32 log p(y) at flat positions idx of hidden (B, T, D); head None: hidden are logits."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = []
    for a in range(0, idx.numel(), chunk):
        h = flat.index_select(0, idx[a:a + chunk])
        z = (h if head is None else head(h)).float()  # (c, V)
        out.append(F.log_softmax(z, dim=-1).gather(1, y[a:a + chunk, None]).squeeze(1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def long_context_weights(teacher: nn.Module, ids: torch.Tensor, labels: torch.Tensor, window: int,
                         cap: float, mask: Optional[torch.Tensor] = None,
                         full_hidden: Optional[torch.Tensor] = None,
                         chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """(B, T) fp32 weights w_t = min(exp(LSD_t), cap) at the counted positions (labels != IGNORE,
    and ``mask``), 1 elsewhere (never read there); see the module docstring.

    ids, labels (B, T), labels aligned with the positions (labels[t] is the token after t).
    full_hidden: the teacher's (B, T, D) head inputs on ids when the caller already has them.
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    m = token_mask(labels, mask)
    idx = m.reshape(-1).nonzero().squeeze(1)
    y = labels.reshape(-1).index_select(0, idx).clamp(min=0)
    head = teacher.lm_head if has_head(teacher) else None
    full = _final_hidden(teacher, ids) if full_hidden is None else full_hidden
    short = short_context_hidden(teacher, ids, window)
    lsd = _label_logprobs(full, head, idx, y, chunk_size) - _label_logprobs(short, head, idx, y, chunk_size)
    lsd = torch.where(idx % ids.shape[1] < window, torch.zeros_like(lsd), lsd)  # block 0: the same context
    w = torch.ones(ids.numel(), dtype=torch.float32, device=ids.device)
    w[idx] = lsd.exp().clamp(max=cap)
    return w.view(ids.shape)


def weights_summary(weights: torch.Tensor, labels: torch.Tensor, cap: float) -> dict[str, torch.Tensor]:
    """Training metrics of a batch's weights: their mean and the share at the cap, over counted positions."""
    m = token_mask(labels)
    n = m.sum().clamp(min=1)
    return {"long_w": (weights * m).sum() / n,
            "long_at_cap": ((weights >= cap * (1 - 1e-6)) & m).sum() / n}
