"""GraniteMoeHybrid (``GraniteMoeHybridForCausalLM``, dense) <-> thinkfast: the export target of
hybrid and pure Mamba-2 students with the mamba2 (MambaInLlama) mixer, and its import back.

One key table (``granite_key_map``) serves both directions; ``convert.export`` drives the export.

Why GraniteMoeHybrid for the MambaInLlama mixer
-----------------------------------------------
Its blocks are ours: pre-norm ``x + mixer(norm(x))`` then ``h + mlp(norm(h))`` with RMSNorm, a
mixer that is either Llama attention (GQA, full-head-dim neox RoPE, optional q/k/v/o bias, rope
``llama3``/``linear`` scaling through transformers' and vLLM's own RoPE code) or the Mamba-2
mixer, and a dense SwiGLU MLP: with ``num_local_experts = 0`` the MoE is absent and
``shared_mlp`` (``input_linear`` = [gate; up], ``output_linear`` = down, silu(gate) * up) is the
whole MLP. Its Mamba-2 mixer is the same maths: in_proj -> [z, x|B|C, dt], SiLU causal
depthwise conv with bias over x|B|C, dt = softplus(dt + dt_bias) clamped to ``time_step_limit``
(left at its neutral default (0, inf)), A = -exp(A_log), y = SSD + D x, gated RMSNorm
``norm(y * silu(z)) * w`` over groups of ``d_inner / n_groups`` channels, out_proj, no
projection biases. The Granite extras are set to neutral values: ``embedding_multiplier = 1``,
``residual_multiplier = 1``, ``logits_scaling = 1`` and ``attention_multiplier = head_dim**-0.5``
(it *replaces* the 1/sqrt(head_dim) scale, so 1.0 would be wrong).

Mapping of the mixer. Granite keeps x at ``n_heads * head_dim`` and B, C at ``n_groups * d_state``,
and normalises per group. thinkfast normalises per head and keeps x and B at the key/value width
(G groups, repeated across heads like GQA), C per head. So the export uses
``mamba_n_groups = n_heads`` (per-head norm, per-head B) and repeats, in GQA order
(head h reads group h // (H/G)), the rows of in_proj that make x and B and the matching
depthwise-conv channels (weight and bias). A depthwise conv acts on each channel alone, so
conv(repeat(u)) == repeat(conv(u)): the result is exact, not approximate. z, C and dt rows keep
their order; dt_bias, A_log, D, the norm weight and out_proj copy over unchanged.

Constraints (refused with the reason when broken): attention heads times head_dim equal to
d_model (vLLM's Granite attention derives head_dim = hidden_size / heads); SSM heads times
head_dim an integer multiple of d_model (``mamba_expand`` is an integer in both stacks);
``norm_eps == 1e-5`` when there are Mamba layers (Granite's gated norm uses ``rms_norm_eps``,
thinkfast's uses 1e-5); no MLP bias (Granite's MLP has none).

Why not the others
------------------
* Bamba: the same mixer and a dense MLP, but its config hard-codes ``partial_rotary_factor = 0.5``
  (RoPE on half of each head), while thinkfast rotates the full head dim.
* NemotronH: each layer is *one* of mamba / attention / MLP (no mixer + MLP block), and its MLP is
  a non-gated relu^2.
* FalconH1: every layer runs attention and Mamba *in parallel* and sums them, with muP
  multiplier vectors; a pure-attention or pure-Mamba layer cannot be expressed.
* Zamba2: Mamba blocks without MLPs plus *shared* attention blocks fed with concatenated
  embeddings.
* Mamba2ForCausalLM: mixer-only blocks (no MLP, no attention), so not even the pure-Mamba student.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ModelConfig
from ..runtime import UserError
from .common import check_keys, dtype_name, load_tokenizer, read_safetensors, token_ids
from .rope import rope_from_hf, rope_keys

GRANITE = "GraniteMoeHybridForCausalLM"
_GATED_NORM_EPS = 1e-5  # thinkfast's Mamba2Mixer gated RMSNorm (models/mamba2.py)


def granite_problems(cfg: ModelConfig) -> list[str]:
    """Why ``cfg`` (a mamba2-mixer hybrid / pure Mamba-2) has no exact GraniteMoeHybrid equivalent; [] if it has."""
    m = cfg.mamba
    out = []
    if cfg.attention_layers and cfg.n_heads * cfg.head_dim != cfg.d_model:
        out.append(f"n_heads * head_dim = {cfg.n_heads * cfg.head_dim} != d_model {cfg.d_model} "
                   "(vLLM's GraniteMoeHybrid attention assumes head_dim = hidden_size / heads)")
    if (m.n_heads * m.head_dim) % cfg.d_model:
        out.append(f"mamba n_heads * head_dim = {m.n_heads * m.head_dim} is not an integer multiple of "
                   f"d_model {cfg.d_model} (mamba_expand must be an integer)")
    if not math.isclose(cfg.norm_eps, _GATED_NORM_EPS, rel_tol=0, abs_tol=0):
        out.append(f"norm_eps {cfg.norm_eps} != {_GATED_NORM_EPS} (the exported gated norm would use "
                   "rms_norm_eps, thinkfast's uses 1e-5)")
    if cfg.mlp_bias:
        out.append("mlp_bias=True (GraniteMoeHybrid's MLP has no bias)")
    return out


def granite_config(cfg: ModelConfig, tokenizer: Any = None, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json of the GraniteMoeHybrid equivalent of ``cfg`` (dense, neutral multipliers).

    Layer types use Granite 4.0's own names ("mamba" / "attention"), which vLLM reads and
    transformers 5 maps to its new names. ``time_step_limit`` is left out: its default (0, inf)
    is the neutral value, and infinity is not JSON.
    """
    m = cfg.mamba
    return {
        "architectures": [GRANITE], "model_type": "granitemoehybrid",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "layer_types": ["attention" if c == "A" else "mamba" for c in cfg.layer_pattern],
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "attention_bias": bool(cfg.attention_bias), "attention_dropout": 0.0,
        "position_embedding_type": "rope", **rope_keys(cfg),
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
        # dense: no routed experts; the shared MLP is the block's whole SwiGLU MLP
        "num_local_experts": 0, "num_experts_per_tok": 0, "shared_intermediate_size": cfg.d_ff,
        "intermediate_size": cfg.d_ff,
        # Granite's muP knobs at their neutral values (attention_multiplier *is* the softmax scale)
        "embedding_multiplier": 1.0, "residual_multiplier": 1.0, "logits_scaling": 1.0,
        "attention_multiplier": cfg.head_dim ** -0.5,
        "mamba_n_heads": m.n_heads, "mamba_n_groups": m.n_heads, "mamba_d_head": m.head_dim,
        "mamba_d_state": m.d_state, "mamba_d_conv": m.conv_kernel,
        "mamba_expand": (m.n_heads * m.head_dim) // cfg.d_model, "mamba_chunk_size": m.chunk_size,
        "mamba_conv_bias": True, "mamba_proj_bias": False,
        "tie_word_embeddings": bool(cfg.tie_embeddings), "initializer_range": cfg.init_std,
        "use_cache": True, **token_ids(tokenizer), "torch_dtype": dtype_name(dtype),
    }


