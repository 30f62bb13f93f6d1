"""The SSD (state-space duality) scan, three ways.

All three compute, per batch b and head h, the scalar-decay linear recurrence

    h_t = a_t * h_{t-1} + x_t B_t^T          h_t: (P, N)
    y_t = h_t C_t                            y_t: (P,)

with a_t = exp(log_a_t) in (0, 1]. Mamba-2 (MambaInLlama) uses log_a = dt * A and feeds
x * dt; the discrete Mamba-2 of Llamba uses log_a = -softplus(a) and feeds x unscaled. Both
are reduced to (x, log_a, B, C) by the mixers before calling here.

Glossary: b batch, L sequence length, h heads, P head dim, N state size, c chunks, l chunk length.

- ``ssd_sequential``: the plain recurrence, the readable reference and test oracle.
- ``ssd_chunked``: the chunked scan (Mamba-2 paper, listing 1) for training and prefill.
- ``ssd_matrix``: materialises each head's (L, L) mixing matrix M, so y = M x. MOHAWK stage 1
  fits M to the teacher's attention matrix.

The mixers call the scan through two entry points, which pick a backend per call:

- ``chunk_scan``: Mamba-2's continuous form (x, dt, A), the contract of mamba_ssm's fused
  ``mamba_chunk_scan_combined``.
- ``discrete_chunk_scan``: the discrete form (x, log_a). ``ssd_chunked`` takes it as it is; for
  the kernel it is rewritten in the continuous form by ``discrete_as_continuous`` (A = -1,
  dt = -log_a, x / dt), as the Llamba and phi-mamba releases do.

Backends: ``"mamba_ssm"`` (the CUDA kernel), ``"torch"`` (``ssd_chunked``), ``"reference"``
(``ssd_sequential``, slow). By default a CUDA tensor uses mamba_ssm when it can be imported and
every other tensor uses torch; the environment variable ``THINKFAST_SCAN_BACKEND`` (``auto``,
``mamba_ssm``, ``torch`` or ``reference``) or the entry points' ``backend`` argument forces one.
The causal conv before the scan follows the same choice with causal_conv1d's
``causal_conv1d_fn`` (see ``conv_backend``). Each backend is logged once per process (INFO, this
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


# --- backends -------------------------------------------------------------------------------

BACKEND_ENV = "THINKFAST_SCAN_BACKEND"
BACKEND_CHOICES = ("auto", "mamba_ssm", "torch", "reference")
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
    """The scan backend that runs for tensors on ``device``: "mamba_ssm", "torch" or "reference".

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
    else "torch" (F.conv1d). Forcing the torch or reference scan forces the torch conv too."""
    choice, device = _choice(backend), torch.device(device)
    if choice in ("auto", "mamba_ssm") and device.type == "cuda" and _load("causal_conv1d") is not None:
        return "causal_conv1d"
    return "torch"


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
    elif _choice(backend) in ("torch", "reference"):
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
    (b, h, P, N) fp32. torch / reference run ``ssd_chunked`` / ``ssd_sequential`` on
    (x * dt, dt * A); mamba_ssm runs the fused kernel on the same arguments.
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
    ``ssd_sequential``. torch / reference run ``ssd_chunked`` / ``ssd_sequential`` on it as it
    is; mamba_ssm runs the kernel through ``discrete_as_continuous`` (B and C in fp32, like x)."""
    name = scan_backend(x.device, backend)
    if name == "mamba_ssm":
        x_in, dt, A = discrete_as_continuous(x, log_a)
        return chunk_scan(x_in, dt, A, B.float(), C.float(), chunk_size, initial_state, backend="mamba_ssm")
    _run_note(name, x.device, backend)
    if name == "torch":
        return ssd_chunked(x, log_a, B, C, chunk_size=chunk_size, initial_state=initial_state)
    return ssd_sequential(x, log_a, B, C, initial_state)
