"""Llama building blocks: RMSNorm, RoPE (with Llama-3 scaling), grouped-query attention, SwiGLU.

Glossary: B batch, T query length, S key length, D d_model, H query heads, G kv heads,
hd head_dim, F d_ff.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, RopeScaling


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed in fp32 like HF Llama, then cast back: keeps bf16 parity.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[RopeScaling]) -> torch.Tensor:
    """Inverse frequencies (hd/2,), with Llama-3's frequency-dependent scaling when given."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv_freq.float()
    if scaling.rope_type == "linear":
        return (inv_freq / scaling.factor).float()
    # llama3: long wavelengths are divided by `factor`, short ones kept, a smooth ramp between.
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled).float()


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, scaling: Optional[RopeScaling]):
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta, scaling), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) int -> cos, sin (B, 1, T, hd)."""
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, hd)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def repeat_heads(x: torch.Tensor, n_rep: int, dim: int = 1) -> torch.Tensor:
    """Repeat each group n_rep times along ``dim``: (.., G, ..) -> (.., G*n_rep, ..), GQA order."""
    if n_rep == 1:
        return x
    return torch.repeat_interleave(x, n_rep, dim=dim)


_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def grouped_decode_attention(q, k, v, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """One query token per row against the cache, each KV group's queries in one matmul:
    q (B, H, 1, hd), k, v (B, G, S, hd), mask (B, 1, 1, S) bool or None -> (B, H, 1, hd).

    The same attention as SDPA's GQA path (scores and softmax in fp32), without repeating K/V or
    a per-head loop: on CPU it decodes faster (docs/performance.md)."""
    B, H, _, hd = q.shape
    G = k.shape[1]
    qg = q.reshape(B, G, H // G, hd)  # GQA order: query head h reads KV group h // (H // G)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * hd**-0.5  # (B, G, H/G, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # (B, 1, 1, S) broadcasts over G, H/G
    out = torch.matmul(scores.softmax(-1).to(v.dtype), v)  # (B, G, H/G, hd)
    return out.reshape(B, H, 1, hd)


def _softmax_parts(scores: torch.Tensor, v: torch.Tensor):
    """scores (..., S) fp32 (-inf = masked), v (..., S, hd) -> (max (..., 1), sum of exp (..., 1),
    sum of exp * v (..., hd) fp32): one block's part of a softmax, for a log-sum-exp merge."""
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # an all-masked block adds nothing
    e = torch.exp(scores - m)
    return m, e.sum(-1, keepdim=True), torch.matmul(e.to(v.dtype), v).float()