# --- the key table (both directions) ---------------------------------------------------------------

_MAMBA_KEYS = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
               "out_proj.weight")
_FUSED_MLP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")  # both -> shared_mlp.input_linear = [gate; up]


def granite_key_map(cfg: ModelConfig) -> dict[str, str]:
    """thinkfast key -> GraniteMoeHybrid key, the one table export and import both use.

    Two thinkfast keys map to one Granite key: gate_proj and up_proj are the halves [gate; up] of
    ``shared_mlp.input_linear``. The Mamba in_proj and conv1d keys map one to one, but their rows
    are reordered / repeated (``_mixer_index``); every other tensor copies over unchanged."""
    km = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        km["lm_head.weight"] = "lm_head.weight"
    for i, c in enumerate(cfg.layer_pattern):
        s, d = f"layers.{i}.", f"model.layers.{i}."
        km[s + "input_norm.weight"] = d + "input_layernorm.weight"
        km[s + "post_norm.weight"] = d + "post_attention_layernorm.weight"
        km[s + "mlp.gate_proj.weight"] = d + "shared_mlp.input_linear.weight"
        km[s + "mlp.up_proj.weight"] = d + "shared_mlp.input_linear.weight"
        km[s + "mlp.down_proj.weight"] = d + "shared_mlp.output_linear.weight"
        if c == "A":
            for q in "qkvo":
                km[s + f"mixer.{q}_proj.weight"] = d + f"self_attn.{q}_proj.weight"
                if cfg.attention_bias:
                    km[s + f"mixer.{q}_proj.bias"] = d + f"self_attn.{q}_proj.bias"
        else:
            for k in _MAMBA_KEYS:
                km[s + f"mixer.{k}"] = d + f"mamba.{k}"
    return km


def _gqa_index(G: int, H: int, width: int) -> torch.Tensor:
    """Channel indices that repeat G groups of ``width`` channels to H heads in GQA order."""
    rep = H // G
    heads = torch.arange(H) // rep  # group of each head
    return (heads[:, None] * width + torch.arange(width)[None]).reshape(-1)


