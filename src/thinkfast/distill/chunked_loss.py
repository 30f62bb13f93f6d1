"""The distillation loss from final hidden states, in chunks of positions: no (B, T, V) logits.

``losses.distillation_loss`` takes full logits: at V = 128,256 one fp32 (B, T, V) tensor is
1.05 GB per sequence at T = 2048 and the log-softmaxes, probabilities and gradients keep several
alive at once. ``chunked_distillation_loss`` takes what goes into the LM heads instead -- the
final (normed) hidden states (B, T, D) of student and teacher and each head's weight (V, D) and
optional bias (V,) -- and

1. gathers the counted positions first (N of them: labels != IGNORE, and ``mask``),
2. projects ``chunk_size`` positions at a time through each head, upcasts to fp32 and adds up
   that chunk's KL (and CE) -- nothing of size V outlives its chunk,
3. in backward recomputes each chunk's logits (student and teacher) and produces the gradient
   wrt the student's hidden states, head weight and bias directly (the fused linear-cross-
   entropy technique of Liger-Kernel's fused linear JSD and Apple's Cut Cross-Entropy). The
   teacher is frozen: its inputs are detached and get no gradient.

Peak memory is O(N * D + chunk_size * V + V * D) instead of O(B * T * V); the price is one more
pair of chunk matmuls (the logits are recomputed in backward).

Semantics are exactly those of ``losses.distillation_loss`` (kept as the readable oracle):
softmax(logits / temperature) in fp32, KL per token times temperature^2, CE on the untempered
logits, means over counted positions (0 when none), ``(total, kl, ce)`` returned with ce 0 when
``ce_weight`` is 0. Under autocast the head matmuls run in the autocast dtype, as the model's
own ``lm_head`` would; everything after them is fp32 (one deliberate difference: fp64 heads
stay fp64 where the reference's ``.float()`` would round them to fp32 -- it lets
``torch.autograd.gradcheck`` check the backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import token_mask

DEFAULT_CHUNK = 1024
"""Positions per chunk unless told otherwise: 1024 x 128,256 fp32 logits are 0.5 GB."""


@dataclass(frozen=True)
class _Spec:
    kind: Optional[str]  # "forward" | "reverse" | None (no KL: cross-entropy only)
    temperature: float
    want_ce: bool
    chunk: int
    device_type: str
    s_dtype: torch.dtype  # the student head's matmul dtype
    t_dtype: Optional[torch.dtype]  # the teacher head's matmul dtype
    acc_dtype: torch.dtype  # everything after the matmuls: fp32 (fp64 for fp64 inputs)


def _matmul_dtype(weight: torch.Tensor) -> torch.dtype:
    """What ``F.linear`` with this weight would compute in: the autocast dtype under autocast."""
    dev = weight.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype


def _acc_dtype(*weights: torch.Tensor) -> torch.dtype:
    """fp32, as the reference's ``.float()``; fp64 weights stay fp64 (for gradcheck)."""
    return torch.float64 if any(w.dtype == torch.float64 for w in weights) else torch.float32


