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
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


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
