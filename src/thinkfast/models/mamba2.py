"""Mamba-2 mixers: the MambaInLlama mixer and the discrete Llamba / MOHAWK mixer.

Glossary: B batch, T length, D d_model, H SSM heads, G x/B groups (the teacher's KV heads),
P head dim, N state size, K conv kernel, Cd conv channels.

Both mixers reduce to the same scan (see ``ssd.py``) on
    x_scan (B, T, H, P), log_a (B, T, H), B (B, T, H, N), C (B, T, H, N)
and share the causal depthwise conv with its decode state and the constant-cost decode step.
For training and prefill the scan goes through ``ssd.chunk_scan`` (MambaInLlama: x, dt, A) or
``ssd.discrete_chunk_scan`` (Llamba: x, log_a), which run mamba_ssm's fused kernel on CUDA when
it is importable and the PyTorch chunked scan otherwise; the conv likewise uses causal_conv1d's
kernel on CUDA when importable. The decode step is always the PyTorch one below.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .cache import MambaState
from .layers import repeat_heads
from .ssd import (
    causal_conv1d_kernel, causal_depthwise_conv, chunk_scan, conv_backend, discrete_chunk_scan, note_conv_backend,
    ssd_matrix,
)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) normalised per group of ``group_size`` channels (norm_before_gate=False)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        y = y.float() * F.silu(z.float())
        g = y.view(*y.shape[:-1], -1, self.group_size)  # (..., groups, group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.view_as(y).to(dtype)


class MambaMixerBase(nn.Module):
    """Conv with state, scan dispatch and the decode step shared by both mixers."""

    conv_activation: str = "silu"

    def _conv(self, xbc: torch.Tensor, state: Optional[MambaState], mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Causal depthwise conv over xbc (B, T, Cd) -> (B, T, Cd); continues from and updates
        ``state.conv``. On CUDA with causal_conv1d importable (``ssd.conv_backend``) its kernel
        computes the same outputs: it runs over the same K-1 + T inputs, zero-padded on the left,
        and the K-1 outputs that see the padding are dropped."""
        Bsz, T, Cd = xbc.shape
        K = self.conv1d.kernel_size[0]
        if mask is not None:
            xbc = xbc * mask[..., None].to(xbc.dtype)  # padded tokens feed zeros, like a shorter row
        if state is None and conv_backend(xbc.device) == "torch":  # training: no state to continue
            note_conv_backend("torch", xbc.device)
            out = causal_depthwise_conv(xbc, self.conv1d.weight, self.conv1d.bias)  # (B, T, Cd)
            return F.silu(out) if self.conv_activation == "silu" else out
        xt = xbc.transpose(1, 2)  # (B, Cd, T)
        prev = state.conv.transpose(1, 2).to(xt.dtype) if state is not None else xt.new_zeros(Bsz, Cd, K - 1)
        full = torch.cat([prev, xt], dim=-1)  # (B, Cd, K-1+T)
        if state is not None:
            state.conv.copy_(full[..., -(K - 1):].transpose(1, 2))
        backend = conv_backend(xbc.device)
        note_conv_backend(backend, xbc.device)
        if backend == "causal_conv1d":
            w = self.conv1d.weight[:, 0].to(full.dtype).contiguous()  # (Cd, K)
            bias = None if self.conv1d.bias is None else self.conv1d.bias.to(full.dtype)
            act = "silu" if self.conv_activation == "silu" else None
            return causal_conv1d_kernel()(full, w, bias, activation=act)[..., K - 1:].transpose(1, 2)
        out = F.conv1d(full, self.conv1d.weight, self.conv1d.bias, groups=Cd).transpose(1, 2)  # (B, T, Cd)
        return F.silu(out) if self.conv_activation == "silu" else out

    def _conv_step(self, xbc: torch.Tensor, state: MambaState) -> torch.Tensor:
        """One token: xbc (B, Cd) -> (B, Cd); shifts ``state.conv`` (B, K-1, Cd) in place.

        The same sum as ``_conv``'s F.conv1d over the last K inputs, one tap at a time on
        contiguous (B, Cd) slices: 6.9x faster on CPU than a product and a sum over a trailing
        K-1 axis at the demo's batch of 256 (``benchmarks/engine_speed.py``)."""
        win = state.conv
        w = self.conv1d.weight[:, 0].t().to(win.dtype).contiguous()  # (K, Cd)
        x_new = xbc.to(win.dtype)
        out = x_new * w[-1]
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias.to(win.dtype)
        for k in range(win.shape[1]):
            out.addcmul_(win[:, k], w[k])
        for k in range(win.shape[1] - 1):  # shift the window left by one token
            win[:, k].copy_(win[:, k + 1])
        if win.shape[1]:
            win[:, -1].copy_(x_new)
        out = out.to(xbc.dtype)
        return F.silu(out) if self.conv_activation == "silu" else out

    def _scan(self, x, decay, Bm, Cm, mask, state: Optional[MambaState]) -> torch.Tensor:
        """Run the mixer's chunked scan (``_chunk_scan``) and store the final state when decoding
        follows: x (B, T, H, P), decay (B, T, H) (the mixer's dt or log_a), Bm, Cm (B, T, H, N),
        mask (B, T) or None -> y (B, T, H, P) fp32."""
        if mask is not None:  # pads add nothing to the state
            x = x * mask[..., None, None].to(x.dtype)
        init = state.ssm if state is not None and state.seen else None
        y, final = self._chunk_scan(x, decay, Bm, Cm, init)
        if state is not None:
            state.ssm.copy_(final)
            state.seen = True
        return y

    def _chunk_scan(self, x, decay, Bm, Cm, init) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def _ssm_step(state: MambaState, x_scan, log_a, Bm, Cm) -> torch.Tensor:
        """Constant-cost decode: x_scan (B, H, P), log_a (B, H), Bm/Cm (B, H, N) -> y (B, H, P).

        Decay is one scalar per (batch, head), applied in place, and the rank-1 update is an
        in-place addcmul: no exp or temporary over (B, H, P, N) (measured: 1.45x faster on CPU
        than batched matmuls over B*H tiny matrices).
        """
        s = state.ssm  # (B, H, P, N) fp32
        s.mul_(log_a.float().exp()[..., None, None])
        s.addcmul_(x_scan.float()[..., None], Bm.float()[..., None, :])
        state.seen = True
        return (s * Cm.float()[..., None, :]).sum(-1)  # (B, H, P)


