"""Typed, strict configs.

Every config is a dataclass. ``from_dict`` rejects unknown keys (a typo in a recipe is an
error, never a silently ignored setting) and rebuilds nested dataclasses. No I/O happens
here except in the explicit ``from_file``/``to_file`` helpers.

Named model sizes live in ``MODEL_PRESETS`` and are reached with ``ModelConfig.from_name``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A config that cannot be built: unknown key, bad value, wrong type."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, recursively; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown config key(s) {unknown}; known keys: {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        tp = _unwrap_optional(hints[key])
        if value is not None and _is_dataclass_type(tp):
            value = from_dict(tp, value, where=f"{where or cls.__name__}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (``rope_type: llama3`` in HF configs)."""

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in ("llama3", "linear"):
            raise ConfigError(f"rope_scaling.rope_type {self.rope_type!r} is not supported (llama3, linear)")


@dataclass
class MambaConfig:
    """Settings of the Mamba layers of a hybrid or pure-Mamba model.

    kind:
      ``mamba2``   -- the MambaInLlama mixer: dt = softplus(dt_raw + dt_bias), A = -exp(A_log),
                      SiLU conv, gated RMSNorm; x and B at the key/value width ``n_kv_heads*head_dim``
                      repeated across head groups exactly like GQA repeats K and V.
      ``discrete`` -- the Llamba / MOHAWK mixer: alpha_t = exp(-softplus(a_t)), no dt on the input,
                      identity conv, z gate with bias, independent heads.
    Unset sizes default to the attention sizes of the model (d_state = head_dim, as in MambaInLlama).
    """

    kind: str = "mamba2"
    n_heads: Optional[int] = None
    """Number of SSM heads (default: the model's attention heads)."""
    n_kv_heads: Optional[int] = None
    """x/B groups for ``mamba2`` (default: the model's KV heads). Ignored for ``discrete``."""
    head_dim: Optional[int] = None
    """Channels per head P (default: the model's head_dim)."""
    d_state: Optional[int] = None
    """State size N (default: head_dim)."""
    conv_kernel: int = 4
    chunk_size: int = 64
    dt_min: float = 1e-3
    dt_max: float = 0.1
    A_init_min: float = 1.0
    A_init_max: float = 16.0
    decay_bias: Optional[list[float]] = None
    """``discrete`` only: [tau_min, tau_max] adds a learned per-head bias to a_t,
    alpha_t = exp(-softplus(a_t + a_bias)), set at init so the heads' memory timescales
    1 / softplus(a_bias) are log-spaced from tau_min to tau_max tokens. None (the default) is
    Llamba's mixer, whose a_t has no bias: every head starts at alpha ~ 0.5, a one-token memory."""

    def __post_init__(self) -> None:
        if self.kind not in ("mamba2", "discrete"):
            raise ConfigError(f"mamba.kind must be 'mamba2' or 'discrete', got {self.kind!r}")
        if self.decay_bias is not None:
            if self.kind != "discrete":
                raise ConfigError("mamba.decay_bias applies to the discrete mixer only "
                                  "(mamba2 has dt_bias and A_log)")
            tb = self.decay_bias
            if (not isinstance(tb, (list, tuple)) or len(tb) != 2
                    or not all(isinstance(v, (int, float)) and v > 0 for v in tb) or tb[0] > tb[1]):
                raise ConfigError(f"mamba.decay_bias must be [tau_min, tau_max] with 0 < tau_min <= tau_max "
                                  f"(tokens), got {tb!r}")
            self.decay_bias = [float(v) for v in tb]
        if self.conv_kernel < 1:
            raise ConfigError("mamba.conv_kernel must be >= 1")


@dataclass
class ModelConfig:
    """One config for a Transformer, a pure Mamba model and a hybrid: they differ only in
    ``layer_pattern`` (one letter per layer, A = attention, M = Mamba)."""

    vocab_size: int = 32000
    d_model: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    head_dim: Optional[int] = None
    """Attention head size (default d_model // n_heads)."""
    d_ff: int = 1536
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    layer_pattern: Optional[str] = None
    """e.g. "AMAM"; default all attention ("A" * n_layers)."""
    mamba: MambaConfig = field(default_factory=MambaConfig)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.mamba, dict):  # ModelConfig(mamba={...}) from Python code
            self.mamba = from_dict(MambaConfig, self.mamba, "ModelConfig.mamba")
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = from_dict(RopeScaling, self.rope_scaling, "ModelConfig.rope_scaling")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.layer_pattern is None:
            self.layer_pattern = "A" * self.n_layers
        self.layer_pattern = self.layer_pattern.upper()
        if len(self.layer_pattern) != self.n_layers or set(self.layer_pattern) - {"A", "M"}:
            raise ConfigError(
                f"layer_pattern {self.layer_pattern!r} must have n_layers={self.n_layers} letters from 'A'/'M'"
            )
        m = self.mamba
        if m.n_heads is None:
            m.n_heads = self.n_heads
        if m.n_kv_heads is None:
            m.n_kv_heads = self.n_kv_heads if m.kind == "mamba2" else m.n_heads
        if m.head_dim is None:
            m.head_dim = self.head_dim
        if m.d_state is None:
            m.d_state = self.head_dim
        if m.n_heads % m.n_kv_heads:
            raise ConfigError(f"mamba.n_heads {m.n_heads} is not a multiple of mamba.n_kv_heads {m.n_kv_heads}")

    # --- derived -----------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """'llama', 'mamba' or 'hybrid' -- the name of the layer pattern."""
        if set(self.layer_pattern) == {"A"}:
            return "llama"
        if set(self.layer_pattern) == {"M"}:
            return "mamba"
        return "hybrid"

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, c in enumerate(self.layer_pattern) if c == "A"]

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
        return cls.from_dict(data)

    def to_file(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known: {sorted(MODEL_PRESETS)}")
        data = dict(MODEL_PRESETS[name])
        data.update(overrides)
        return cls.from_dict(data)

    def with_pattern(self, pattern: str) -> "ModelConfig":
        """A copy with another layer pattern (every other setting equal)."""
        d = self.to_dict()
        d["layer_pattern"] = pattern
        return ModelConfig.from_dict(d)


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # SmolLM2-135M's shape (random weights are fine for speed benchmarks).
    "smollm2-135m": dict(
        vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
        rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True,
    ),
    # Llama-3.2-1B's shape.
    "llama3.2-1b": dict(
        vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
        rope_theta=500000.0, max_seq_len=131072, tie_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    ),
    # A few-hundred-thousand-parameter model for tests.
    "tiny": dict(vocab_size=256, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=512),
    # The demo teacher's shape (src/thinkfast/assets/demo_teacher_recipe.yaml; its word-level vocabulary).
    "demo": dict(vocab_size=197, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384, max_seq_len=1024),
}
