"""Effective rank of hidden states, per layer over a dataset.

Two statistics of a token-by-hidden matrix X (N, D), N tokens as rows:

  eRank (Roy & Vetterli, 2007)   exp(H(p)), p_i = sigma_i / sum_j sigma_j over the singular values
                                 of X itself.
  covariance eRank (Wei et al.,  each token centred (mean over tokens subtracted) and scaled to unit
  "Diff-eRank", 2024)            norm; exp(H(q)), q_i = lambda_i / sum_j lambda_j over the eigenvalues
                                 of the covariance X^T X / N. Diff-eRank is the difference of this
                                 quantity between two models on the same tokens.

Both lie in [1, min(N, D)]; with fewer tokens than channels the sample size, not the model, caps the
rank, so ``per_layer_erank`` refuses such a calibration set.

Glossary: N tokens, D hidden width, L layers, B batch, T sequence length.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..runtime import UserError


def spectral_entropy(values: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of non-negative ``values`` (K,) normalised to sum 1; 0 log 0 = 0."""
    v = values.double().clamp(min=0)
    p = v / v.sum()
    p = p[p > 0]
    return -(p * p.log()).sum()


def erank(x: torch.Tensor) -> float:
    """Roy-Vetterli effective rank of x (N, D): exp of the entropy of its normalised singular values."""
    s = torch.linalg.svdvals(x.double())  # (min(N, D),)
    if float(s.sum()) == 0.0:
        return 0.0
    return float(spectral_entropy(s).exp())


def covariance_erank(x: torch.Tensor) -> float:
    """Diff-eRank's effective rank of x (N, D): tokens centred then unit-normed; exp of the entropy of
    the normalised eigenvalues of the covariance (D, D)."""
    z = x.double() - x.double().mean(0, keepdim=True)  # (N, D) centred over tokens
    z = z / z.norm(dim=1, keepdim=True).clamp(min=1e-12)  # (N, D) rows on the unit sphere
    cov = z.T @ z / z.shape[0]  # (D, D)
    lam = torch.linalg.eigvalsh(cov)  # (D,) real, ascending
    if float(lam.clamp(min=0).sum()) == 0.0:
        return 0.0
    return float(spectral_entropy(lam).exp())


def diff_erank(base: torch.Tensor, trained: torch.Tensor) -> float:
    """Diff-eRank (Wei et al., 2024): covariance eRank of ``base``'s representations minus ``trained``'s,
    both (N, D) over the same N tokens."""
    return covariance_erank(base) - covariance_erank(trained)


@torch.no_grad()
def layer_states(model, batches: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Every layer's hidden states over the counted tokens of ``batches``.

    Each batch holds input_ids (B, T) and valid (B, T) bool. Returns L + 1 matrices (N, D): entry 0
    the embeddings, entry i the output of block i (``ModelOutput.hidden_states``), fp32 on CPU.
    """
    model.eval()
    per_layer: list[list[torch.Tensor]] = []
    for b in batches:
        out = model(b["input_ids"], output_hidden_states=True)
        m = b["valid"].bool()
        for i, h in enumerate(out.hidden_states):
            if len(per_layer) <= i:
                per_layer.append([])
            per_layer[i].append(h[m].float().cpu())  # (n, D) counted tokens only
    return [torch.cat(rows) for rows in per_layer]


def per_layer_erank(model, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, list[float]]:
    """{"erank": [L+1 values], "cov_erank": [L+1 values], "tokens": N} of ``model`` on ``batches``.

    Raises UserError when the batches hold fewer counted tokens than the hidden width: the rank of
    N samples cannot exceed N, so such a set measures its own size.
    """
    states = layer_states(model, batches)
    if not states:
        raise UserError("the calibration set for eRank is empty")
    n, d = states[0].shape
    if n < d:
        raise UserError(f"the calibration set for eRank has {n} tokens but the hidden width is {d}: "
                        f"eRank needs at least {d} tokens (use more or longer sequences)")
    return {"erank": [erank(h) for h in states], "cov_erank": [covariance_erank(h) for h in states],
            "tokens": int(n)}