def _cast(x: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if x is None else x.to(dtype)


def _chunk_logits(heads, a: int, b: int, spec: _Spec):
    """(c, V) fp32 logits of positions a:b for the student and (when there is a KL) the teacher."""
    hs, ws, bs, ht, wt, bt = heads
    zs = F.linear(hs[a:b], ws, bs).to(spec.acc_dtype)
    zt = F.linear(ht[a:b], wt, bt).to(spec.acc_dtype) if spec.kind is not None else None
    return zs, zt


def _chunk_values(heads, a: int, b: int, y: Optional[torch.Tensor], spec: _Spec,
                  w: Optional[torch.Tensor] = None):
    """Sums over positions a:b of (KL per token * temperature^2, CE per token), each position
    times its weight w (c,) where given, as fp32 scalars.

    The same operations as the reference, in place where it can: only a few (c, V) tensors live."""
    zs, zt = _chunk_logits(heads, a, b, spec)
    kl = ce = None
    tau = spec.temperature
    ls = None
    if spec.want_ce:
        ls1 = F.log_softmax(zs, dim=-1)
        ce_tok = -ls1.gather(1, y[:, None]).squeeze(1)  # (c,)
        ce = (ce_tok if w is None else ce_tok * w).sum()
        if tau == 1.0 and spec.kind is not None:
            ls = ls1  # the tempered and untempered log-probabilities coincide
        del ls1
    if spec.kind is not None:
        if ls is None:
            ls = F.log_softmax(zs.div_(tau), dim=-1)
        del zs
        lt = F.log_softmax(zt.div_(tau), dim=-1)
        del zt
        if spec.kind == "forward":  # sum p_t (log p_t - log p_s)
            diff = ls.neg_().add_(lt)
            p = lt.exp_()
        else:  # sum p_s (log p_s - log p_t)
            diff = lt.neg_().add_(ls)
            p = ls.exp_()
        kl_tok = p.mul_(diff).sum(-1) * tau**2  # (c,)
        kl = (kl_tok if w is None else kl_tok * w).sum()
    return kl, ce


def _chunk_grad(heads, a: int, b: int, y: Optional[torch.Tensor], spec: _Spec,
                g_kl: Optional[torch.Tensor], g_ce: Optional[torch.Tensor],
                w: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d(g_kl * KL_sum + g_ce * CE_sum)/d(student logits) for positions a:b: (c, V) fp32, each
    row times its position's weight w (c,) where given."""
    zs, zt = _chunk_logits(heads, a, b, spec)
    tau = spec.temperature
    gz = None
    if spec.want_ce and g_ce is not None:  # softmax(z) - onehot(y)
        gz = F.softmax(zs, dim=-1)
        gz[torch.arange(gz.shape[0], device=gz.device), y] -= 1.0
        gz.mul_(g_ce)
    if spec.kind is not None and g_kl is not None:
        ls = F.log_softmax(zs.div_(tau), dim=-1)
        del zs
        lt = F.log_softmax(zt.div_(tau), dim=-1)
        del zt
        if spec.kind == "forward":
            # d/dz tau^2 KL(p_t || p_s) = tau (p_s - p_t)
            g = ls.exp_().sub_(lt.exp_())
        else:
            # d/dz tau^2 KL(p_s || p_t) = tau p_s (d - KL), d = log p_s - log p_t
            d = lt.neg_().add_(ls)
            p = ls.exp_()
            k = (p * d).sum(-1, keepdim=True)
            g = d.sub_(k).mul_(p)
        g.mul_(g_kl * tau)
        gz = g if gz is None else gz.add_(g)
    if w is not None:
        gz.mul_(w[:, None])
    return gz


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b, computed in the dtype of a and b."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(a @ b)


def _heads(hs, ws, bs, ht, wt, bt, spec: _Spec):
    """The inputs of both heads in their matmul dtypes (cast once per pass, not per chunk)."""
    s = (hs.to(spec.s_dtype), ws.to(spec.s_dtype), _cast(bs, spec.s_dtype))
    if spec.kind is None:
        return s + (None, None, None)
    return s + (ht.to(spec.t_dtype), wt.to(spec.t_dtype), _cast(bt, spec.t_dtype))


class _ChunkedHeadLoss(torch.autograd.Function):
    """(KL_sum, CE_sum) over N positions from hidden states and LM heads, chunk by chunk.

    Saves only the (N, D) inputs and references to the weights; backward recomputes the logits.
    pw (N,) or None: each position's weight in both sums (``token_weights``), not differentiated."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, y, spec: _Spec, pw=None):
        ctx.spec = spec
        ctx.save_for_backward(hs, ws, bs, ht, wt, bt, y, pw)
        kl_sum = hs.new_zeros((), dtype=spec.acc_dtype)
        ce_sum = hs.new_zeros((), dtype=spec.acc_dtype)
        with torch.autocast(spec.device_type, enabled=False):
            heads = _heads(hs, ws, bs, ht, wt, bt, spec)
            for a in range(0, hs.shape[0], spec.chunk):
                b = min(a + spec.chunk, hs.shape[0])
                kl, ce = _chunk_values(heads, a, b, y[a:b] if y is not None else None, spec,
                                       pw[a:b] if pw is not None else None)
                if kl is not None:
                    kl_sum += kl
                if ce is not None:
                    ce_sum += ce
        return kl_sum, ce_sum

    @staticmethod
    def backward(ctx, g_kl, g_ce):
        hs, ws, bs, ht, wt, bt, y, pw = ctx.saved_tensors
        spec: _Spec = ctx.spec
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if spec.kind is None:
            g_kl = None
        if not spec.want_ce:
            g_ce = None
        grad_h = torch.zeros_like(hs) if need_h else None
        grad_w = torch.zeros(ws.shape, dtype=spec.acc_dtype, device=ws.device) if need_w else None
        grad_b = torch.zeros(bs.shape, dtype=spec.acc_dtype, device=bs.device) if need_b else None
        if g_kl is None and g_ce is None:
            return grad_h, _cast(grad_w, ws.dtype), _cast(grad_b, None if bs is None else bs.dtype), \
                None, None, None, None, None, None
        with torch.autocast(spec.device_type, enabled=False):
            heads = _heads(hs, ws, bs, ht, wt, bt, spec)
            hs_c, ws_c = heads[0], heads[1]
            for a in range(0, hs.shape[0], spec.chunk):
                b = min(a + spec.chunk, hs.shape[0])
                gz = _chunk_grad(heads, a, b, y[a:b] if y is not None else None, spec, g_kl, g_ce,
                                 pw[a:b] if pw is not None else None)  # (c, V) fp32
                if need_b:
                    grad_b += gz.sum(0)
                gz_c = gz.to(spec.s_dtype)
                del gz
                if need_h:
                    grad_h[a:b] = gz_c @ ws_c
                if need_w:
                    _accumulate_mm(grad_w, gz_c.t(), hs_c[a:b])
                del gz_c
        return (grad_h, _cast(grad_w, ws.dtype), _cast(grad_b, None if bs is None else bs.dtype),
                None, None, None, None, None, None)


def _gather(hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (N, D): the counted positions, in order."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx)


def _gather_weights(weights: Optional[torch.Tensor], idx: torch.Tensor, spec: _Spec) -> Optional[torch.Tensor]:
    """(B, T) position weights -> (N,) at the counted positions, detached, in the sums' dtype."""
    if weights is None:
        return None
    return weights.detach().reshape(-1).index_select(0, idx).to(spec.acc_dtype)


def _check_chunk(chunk_size: int) -> int:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size!r}")
    return chunk_size


def chunked_distillation_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                              teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor,
                              labels: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                              kind: str = "forward", temperature: float = 1.0, kl_weight: float = 1.0,
                              ce_weight: float = 0.0, chunk_size: int = DEFAULT_CHUNK,
                              student_bias: Optional[torch.Tensor] = None,
                              teacher_bias: Optional[torch.Tensor] = None,
                              weights: Optional[torch.Tensor] = None):
    """``losses.distillation_loss`` on ``F.linear(hidden, weight, bias)`` of each model, without
    ever materialising the (B, T, V) logits.

    student_hidden, teacher_hidden: (B, T, D) -- what goes into each LM head (after the final
    norm); D may differ between them. student_weight (V, D), teacher_weight (V, D_t); biases (V,)
    or None. labels, mask, weights (B, T) as in ``losses``. Returns (total, kl, ce); gradients reach
    the student's hidden states, weight and bias; the teacher's inputs and the weights are detached.
    """
    if kind not in ("forward", "reverse"):
        raise ValueError(f"KL kind must be 'forward' or 'reverse', got {kind!r}")
    if ce_weight and labels is None:
        raise ValueError("ce_weight > 0 needs labels")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"vocabularies differ: student head {tuple(student_weight.shape)} vs teacher head "
                         f"{tuple(teacher_weight.shape)}")
    _check_chunk(chunk_size)
    m = token_mask(labels, mask, student_hidden.shape[:2], student_hidden.device)
    idx = m.reshape(-1).nonzero().squeeze(1)
    y = labels.reshape(-1).index_select(0, idx).clamp(min=0) if ce_weight else None
    spec = _Spec("forward" if kind == "forward" else "reverse", float(temperature), bool(ce_weight), chunk_size,
                 student_hidden.device.type, _matmul_dtype(student_weight), _matmul_dtype(teacher_weight),
                 _acc_dtype(student_weight, teacher_weight))
    kl_sum, ce_sum = _ChunkedHeadLoss.apply(
        _gather(student_hidden, idx), student_weight, student_bias,
        _gather(teacher_hidden.detach(), idx), teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(), y, spec, _gather_weights(weights, idx, spec))
    n = m.sum().clamp(min=1)
    kl = kl_sum / n
    ce = ce_sum / n if ce_weight else student_hidden.new_zeros((), dtype=torch.float32)
    return kl_weight * kl + ce_weight * ce, kl, ce


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          mask: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                          chunk_size: int = DEFAULT_CHUNK, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``losses.cross_entropy`` of ``F.linear(hidden, weight, bias)`` without the (B, T, V) logits."""
    _check_chunk(chunk_size)
    m = token_mask(labels, mask)
    idx = m.reshape(-1).nonzero().squeeze(1)
    y = labels.reshape(-1).index_select(0, idx).clamp(min=0)
    spec = _Spec(None, 1.0, True, chunk_size, hidden.device.type, _matmul_dtype(weight), None, _acc_dtype(weight))
    _, ce_sum = _ChunkedHeadLoss.apply(_gather(hidden, idx), weight, bias, None, None, None, y, spec,
                                       _gather_weights(weights, idx, spec))
    return ce_sum / m.sum().clamp(min=1)


# --- models ---------------------------------------------------------------------------------------
def has_head(model: nn.Module) -> bool:
    """Does ``model`` look like ``models.lm.LanguageModel`` (blocks, final norm, linear LM head)?"""
    return (isinstance(getattr(model, "lm_head", None), nn.Linear) and isinstance(getattr(model, "norm", None),
                                                                                  nn.Module)
            and len(getattr(model, "layers", ())) > 0)


def head_inputs(model: nn.Module, input_ids: torch.Tensor, **kwargs):
    """Run ``model`` without its full logits: (output, hidden) with hidden (B, T, D) the LM head's
    input, ``model.norm`` of the last block's output.

    The forward runs with ``logits_to_keep=1`` (a (B, 1, V) tensor, unused); the last block's
    output is caught by a forward hook, so nothing beyond what the model keeps anyway is held.
    ``kwargs`` go to the model (e.g. ``output_hidden_states``).
    """
    caught: list[torch.Tensor] = []
    handle = model.layers[-1].register_forward_hook(lambda mod, args, out: caught.append(out))
    try:
        out = model(input_ids, logits_to_keep=1, **kwargs)
    finally:
        handle.remove()
    return out, model.norm(caught[-1])