def _mixer_index(m) -> tuple[torch.Tensor, torch.Tensor]:
    """(in_proj row index, conv channel index) from a thinkfast Mamba2Mixer to Granite's layout."""
    H, G, P, N = m.n_heads, m.n_kv_heads, m.head_dim, m.d_state
    x_idx = _gqa_index(G, H, P)
    b_idx = G * P + _gqa_index(G, H, N)
    c_idx = G * P + G * N + torch.arange(H * N)
    conv = torch.cat([x_idx, b_idx, c_idx])
    rows = torch.cat([torch.arange(H * P), H * P + conv, torch.arange(H) + H * P + G * P + G * N + H * N])
    return rows, conv


def _mixer_inverse(H: int, G: int, P: int, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(in_proj row index, conv channel index) from Granite's layout back to a thinkfast mixer with G
    x/B groups: the first head of each group (the repeated copies are identical)."""
    rep = H // G
    inv_x = (torch.arange(G) * rep)[:, None] * P + torch.arange(P)[None]
    inv_b = (torch.arange(G) * rep)[:, None] * N + torch.arange(N)[None]
    conv_inv = torch.cat([inv_x.reshape(-1), H * P + inv_b.reshape(-1), H * P + H * N + torch.arange(H * N)])
    rows_inv = torch.cat([torch.arange(H * P), H * P + conv_inv, 2 * H * P + 2 * H * N + torch.arange(H)])
    return rows_inv, conv_inv


def to_granite_state_dict(model) -> dict[str, torch.Tensor]:
    """GraniteMoeHybrid state dict of a mamba2-mixer hybrid / pure-Mamba thinkfast model."""
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    rows, conv = _mixer_index(cfg.mamba)
    out = {}
    for k, v in granite_key_map(cfg).items():
        if k.endswith(_FUSED_MLP[1]):
            continue  # written with its gate_proj
        t = sd[k]
        if k.endswith(_FUSED_MLP[0]):
            t = torch.cat([t, sd[k[: -len(_FUSED_MLP[0])] + _FUSED_MLP[1]]], 0)
        elif k.endswith("mixer.in_proj.weight"):
            t = t.index_select(0, rows)
        elif k.endswith(("mixer.conv1d.weight", "mixer.conv1d.bias")):
            t = t.index_select(0, conv)
        out[v] = t
    return out


# --- import ----------------------------------------------------------------------------------------


def _collapse_groups(H: int, rows_x: torch.Tensor, rows_b: torch.Tensor, conv_x: list, conv_b: list) -> int:
    """The fewest x/B groups G whose GQA repetition reproduces the per-head tensors exactly."""
    for G in (g for g in range(1, H + 1) if H % g == 0):
        rep = H // G
        ok = True
        for t in [rows_x, rows_b, *conv_x, *conv_b]:
            per_head = t.reshape(H, -1)
            grouped = per_head.reshape(G, rep, -1)
            if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
                ok = False
                break
        if ok:
            return G
    return H


def import_hf_hybrid(path: str | os.PathLike, device: str | torch.device = "cpu",
                     dtype: Optional[torch.dtype] = None):
    """(thinkfast model, tokenizer or None) from a GraniteMoeHybrid directory with an exact
    thinkfast equivalent: dense, neutral multipliers, per-head gated norm (n_groups == n_heads),
    full RoPE. Repeated x/B groups are folded back to the fewest groups that reproduce them."""
    from transformers import AutoConfig

    from ..models.state import load_state_dict_strict
    from ..models.lm import LanguageModel

    p = Path(path)
    try:
        hc = AutoConfig.from_pretrained(str(p), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read a transformers config from {p}: {e}") from None
    if getattr(hc, "model_type", None) != "granitemoehybrid":
        raise UserError(f"{p}: model_type {getattr(hc, 'model_type', None)!r} is not granitemoehybrid")
    types = [{"mamba": "M", "linear_attention": "M", "attention": "A", "full_attention": "A"}.get(t)
             for t in (hc.layer_types or [])]
    if None in types or len(types) != hc.num_hidden_layers:
        raise UserError(f"{p}: layer_types {hc.layer_types} are not mamba/attention layers")
    pattern = "".join(types)
    heads = hc.num_attention_heads
    head_dim = getattr(hc, "head_dim", None) or hc.hidden_size // heads
    problems = []
    if (hc.num_local_experts or 0) > 0:
        problems.append(f"{hc.num_local_experts} routed experts (thinkfast MLPs are dense)")
    if not hc.shared_intermediate_size:
        problems.append("no shared MLP")
    for k in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        if float(getattr(hc, k)) != 1.0:
            problems.append(f"{k} = {getattr(hc, k)} (must be 1)")
    if "A" in pattern:
        if not math.isclose(float(hc.attention_multiplier), head_dim ** -0.5, rel_tol=1e-7):
            problems.append(f"attention_multiplier {hc.attention_multiplier} != head_dim**-0.5")
        if hc.position_embedding_type != "rope":
            problems.append(f"position_embedding_type {hc.position_embedding_type!r} (thinkfast uses RoPE)")
        if float((hc.rope_parameters or {}).get("partial_rotary_factor", 1.0)) != 1.0:
            problems.append("partial rotary embedding")
    if hc.hidden_act != "silu":
        problems.append(f"hidden_act {hc.hidden_act!r}")
    if "M" in pattern:
        if hc.mamba_n_groups != hc.mamba_n_heads:
            problems.append(f"mamba_n_groups {hc.mamba_n_groups} != mamba_n_heads {hc.mamba_n_heads} "
                            "(thinkfast's gated norm is per head)")
        if hc.mamba_proj_bias:
            problems.append("mamba_proj_bias (thinkfast's in/out projections have no bias)")
        lim = tuple(float(x) for x in (hc.time_step_limit or (0.0, math.inf)))
        if lim != (0.0, math.inf):
            problems.append(f"time_step_limit {lim} (thinkfast does not clamp dt)")
        if hc.rms_norm_eps != _GATED_NORM_EPS:
            problems.append(f"rms_norm_eps {hc.rms_norm_eps} != 1e-5 (thinkfast's gated norm eps)")
    if problems:
        raise UserError(f"{p}: this GraniteMoeHybrid has no exact thinkfast equivalent: " + "; ".join(problems))
    theta, scaling = rope_from_hf(hc)
    H, P, N = hc.mamba_n_heads, hc.mamba_d_head, hc.mamba_d_state
    sd = read_safetensors(p)

    # fold repeated x/B back into groups (exact: only when every repeated copy is identical)
    G = H
    mamba_layers = [i for i, c in enumerate(pattern) if c == "M"]
    if mamba_layers:
        def parts(i):
            w = sd[f"model.layers.{i}.mamba.in_proj.weight"]
            cw = sd[f"model.layers.{i}.mamba.conv1d.weight"]
            cb = sd.get(f"model.layers.{i}.mamba.conv1d.bias")
            return w, cw, cb

        xs, bs, cx, cbb = [], [], [], []
        for i in mamba_layers:
            w, cw, cb = parts(i)
            xs.append(w[H * P: 2 * H * P])
            bs.append(w[2 * H * P: 2 * H * P + H * N])
            cx += [cw[: H * P]] + ([cb[: H * P]] if cb is not None else [])
            cbb += [cw[H * P: H * P + H * N]] + ([cb[H * P: H * P + H * N]] if cb is not None else [])
        G = _collapse_groups(H, torch.cat(xs, 1) if len(xs) > 1 else xs[0],
                             torch.cat(bs, 1) if len(bs) > 1 else bs[0], cx, cbb)
    cfg = ModelConfig(
        vocab_size=hc.vocab_size, d_model=hc.hidden_size, n_layers=hc.num_hidden_layers, n_heads=heads,
        n_kv_heads=hc.num_key_value_heads or heads, head_dim=head_dim, d_ff=hc.shared_intermediate_size,
        norm_eps=hc.rms_norm_eps, rope_theta=theta, rope_scaling=scaling, max_seq_len=hc.max_position_embeddings,
        tie_embeddings=bool(hc.tie_word_embeddings), attention_bias=bool(hc.attention_bias), mlp_bias=False,
        layer_pattern=pattern,
        mamba=dict(kind="mamba2", n_heads=H, n_kv_heads=G, head_dim=P, d_state=N, conv_kernel=hc.mamba_d_conv,
                   chunk_size=hc.mamba_chunk_size),
        init_std=float(getattr(hc, "initializer_range", 0.02)),
    )
    # the Granite keys this config has, then the inverse of to_granite_state_dict
    km = granite_key_map(cfg)
    want = set(km.values())
    if not hc.mamba_conv_bias:
        want -= {v for v in want if v.endswith("mamba.conv1d.bias")}
    check_keys(sd, want, {"lm_head.weight"} if cfg.tie_embeddings else set(), str(p), "GraniteMoeHybrid")

    rows_inv, conv_inv = _mixer_inverse(H, G, P, N)
    F_ = cfg.d_ff
    ts: dict[str, torch.Tensor] = {}
    for k, v in km.items():
        t = sd.get(v)
        if k.endswith(_FUSED_MLP[0]):
            t = t[:F_]
        elif k.endswith(_FUSED_MLP[1]):
            t = t[F_:]
        elif k.endswith("mixer.in_proj.weight"):
            t = t.index_select(0, rows_inv)
        elif k.endswith("mixer.conv1d.weight"):
            t = t.index_select(0, conv_inv)
        elif k.endswith("mixer.conv1d.bias"):
            t = t.index_select(0, conv_inv) if t is not None else torch.zeros(conv_inv.numel())
        ts[k] = t
    model = LanguageModel(cfg)
    load_state_dict_strict(model, {k: v.float() for k, v in ts.items()}, str(p))
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), load_tokenizer(p)
