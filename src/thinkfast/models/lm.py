"""One Block(mixer, mlp, norm) and one LanguageModel built from a layer pattern.

A Transformer ("AAAA"), a pure Mamba model ("MMMM") and a hybrid ("AMAM") are the same class.

Glossary: B batch, T new tokens, S cached length, D d_model, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from ..config import ModelConfig
from .cache import AttentionState, InferenceCache, MambaState
from .layers import MLP, Attention, RMSNorm, RotaryEmbedding, signed_rope
from .mamba2 import MambaMixerBase, build_mixer


@dataclass
class MixerContext:
    """What every mixer of one forward call shares."""

    cos: torch.Tensor  # (B, 1, T, hd)
    sin: torch.Tensor  # (B, 1, T, hd)
    attn_mask: Optional[torch.Tensor]  # (B, 1, T, S) bool, None = plain causal over T
    token_mask: Optional[torch.Tensor]  # (B, T) bool, None = no padding
    fast: bool = False
    """The inference fast path: fewer-kernel norms, RoPE and decode attention (same floats)."""
    _memo: dict = field(default_factory=dict, repr=False)

    def rope_fast(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) (B, T, 1, hd) for ``layers.apply_rope_fast``, made once per forward."""
        if "rope" not in self._memo:
            self._memo["rope"] = signed_rope(self.cos, self.sin)
        return self._memo["rope"]

    def inv_mask(self) -> Optional[torch.Tensor]:
        """~attn_mask (B, 1, T, S) (True = masked), made once per forward; None without a mask."""
        if "inv" not in self._memo:
            self._memo["inv"] = None if self.attn_mask is None else ~self.attn_mask
        return self._memo["inv"]