class Mamba2Mixer(MambaMixerBase):
    """The MambaInLlama Mamba-2 mixer.

    in_proj -> z (H*P), x (G*P), B (G*N), C (H*N), dt (H); causal conv (SiLU) over x|B|C at
    the key/value width; x and B repeated across head groups like GQA; dt = softplus(dt + dt_bias);
    A = -exp(A_log); y = SSD(x*dt, dt*A, B, C) + D x; gated RMSNorm per head; out_proj.
    """

    conv_activation = "silu"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.mamba
        self.H, self.G, self.P, self.N = m.n_heads, m.n_kv_heads, m.head_dim, m.d_state
        self.chunk_size = m.chunk_size
        self.d_inner = self.H * self.P
        self.splits = [self.d_inner, self.G * self.P, self.G * self.N, self.H * self.N, self.H]  # z x B C dt
        self.conv_dim = self.G * self.P + self.G * self.N + self.H * self.N
        self.in_proj = nn.Linear(cfg.d_model, sum(self.splits), bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, m.conv_kernel, groups=self.conv_dim,
                                padding=m.conv_kernel - 1, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.H))
        self.A_log = nn.Parameter(torch.zeros(self.H))
        self.D = nn.Parameter(torch.ones(self.H))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.P, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        self.reset_ssm_parameters(m.dt_min, m.dt_max, m.A_init_min, m.A_init_max)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=0.1, A_min=1.0, A_max=16.0, generator=None):
        """dt log-uniform in [dt_min, dt_max] stored as inverse softplus; A uniform in [A_min, A_max]."""
        u = torch.rand(self.H, generator=generator)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.empty(self.H).uniform_(A_min, A_max, generator=generator).log())
        self.D.fill_(1.0)

    def _split(self, u: torch.Tensor):
        return torch.split(self.in_proj(u), self.splits, dim=-1)

    def _heads(self, xbc: torch.Tensor, dt: torch.Tensor):
        """xbc (..., Cd), dt (..., H) -> x (..., H, P), dt (..., H) fp32 (softplus, bias added),
        B, C (..., H, N); x and B GQA-repeated."""
        x, Bm, Cm = torch.split(xbc, [self.G * self.P, self.G * self.N, self.H * self.N], dim=-1)
        rep = self.H // self.G
        x = repeat_heads(x.unflatten(-1, (self.G, self.P)), rep, dim=-2)  # (..., H, P)
        Bm = repeat_heads(Bm.unflatten(-1, (self.G, self.N)), rep, dim=-2)  # (..., H, N)
        Cm = Cm.unflatten(-1, (self.H, self.N))  # (..., H, N)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (..., H)
        return x, dt, Bm, Cm

    def _A(self) -> torch.Tensor:
        """(H,) fp32, A = -exp(A_log)."""
        return -torch.exp(self.A_log.float())

    def _discretise(self, x: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., H, P), dt (..., H) -> the scan's x_scan = x * dt (..., H, P), log_a = dt * A (..., H)."""
        return x.float() * dt[..., None], dt * self._A()

    def _chunk_scan(self, x, dt, Bm, Cm, init):
        return chunk_scan(x, dt, self._A(), Bm, Cm, chunk_size=self.chunk_size, initial_state=init)

    def _out(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y + self.D.float()[:, None] * x.float()  # (..., H, P)
        y = y.flatten(-2).to(z.dtype)
        return self.out_proj(self.norm(y, z))

    def forward(self, u: torch.Tensor, ctx=None, state: Optional[MambaState] = None) -> torch.Tensor:
        """u (B, T, D) -> (B, T, D). ``ctx.token_mask`` (B, T) marks real tokens (False = left
        padding), None when every token is real."""
        mask = getattr(ctx, "token_mask", None)
        if state is not None and u.shape[1] == 1 and mask is None:
            return self.step(u, state)
        z, x, Bm, Cm, dt = self._split(u)
        xbc = self._conv(torch.cat([x, Bm, Cm], dim=-1), state, mask)
        xh, dt, Bh, Ch = self._heads(xbc, dt)
        y = self._scan(xh, dt, Bh, Ch, mask, state)
        return self._out(y, xh, z)

    def step(self, u: torch.Tensor, state: MambaState) -> torch.Tensor:
        """u (B, 1, D) -> (B, 1, D), constant cost in the context length."""
        zxbcdt = self.in_proj(u[:, 0])  # z | x B C | dt: x|B|C is one slice, no concatenation
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.H], dim=-1)
        xbc = self._conv_step(xbc, state)
        xh, dt, Bh, Ch = self._heads(xbc, dt)
        x_scan, log_a = self._discretise(xh, dt)
        y = self._ssm_step(state, x_scan, log_a, Bh, Ch)
        return self._out(y, xh, z)[:, None]

    def mixing_matrix(self, u: torch.Tensor) -> torch.Tensor:
        """Materialised (B, H, T, T) mixing matrix on input u (B, T, D) -- MOHAWK stage 1."""
        z, x, Bm, Cm, dt = self._split(u)
        xbc = self._conv(torch.cat([x, Bm, Cm], dim=-1), None, None)
        _, dt, Bh, Ch = self._heads(xbc, dt)
        # y_t = sum_s M[t,s] dt_s x_s: fold dt_s into the columns so M maps x itself.
        return ssd_matrix(dt * self._A(), Bh, Ch) * dt.transpose(1, 2)[:, :, None, :]


