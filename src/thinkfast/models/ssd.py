"""The SSD (state-space duality) scan, three ways.

All three compute, per batch b and head h, the scalar-decay linear recurrence

    h_t = a_t * h_{t-1} + x_t B_t^T          h_t: (P, N)
    y_t = h_t C_t                            y_t: (P,)

with a_t = exp(log_a_t) in (0, 1]. Mamba-2 (MambaInLlama) uses log_a = dt * A and feeds
x * dt; the discrete Mamba-2 of Llamba uses log_a = -softplus(a) and feeds x unscaled. Both
are reduced to (x, log_a, B, C) by the mixers before calling here.

Glossary: b batch, L sequence length, h heads, P head dim, N state size, c chunks, l chunk length.

- ``ssd_sequential``: the plain recurrence, the readable reference and test oracle.
- ``ssd_chunked``: the chunked scan (Mamba-2 paper, listing 1), readable, under autograd.
- ``ssd_chunked_fast``: the same algorithm for training and prefill on CPU, an
  autograd.Function (``ChunkScan``) with a hand-written backward.
- ``ssd_matrix``: materialises each head's (L, L) mixing matrix M, so y = M x. MOHAWK stage 1
  fits M to the teacher's attention matrix.

The mixers call the scan through two entry points, which pick a backend per call:

- ``chunk_scan``: Mamba-2's continuous form (x, dt, A), the contract of mamba_ssm's fused
  ``mamba_chunk_scan_combined``.
- ``discrete_chunk_scan``: the discrete form (x, log_a). ``ssd_chunked`` takes it as it is; for
  the kernel it is rewritten in the continuous form by ``discrete_as_continuous`` (A = -1,
  dt = -log_a, x / dt), as the Llamba and phi-mamba releases do.

Backends: ``"mamba_ssm"`` (the CUDA kernel), ``"torch"`` (``ssd_chunked_fast``: the chunked
scan with a hand-written backward for its quadratic part), ``"torch_reference"`` (the readable
``ssd_chunked`` under autograd, the reference the fast path is tested against), ``"reference"``
(``ssd_sequential``, slow). By default a CUDA tensor uses mamba_ssm when it can be imported and
every other tensor uses torch; the environment variable ``THINKFAST_SCAN_BACKEND`` (``auto``,
``mamba_ssm``, ``torch``, ``torch_reference`` or ``reference``) or the entry points' ``backend``
argument forces one. The causal conv before the scan follows the same choice: causal_conv1d's
``causal_conv1d_fn`` with mamba_ssm, ``causal_depthwise_conv`` (hand-written backward) with
torch, F.conv1d with torch_reference and reference (see ``conv_backend``). Each backend is logged once per process (INFO, this
module's logger) the first time it runs, and ``backends_used()`` lists those that ran.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sum: x (..., T) -> (..., T, T) with out[i, j] = sum_{k=j+1..i} x_k for
    j <= i and -inf above the diagonal (so exp() gives the causal decay matrix)."""
    T = x.shape[-1]
    x = x[..., None].expand(*x.shape, T)  # (..., T, T): column j holds x
    strict = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    x = x.masked_fill(~strict, 0)
    out = x.cumsum(dim=-2)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return out.masked_fill(~causal, float("-inf"))