@dataclass
class ModelOutput:
    logits: torch.Tensor
    """(B, T, V), or (B, k, V) with ``logits_to_keep=k``."""
    hidden_states: Optional[list[torch.Tensor]] = None
    """hidden_states[i] is the input of block i; hidden_states[n_layers] the last block's
    output before the final norm. Each (B, T, D)."""
    cache: Optional[InferenceCache] = None


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, mixer: nn.Module, mlp: nn.Module, norm_cls, d_model: int, eps: float):
        super().__init__()
        self.input_norm = norm_cls(d_model, eps)
        self.mixer = mixer
        self.post_norm = norm_cls(d_model, eps)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, ctx: MixerContext, state=None) -> torch.Tensor:
        if getattr(ctx, "fast", False):  # the same sums, fused norms, no temporaries for the residuals
            h = self.mixer(self.input_norm.fast(x), ctx, state).add_(x)
            return self.mlp(self.post_norm.fast(h)).add_(h)
        h = x + self.mixer(self.input_norm(x), ctx, state)
        return h + self.mlp(self.post_norm(h))


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            Block(Attention(cfg) if kind == "A" else build_mixer(cfg), MLP(cfg), RMSNorm, cfg.d_model, cfg.norm_eps)
            for kind in cfg.layer_pattern
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.reset_parameters()

    # --- parameters ---------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        # Conv1d and the SSM parameters (dt_bias, A_log, D) keep their own initialisation.
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def prepare_for_inference(self) -> "LanguageModel":
        """Pack each attention layer's q|k|v and each MLP's gate|up into one plain ``nn.Linear``
        (``Attention.pack``, ``MLP.pack``): fewer, larger products per decode step, the weights
        moved, not copied. For inference only (training keeps the separate projections); the
        state dict keeps its keys. Idempotent; returns self."""
        for blk in self.layers:
            if isinstance(blk.mixer, Attention):
                blk.mixer.pack()
            blk.mlp.pack()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    # --- inference state ----------------------------------------------------------------------
    def allocate_cache(self, batch: int, max_len: int, dtype=None, device=None) -> InferenceCache:
        """Empty state for ``batch`` rows and up to ``max_len`` positions (prompt + new tokens)."""
        cfg = self.config
        if max_len > cfg.max_seq_len:
            raise ValueError(f"{max_len} positions requested but the model's context is {cfg.max_seq_len}")
        dtype, device = dtype or self.dtype, device or self.device
        states = []
        for blk in self.layers:
            if isinstance(blk.mixer, Attention):
                states.append(AttentionState(batch, cfg.n_kv_heads, max_len, cfg.head_dim, dtype, device))
            else:
                mx = blk.mixer
                states.append(MambaState(batch, mx.conv_dim, mx.conv1d.kernel_size[0], mx.H, mx.P, mx.N,
                                         dtype, device))
        return InferenceCache(
            layers=states,
            key_mask=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
            next_pos=torch.zeros(batch, dtype=torch.long, device=device),
        )

    # --- forward ------------------------------------------------------------------------------
    def context(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                cache: Optional[InferenceCache] = None) -> MixerContext:
        """Positions and masks for T new tokens (advances ``cache`` bookkeeping)."""
        B, T = input_ids.shape
        dev = input_ids.device
        if cache is not None and cache.slotted:  # one token per row, each at its own length
            if T != 1 or attention_mask is not None:
                raise ValueError("a slotted cache decodes one token per row; prefill into a plain cache "
                                 "and copy it in with InferenceCache.load_rows")
            pos, mask = cache.advance_slots()
            cos, sin = self.rotary(pos, self.dtype)
            return MixerContext(cos, sin, mask, None)
        new = attention_mask.bool() if attention_mask is not None else None
        padded = new is not None and not bool(new.all())
        if cache is None:
            if not padded:
                pos = torch.arange(T, device=dev).expand(B, T)
                cos, sin = self.rotary(pos, self.dtype)
                return MixerContext(cos, sin, None, None)
            pos = (new.long().cumsum(1) - 1).clamp(min=0)
            keys, start, S = new, 0, T
        else:
            start = cache.length
            S = start + T
            if S > cache.capacity:
                raise ValueError(f"{S} positions exceed the cache capacity {cache.capacity}")
            if new is None:
                new = torch.ones(B, T, dtype=torch.bool, device=dev)
            cache.key_mask[:, start:S] = new
            cache.padded = cache.padded or padded
            pos = cache.next_pos[:, None] + (new.long().cumsum(1) - 1).clamp(min=0)
            cache.next_pos = cache.next_pos + new.long().sum(1)
            cache.length = S
            keys = cache.key_mask[:, :S]
        cos, sin = self.rotary(pos, self.dtype)
        if T == 1 and (not cache.padded if cache is not None else True):
            return MixerContext(cos, sin, None, None)
        q_idx = torch.arange(start, S, device=dev)[:, None]  # (T, 1)
        k_idx = torch.arange(S, device=dev)[None, :]  # (1, S)
        mask = (k_idx <= q_idx)[None] & keys[:, None, :]  # (B, T, S)
        mask = mask | (k_idx == q_idx)[None]  # a padded query attends to itself: no empty rows
        return MixerContext(cos, sin, mask[:, None], new if padded else None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[InferenceCache] = None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
        fast: bool = False,
    ) -> ModelOutput:
        """input_ids (B, T) -> ModelOutput with logits (B, T, V).

        attention_mask (B, T): 1 for real tokens, 0 for left padding. With ``cache`` the tokens
        continue the cached sequence and the cache is updated in place. ``fast``: the inference
        fast path (``MixerContext.fast``), the reference's floats on CPU in fp32.
        """
        B, T = input_ids.shape
        total = T + (cache.length if cache is not None and not cache.slotted else 0)  # slots bound their own
        if total > self.config.max_seq_len:
            raise ValueError(f"sequence of {total} tokens is longer than the model's context "
                             f"({self.config.max_seq_len}); refusing to truncate")
        ctx = self.context(input_ids, attention_mask, cache)
        ctx.fast = fast
        x = self.embed_tokens(input_ids)  # (B, T, D)
        hidden = [x] if output_hidden_states else None
        for i, blk in enumerate(self.layers):
            x = blk(x, ctx, cache.layers[i] if cache is not None else None)
            if hidden is not None:
                hidden.append(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.norm.fast(x) if fast else self.norm(x))
        return ModelOutput(logits=logits, hidden_states=hidden, cache=cache)

    @property
    def mamba_layers(self) -> list[int]:
        return [i for i, b in enumerate(self.layers) if isinstance(b.mixer, MambaMixerBase)]
