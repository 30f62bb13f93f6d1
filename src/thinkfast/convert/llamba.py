"""The Llamba checkpoint format (cartesia-ai/edge ``LlambaLMHeadModel``) <-> thinkfast: the export
target of pure discrete Mamba-2 students, and its import back.

One key table (``llamba_key_map``) serves both directions; ``convert.export`` drives the export.

Discrete (Llamba) students
--------------------------
The discrete mixer has no dt on the input: y accumulates x_t itself with decay
alpha_t = exp(-softplus(a_t)), where every Mamba-2 in transformers feeds x_t * dt_t with
dt_t = softplus(...) (input-dependent, so it cannot be folded into a weight), applies SiLU after
the conv (Llamba: identity) and a gated RMSNorm (Llamba: ``y * silu(z + z_bias)``, no norm). No
shipped transformers / vLLM architecture matches, so a pure discrete student is written in the
checkpoint format of the original Llamba release (cartesia-ai/edge, ``cartesia_pytorch.Llamba``:
``LlambaLMHeadModel`` with ``backbone.*`` keys, ``ssm_cfg`` / ``mlp_cfg``), which that code loads;
vLLM does not serve it. Hybrids with discrete mixers have no target at all and are refused.
A student with ``mamba.decay_bias`` is written with the release's ``ssm_cfg.bias: true``, whose
mixer has biased in_proj / out_proj and no separate z_bias: in_proj's bias holds [0 on x|B|C,
z_bias, a_bias] and out_proj's is zero, which is the same function.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ModelConfig
from ..runtime import UserError
from .common import check_keys, load_tokenizer, read_safetensors

LLAMBA = "LlambaLMHeadModel"
_LLAMBA_BLOCK_EPS = 1e-5  # the Llamba release hard-codes its block norms' eps


def llamba_problems(cfg: ModelConfig) -> list[str]:
    """Why ``cfg`` (a pure discrete Mamba-2) has no exact Llamba equivalent; [] if it has."""
    m = cfg.mamba
    out = []
    if (m.n_heads * m.head_dim) % cfg.d_model:
        out.append(f"mamba n_heads * head_dim = {m.n_heads * m.head_dim} is not an integer multiple of "
                   f"d_model {cfg.d_model} (Llamba's ssm_cfg.expand must be an integer)")
    if cfg.norm_eps != _LLAMBA_BLOCK_EPS:
        out.append(f"norm_eps {cfg.norm_eps} != 1e-5 (Llamba's block norms hard-code 1e-5)")
    return out


def llamba_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json of the Llamba release's ``LlambaLMHeadModel`` (``LlambaConfig(**config)``)."""
    m = cfg.mamba
    return {
        "model_type": "llamba", "architectures": [LLAMBA],
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_layer": cfg.n_layers,
        "tie_embeddings": bool(cfg.tie_embeddings),
        # the release pads the vocab up to this multiple; 1 keeps it as is when it is not one already
        "pad_vocab_size_multiple": 8 if cfg.vocab_size % 8 == 0 else 1,
        "lm_head_bias": False, "resid_dropout": 0.0, "norm_epsilon": cfg.norm_eps,
        "mlp_cfg": {"intermediate_size": cfg.d_ff, "bias": bool(cfg.mlp_bias), "act_fn": "silu"},
        "ssm_cfg": {"d_state": m.d_state, "n_v_heads": m.n_heads, "n_qk_heads": m.n_heads,
                    "expand": (m.n_heads * m.head_dim) // cfg.d_model, "chunk_size": m.chunk_size,
                    "activation": "identity", "bias": m.decay_bias is not None, "d_conv": m.conv_kernel,
                    "conv_bias": True},
        # thinkfast-only hint (the release ignores it): max context the student was trained for
        "max_position_embeddings": cfg.max_seq_len,
    }