def ssd_sequential(
    x: torch.Tensor, log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference recurrence.

    x (b, L, h, P), log_a (b, L, h), B (b, L, h, N), C (b, L, h, N),
    initial_state (b, h, P, N) or None  ->  y (b, L, h, P), final state (b, h, P, N).
    Computed in fp32.
    """
    b, L, h, P = x.shape
    N = B.shape[-1]
    state = (torch.zeros(b, h, P, N, device=x.device, dtype=torch.float32)
             if initial_state is None else initial_state.float())
    x, log_a, B, C = x.float(), log_a.float(), B.float(), C.float()
    ys = []
    for t in range(L):
        decay = log_a[:, t].exp()[..., None, None]  # (b, h, 1, 1)
        state = decay * state + x[:, t, :, :, None] * B[:, t, :, None, :]  # (b, h, P, N)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    return torch.stack(ys, dim=1), state


def ssd_matrix(log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The mixing matrix M (b, h, L, L): M[t, s] = exp(sum_{r=s+1..t} log_a_r) * <C_t, B_s>, s <= t.

    log_a (b, L, h), B (b, L, h, N), C (b, L, h, N). y = M x (per head) when the state starts at 0.
    """
    decay = segsum(log_a.float().transpose(1, 2)).exp()  # (b, h, L, L)
    cb = torch.einsum("bthn,bshn->bhts", C.float(), B.float())  # (b, h, L, L)
    return decay * cb


def ssd_matrix_apply(
    x: torch.Tensor, log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y = M x plus the initial state's contribution, and the final state; same shapes as
    ``ssd_sequential``. Quadratic in L: for tests and MOHAWK, not for long sequences."""
    M = ssd_matrix(log_a, B, C)
    xf = x.float()
    y = torch.einsum("bhts,bshp->bthp", M, xf)
    cum = log_a.float().cumsum(1)  # (b, L, h)
    # final state: sum_s exp(cum[L-1] - cum[s]) x_s B_s^T
    w = (cum[:, -1:] - cum).exp()  # (b, L, h)
    final = torch.einsum("blh,blhp,blhn->bhpn", w, xf, B.float())
    if initial_state is not None:
        h0 = initial_state.float()
        y = y + torch.einsum("blh,blhn,bhpn->blhp", cum.exp(), C.float(), h0)
        final = final + cum[:, -1].exp()[..., None, None] * h0
    return y, final


def ssd_chunked(
    x: torch.Tensor, log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    chunk_size: int = 64, initial_state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked scan: quadratic inside chunks of length l, a recurrence across chunks.

    Same arguments and results as ``ssd_sequential``. L need not be a multiple of chunk_size:
    the tail is padded with x = 0, log_a = 0, which leaves the final state unchanged.
    """
    b, L, h, P = x.shape
    N = B.shape[-1]
    pad = (-L) % chunk_size
    x, log_a, B, C = x.float(), log_a.float(), B.float(), C.float()
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
        log_a = F.pad(log_a, (0, 0, 0, pad))
    c, l = x.shape[1] // chunk_size, chunk_size
    # Heads first, so every product below is a batched matmul over (b, h, c).
    x = x.view(b, c, l, h, P).permute(0, 3, 1, 2, 4)  # (b, h, c, l, P)
    B = B.view(b, c, l, h, N).permute(0, 3, 1, 2, 4)  # (b, h, c, l, N)
    C = C.view(b, c, l, h, N).permute(0, 3, 1, 2, 4)  # (b, h, c, l, N)
    A = log_a.view(b, c, l, h).permute(0, 3, 1, 2)  # (b, h, c, l)
    A_cum = A.cumsum(-1)  # (b, h, c, l)

    # 1. within each chunk: the quadratic (attention-like) form
    scores = (C @ B.transpose(-1, -2)) * segsum(A).exp()  # (b, h, c, l, l)
    y_diag = scores @ x  # (b, h, c, l, P)

    # 2. each chunk's state at its end, starting from zero, stored as (N, P)
    decay_states = (A_cum[..., -1:] - A_cum).exp()  # (b, h, c, l)
    states = (B * decay_states[..., None]).transpose(-1, -2) @ x  # (b, h, c, N, P)

    # 3. pass states across chunks
    h0 = (torch.zeros(b, h, N, P, device=x.device, dtype=torch.float32)
          if initial_state is None else initial_state.float().transpose(-1, -2))
    states = torch.cat([h0[:, :, None], states], dim=2)  # (b, h, c+1, N, P)
    decay_chunk = segsum(F.pad(A_cum[..., -1], (1, 0))).exp()  # (b, h, c+1, c+1)
    new_states = (decay_chunk @ states.flatten(-2)).view(b, h, c + 1, N, P)
    states, final_state = new_states[:, :, :-1], new_states[:, :, -1]

    # 4. each chunk's incoming state -> outputs
    y_off = (C @ states) * A_cum.exp()[..., None]  # (b, h, c, l, P)
    y = (y_diag + y_off).permute(0, 2, 3, 1, 4).reshape(b, c * l, h, P)[:, :L]
    return y, final_state.transpose(-1, -2).contiguous()


_UPPER: dict[tuple[int, str], torch.Tensor] = {}


def _strict_upper(l: int, device: torch.device) -> torch.Tensor:
    """(l, l) bool, True above the diagonal (j > i); cached per size and device."""
    key = (l, str(device))
    m = _UPPER.get(key)
    if m is None:
        m = _UPPER[key] = torch.ones(l, l, dtype=torch.bool, device=device).triu(1)
    return m


def decay_matrix(A_cum: torch.Tensor) -> torch.Tensor:
    """exp(segsum) from cumulative sums: A_cum (..., l) -> (..., l, l) with
    out[i, j] = exp(A_cum[i] - A_cum[j]) for j <= i and 0 above the diagonal.

    Equal to ``segsum(A).exp()`` for A_cum = A.cumsum(-1), to float rounding (the difference of
    two sums instead of one sum; mamba_ssm's kernels compute it the same way). One subtract, one
    masked fill and one exp over (l, l), in place; the fill comes before the exp so the entries
    above the diagonal (positive exponents) never overflow."""
    out = A_cum[..., :, None] - A_cum[..., None, :]  # (..., l, l)
    out.masked_fill_(_strict_upper(A_cum.shape[-1], A_cum.device), float("-inf"))
    return out.exp_()


class ChunkScan(torch.autograd.Function):
    """The chunked scan of ``ssd_chunked`` on chunk-major operands, with a hand-written backward.

    x (b, h, c, l, P), A_cum (b, h, c, l) (each chunk's cumulative log-decay), B, C
    (b, h, c, l, N), h0 (b, h, N, P) or None -> y (b, h, c, l, P), final state (b, h, N, P).
    Per chunk k, with D_k = decay_matrix(A_cum_k), w_k = exp(A_cum_k[-1] - A_cum_k) and
    e_k = exp(A_cum_k):

        y_k = ((C_k B_k^T) * D_k) x_k + (e_k C_k) H_k       (within the chunk + the incoming state)
        H_{k+1} = exp(A_cum_k[-1]) H_k + (w_k B_k)^T x_k     (H_0 = h0, final = H_c)

    The state passing is a loop over the c chunks on (b, h, N, P) tensors. The backward runs
    the same products transposed, and the recurrence backwards; d exp(u) = exp(u) du gives
    every log-decay gradient from a product with a saved exponential. Under autograd the same
    forward records about 40 ops and keeps each one's inputs; here the backward is 9 batched
    matmuls and about 15 elementwise passes, the largest over (b, h, c, l, l)."""

    @staticmethod
    def forward(ctx, x, A_cum, B, C, h0):
        # The scan runs in its inputs' precision (fp32) even under autocast, as ssd_chunked does.
        with torch.autocast(x.device.type, enabled=False):
            return ChunkScan._forward(ctx, x, A_cum, B, C, h0)

    @staticmethod
    def _forward(ctx, x, A_cum, B, C, h0):
        b, h, c, l, P = x.shape
        N = B.shape[-1]
        decay = decay_matrix(A_cum)  # (b, h, c, l, l)
        S = (C @ B.transpose(-1, -2)).mul_(decay)  # (b, h, c, l, l)
        last = A_cum[..., -1]  # (b, h, c)
        w = (last[..., None] - A_cum).exp_()  # (b, h, c, l): decay from each token to its chunk's end
        Bw = B * w[..., None]  # (b, h, c, l, N)
        local = Bw.transpose(-1, -2) @ x  # (b, h, c, N, P): each chunk's state from zero
        step = last.exp()  # (b, h, c)
        H = x.new_empty(b, h, c + 1, N, P)  # H[:, :, k]: the state entering chunk k
        if h0 is None:
            H[:, :, 0].zero_()
        else:
            H[:, :, 0].copy_(h0)
        for k in range(c):
            torch.addcmul(local[:, :, k], H[:, :, k], step[:, :, k, None, None], out=H[:, :, k + 1])
        e = A_cum.exp()  # (b, h, c, l): decay from the chunk's start
        Ce = C * e[..., None]  # (b, h, c, l, N)
        y = S @ x  # (b, h, c, l, P)
        y.view(-1, l, P).baddbmm_(Ce.view(-1, l, N), H[:, :, :c].reshape(-1, N, P))
        ctx.save_for_backward(x, B, C, decay, S, w, Bw, e, Ce, H, step)
        ctx.has_h0, ctx.scan_dtype = h0 is not None, x.dtype
        return y, H[:, :, c].clone()

    @staticmethod
    def backward(ctx, dy, dfinal):
        dt = ctx.scan_dtype
        with torch.autocast(dy.device.type, enabled=False):
            return ChunkScan._backward(ctx, dy.to(dt), None if dfinal is None else dfinal.to(dt))

    @staticmethod
    def _backward(ctx, dy, dfinal):
        x, B, C, decay, S, w, Bw, e, Ce, H, step = ctx.saved_tensors
        b, h, c, l, P = x.shape
        N = B.shape[-1]
        dy = dy.contiguous()
        Hin = H[:, :, :c]  # (b, h, c, N, P)
        # within the chunks
        dS = dy @ x.transpose(-1, -2)  # (b, h, c, l, l)
        dx = S.transpose(-1, -2) @ dy  # (b, h, c, l, P)
        dseg = dS * S
        dA = dseg.sum(-1) - dseg.sum(-2)  # (b, h, c, l)
        dG = dS.mul_(decay)
        dB = dG.transpose(-1, -2) @ C  # (b, h, c, l, N)
        dC = dG @ B  # (b, h, c, l, N)
        # the incoming states: y += Ce H
        dCe = dy @ Hin.transpose(-1, -2)  # (b, h, c, l, N)
        dHin = Ce.transpose(-1, -2) @ dy  # (b, h, c, N, P)
        dA += (dCe * Ce).sum(-1)  # d exp(A_cum) = exp(A_cum) dA_cum
        dC += dCe.mul_(e[..., None])
        # the state passing, backwards
        G = dfinal.clone() if dfinal is not None else x.new_zeros(b, h, N, P)
        dlocal = torch.empty_like(dHin)
        dlast = x.new_empty(b, h, c)
        for k in reversed(range(c)):
            dlocal[:, :, k] = G
            dlast[:, :, k] = (G * Hin[:, :, k]).sum((-1, -2)) * step[:, :, k]
            G = torch.addcmul(dHin[:, :, k], G, step[:, :, k, None, None])
        # local = Bw^T x, Bw = B * exp(last - A_cum)
        dBw = x @ dlocal.transpose(-1, -2)  # (b, h, c, l, N)
        dx.add_(Bw @ dlocal)
        q = (dBw * Bw).sum(-1)  # (b, h, c, l): d/d(last - A_cum)
        dA -= q
        dlast += q.sum(-1)
        dA[..., -1] += dlast
        dB += dBw.mul_(w[..., None])
        return dx, dA, dB, dC, (G if ctx.has_h0 else None)


def ssd_chunked_fast(
    x: torch.Tensor, log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    chunk_size: int = 64, initial_state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ssd_chunked`` for training: the same chunked algorithm and results (to float rounding)
    as one autograd.Function, ``ChunkScan`` (decay from cumulative-sum differences, a loop over
    chunks for the state passing, hand-written backward), on operands laid out chunk-major and
    contiguous once, so the batched matmuls and their backward do not copy. Same arguments and
    results as ``ssd_chunked``; float64 inputs stay float64 (for gradient checks), anything else
    runs in fp32."""
    b, L, h, P = x.shape
    N = B.shape[-1]
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    pad = (-L) % chunk_size
    x, log_a, B, C = x.to(dt), log_a.to(dt), B.to(dt), C.to(dt)
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
        log_a = F.pad(log_a, (0, 0, 0, pad))
    c, l = x.shape[1] // chunk_size, chunk_size
    x = x.view(b, c, l, h, P).permute(0, 3, 1, 2, 4).contiguous()  # (b, h, c, l, P)
    B = B.view(b, c, l, h, N).permute(0, 3, 1, 2, 4).contiguous()  # (b, h, c, l, N)
    C = C.view(b, c, l, h, N).permute(0, 3, 1, 2, 4).contiguous()  # (b, h, c, l, N)
    A_cum = log_a.view(b, c, l, h).permute(0, 3, 1, 2).cumsum(-1)  # (b, h, c, l)
    h0 = None if initial_state is None else initial_state.to(dt).transpose(-1, -2)  # (b, h, N, P)
    y, final_state = ChunkScan.apply(x, A_cum, B, C, h0)  # (b, h, c, l, P), (b, h, N, P)
    y = y.permute(0, 2, 3, 1, 4).reshape(b, c * l, h, P)[:, :L]
    return y, final_state.transpose(-1, -2).contiguous()


class CausalDepthwiseConv(torch.autograd.Function):
    """The causal depthwise conv of the Mamba mixers on the (B, T, Cd) layout, with a
    hand-written backward: out[t] = bias + sum_k w[k] x[t - (K-1) + k] (zeros before t = 0),
    the same sum as F.conv1d over K-1 zeros and x. Each tap is one multiply-add over a shifted
    (B, T, Cd) slice, channels contiguous; the backward is K shifted multiply-adds for dx and K
    products summed over (B, T) for dw. At the Llamba mixer's training shape (4 x 512 x 384,
    K = 4) aten's depthwise convolution_backward costs about twice as much, and F.conv1d also
    needs the input transposed to (B, Cd, T) and padded."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # x (B, T, Cd), weight (Cd, 1, K), bias (Cd,) or None -> (B, T, Cd)
        T, K = x.shape[1], weight.shape[-1]
        w = weight[:, 0].t().to(x.dtype).contiguous()  # (K, Cd)
        out = x * w[K - 1]
        if bias is not None:
            out += bias.to(x.dtype)
        for k in range(K - 1):
            s = K - 1 - k  # tap k reads s tokens back
            if s < T:
                out[:, s:].addcmul_(x[:, :T - s], w[k])
        ctx.save_for_backward(x, w)
        ctx.has_bias, ctx.w_dtype = bias is not None, weight.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w = ctx.saved_tensors
        T, K = x.shape[1], w.shape[0]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dout * w[K - 1]
            for k in range(K - 1):
                s = K - 1 - k
                if s < T:
                    dx[:, :T - s].addcmul_(dout[:, s:], w[k])
        if ctx.needs_input_grad[1]:
            taps = [(dout[:, K - 1 - k:] * x[:, :T - (K - 1 - k)]).sum((0, 1)) if K - 1 - k < T
                    else w.new_zeros(w.shape[1]) for k in range(K)]
            dw = torch.stack(taps, 1)[:, None].to(ctx.w_dtype)  # (Cd, 1, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dout.sum((0, 1)).to(ctx.w_dtype)
        return dx, dw, db


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x (B, T, Cd), weight (Cd, 1, K) (an nn.Conv1d's with groups=Cd), bias (Cd,) or None ->
    (B, T, Cd): the causal conv of x from a zero state; see ``CausalDepthwiseConv``."""
    if weight.dim() != 3 or weight.shape[1] != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"depthwise weight must be ({x.shape[-1]}, 1, K) for {x.shape[-1]} channels, "
                         f"got {tuple(weight.shape)}")
    return CausalDepthwiseConv.apply(x, weight, bias)


# --- backends -------------------------------------------------------------------------------

BACKEND_ENV = "THINKFAST_SCAN_BACKEND"
BACKEND_CHOICES = ("auto", "mamba_ssm", "torch", "torch_reference", "reference")
DT_FLOOR = 1e-9
"""Smallest dt that ``discrete_as_continuous`` passes to the kernel (dt -> 0 is alpha -> 1). A head
whose decay is closer to 1 than exp(-DT_FLOOR) gets exactly exp(-DT_FLOOR) per token, an error in
log alpha of at most 1e-9 per token; x / dt stays below 1e9 |x|, far from fp32's range."""

_MISSING = object()
_kernels: dict[str, object] = {}  # name -> function, or _MISSING once an ImportError was seen
_import_errors: dict[str, str] = {}
_used: dict[str, list[str]] = {"scan": [], "conv": []}
_logged: set[tuple[str, str, str]] = set()


def _load(name: str) -> Optional[Callable]:
    """The optional kernel ``name`` ("mamba_ssm" or "causal_conv1d"), imported on first use, or
    None when it cannot be imported (the ImportError is kept for the log). Any other error
    raised by the import (a broken install: ABI mismatch, CUDA runtime error) propagates."""
    fn = _kernels.get(name)
    if fn is None:
        try:
            if name == "mamba_ssm":
                from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as fn
            else:
                from causal_conv1d import causal_conv1d_fn as fn
        except ImportError as e:
            fn = _MISSING
            _import_errors[name] = f"{type(e).__name__}: {e}"
        _kernels[name] = fn
    return None if fn is _MISSING else fn  # type: ignore[return-value]


def _choice(backend: Optional[str]) -> str:
    choice = (backend if backend is not None else os.environ.get(BACKEND_ENV, "")).strip().lower() or "auto"
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"scan backend must be one of {', '.join(BACKEND_CHOICES)}, got {choice!r}"
                         + ("" if backend is not None else f" (from ${BACKEND_ENV})"))
    return choice


def _why_not(name: str, device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device.type} tensors; {name} is CUDA-only"
    return f"{name} not importable ({_import_errors.get(name, 'unknown reason')})"


def _note(kind: str, name: str, why: str) -> None:
    """Record that ``name`` ran; log it once per process for each reason (a CPU run's "torch"
    does not hide a later CUDA run's "torch" because mamba_ssm failed to import)."""
    if name not in _used[kind]:
        _used[kind].append(name)
    if (kind, name, why) not in _logged:
        _logged.add((kind, name, why))
        log.info("Mamba %s backend: %s (%s)", kind, name, why)


def scan_backend(device: Union[str, torch.device] = "cpu", backend: Optional[str] = None) -> str:
    """The scan backend that runs for tensors on ``device``: "mamba_ssm", "torch",
    "torch_reference" or "reference".

    ``backend`` (else ``$THINKFAST_SCAN_BACKEND``, else "auto") is one of ``BACKEND_CHOICES``;
    "auto" is mamba_ssm on CUDA when importable, else torch. Forcing "mamba_ssm" where it cannot
    run raises RuntimeError instead of falling back."""
    choice, device = _choice(backend), torch.device(device)
    if choice == "auto":
        return "mamba_ssm" if device.type == "cuda" and _load("mamba_ssm") is not None else "torch"
    if choice == "mamba_ssm" and (device.type != "cuda" or _load("mamba_ssm") is None):
        raise RuntimeError(f"scan backend mamba_ssm was asked for but cannot run: {_why_not('mamba_ssm', device)}")
    return choice


def conv_backend(device: Union[str, torch.device] = "cpu", backend: Optional[str] = None) -> str:
    """The causal-conv backend for ``device``: "causal_conv1d" when the scan choice (as in
    ``scan_backend``) is "auto" or "mamba_ssm", the tensors are on CUDA and causal_conv1d imports;
    "torch_reference" (F.conv1d) when the scan choice is "torch_reference" or "reference"; else
    "torch" (``causal_depthwise_conv`` from a zero state, F.conv1d when continuing a decode
    state). Forcing a PyTorch scan forces a PyTorch conv too."""
    choice, device = _choice(backend), torch.device(device)
    if choice in ("auto", "mamba_ssm") and device.type == "cuda" and _load("causal_conv1d") is not None:
        return "causal_conv1d"
    return "torch_reference" if choice in ("torch_reference", "reference") else "torch"


def causal_conv1d_kernel() -> Callable:
    """causal_conv1d's ``causal_conv1d_fn``; only valid where ``conv_backend`` said "causal_conv1d"."""
    fn = _load("causal_conv1d")
    if fn is None:
        raise RuntimeError(f"causal_conv1d not importable ({_import_errors.get('causal_conv1d')})")
    return fn


def note_conv_backend(name: str, device: Union[str, torch.device], backend: Optional[str] = None) -> None:
    """Log (once per process) that the conv ran on ``name``, with the reason."""
    device = torch.device(device)
    if name == "causal_conv1d":
        why = "CUDA kernel"
    elif _choice(backend) in ("torch", "torch_reference", "reference"):
        why = f"forced by {BACKEND_ENV if backend is None else 'argument'}={_choice(backend)}"
    else:
        why = _why_not("causal_conv1d", device)
    _note("conv", name, why)


def backends_used() -> dict[str, tuple[str, ...]]:
    """{"scan": names, "conv": names}: the backends that ran in this process, first use first."""
    return {k: tuple(v) for k, v in _used.items()}


def _run_note(name: str, device: torch.device, backend: Optional[str]) -> None:
    if name == "mamba_ssm":
        why = "CUDA kernel"
    elif _choice(backend) == name:
        why = f"forced by {BACKEND_ENV if backend is None else 'argument'}={name}"
    else:
        why = _why_not("mamba_ssm", device)
    _note("scan", name, why)


def chunk_scan(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    chunk_size: int = 64, initial_state: Optional[torch.Tensor] = None, backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's continuous form, the contract of mamba_ssm's ``mamba_chunk_scan_combined``:

        h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t

    x (b, L, h, P), dt (b, L, h) > 0 (softplus and bias already applied), A (h,) <= 0,
    B, C (b, L, h, N), initial_state (b, h, P, N) or None  ->  y (b, L, h, P) fp32, final state
    (b, h, P, N) fp32. torch / torch_reference / reference run ``ssd_chunked_fast`` /
    ``ssd_chunked`` / ``ssd_sequential`` on (x * dt, dt * A); mamba_ssm runs the fused kernel on
    the same arguments.
    """
    name = scan_backend(x.device, backend)
    _run_note(name, x.device, backend)
    if name == "mamba_ssm":
        kernel = _load("mamba_ssm")
        y, final = kernel(x.contiguous(), dt.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(),
                          chunk_size=chunk_size, initial_states=initial_state, return_final_states=True)
        return y.float(), final.float()
    dt = dt.float()
    x_scan, log_a = x.float() * dt[..., None], dt * A.float()
    if name == "torch":
        return ssd_chunked_fast(x_scan, log_a, B, C, chunk_size=chunk_size, initial_state=initial_state)
    if name == "torch_reference":
        return ssd_chunked(x_scan, log_a, B, C, chunk_size=chunk_size, initial_state=initial_state)
    return ssd_sequential(x_scan, log_a, B, C, initial_state)


def discrete_as_continuous(
    x: torch.Tensor, log_a: torch.Tensor, dt_floor: float = DT_FLOOR,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The discrete recurrence h_t = exp(log_a_t) h_{t-1} + x_t B_t^T in ``chunk_scan``'s form:
    A = -1 and dt = -log_a give exp(dt A) = exp(log_a), and x / dt gives dt * (x / dt) = x.

    x (b, L, h, P), log_a (b, L, h) <= 0  ->  x / dt (b, L, h, P) fp32, dt (b, L, h) fp32,
    A (h,) fp32. dt is clamped to at least ``dt_floor`` (decay -> 1 would divide by ~0): the
    clamped dt is used for both the decay and the division, so x is still fed exactly and only
    the decay of those tokens moves, by at most ``dt_floor`` in log alpha.
    """
    dt = (-log_a.float()).clamp(min=dt_floor)
    A = -torch.ones(log_a.shape[-1], device=log_a.device, dtype=torch.float32)
    return x.float() / dt[..., None], dt, A


def discrete_chunk_scan(
    x: torch.Tensor, log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    chunk_size: int = 64, initial_state: Optional[torch.Tensor] = None, backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discrete form h_t = exp(log_a_t) h_{t-1} + x_t B_t^T, y_t = h_t C_t; shapes as in
    ``ssd_sequential``. torch / torch_reference / reference run ``ssd_chunked_fast`` /
    ``ssd_chunked`` / ``ssd_sequential`` on it as it is; mamba_ssm runs the kernel through ``discrete_as_continuous`` (B and C in fp32, like x)."""
    name = scan_backend(x.device, backend)
    if name == "mamba_ssm":
        x_in, dt, A = discrete_as_continuous(x, log_a)
        return chunk_scan(x_in, dt, A, B.float(), C.float(), chunk_size, initial_state, backend="mamba_ssm")
    _run_note(name, x.device, backend)
    if name == "torch":
        return ssd_chunked_fast(x, log_a, B, C, chunk_size=chunk_size, initial_state=initial_state)
    if name == "torch_reference":
        return ssd_chunked(x, log_a, B, C, chunk_size=chunk_size, initial_state=initial_state)
    return ssd_sequential(x, log_a, B, C, initial_state)
