"""Export thinkfast models to checkpoints that standard stacks load and serve, and import them back.

One target per student kind, each an exact match (the parity tests check logits):

==================================  =====================================  =====================
thinkfast kind                      target                                 served by vLLM
==================================  =====================================  =====================
Transformer (all "A")               ``LlamaForCausalLM``                   yes
hybrid / pure Mamba-2 (``mamba2``)  ``GraniteMoeHybridForCausalLM`` dense  yes
pure discrete Mamba-2 (Llamba)      the Llamba format of cartesia-ai/edge  no (no vLLM model)
hybrid with discrete mixers         none: refused                          --
==================================  =====================================  =====================

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

Every export is written to a temporary directory next to OUT_DIR and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ModelConfig, RopeScaling
from ..runtime import UserError

# Files of a transformers tokenizer, copied next to the exported weights when present.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "vocab.txt", "spiece.model",
)

LLAMA, GRANITE, LLAMBA = "LlamaForCausalLM", "GraniteMoeHybridForCausalLM", "LlambaLMHeadModel"
TARGET_KINDS = (
    "Transformer (all-attention) -> LlamaForCausalLM; "
    "hybrid or pure Mamba-2 with the mamba2 (MambaInLlama) mixer -> GraniteMoeHybridForCausalLM; "
    "pure discrete Mamba-2 (Llamba) -> the Llamba checkpoint format (not served by vLLM)"
)
_GATED_NORM_EPS = 1e-5  # thinkfast's Mamba2Mixer gated RMSNorm (models/mamba2.py)
_LLAMBA_BLOCK_EPS = 1e-5  # the Llamba release hard-codes its block norms' eps


class ExportError(UserError):
    """A model that has no exact export target, or an output directory that cannot be used."""


# --- target selection ------------------------------------------------------------------------------


def student_kind(cfg: ModelConfig) -> str:
    """'transformer', 'mamba2-hybrid', 'mamba2', 'discrete' or 'discrete-hybrid'."""
    if cfg.kind == "llama":
        return "transformer"
    disc = cfg.mamba.kind == "discrete"
    if cfg.kind == "mamba":
        return "discrete" if disc else "mamba2"
    return "discrete-hybrid" if disc else "mamba2-hybrid"


def _granite_problems(cfg: ModelConfig) -> list[str]:
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


def _llamba_problems(cfg: ModelConfig) -> list[str]:
    m = cfg.mamba
    out = []
    if (m.n_heads * m.head_dim) % cfg.d_model:
        out.append(f"mamba n_heads * head_dim = {m.n_heads * m.head_dim} is not an integer multiple of "
                   f"d_model {cfg.d_model} (Llamba's ssm_cfg.expand must be an integer)")
    if cfg.norm_eps != _LLAMBA_BLOCK_EPS:
        out.append(f"norm_eps {cfg.norm_eps} != 1e-5 (Llamba's block norms hard-code 1e-5)")
    return out


def export_target(cfg: ModelConfig) -> str:
    """The architecture ``cfg`` exports to exactly, or ``ExportError`` naming why there is none."""
    kind = student_kind(cfg)
    if kind == "transformer":
        return LLAMA
    if kind == "discrete-hybrid":
        raise ExportError(
            "a hybrid with discrete (Llamba) Mamba layers has no exact export target: no shipped "
            "architecture has both attention and the discrete mixer (no dt on the input, identity conv, "
            f"z-gate with bias). Kinds with a target: {TARGET_KINDS}.")
    if kind == "discrete":
        problems, target = _llamba_problems(cfg), LLAMBA
    else:
        problems, target = _granite_problems(cfg), GRANITE
    if problems:
        raise ExportError(f"this {kind} student has no exact {target} equivalent: " + "; ".join(problems)
                          + f". Kinds with a target: {TARGET_KINDS}.")
    return target


# --- shared helpers --------------------------------------------------------------------------------


def _rope_keys(cfg: ModelConfig) -> dict[str, Any]:
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


def _rope_from_hf(hf_cfg: Any) -> tuple[float, Optional[RopeScaling]]:
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


def _token_ids(tokenizer: Any) -> dict[str, Optional[int]]:
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in EXPORT_DTYPES.items()}[dtype]


# --- Llama -----------------------------------------------------------------------------------------


def llama_config(cfg: ModelConfig, tokenizer: Any = None, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    return {
        "architectures": [LLAMA], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        **_rope_keys(cfg), "tie_word_embeddings": bool(cfg.tie_embeddings),
        "attention_bias": bool(cfg.attention_bias), "attention_dropout": 0.0, "mlp_bias": bool(cfg.mlp_bias),
        "initializer_range": cfg.init_std, "use_cache": True, **_token_ids(tokenizer),
        "torch_dtype": _dtype_name(dtype),
    }


# --- GraniteMoeHybrid ------------------------------------------------------------------------------


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
        "position_embedding_type": "rope", **_rope_keys(cfg),
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
        "use_cache": True, **_token_ids(tokenizer), "torch_dtype": _dtype_name(dtype),
    }


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


def to_granite_state_dict(model) -> dict[str, torch.Tensor]:
    """GraniteMoeHybrid state dict of a mamba2-mixer hybrid / pure-Mamba thinkfast model."""
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    rows, conv = _mixer_index(cfg.mamba)
    for i, c in enumerate(cfg.layer_pattern):
        s, d = f"layers.{i}.", f"model.layers.{i}."
        out[d + "input_layernorm.weight"] = sd[s + "input_norm.weight"]
        out[d + "post_attention_layernorm.weight"] = sd[s + "post_norm.weight"]
        out[d + "shared_mlp.input_linear.weight"] = torch.cat([sd[s + "mlp.gate_proj.weight"],
                                                               sd[s + "mlp.up_proj.weight"]], 0)
        out[d + "shared_mlp.output_linear.weight"] = sd[s + "mlp.down_proj.weight"]
        if c == "A":
            for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[d + f"self_attn.{p}.weight"] = sd[s + f"mixer.{p}.weight"]
                if cfg.attention_bias:
                    out[d + f"self_attn.{p}.bias"] = sd[s + f"mixer.{p}.bias"]
        else:
            out[d + "mamba.in_proj.weight"] = sd[s + "mixer.in_proj.weight"].index_select(0, rows)
            out[d + "mamba.conv1d.weight"] = sd[s + "mixer.conv1d.weight"].index_select(0, conv)
            out[d + "mamba.conv1d.bias"] = sd[s + "mixer.conv1d.bias"].index_select(0, conv)
            for p in ("dt_bias", "A_log", "D"):
                out[d + f"mamba.{p}"] = sd[s + f"mixer.{p}"]
            out[d + "mamba.norm.weight"] = sd[s + "mixer.norm.weight"]
            out[d + "mamba.out_proj.weight"] = sd[s + "mixer.out_proj.weight"]
    return out


# --- Llamba ----------------------------------------------------------------------------------------


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


def _llamba_key_map(cfg: ModelConfig) -> dict[str, str]:
    """thinkfast key -> Llamba key."""
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
    out = {v: sd[k] for k, v in _llamba_key_map(cfg).items()}
    if cfg.mamba.decay_bias is not None:  # ssm_cfg.bias: the biases live in in_proj / out_proj
        for i in range(cfg.n_layers):
            s, d = f"layers.{i}.mixer.", f"backbone.layers.{i}.mixer."
            conv_dim = sd[s + "conv1d.weight"].shape[0]
            out[d + "in_proj.bias"] = torch.cat([sd[s + "z_bias"].new_zeros(conv_dim), sd[s + "z_bias"],
                                                 sd[s + "a_bias"]])
            out[d + "out_proj.bias"] = sd[s + "z_bias"].new_zeros(cfg.d_model)
            del out[d + "z_bias"]
    return out


# --- writing ---------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    out_dir: Path
    architecture: str
    kind: str
    served_by_vllm: bool
    tokenizer_files: list[str]


def check_out_dir(out: Path, overwrite: bool, source: Optional[Path] = None) -> None:
    if source is not None and out.resolve() == source.resolve():
        raise ExportError(f"{out} is the model directory itself; choose another OUT_DIR")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty (use --overwrite to replace it)")


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in sorted(sd.items())}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _copy_tokenizer(src: Optional[Path], tokenizer: Any, dst: Path) -> list[str]:
    copied = []
    if src is not None and src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
                copied.append(name)
    if not copied and tokenizer is not None:
        tokenizer.save_pretrained(str(dst))
        copied = sorted(p.name for p in dst.iterdir() if p.name in TOKENIZER_FILES)
    return copied


def _install(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, replacing an existing ``out`` only at the very end."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(model, out_dir: str | os.PathLike, tokenizer: Any = None,
                 tokenizer_dir: Optional[str | os.PathLike] = None, overwrite: bool = False, dtype: Optional[torch.dtype] = None,
                 source: Optional[str | os.PathLike] = None) -> ExportResult:
    """Write ``model`` (a thinkfast LanguageModel) as the checkpoint of its exact target.

    Tokenizer files come from ``tokenizer_dir`` when it holds any, else ``tokenizer`` is saved.
    ``dtype`` defaults to the model's. Raises ``ExportError`` for a model without an exact target
    and for a non-empty ``out_dir`` without ``overwrite``; nothing is written then.
    """
    cfg = model.config
    target = export_target(cfg)
    out = Path(out_dir)
    check_out_dir(out, overwrite, Path(source) if source is not None else None)
    dtype = dtype or model.dtype
    if target == LLAMA:
        from .hf import to_hf_state_dict

        sd, meta = to_hf_state_dict(model), llama_config(cfg, tokenizer, dtype)
    elif target == GRANITE:
        sd, meta = to_granite_state_dict(model), granite_config(cfg, tokenizer, dtype)
    else:
        sd, meta = to_llamba_state_dict(model), llamba_config(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        _save_safetensors(sd, tmp / "model.safetensors", dtype)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        copied = _copy_tokenizer(Path(tokenizer_dir) if tokenizer_dir is not None else None, tokenizer, tmp)
        check_out_dir(out, overwrite)  # again: something may have appeared meanwhile
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, target, student_kind(cfg), target != LLAMBA, copied)


def stored_dtype(model_dir: Path) -> Optional[torch.dtype]:
    """The dtype a thinkfast directory stores its weights in (its embedding's), None if unknown."""
    f = model_dir / "model.safetensors"
    if not f.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(f), "pt") as st:
            return _ST_DTYPES.get(st.get_slice("embed_tokens.weight").get_dtype())
    except Exception:  # not a thinkfast layout: fall back to the default
        return None


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


