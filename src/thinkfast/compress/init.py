"""How the width-reducing projections start.

A projection is a matrix P (D, d) mapping the teacher's hidden width D to the student's d = d_s
(x_s = x_t @ P). Three starts:

  gaussian    i.i.d. N(0, 1/d): Low-Rank Clone's random baseline (norms preserved in expectation)
  orthogonal  orthonormal columns (QR of a Gaussian matrix): an isometry of a random subspace
  red         channel selection (RED): columns of the identity at the d channels with the highest
              Minitron importance on teacher activations, in increasing channel order

Minitron importance (Muralidharan et al., 2024) of hidden channel c: for the output a (B, T, D) of
every RMSNorm of the teacher (each block's two norms and the final norm), mean_T |a[b, t, c]| per
sequence, then the L2 norm over the B sequences, summed over the norms.

Glossary: B sequences, T positions, D teacher width, d student width.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from ..runtime import UserError

INITS = ("red", "gaussian", "orthogonal")


def check_width(d_s: int, d: int, allow_full: bool = False) -> None:
    """A student width must be in [1, d) (or [1, d] with ``allow_full``, for identity checks)."""
    if not isinstance(d_s, int) or isinstance(d_s, bool):
        raise UserError(f"the student width d_s must be an integer, got {d_s!r}")
    top = d if allow_full else d - 1
    if not 1 <= d_s <= top:
        raise UserError(f"the student width d_s={d_s} must be between 1 and {top} for a teacher of width {d} "
                        f"(compression makes the model narrower)")


@torch.no_grad()
def channel_importance(model, batches: Iterable[dict[str, torch.Tensor]], min_sequences: int = 2) -> torch.Tensor:
    """Minitron importance (D,) of each hidden channel of ``model`` over ``batches``.

    Each batch holds input_ids (B, T) and valid (B, T) bool; padded positions do not count. Raises
    UserError with fewer than ``min_sequences`` non-empty sequences (the L2 over the batch needs a
    batch).
    """
    norms = [n for blk in model.layers for n in (blk.input_norm, blk.post_norm)] + [model.norm]
    sq = [torch.zeros(model.config.d_model, dtype=torch.float64) for _ in norms]  # per norm: sum_b mean_T|a|^2
    seen, valid = 0, None

    def hook(k):
        def fn(_mod, _inp, out):
            m = valid.to(out.dtype)[..., None]  # (B, T, 1)
            mean_abs = (out.abs() * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)
            sq[k] += mean_abs.double().pow(2).sum(0).cpu()
        return fn

    handles = [n.register_forward_hook(hook(k)) for k, n in enumerate(norms)]
    try:
        model.eval()
        for b in batches:
            valid = b["valid"].bool()
            keep = valid.any(1)  # (B,) sequences with at least one counted token
            if not bool(keep.any()):
                continue
            valid = valid[keep]
            model(b["input_ids"][keep])
            seen += int(keep.sum())
    finally:
        for h in handles:
            h.remove()
    if seen < min_sequences:
        raise UserError(f"the calibration set has {seen} non-empty sequence(s); channel importance needs at "
                        f"least {min_sequences} (it takes an L2 norm over the batch)")
    return torch.stack([s.sqrt() for s in sq]).sum(0).float()  # (D,)


def select_channels(importance: torch.Tensor, d_s: int) -> torch.Tensor:
    """The ``d_s`` most important channel indices (d_s,), sorted ascending (ties: lower index first)."""
    check_width(d_s, importance.numel(), allow_full=True)
    order = torch.argsort(-importance.double(), stable=True)  # (D,) most important first
    return order[:d_s].sort().values


def selection_matrix(channels: torch.Tensor, d: int) -> torch.Tensor:
    """P (D, d_s) whose columns are the identity's columns at ``channels``: x @ P = x[..., channels]."""
    return torch.eye(d)[:, channels].contiguous()


def random_projection(d: int, d_s: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """P (D, d_s), Gaussian N(0, 1/d_s) or with orthonormal columns."""
    g = torch.randn(d, d_s, generator=generator)
    if kind == "gaussian":
        return g / d_s ** 0.5
    if kind == "orthogonal":
        q, r = torch.linalg.qr(g)  # (D, d_s) orthonormal columns
        return q * torch.sign(torch.diagonal(r))  # sign fix: a uniformly random subspace basis
    raise UserError(f"unknown projection init {kind!r}; choose from {INITS}")


def make_projection(d: int, d_s: int, kind: str, generator: torch.Generator,
                    channels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One projection (D, d_s) of ``kind``; ``red`` needs ``channels``."""
    if kind == "red":
        if channels is None:
            raise UserError("the red init needs the selected channels (channel_importance + select_channels)")
        return selection_matrix(channels, d)
    return random_projection(d, d_s, kind, generator)
