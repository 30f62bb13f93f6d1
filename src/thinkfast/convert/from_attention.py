"""Initialise Mamba layers from attention: the first step of every student in the study.

MambaInLlama (Wang et al. 2024) reads linear attention off softmax attention: with the softmax
dropped, attention's q_t k_s^T v_s is an SSM with C_t = q_t, B_s = k_s, x_s = v_s. So a Mamba
mixer starts as

    x <- W_V,  B <- W_K,  C <- W_Q,  out_proj <- W_O          (repeated across GQA groups)

and everything outside the mixer (embeddings, norms, MLPs, LM head) is copied. The rows that
attention has no counterpart for are random: z and dt (mamba2) or z and a (discrete); dt_bias is
the inverse softplus of dt drawn log-uniform in [dt_min, dt_max]; A is drawn in [A_min, A_max];
D = 1; the conv keeps PyTorch's default init. All of it comes from one ``torch.Generator``.

Which layers stay attention is a *layer pattern*: a fraction (evenly spread, MambaInLlama's
choice: 50% keeps layers 1, 3, 5, ...; 25% keeps 3, 7, 11, ...; the sets nest, which is what
the stepwise schedule needs), an explicit list, a pattern string, or a ``layers.json`` file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..models.layers import Attention
from ..models.lm import LanguageModel
from ..models.mamba2 import DiscreteMamba2Mixer, Mamba2Mixer, MambaMixerBase
from ..runtime import UserError

KeepSpec = Union[float, int, str, Sequence[int], None]


class ConversionError(UserError):
    """A student that cannot be initialised from this teacher (shapes, layer kinds)."""


# --- which layers stay attention ------------------------------------------------------------------
def evenly_spaced(n_layers: int, k: int) -> list[int]:
    """k of n_layers indices, evenly spread and ending at the last layer.

    With n a multiple of n/k this is MambaInLlama's choice (keep i where i % stride == stride-1),
    and halving k keeps a subset, so a stepwise schedule only ever removes attention layers.
    """
    if not 0 <= k <= n_layers:
        raise UserError(f"cannot keep {k} attention layers out of {n_layers}")
    return [(j + 1) * n_layers // k - 1 for j in range(k)]


def load_layers_json(path: Path, n_layers: int) -> list[int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read a list of attention layers: {e}") from None
    if isinstance(data, dict):
        depth = data.get("n_layers")
        if depth is not None and depth != n_layers:
            raise UserError(f"{path} was made for a teacher of {depth} layers, but this one has {n_layers}")
        data = data.get("layers", data.get("attention_layers"))
    if not isinstance(data, list) or not all(isinstance(i, int) for i in data):
        raise UserError(f"{path}: expected a list of layer indices (or {{\"layers\": [...]}})")
    return data


def attention_layers(n_layers: int, keep: KeepSpec) -> list[int]:
    """The attention layers a student keeps.

    keep: a fraction in [0, 1] (0 = pure Mamba, 1 = all attention), a list of indices, a pattern
    string like "MAMA", or a path to a JSON list (``layers.json``). None means keep none.
    """
    if keep is None:
        return []
    if isinstance(keep, bool):
        raise UserError(f"keep must be a fraction, a list of layers or a pattern, not {keep!r}")
    if isinstance(keep, (int, float)) and not isinstance(keep, bool):
        if not 0.0 <= float(keep) <= 1.0:
            raise UserError(f"keep fraction {keep} is outside [0, 1]")
        return evenly_spaced(n_layers, round(float(keep) * n_layers))
    if isinstance(keep, str):
        s = keep.strip()
        if s and set(s.upper()) <= {"A", "M"}:
            if len(s) != n_layers:
                raise UserError(f"layer pattern {s!r} has {len(s)} letters but the model has {n_layers} layers")
            return [i for i, c in enumerate(s.upper()) if c == "A"]
        if s.endswith(".json") or os.path.exists(s):
            layers = load_layers_json(Path(s), n_layers)
        else:
            try:
                return attention_layers(n_layers, float(s))
            except ValueError:
                raise UserError(f"keep {keep!r} is not a fraction, a pattern of A/M or a layers.json path") from None
    else:
        layers = list(keep)
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n_layers]
    if bad:
        raise UserError(f"attention layer indices {bad} are out of range for {n_layers} layers")
    if len(set(layers)) != len(layers):
        raise UserError(f"attention layer list {layers} has duplicates")
    return sorted(layers)


def layer_pattern(n_layers: int, keep: KeepSpec) -> str:
    """keep (see ``attention_layers``) -> "MAMA"-style pattern."""
    kept = set(attention_layers(n_layers, keep))
    return "".join("A" if i in kept else "M" for i in range(n_layers))


# --- per-mixer initialisation -----------------------------------------------------------------
def _normal(shape, std: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g) * std


@torch.no_grad()
def _default_conv_init(conv: nn.Conv1d, g: torch.Generator) -> None:
    """nn.Conv1d's own init (kaiming-uniform with a=sqrt(5): U(+-1/sqrt(fan_in))), seeded."""
    bound = 1.0 / math.sqrt(conv.weight[0].numel())
    conv.weight.copy_(torch.rand(conv.weight.shape, generator=g) * 2 * bound - bound)
    if conv.bias is not None:
        conv.bias.copy_(torch.rand(conv.bias.shape, generator=g) * 2 * bound - bound)