# --- import ----------------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory: model.safetensors or a sharded index."""
    from safetensors.torch import load_file

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(path / f)))
        return sd
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise UserError(f"{path}: only safetensors weights are read (pickled .bin/.pt files are not loaded)")
    raise UserError(f"{path}: no model.safetensors (or model.safetensors.index.json)")


def _check_keys(sd: dict[str, torch.Tensor], want: set[str], optional: set[str], source: str, what: str) -> None:
    missing = sorted(want - set(sd) - optional)
    unexpected = sorted(set(sd) - want - optional)
    if missing or unexpected:
        raise UserError(f"{source} is not a {what} checkpoint of its own config: "
                        f"missing keys {missing}; unexpected keys {unexpected}")


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


def _load_tokenizer(path: Path):
    from ..data import tokenizer as T

    if path.is_dir() and not T.has_tokenizer(path):
        return None
    try:
        return T.load_tokenizer(path)
    except (OSError, ValueError, TypeError):
        return None


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
    theta, scaling = _rope_from_hf(hc)
    H, P, N = hc.mamba_n_heads, hc.mamba_d_head, hc.mamba_d_state
    sd = _read_safetensors(p)

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
    want = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_embeddings:
        want.add("lm_head.weight")
    for i, c in enumerate(pattern):
        d = f"model.layers.{i}."
        want |= {d + "input_layernorm.weight", d + "post_attention_layernorm.weight",
                 d + "shared_mlp.input_linear.weight", d + "shared_mlp.output_linear.weight"}
        if c == "A":
            want |= {d + f"self_attn.{q}_proj.weight" for q in "qkvo"}
            if cfg.attention_bias:
                want |= {d + f"self_attn.{q}_proj.bias" for q in "qkvo"}
        else:
            want |= {d + f"mamba.{k}" for k in ("in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D",
                                                "norm.weight", "out_proj.weight")}
            if hc.mamba_conv_bias:
                want.add(d + "mamba.conv1d.bias")
    _check_keys(sd, want, {"lm_head.weight"} if cfg.tie_embeddings else set(), str(p), "GraniteMoeHybrid")

    # inverse of the repetition: the first head of each group (they are identical)
    rep = H // G
    inv_x = (torch.arange(G) * rep)[:, None] * P + torch.arange(P)[None]
    inv_b = (torch.arange(G) * rep)[:, None] * N + torch.arange(N)[None]
    conv_inv = torch.cat([inv_x.reshape(-1), H * P + inv_b.reshape(-1), H * P + H * N + torch.arange(H * N)])
    rows_inv = torch.cat([torch.arange(H * P), H * P + conv_inv, 2 * H * P + 2 * H * N + torch.arange(H)])
    ts: dict[str, torch.Tensor] = {"embed_tokens.weight": sd["model.embed_tokens.weight"],
                                   "norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_embeddings:
        ts["lm_head.weight"] = sd["lm_head.weight"]
    F_ = cfg.d_ff
    for i, c in enumerate(pattern):
        s, d = f"layers.{i}.", f"model.layers.{i}."
        ts[s + "input_norm.weight"] = sd[d + "input_layernorm.weight"]
        ts[s + "post_norm.weight"] = sd[d + "post_attention_layernorm.weight"]
        gu = sd[d + "shared_mlp.input_linear.weight"]
        ts[s + "mlp.gate_proj.weight"], ts[s + "mlp.up_proj.weight"] = gu[:F_], gu[F_:]
        ts[s + "mlp.down_proj.weight"] = sd[d + "shared_mlp.output_linear.weight"]
        if c == "A":
            for q in "qkvo":
                ts[s + f"mixer.{q}_proj.weight"] = sd[d + f"self_attn.{q}_proj.weight"]
                if cfg.attention_bias:
                    ts[s + f"mixer.{q}_proj.bias"] = sd[d + f"self_attn.{q}_proj.bias"]
        else:
            ts[s + "mixer.in_proj.weight"] = sd[d + "mamba.in_proj.weight"].index_select(0, rows_inv)
            ts[s + "mixer.conv1d.weight"] = sd[d + "mamba.conv1d.weight"].index_select(0, conv_inv)
            cb = sd.get(d + "mamba.conv1d.bias")
            ts[s + "mixer.conv1d.bias"] = (cb.index_select(0, conv_inv) if cb is not None
                                          else torch.zeros(conv_inv.numel()))
            for k in ("dt_bias", "A_log", "D"):
                ts[s + f"mixer.{k}"] = sd[d + f"mamba.{k}"]
            ts[s + "mixer.norm.weight"] = sd[d + "mamba.norm.weight"]
            ts[s + "mixer.out_proj.weight"] = sd[d + "mamba.out_proj.weight"]
    model = LanguageModel(cfg)
    load_state_dict_strict(model, {k: v.float() for k, v in ts.items()}, str(p))
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), _load_tokenizer(p)


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
    sd = _read_safetensors(p)
    km = _llamba_key_map(cfg)
    optional = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if not ssm.get("conv_bias", True):
        optional |= {v for k, v in km.items() if k.endswith("conv1d.bias")}
    biased = bool(ssm.get("bias", False))
    want = set(km.values())
    if biased:  # in_proj / out_proj biases instead of z_bias
        want = {v for v in want if not v.endswith("mixer.z_bias")}
        want |= {f"backbone.layers.{i}.mixer.{b}.bias" for i in range(n_layers) for b in ("in_proj", "out_proj")}
    _check_keys(sd, want, optional, str(p), "Llamba")
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
    return model.eval(), _load_tokenizer(p)


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


def exported_architecture(path: str | os.PathLike) -> Optional[str]:
    """'granitemoehybrid' or 'llamba' for a local directory this module imports, else None."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    if meta.get("model_type") == "granitemoehybrid":
        return "granitemoehybrid"
    if meta.get("model_type") == "llamba" or ("ssm_cfg" in meta and "d_model" in meta and "n_layer" in meta):
        return "llamba"
    return None


def import_exported(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: Optional[torch.dtype] = None):
    """(model, tokenizer) for a GraniteMoeHybrid or Llamba directory, None for anything else
    (Llama directories go through ``convert.hf.import_hf``)."""
    arch = exported_architecture(path)
    if arch == "granitemoehybrid":
        return import_hf_hybrid(path, device=device, dtype=dtype)
    if arch == "llamba":
        return import_llamba(path, device=device, dtype=dtype)
    return None