def decay_bias_init(n_heads: int, tau_min: float, tau_max: float) -> torch.Tensor:
    """(H,) biases b with 1 / softplus(b) log-spaced over [tau_min, tau_max]: with a_t = 0 head h
    keeps alpha = exp(-1/tau_h) of its state per token, a memory of about tau_h tokens."""
    taus = torch.logspace(math.log10(tau_min), math.log10(tau_max), n_heads, dtype=torch.float64)
    return torch.log(torch.expm1(1.0 / taus)).float()  # softplus^-1(1 / tau)


class DiscreteMamba2Mixer(MambaMixerBase):
    """The discrete Mamba-2 mixer of Llamba / MOHAWK.

    in_proj -> x (H*P), B (H*N), C (H*N), z (H*P), a (H); identity causal conv over x|B|C;
    alpha_t = exp(-softplus(a_t)) and no dt on the input; y = SSD(x, log alpha, B, C) + D x;
    y * silu(z + z_bias); out_proj. Heads are independent (n_qk_heads = n_v_heads = H).
    With ``mamba.decay_bias`` a learned per-head ``a_bias`` (H,) is added to a_t (see MambaConfig).
    """

    conv_activation = "identity"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.mamba
        self.H, self.P, self.N = m.n_heads, m.head_dim, m.d_state
        self.chunk_size = m.chunk_size
        self.d_inner = self.H * self.P
        self.conv_dim = self.d_inner + 2 * self.H * self.N
        self.splits = [self.conv_dim, self.d_inner, self.H]  # xBC z a
        self.in_proj = nn.Linear(cfg.d_model, sum(self.splits), bias=False)
        self.z_bias = nn.Parameter(torch.zeros(self.d_inner))
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, m.conv_kernel, groups=self.conv_dim,
                                padding=m.conv_kernel - 1, bias=True)
        self.D = nn.Parameter(torch.ones(self.H))
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        if m.decay_bias is not None:
            self.a_bias = nn.Parameter(decay_bias_init(self.H, *m.decay_bias))
        else:
            self.register_parameter("a_bias", None)

    def _heads(self, xbc: torch.Tensor, a: torch.Tensor):
        """xbc (..., Cd), a (..., H) -> x_scan (..., H, P) fp32, log_a = -softplus(a [+ a_bias])
        (..., H) fp32, B, C (..., H, N), x (..., H, P) in the input's dtype."""
        x, Bm, Cm = torch.split(xbc, [self.d_inner, self.H * self.N, self.H * self.N], dim=-1)
        x = x.unflatten(-1, (self.H, self.P))
        Bm = Bm.unflatten(-1, (self.H, self.N))
        Cm = Cm.unflatten(-1, (self.H, self.N))
        a = a.float() if self.a_bias is None else a.float() + self.a_bias.float()
        log_a = -F.softplus(a)  # (..., H)
        return x.float(), log_a, Bm, Cm, x

    def _out(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = (y + self.D.float()[:, None] * x.float()).flatten(-2)
        y = y * F.silu(z.float() + self.z_bias.float())
        return self.out_proj(y.to(z.dtype))

    def _chunk_scan(self, x, log_a, Bm, Cm, init):
        return discrete_chunk_scan(x, log_a, Bm, Cm, chunk_size=self.chunk_size, initial_state=init)

    def forward(self, u: torch.Tensor, ctx=None, state: Optional[MambaState] = None) -> torch.Tensor:
        mask = getattr(ctx, "token_mask", None)
        if state is not None and u.shape[1] == 1 and mask is None:
            return self.step(u, state)
        xbc, z, a = torch.split(self.in_proj(u), self.splits, dim=-1)
        xbc = self._conv(xbc, state, mask)
        x_scan, log_a, Bh, Ch, xh = self._heads(xbc, a)
        y = self._scan(x_scan, log_a, Bh, Ch, mask, state)
        return self._out(y, xh, z)

    def step(self, u: torch.Tensor, state: MambaState) -> torch.Tensor:
        xbc, z, a = torch.split(self.in_proj(u[:, 0]), self.splits, dim=-1)
        xbc = self._conv_step(xbc, state)
        x_scan, log_a, Bh, Ch, xh = self._heads(xbc, a)
        y = self._ssm_step(state, x_scan, log_a, Bh, Ch)
        return self._out(y, xh, z)[:, None]

    def mixing_matrix(self, u: torch.Tensor) -> torch.Tensor:
        """Materialised (B, H, T, T) mixing matrix on input u (B, T, D) -- MOHAWK stage 1."""
        xbc, z, a = torch.split(self.in_proj(u), self.splits, dim=-1)
        xbc = self._conv(xbc, None, None)
        _, log_a, Bh, Ch, _ = self._heads(xbc, a)
        return ssd_matrix(log_a, Bh, Ch)


def build_mixer(cfg: ModelConfig) -> MambaMixerBase:
    return Mamba2Mixer(cfg) if cfg.mamba.kind == "mamba2" else DiscreteMamba2Mixer(cfg)
