"""RoPE settings in transformers configs, both directions, with one precedence rule.

transformers 5 spells RoPE ``rope_parameters`` (theta and scaling together); transformers 4
spelled it ``rope_theta`` plus a legacy ``rope_scaling``. Reading follows transformers' current
rule: ``rope_parameters`` first, the legacy ``rope_scaling`` only when ``rope_parameters`` names no
scaling. Writing gives both spellings so either version reads the same RoPE.
"""

from __future__ import annotations

from typing import Any, Optional

from ..config import ModelConfig, RopeScaling
from ..runtime import UserError


def rope_keys(cfg: ModelConfig) -> dict[str, Any]:
    """RoPE in both spellings: transformers 4 (rope_theta / rope_scaling) and 5 (rope_parameters)."""
    scaling = None
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    s = cfg.rope_scaling
    if s is not None and s.rope_type == "llama3":
        scaling = {"rope_type": "llama3", "factor": float(s.factor), "low_freq_factor": float(s.low_freq_factor),
                   "high_freq_factor": float(s.high_freq_factor),
                   "original_max_position_embeddings": int(s.original_max_position_embeddings)}
    elif s is not None:
        scaling = {"rope_type": "linear", "factor": float(s.factor)}
    if scaling:
        params = {**scaling, "rope_theta": float(cfg.rope_theta)}
    return {"rope_theta": float(cfg.rope_theta), "rope_scaling": scaling, "rope_parameters": params}


def rope_from_hf(hf_cfg: Any) -> tuple[float, Optional[RopeScaling]]:
    """(rope_theta, scaling or None) of a transformers config: ``rope_parameters`` first, then the
    legacy ``rope_scaling``. Scalings other than llama3 / linear are refused."""
    rope = dict(getattr(hf_cfg, "rope_parameters", None) or {})
    legacy = getattr(hf_cfg, "rope_scaling", None) or {}
    src = rope if rope.get("rope_type", "default") != "default" or not legacy else legacy
    theta = float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0)))
    rtype = src.get("rope_type", src.get("type", "default"))
    if rtype in ("default", None):
        return theta, None
    if rtype == "llama3":
        return theta, RopeScaling("llama3", float(src["factor"]), float(src["low_freq_factor"]),
                                  float(src["high_freq_factor"]), int(src["original_max_position_embeddings"]))
    if rtype == "linear":
        return theta, RopeScaling("linear", float(src["factor"]))
    raise UserError(f"unsupported rope scaling {rtype!r} (supported: llama3, linear)")
