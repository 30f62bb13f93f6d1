"""Hugging Face Llama (``LlamaForCausalLM``) <-> thinkfast: the all-attention checkpoint format.

One key table (``key_map``) serves both directions. ``import_hf`` loads anything transformers
loads as a Llama (a local directory with config.json and safetensors, a hub id when online, a GGUF
file) and copies its weights into a thinkfast ``LanguageModel`` with the same logits;
``to_hf_state_dict`` and ``llama_config`` write an all-attention model back as a Llama
(``convert.export`` drives the export). The converter users run is the one the parity tests check.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

import torch

from ..config import ModelConfig
from ..models.lm import LanguageModel
from ..runtime import UserError
from .common import dtype_name, token_ids
from .rope import rope_from_hf, rope_keys

LLAMA = "LlamaForCausalLM"

# thinkfast name -> HF name, per layer ({i} is the layer index)
_LAYER_KEYS = {
    "layers.{i}.input_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.post_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.mixer.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.mixer.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.mixer.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.mixer.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_BIAS_KEYS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}
_TOP_KEYS = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}


def config_from_hf(hf_cfg: Any) -> ModelConfig:
    """ModelConfig from a transformers LlamaConfig (RoPE: ``rope_parameters`` first, then legacy ``rope_scaling``)."""
    if getattr(hf_cfg, "model_type", "llama") not in ("llama",):
        raise UserError(f"only Llama checkpoints can be imported, got model_type={hf_cfg.model_type!r}")
    if getattr(hf_cfg, "hidden_act", "silu") != "silu":
        raise UserError(f"unsupported hidden_act {hf_cfg.hidden_act!r} (Llama uses silu)")
    theta, scaling = rope_from_hf(hf_cfg)
    n_heads = hf_cfg.num_attention_heads
    return ModelConfig(
        vocab_size=hf_cfg.vocab_size,
        d_model=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(hf_cfg, "num_key_value_heads", None) or n_heads,
        head_dim=getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // n_heads,
        d_ff=hf_cfg.intermediate_size,
        norm_eps=hf_cfg.rms_norm_eps,
        rope_theta=float(theta),
        rope_scaling=scaling,
        max_seq_len=hf_cfg.max_position_embeddings,
        tie_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", False)),
        attention_bias=bool(getattr(hf_cfg, "attention_bias", False)),
        mlp_bias=bool(getattr(hf_cfg, "mlp_bias", False)),
    )


def llama_config(cfg: ModelConfig, tokenizer: Any = None, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json of the LlamaForCausalLM equivalent of an all-attention ``cfg``."""
    return {
        "architectures": [LLAMA], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        **rope_keys(cfg), "tie_word_embeddings": bool(cfg.tie_embeddings),
        "attention_bias": bool(cfg.attention_bias), "attention_dropout": 0.0, "mlp_bias": bool(cfg.mlp_bias),
        "initializer_range": cfg.init_std, "use_cache": True, **token_ids(tokenizer),
        "torch_dtype": dtype_name(dtype),
    }

def key_map(cfg: ModelConfig) -> dict[str, str]:
    """thinkfast key -> HF key for a Llama of this config."""
    m = {k: v for k, v in _TOP_KEYS.items() if not (k == "lm_head.weight" and cfg.tie_embeddings)}
    for i in range(cfg.n_layers):
        for k, v in _LAYER_KEYS.items():
            m[k.format(i=i)] = v.format(i=i)
        if cfg.attention_bias:
            for p in _BIAS_KEYS["attention"]:
                m[f"layers.{i}.mixer.{p}.bias"] = f"model.layers.{i}.self_attn.{p}.bias"
        if cfg.mlp_bias:
            for p in _BIAS_KEYS["mlp"]:
                m[f"layers.{i}.mlp.{p}.bias"] = f"model.layers.{i}.mlp.{p}.bias"
    return m


def llama_from_hf_state_dict(cfg: ModelConfig, hf_sd: dict[str, torch.Tensor], source: str = "checkpoint") -> LanguageModel:
    from ..models.state import load_state_dict_strict

    kmap = key_map(cfg)
    missing = sorted(v for v in kmap.values() if v not in hf_sd)
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    unexpected = sorted(k for k in hf_sd if k not in set(kmap.values()) | ignorable
                        and not k.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        raise UserError(f"{source} is not a Llama checkpoint of this config: "
                        f"missing keys {missing}; unexpected keys {unexpected}")
    model = LanguageModel(cfg)
    load_state_dict_strict(model, {k: hf_sd[v] for k, v in kmap.items()}, source)
    return model


def to_hf_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """HF Llama state dict of an all-attention thinkfast model (for export and tests)."""
    if model.config.kind != "llama":
        raise UserError(f"only all-attention models map to LlamaForCausalLM, this is a {model.config.kind}")
    sd = model.state_dict()
    return {v: sd[k].detach().clone().contiguous() for k, v in key_map(model.config).items()}


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""The shape of a hub id ("org/name"); anything else that does not exist locally is a missing path."""


def _check_source(path: str) -> None:
    """Say what is wrong with ``path`` before transformers does: its messages for a local path
    ("Repo id must be ...", "Should have a model_type key") read as if the path were a hub id."""
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such GGUF file")
        return
    if os.path.isdir(path):
        cfg = os.path.join(path, "config.json")
        if not os.path.isfile(cfg):
            raise UserError(f"{path} has no config.json: not a Hugging Face checkpoint directory "
                            "(give a directory with config.json and *.safetensors, or a .gguf file)")
        try:
            with open(cfg, "rb") as f:
                meta = json.loads(f.read())
        except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
            raise UserError(f"{cfg} is not a readable JSON file: {e}") from None
        if isinstance(meta, dict) and meta.get("format") == "thinkfast":
            raise UserError(f"{path} is already a thinkfast model directory (load it as it is)")
        if not isinstance(meta, dict) or "model_type" not in meta:
            raise UserError(f"{cfg} has no \"model_type\": not a transformers model config")
        return
    if os.path.exists(path):
        raise UserError(f"{path} is a file: give the checkpoint's directory (or a .gguf file)")
    if not _HUB_ID.fullmatch(path):
        raise UserError(f"{path} does not exist")
    # "org/name" that is not a local path: a hub id, fetched by transformers when online


def import_hf(path: str, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None,
              trust_remote_code: bool = False):
    """(thinkfast model, tokenizer or None) from a HF Llama directory, hub id or .gguf file."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _check_source(str(path))
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    src = path
    if str(path).endswith(".gguf"):
        src, kwargs["gguf_file"] = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    try:
        hf_cfg = AutoConfig.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        where = path if os.path.exists(path) else f"{path} (no such local directory; tried as a hub id)"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]  # one line: the CLI's error format
        raise UserError(f"cannot read a transformers config from {where}: {first}") from None
    cfg = config_from_hf(hf_cfg)
    kwargs["output_loading_info"] = True
    try:
        try:
            hf_model, info = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kwargs)
        except TypeError:  # transformers < 4.56 spells it torch_dtype
            hf_model, info = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot load the checkpoint at {path}: {e}") from None
    # transformers re-initialises missing weights with a warning; for an import that is an error.
    bad = {k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    bad["missing_keys"] = [k for k in bad["missing_keys"] if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if any(bad.values()):
        raise UserError(f"{path} does not fit a Llama of its own config: "
                        + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in bad.items() if v))
    kwargs.pop("output_loading_info")
    model = llama_from_hf_state_dict(cfg, hf_model.state_dict(), str(path))
    del hf_model
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(src, **kwargs)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # weights without a tokenizer are still useful (benchmarks, tests)
    return model.eval(), tokenizer