CONV_INITS = ("default", "identity", "shifted")


@torch.no_grad()
def _init_conv(conv: nn.Conv1d, how: str, g: torch.Generator, bc: tuple[int, int] = (0, 0)) -> None:
    """The converted mixer's causal conv over x|B|C (with padding K - 1, tap K - 1 multiplies
    token t). bc: the sizes of the x and B parts (C is the rest).

    default: PyTorch's init, seeded (each channel a random mix of the last K tokens, as in
    MambaInLlama; training moves it by only about a quarter, so these random filters stay part of
    what the seed picks); identity: every channel passes token t, so the mixer starts as exactly
    the linear attention it was read from (an ablation: docs/demo-study.md); shifted: the default,
    then each B channel takes its C channel's filter one token later (B's weight on token t-1-l is
    C's on token t-l, and nothing on token t), so a key holds the tokens before it exactly as the
    query one step earlier does: the match then reads the token after it, an induction head's
    copy (needs B and C of one size; an ablation: docs/demo-study.md)."""
    if how in ("default", "shifted"):
        _default_conv_init(conv, g)
        if how == "shifted":
            n_x, n_b = bc
            n_c = conv.weight.shape[0] - n_x - n_b
            if n_b == 0 or n_b != n_c:
                raise ConversionError(f"conv_init shifted needs B and C parts of one size, got {n_b} and {n_c}")
            w = conv.weight[:, 0]  # (channels, K)
            w[n_x:n_x + n_b, :-1] = w[n_x + n_b:, 1:]
            w[n_x:n_x + n_b, -1] = 0.0
        return
    conv.weight.zero_()
    conv.weight[..., -1] = 1.0
    if conv.bias is not None:
        conv.bias.zero_()