def llamba_key_map(cfg: ModelConfig) -> dict[str, str]:
    """thinkfast key -> Llamba key, the one table export and import both use."""
    km = {"embed_tokens.weight": "backbone.embedding.weight", "norm.weight": "backbone.final_layernorm.weight"}
    if not cfg.tie_embeddings:
        km["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        s, d = f"layers.{i}.", f"backbone.layers.{i}."
        km[s + "input_norm.weight"] = d + "input_layernorm.weight"
        km[s + "post_norm.weight"] = d + "post_attention_layernorm.weight"
        for p in ("gate_proj", "up_proj", "down_proj"):
            km[s + f"mlp.{p}.weight"] = d + f"mlp.{p}.weight"
            if cfg.mlp_bias:
                km[s + f"mlp.{p}.bias"] = d + f"mlp.{p}.bias"
        for p in ("in_proj.weight", "z_bias", "conv1d.weight", "conv1d.bias", "D", "out_proj.weight"):
            km[s + f"mixer.{p}"] = d + f"mixer.{p}"
    return km


def to_llamba_state_dict(model) -> dict[str, torch.Tensor]:
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {v: sd[k] for k, v in llamba_key_map(cfg).items()}
    if cfg.mamba.decay_bias is not None:  # ssm_cfg.bias: the biases live in in_proj / out_proj
        for i in range(cfg.n_layers):
            s, d = f"layers.{i}.mixer.", f"backbone.layers.{i}.mixer."
            conv_dim = sd[s + "conv1d.weight"].shape[0]
            out[d + "in_proj.bias"] = torch.cat([sd[s + "z_bias"].new_zeros(conv_dim), sd[s + "z_bias"],
                                                 sd[s + "a_bias"]])
            out[d + "out_proj.bias"] = sd[s + "z_bias"].new_zeros(cfg.d_model)
            del out[d + "z_bias"]
    return out


# --- import ----------------------------------------------------------------------------------------


def import_llamba(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """(thinkfast model, tokenizer or None) from a Llamba-format directory (config.json with
    ``ssm_cfg`` / ``mlp_cfg`` and safetensors weights under ``backbone.*``)."""
    from ..models.state import load_state_dict_strict
    from ..models.lm import LanguageModel

    p = Path(path)
    try:
        meta = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: cannot read config.json: {e}") from None
    ssm, mlp = meta.get("ssm_cfg") or {}, meta.get("mlp_cfg") or {}
    d_model, vocab = int(meta["d_model"]), int(meta["vocab_size"])
    mult = int(meta.get("pad_vocab_size_multiple", 8) or 1)
    vocab += (-vocab) % mult  # the release pads the vocab the same way
    H = int(ssm.get("n_v_heads", 32))
    problems = []
    if int(ssm.get("n_qk_heads", H)) != H:
        problems.append("n_qk_heads != n_v_heads (thinkfast's discrete heads are independent)")
    if ssm.get("activation", "identity") != "identity":
        problems.append(f"conv activation {ssm.get('activation')!r}")
    if meta.get("lm_head_bias", False):
        problems.append("LM head bias")
    if mlp.get("act_fn", "silu") != "silu":
        problems.append(f"MLP act_fn {mlp.get('act_fn')!r}")
    eps = float(meta.get("norm_epsilon", 1e-5))
    if eps != _LLAMBA_BLOCK_EPS:
        problems.append(f"norm_epsilon {eps} (block norms are 1e-5; thinkfast has one eps)")
    if problems:
        raise UserError(f"{p}: this Llamba checkpoint has no exact thinkfast equivalent: " + "; ".join(problems))
    d_inner = int(ssm.get("expand", 1)) * d_model
    n_layers = int(meta.get("n_layer", 32))
    cfg = ModelConfig(
        vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=H, n_kv_heads=H, head_dim=d_inner // H,
        d_ff=int(mlp.get("intermediate_size", 14336)), norm_eps=eps,
        max_seq_len=int(meta.get("max_position_embeddings", 2048)), tie_embeddings=bool(meta.get("tie_embeddings")),
        mlp_bias=bool(mlp.get("bias", False)), layer_pattern="M" * n_layers,
        mamba=dict(kind="discrete", n_heads=H, head_dim=d_inner // H, d_state=int(ssm.get("d_state", 64)),
                   conv_kernel=int(ssm.get("d_conv", 4)), chunk_size=int(ssm.get("chunk_size", 128))),
    )
    sd = read_safetensors(p)
    km = llamba_key_map(cfg)
    optional = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if not ssm.get("conv_bias", True):
        optional |= {v for k, v in km.items() if k.endswith("conv1d.bias")}
    biased = bool(ssm.get("bias", False))
    want = set(km.values())
    if biased:  # in_proj / out_proj biases instead of z_bias
        want = {v for v in want if not v.endswith("mixer.z_bias")}
        want |= {f"backbone.layers.{i}.mixer.{b}.bias" for i in range(n_layers) for b in ("in_proj", "out_proj")}
    check_keys(sd, want, optional, str(p), "Llamba")
    ts = {}
    for k, v in km.items():
        if v in sd:
            ts[k] = sd[v].float()
        elif k.endswith("conv1d.bias"):
            ts[k] = torch.zeros(d_inner + 2 * H * cfg.mamba.d_state)
    if biased:
        ts.update(_llamba_biases(sd, cfg, str(p)))
        a_bias = torch.stack([v for k, v in ts.items() if k.endswith("a_bias")]).double()  # (layers, H)
        taus = 1.0 / torch.nn.functional.softplus(a_bias)
        cfg.mamba.decay_bias = [float(taus.min()), float(taus.max())]  # only an init range; a_bias is loaded
    model = LanguageModel(cfg)
    load_state_dict_strict(model, ts, str(p))
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), load_tokenizer(p)


def _llamba_biases(sd: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    """z_bias and a_bias of each layer from a biased (``ssm_cfg.bias``) Llamba checkpoint; a nonzero
    bias on x|B|C (before the conv) or on out_proj has no thinkfast counterpart and is refused."""
    m = cfg.mamba
    conv_dim, d_inner = m.n_heads * m.head_dim + 2 * m.n_heads * m.d_state, m.n_heads * m.head_dim
    out, bad = {}, []
    for i in range(cfg.n_layers):
        d = f"backbone.layers.{i}.mixer."
        b = sd[d + "in_proj.bias"].float()
        if b.shape != (conv_dim + d_inner + m.n_heads,):
            raise UserError(f"{where}: {d}in_proj.bias has shape {tuple(b.shape)}, "
                            f"expected ({conv_dim + d_inner + m.n_heads},)")
        if b[:conv_dim].any() or sd[d + "out_proj.bias"].any():
            bad.append(i)
        out[f"layers.{i}.mixer.z_bias"] = b[conv_dim:conv_dim + d_inner]
        out[f"layers.{i}.mixer.a_bias"] = b[conv_dim + d_inner:]
    if bad:
        raise UserError(f"{where}: this Llamba checkpoint has no exact thinkfast equivalent: layers {bad} have "
                        "a nonzero in_proj bias on x/B/C or a nonzero out_proj bias")
    return out