def shared_prompt_decode_attention(q, k_prompt, v_prompt, prompt_mask, flat, n: int, k, v,
                                   mask: Optional[torch.Tensor]) -> torch.Tensor:
    """One query per row against its prompt's one shared KV copy plus its own tokens:
    q (B, H, 1, hd); k_prompt, v_prompt (Q, G, Lp, hd) and prompt_mask (Q, Lp) bool (None: every
    position real), one entry per prompt; flat (B,) long: row b, sample j_b of entry e_b, is at
    ``e_b * n + j_b`` (Q * n: no prompt); k, v (B, G, S, hd) each row's own tokens, mask
    (B, 1, 1, S) bool -> (B, H, 1, hd).

    Each entry's queries meet its keys in one matmul (the prompt is read once per entry, not
    once per row); the prompt part and the own-tokens part are merged by log-sum-exp. The same
    attention as over the concatenated keys, to float rounding."""
    B, H, _, hd = q.shape
    Q, G, Lp, _ = k_prompt.shape
    rep = H // G
    scale = hd**-0.5
    qr = q.reshape(B, G, rep, hd)
    # the prompt part, entry by entry: queries laid out (Q * n + 1, G, rep, hd), the last a spare
    qf = q.new_zeros(Q * n + 1, G, rep, hd).index_copy_(0, flat, qr)
    qg = qf[: Q * n].view(Q, n, G, rep, hd).permute(0, 2, 1, 3, 4).reshape(Q, G, n * rep, hd)
    sp = torch.matmul(qg, k_prompt.transpose(-1, -2)).float() * scale  # (Q, G, n*rep, Lp)
    if prompt_mask is not None:
        sp = sp.masked_fill(~prompt_mask[:, None, None, :], float("-inf"))
    mp, lp, op = _softmax_parts(sp, v_prompt)  # (Q, G, n*rep, 1|1|hd)

    def to_rows(x: torch.Tensor, spare: float) -> torch.Tensor:  # (Q, G, n*rep, c) -> (B, G, rep, c)
        c = x.shape[-1]
        x = x.view(Q, G, n, rep, c).permute(0, 2, 1, 3, 4).reshape(Q * n, G, rep, c)
        x = torch.cat([x, x.new_full((1, G, rep, c), spare)])
        return x.index_select(0, flat)

    mp, lp, op = to_rows(mp, float("-inf")), to_rows(lp, 0.0), to_rows(op, 0.0)
    # the row's own tokens
    ss = torch.matmul(qr, k.transpose(-1, -2)).float() * scale  # (B, G, rep, S)
    if mask is not None:
        ss = ss.masked_fill(~mask, float("-inf"))  # (B, 1, 1, S) broadcasts over G, rep
    ms, ls, os_ = _softmax_parts(ss, v)
    m = torch.maximum(mp, ms)
    ap, as_ = torch.exp(mp - m), torch.exp(ms - m)
    out = (op * ap + os_ * as_) / (lp * ap + ls * as_)
    return out.to(v.dtype).reshape(B, H, 1, hd)


def sdpa_gqa(q, k, v, mask: Optional[torch.Tensor], causal: bool) -> torch.Tensor:
    """SDPA for q (B, H, T, hd) against k, v (B, G, S, hd); H a multiple of G.

    Uses SDPA's own GQA path (no repeated K/V in memory) where this torch has it (>= 2.5); a
    single decoded token on CPU goes through ``grouped_decode_attention`` instead.
    """
    if q.shape[2] == 1 and q.device.type == "cpu" and not causal:
        return grouped_decode_attention(q, k, v, mask)
    rep = q.shape[1] // k.shape[1]
    if rep > 1 and not _HAS_GQA:
        k, v = repeat_heads(k, rep), repeat_heads(v, rep)
    kw = {"enable_gqa": True} if rep > 1 and _HAS_GQA else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, **kw)


class Attention(nn.Module):
    """Grouped-query causal self-attention with a pre-allocated KV cache for decoding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        b = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=b)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=b)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=b)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=b)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B, T, D) -> q (B, H, T, hd), k, v (B, G, T, hd), RoPE applied to q and k."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, G, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, G, T, hd)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, ctx, state=None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D). ``ctx`` (a MixerContext) gives cos/sin and the boolean
        attention mask (B, 1, T, S), None for plain causal attention.

        With ``state`` (an AttentionState) the new keys/values are appended and attention
        reads the whole cache.
        """
        B, T, _ = x.shape
        mask = ctx.attn_mask
        q, k, v = self.qkv(x, ctx.cos, ctx.sin)
        if state is not None:
            k, v = state.append(k, v)  # (B, G, S, hd)
        if state is not None and state.prompt is not None:  # shared prompt KV (a slotted cache)
            y = shared_prompt_decode_attention(q, *state.prompt_kv(), k, v, mask)
        else:
            y = sdpa_gqa(q, k, v, mask, causal=mask is None and T > 1)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*hd)
        return self.o_proj(y)

    def attention_matrix(self, x: torch.Tensor, ctx) -> torch.Tensor:
        """The causal softmax mixing matrix (B, H, T, T) -- MOHAWK stage 1's target."""
        q, k, _ = self.qkv(x, ctx.cos, ctx.sin)
        k = repeat_heads(k, self.n_heads // self.n_kv_heads)
        T = x.shape[1]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
