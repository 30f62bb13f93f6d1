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

    def fast(self, x: torch.Tensor) -> torch.Tensor:
        """The same norm in one ``F.rms_norm`` call for fp32 inputs (the reference's formula,
        bit-equal on CPU in tests/inference/test_fast_decode.py); other dtypes take ``forward``."""
        if x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return self(x)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


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


def signed_rope(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, T, hd) -> cos, signed sin (B, T, 1, hd) for ``apply_rope_fast``: the sin
    with its first half negated, laid out to broadcast over the heads of a (B, T, heads, hd)."""
    half = sin.shape[-1] // 2
    return cos.transpose(1, 2), torch.cat([-sin[..., :half], sin[..., half:]], dim=-1).transpose(1, 2)


def apply_rope_fast(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` on x (B, T, heads, hd) in 4 kernels instead of 6: rotate_half(x) * sin is
    the halves swapped (one flip) times the signed sin, the same products, so the same floats."""
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # (x2, x1)
    return x * cos + swapped * signed_sin


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


def grouped_decode_attention_fast(q, k, v, inv_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``grouped_decode_attention`` for fp32 with fewer kernels: q (B, H, 1, hd) any strides,
    k, v (B, G, S, hd), inv_mask (B, 1, 1, S) bool True where masked (the inverted mask, made
    once per step, not once per layer) or None -> (B, H, 1, hd). The same operations in the
    same order, less the no-op casts."""
    B, H, _, hd = q.shape
    G = k.shape[1]
    qg = q.reshape(B, G, H // G, hd)
    scores = torch.matmul(qg, k.transpose(-1, -2)).mul_(hd**-0.5)  # (B, G, H/G, S)
    if inv_mask is not None:
        scores.masked_fill_(inv_mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), v).reshape(B, H, 1, hd)


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


def pack_linears(mods: list[nn.Linear]) -> nn.Linear:
    """One plain ``nn.Linear`` whose output is the outputs of ``mods`` (same input) side by side:
    their weights concatenated once. The caller drops ``mods``, so no second copy is kept."""
    w = torch.cat([m.weight.detach() for m in mods])  # (sum out, in)
    b = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    out.weight = nn.Parameter(w, requires_grad=mods[0].weight.requires_grad)
    if b is not None:
        out.bias = nn.Parameter(b, requires_grad=mods[0].bias.requires_grad)
    return out


class _Packable(nn.Module):
    """A module whose projections ``_parts`` (names -> sizes) can be packed into one Linear
    ``_packed_name`` for inference (``pack``). Its state dict keeps the unpacked names either way
    (the packed weight is split on save and packed on load), so checkpoints do not change."""

    _packed_name = ""

    def _parts(self) -> dict[str, int]:
        raise NotImplementedError

    @property
    def packed(self) -> bool:
        return hasattr(self, self._packed_name)

    @torch.no_grad()
    def pack(self) -> None:
        """Replace the projections by one packed ``nn.Linear``; a no-op when packed already or when
        a projection is not a plain ``nn.Linear`` (a quantized one, say)."""
        if self.packed or any(type(getattr(self, n)) is not nn.Linear for n in self._parts()):
            return
        names = list(self._parts())
        packed = pack_linears([getattr(self, n) for n in names])
        for n in names:
            delattr(self, n)
        setattr(self, self._packed_name, packed)
        self.register_state_dict_post_hook(_split_packed_state)
        self.register_load_state_dict_pre_hook(_pack_loaded_state)


def _split_packed_state(module: _Packable, state_dict, prefix: str, local_metadata) -> None:
    """state_dict hook: the packed weight (and bias) saved as its parts, each its own tensor."""
    if not module.packed:
        return
    for suffix in ("weight", "bias"):
        t = state_dict.pop(f"{prefix}{module._packed_name}.{suffix}", None)
        if t is None:
            continue
        for name, part in zip(module._parts(), t.split(list(module._parts().values()))):
            state_dict[f"{prefix}{name}.{suffix}"] = part.clone()


def _pack_loaded_state(module: _Packable, state_dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the parts of a checkpoint concatenated into the packed key."""
    if not module.packed:
        return
    for suffix in ("weight", "bias"):
        keys = [f"{prefix}{name}.{suffix}" for name in module._parts()]
        if all(k in state_dict for k in keys):
            state_dict[f"{prefix}{module._packed_name}.{suffix}"] = torch.cat([state_dict.pop(k) for k in keys])


class Attention(_Packable):
    """Grouped-query causal self-attention with a pre-allocated KV cache for decoding.

    ``pack()`` (inference only) puts q|k|v into one ``qkv_proj``."""

    _packed_name = "qkv_proj"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        b = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=b)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=b)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=b)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=b)

    def _parts(self) -> dict[str, int]:
        kv = self.n_kv_heads * self.head_dim
        return {"q_proj": self.n_heads * self.head_dim, "k_proj": kv, "v_proj": kv}

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fast_rope=None):
        """x (B, T, D) -> q (B, H, T, hd), k, v (B, G, T, hd), RoPE applied to q and k.
        ``fast_rope``: (cos, signed sin) (B, T, 1, hd) of ``signed_rope``, for ``apply_rope_fast``
        (q and k in one call when packed); None: the reference ``apply_rope``."""
        B, T, _ = x.shape
        H, G, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if self.packed:
            qkv = self.qkv_proj(x).view(B, T, H + 2 * G, hd)
            if fast_rope is not None:
                q, k = apply_rope_fast(qkv[:, :, :H + G], *fast_rope).split([H, G], dim=2)
                return q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, H + G:].transpose(1, 2)
            q, k, v = (t.transpose(1, 2) for t in qkv.split([H, G, G], dim=2))
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v
        q = self.q_proj(x).view(B, T, H, hd)
        k = self.k_proj(x).view(B, T, G, hd)
        v = self.v_proj(x).view(B, T, G, hd).transpose(1, 2)  # (B, G, T, hd)
        if fast_rope is not None:
            return apply_rope_fast(q, *fast_rope).transpose(1, 2), apply_rope_fast(k, *fast_rope).transpose(1, 2), v
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd), (B, G, T, hd)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, ctx, state=None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D). ``ctx`` (a MixerContext) gives cos/sin and the boolean
        attention mask (B, 1, T, S), None for plain causal attention; ``ctx.fast`` picks the
        fewer-kernel RoPE and decode attention (same floats on CPU in fp32).

        With ``state`` (an AttentionState) the new keys/values are appended and attention
        reads the whole cache.
        """
        B, T, _ = x.shape
        mask = ctx.attn_mask
        fast = getattr(ctx, "fast", False)
        q, k, v = self.qkv(x, ctx.cos, ctx.sin, ctx.rope_fast() if fast else None)
        if state is not None:
            k, v = state.append(k, v)  # (B, G, S, hd)
        if state is not None and state.prompt is not None:  # shared prompt KV (a slotted cache)
            y = shared_prompt_decode_attention(q, *state.prompt_kv(), k, v, mask)
        elif fast and T == 1 and q.device.type == "cpu" and q.dtype == torch.float32:
            y = grouped_decode_attention_fast(q, k, v, ctx.inv_mask())
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


class MLP(_Packable):
    """SwiGLU: down(silu(gate(x)) * up(x)). ``pack()`` (inference only) puts gate|up into one
    ``gate_up_proj``."""

    _packed_name = "gate_up_proj"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def _parts(self) -> dict[str, int]:
        return {"gate_proj": self.down_proj.in_features, "up_proj": self.down_proj.in_features}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (B, T, F) each
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