def _groups(w: torch.Tensor, n_src: int, n_dst: int, what: str) -> torch.Tensor:
    """Rows of w (n_src*hd, D) repeated to n_dst groups, GQA order (group g -> g // rep)."""
    if n_dst % n_src:
        raise ConversionError(f"cannot map {n_src} teacher {what} heads onto {n_dst} student groups "
                              f"(not a multiple)")
    w = w.detach().float().cpu()
    hd = w.shape[0] // n_src
    return w.view(n_src, hd, -1).repeat_interleave(n_dst // n_src, dim=0).reshape(n_dst * hd, -1)


def _check_mixer_shapes(mixer: MambaMixerBase, attn: Attention, wider_state: bool = False) -> None:
    if attn.q_proj.bias is not None:
        raise ConversionError("the teacher's attention has biases; the Mamba in_proj has none, so the "
                              "initialisation would drop them -- refusing")
    state_ok = mixer.N >= attn.head_dim if wider_state else mixer.N == attn.head_dim
    if (mixer.H, mixer.P) != (attn.n_heads, attn.head_dim) or not state_ok:
        need = "N >= head_dim" if wider_state else "N = head_dim"
        raise ConversionError(
            f"head-count mismatch: the Mamba mixer has H={mixer.H} heads, head_dim P={mixer.P}, "
            f"d_state N={mixer.N}, but attention has {attn.n_heads} heads of size {attn.head_dim}; "
            f"attention initialisation needs H = n_heads, P = head_dim and {need}")


@torch.no_grad()
def init_mamba2_from_attention(mixer: Mamba2Mixer, attn: Attention, g: torch.Generator,
                               std: float, mcfg, conv_init: str = "default") -> None:
    """MambaInLlama: in_proj rows [z | x <- W_V | B <- W_K | C <- W_Q | dt], out_proj <- W_O."""
    _check_mixer_shapes(mixer, attn)
    D = attn.q_proj.weight.shape[1]
    H, G, P = mixer.H, mixer.G, mixer.P
    rows = [
        _normal((H * P, D), std, g),                                   # z
        _groups(attn.v_proj.weight, attn.n_kv_heads, G, "value"),      # x (G*P)
        _groups(attn.k_proj.weight, attn.n_kv_heads, G, "key"),        # B (G*N)
        attn.q_proj.weight.detach().float().cpu(),                     # C (H*N)
        _normal((H, D), std, g),                                       # dt
    ]
    mixer.in_proj.weight.copy_(torch.cat(rows, dim=0))
    mixer.out_proj.weight.copy_(attn.o_proj.weight)
    _init_conv(mixer.conv1d, conv_init, g, (G * P, G * mixer.N))
    mixer.reset_ssm_parameters(mcfg.dt_min, mcfg.dt_max, mcfg.A_init_min, mcfg.A_init_max, generator=g)
    mixer.norm.weight.fill_(1.0)


@torch.no_grad()
def init_discrete_from_attention(mixer: DiscreteMamba2Mixer, attn: Attention, g: torch.Generator,
                                 std: float, mcfg=None, conv_init: str = "default") -> None:
    """Llamba: in_proj rows [x <- W_V | B <- W_K | C <- W_Q | z | a], per-head (K, V repeated
    from their GQA groups to every head), out_proj <- W_O.

    A state wider than the head (``mamba.d_state`` N > head_dim P) gives each head N - P more
    key dimensions: their B rows are drawn N(0, std) and their C rows start at zero, so they add
    nothing to the read-out until training gives them queries."""
    _check_mixer_shapes(mixer, attn, wider_state=True)
    D = attn.q_proj.weight.shape[1]
    H, P, N = mixer.H, mixer.P, mixer.N
    B = _groups(attn.k_proj.weight, attn.n_kv_heads, H, "key")  # (H*P, D)
    C = attn.q_proj.weight.detach().float().cpu()  # (H*P, D)
    if N > P:
        B = torch.cat([B.view(H, P, D), _normal((H, N - P, D), std, g)], 1).reshape(H * N, D)
        C = torch.cat([C.view(H, P, D), torch.zeros(H, N - P, D)], 1).reshape(H * N, D)
    rows = [
        _groups(attn.v_proj.weight, attn.n_kv_heads, H, "value"),      # x (H*P)
        B,                                                             # B (H*N)
        C,                                                             # C (H*N)
        _normal((H * P, D), std, g),                                   # z
        _normal((H, D), std, g),                                       # a
    ]
    mixer.in_proj.weight.copy_(torch.cat(rows, dim=0))
    mixer.out_proj.weight.copy_(attn.o_proj.weight)
    mixer.z_bias.zero_()
    mixer.D.fill_(1.0)
    _init_conv(mixer.conv1d, conv_init, g, (mixer.d_inner, mixer.H * mixer.N))


# --- whole models -----------------------------------------------------------------------------
def student_config(teacher_cfg: ModelConfig, pattern: str, kind: str,
                   mamba: Optional[dict[str, Any]] = None) -> ModelConfig:
    """The teacher's config with another layer pattern and Mamba settings."""
    d = teacher_cfg.to_dict()
    d["layer_pattern"] = pattern
    if any(c == "M" for c in teacher_cfg.layer_pattern) and teacher_cfg.mamba.kind != kind:
        raise ConversionError(f"the source model already has {teacher_cfg.mamba.kind!r} Mamba layers; "
                              f"cannot add {kind!r} ones beside them")
    if not any(c == "M" for c in teacher_cfg.layer_pattern):
        # Sizes re-derive from the attention shape unless given.
        d["mamba"] = {"kind": kind, **(mamba or {})}
    elif mamba:
        d["mamba"].update(mamba)
    return ModelConfig.from_dict(d)


@torch.no_grad()
def student_from_teacher(teacher: LanguageModel, keep: KeepSpec = 0.0, kind: str = "mamba2",
                         seed: int = 0, mamba: Optional[dict[str, Any]] = None,
                         mixer_init: str = "attention", conv_init: str = "default") -> LanguageModel:
    """A student with attention kept where ``keep`` says and attention-initialised Mamba elsewhere.

    teacher: any LanguageModel; its attention layers may be kept or converted, its Mamba layers
    (a hybrid from an earlier step of a stepwise schedule) are copied. keep: see
    ``attention_layers``. kind: "mamba2" (MambaInLlama) or "discrete" (Llamba). Deterministic in
    ``seed`` whatever the global RNG state. mixer_init="random" replaces the copied projections
    (in_proj, out_proj) by N(0, init_std) draws -- the ablation baseline of attention init.
    conv_init: the mixers' causal conv, "default" or "identity" (see ``_init_conv``).
    Returns the student in fp32 on the teacher's device.
    """
    if mixer_init not in ("attention", "random"):
        raise ConversionError(f"mixer_init must be 'attention' or 'random', got {mixer_init!r}")
    if conv_init not in CONV_INITS:
        raise ConversionError(f"conv_init must be one of {', '.join(CONV_INITS)}, got {conv_init!r}")
    if kind not in ("mamba2", "discrete"):
        raise ConversionError(f"student kind must be 'mamba2' or 'discrete', got {kind!r}")
    tcfg = teacher.config
    pattern = layer_pattern(tcfg.n_layers, keep)
    for i, (src, dst) in enumerate(zip(tcfg.layer_pattern, pattern)):
        if src == "M" and dst == "A":
            raise ConversionError(f"layer {i} is Mamba in the source model; it cannot become attention again")
    cfg = student_config(tcfg, pattern, kind, mamba)
    with torch.random.fork_rng(devices=[]):  # every weight is overwritten below; leave the global RNG alone
        student = LanguageModel(cfg).to(device=teacher.device, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    # Everything except converted mixers is copied (names and shapes agree by construction).
    own = student.state_dict()
    copied = {k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape}
    converted = [i for i in range(cfg.n_layers) if tcfg.layer_pattern[i] == "A" and pattern[i] == "M"]
    for i in converted:
        copied = {k: v for k, v in copied.items() if not k.startswith(f"layers.{i}.mixer.")}
    student.load_state_dict(copied, strict=False)
    student.tie_weights()
    init = init_mamba2_from_attention if kind == "mamba2" else init_discrete_from_attention
    for i in converted:
        mx = student.layers[i].mixer
        init(mx, teacher.layers[i].mixer, g, cfg.init_std, cfg.mamba, conv_init)
        if mixer_init == "random":
            for lin in (mx.in_proj, mx.out_proj):
                lin.weight.copy_(_normal(lin.weight.shape, cfg.init_std, g))
    missing = [k for k in own if k not in copied and not any(k.startswith(f"layers.{i}.mixer.") for i in converted)]
    if missing and not (missing == ["lm_head.weight"] and cfg.tie_embeddings):
        raise ConversionError(f"could not copy {missing} from the teacher (shape mismatch)")
    return student
