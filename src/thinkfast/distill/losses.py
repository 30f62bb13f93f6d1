"""Distillation losses as pure functions of tensors.

Conventions: logits (B, T, V) and labels (B, T) are *aligned*: labels[b, t] is the target of
position t (the data pipeline shifts once, so nothing here shifts). A position counts when its
label is not ``IGNORE`` (-100), or where ``mask`` (B, T) bool is True. Means are over counted
positions; an empty selection gives 0, not NaN, so a micro-batch without response tokens is
harmless.

Sources: forward KL with a temperature is Hinton et al. 2015 (the T^2 factor keeps gradient
scale independent of T); reverse KL is MiniLLM (Gu et al. 2024) and MambaInLlama's choice;
stage 1 and 2 are MOHAWK (Bick et al. 2024), eqs. for matrix orientation and hidden-state
alignment.

These functions take full logits and are the readable reference. Training at a real vocabulary
size uses ``chunked_loss.chunked_distillation_loss`` / ``chunked_cross_entropy`` instead: the same
losses from the LM heads' inputs, chunk by chunk, never holding (B, T, V) logits; the tests hold
them equal to these.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE = -100


def token_mask(labels: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
               shape: Optional[torch.Size] = None, device=None) -> torch.Tensor:
    """(B, T) bool of the positions that count: labels != IGNORE, and ``mask`` where given."""
    m = None
    if labels is not None:
        m = labels != IGNORE
    if mask is not None:
        m = mask.bool() if m is None else m & mask.bool()
    if m is None:
        m = torch.ones(shape, dtype=torch.bool, device=device)
    return m


def _masked_mean(values: torch.Tensor, m: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of values (B, T) over m (B, T), each position times ``weights`` (B, T) where given
    (the sum of weight * value over the count of positions, as LongCE weights its cross-entropy);
    0 when m is empty."""
    if weights is not None:
        values = values * weights
    # where(), not a product: a NaN at an ignored position must not leak into the mean.
    return torch.where(m, values, values.new_zeros(())).sum() / m.sum().clamp(min=1)


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 reverse: bool = False) -> torch.Tensor:
    """(B, T) KL at each position, times temperature^2.

    forward (reverse=False): KL(p_teacher || p_student) -- mode covering, the classic KD loss.
    reverse (reverse=True):  KL(p_student || p_teacher) -- mode seeking.
    Both distributions are softmax(logits / temperature), computed in fp32.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, T, V)
    p, log_p, log_q = (s.exp(), s, t) if reverse else (t.exp(), t, s)
    return (p * (log_p - log_q)).sum(-1) * temperature**2


def forward_kl(student_logits, teacher_logits, labels=None, mask=None, temperature: float = 1.0, weights=None):
    """Mean KL(teacher || student) over counted positions (each times ``weights`` (B, T) if given)."""
    m = token_mask(labels, mask, student_logits.shape[:2], student_logits.device)
    return _masked_mean(kl_per_token(student_logits, teacher_logits, temperature, reverse=False), m, weights)


def reverse_kl(student_logits, teacher_logits, labels=None, mask=None, temperature: float = 1.0, weights=None):
    """Mean KL(student || teacher) over counted positions (each times ``weights`` (B, T) if given)."""
    m = token_mask(labels, mask, student_logits.shape[:2], student_logits.device)
    return _masked_mean(kl_per_token(student_logits, teacher_logits, temperature, reverse=True), m, weights)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean next-token cross-entropy over counted positions (labels aligned, IGNORE skipped), each
    position times ``weights`` (B, T) where given."""
    m = token_mask(labels, mask)
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.clamp(min=0).flatten(), reduction="none")
    return _masked_mean(ce.view(labels.shape), m, weights)


def distillation_loss(student_logits, teacher_logits, labels=None, mask=None, kind: str = "forward",
                      temperature: float = 1.0, kl_weight: float = 1.0, ce_weight: float = 0.0,
                      weights: Optional[torch.Tensor] = None):
    """kl_weight * KL(kind, temperature) + ce_weight * CE(labels): the end-to-end KD loss.

    kind: "forward" or "reverse". weights (B, T): each position's KL and CE times its weight
    (``token_weights``), None = 1 everywhere. Returns (total, kl, ce); ce is 0 when ce_weight is 0.
    """
    if kind not in ("forward", "reverse"):
        raise ValueError(f"KL kind must be 'forward' or 'reverse', got {kind!r}")
    kl_fn = forward_kl if kind == "forward" else reverse_kl
    kl = kl_fn(student_logits, teacher_logits, labels, mask, temperature, weights)
    ce = student_logits.new_zeros((), dtype=torch.float32)
    if ce_weight:
        if labels is None:
            raise ValueError("ce_weight > 0 needs labels")
        ce = cross_entropy(student_logits, labels, mask, weights)
    return kl_weight * kl + ce_weight * ce, kl, ce


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error (B, T, D) -> scalar, averaged over counted positions and channels."""
    se = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(-1)  # (B, T)
    m = token_mask(None, mask, se.shape, se.device)
    return _masked_mean(se, m)


def matrix_orientation_loss(student_matrix: torch.Tensor, teacher_matrix: torch.Tensor) -> torch.Tensor:
    """MOHAWK stage 1: || M_student - A_teacher ||_F per (batch, head), averaged over both.

    student_matrix, teacher_matrix: (B, H, T, T) materialised mixing matrices. The head counts
    must agree; a mismatch is an error, never a silent broadcast.
    """
    if student_matrix.shape != teacher_matrix.shape:
        raise ValueError(f"mixing matrices differ in shape: student {tuple(student_matrix.shape)} vs "
                         f"teacher {tuple(teacher_matrix.shape)} (B, H, T, T)")
    diff = student_matrix.float() - teacher_matrix.float()
    return torch.linalg.matrix_norm(diff, ord="fro").mean()


def hidden_alignment_loss(student_out: torch.Tensor, teacher_out: torch.Tensor,
                          mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MOHAWK stage 2: || y_student - y_teacher ||_2 over the hidden dim, averaged over tokens.

    student_out, teacher_out: (B, T, D); mask (B, T) bool marks the tokens that count.
    """
    dist = torch.linalg.vector_norm(student_out.float() - teacher_out.float(), dim=-1)  # (B, T)
    m = token_mask(None, mask, dist.shape, dist.device)
    return _masked_mean(dist, m)
