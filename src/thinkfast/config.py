"""Typed, strict configs.

Every config is a dataclass. ``from_dict`` rejects unknown keys (a typo in a recipe is an
error, never a silently ignored setting) and rebuilds nested dataclasses. No I/O happens
here except in the explicit ``from_file``/``to_file`` helpers.

Named model sizes live in ``MODEL_PRESETS`` and are reached with ``ModelConfig.from_name``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .runtime import UserError


class ConfigError(UserError, ValueError):
    """A config that cannot be built: unknown key, bad value, wrong type.

    A ``UserError`` (the CLI prints it as one line) and a ``ValueError`` (what code that builds
    configs in Python expects)."""


# --- the strict loader ------------------------------------------------------------------------
# Every config file (a checkpoint's config.json, a distill or compress recipe, the synthetic
# task's settings) goes through ``from_dict``: it is the one place where a value read from a file
# is checked against the dataclass annotation before ``__post_init__`` sees it, so a "128" where
# an int belongs is named with its key and file instead of surfacing as a torch TypeError.

_UNION_TYPES = (typing.Union, getattr(types, "UnionType", typing.Union))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in _UNION_TYPES and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _describe(tp: Any) -> str:
    """A type annotation in the words of an error message."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in _UNION_TYPES:
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        name = origin.__name__
        return f"{name}[{', '.join(_describe(a) for a in inner)}]" if inner else name
    if origin is dict:
        return "mapping"
    if _is_dataclass_type(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _got(value: Any, tp: Any = None) -> str:
    hint = ""
    if isinstance(value, str) and tp in (int, float):
        try:
            float(value)
            hint = "; write the number without quotes"
            if tp is float and "e" in value.lower() and "." not in value:
                hint += " (YAML reads 1e-3 as a string: write 1.0e-3)"
        except ValueError:
            pass
    return f"got {value!r} ({type(value).__name__}){hint}"


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against annotation ``tp`` (ints widened to float, lists to tuples,
    mappings built into nested dataclasses); a mismatch is a ConfigError naming ``where``."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in _UNION_TYPES:
        if value is None and type(None) in args:
            return None
        errors = []
        for alt in (a for a in args if a is not type(None)):
            try:
                return _convert(value, alt, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # Optional[X]: X's own message is the precise one
            raise errors[0]
        raise ConfigError(f"{where}: expected {_describe(tp)}, {_got(value)}")
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):  # Literal[1] is not True
            return value
        raise ConfigError(f"{where}: expected {_describe(tp)}, {_got(value)}")
    if _is_dataclass_type(tp):
        return _build(tp, value, where)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_describe(tp)}, {_got(value)}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):  # JSON and YAML have lists, no tuples
            raise ConfigError(f"{where}: expected {_describe(tp)}, {_got(value)}")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} entries ({_describe(tp)}), {_got(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, {_got(value)}")
        if len(args) == 2:
            return {_convert(k, args[0], f"{where} (key {k!r})"): _convert(v, args[1], f"{where}.{k}")
                    for k, v in value.items()}
        return value
    # bool is a subclass of int in Python, but `true` for a layer count is a mistake, as is 1 for
    # a switch: neither is accepted as the other.
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value  # an annotation this loader does not know: leave it to __post_init__
    raise ConfigError(f"{where}: expected {_describe(tp)}, {_got(value, tp)}")


def _build(cls: type, data: Any, where: str) -> Any:
    name = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, {_got(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{name}: unknown config key(s) {unknown}; known keys: {sorted(fields)}")
    prefix = f"{where}." if where else ""
    kwargs = {key: _convert(value, hints[key], f"{prefix}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{name}: {e}") from None


def from_dict(cls: type, data: Any, source: str | os.PathLike = "", where: str = "") -> Any:
    """Build dataclass ``cls`` from plain data read from a file, strictly and recursively.

    Unknown keys, values of the wrong type and values ``__post_init__`` rejects are all a
    ``ConfigError`` that starts with ``source`` (the file, when there is one) and names the key
    by its dotted path under ``where`` (e.g. ``model.mamba.kind``). Types follow the annotations:
    bool is not int and int is not bool, a string is never a number, an int is accepted where a
    float is expected (and becomes one), a list where a tuple is, a mapping where a dataclass is;
    Optional, Union, Literal, list[...], tuple[...] and dict[...] (keys and values checked) are understood."""
    try:
        return _build(cls, data, where)
    except ConfigError as e:
        if source:
            raise ConfigError(f"{source}: {e}") from None
        raise


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def json_error_detail(e: json.JSONDecodeError) -> str:
    """``e``'s message and column, worded for a sentence: json's own messages sometimes end in
    "at" ("Unterminated string starting at"), which a plain "... at column N" would double."""
    msg = e.msg if e.msg.endswith(" at") else f"{e.msg} at"
    return f"{msg} column {e.colno}"


def read_json_file(path: str | os.PathLike, error: Optional[type[Exception]] = None, missing: str = "") -> Any:
    """The JSON document in ``path``. A file that cannot be read, is not UTF-8 or is not valid
    JSON raises ``error`` (default ``ConfigError``) with a message naming the file and, for bad
    JSON, the line; ``missing`` says what a missing file means (default: it cannot be read)."""
    error = error or ConfigError
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise error(f"{path} not found: {missing}" if missing else f"cannot read {path}: {e.strerror or e}") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}: not valid JSON ({json_error_detail(e)})") from None


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary directory beside ``out`` to build it in; when the block ends without an
    error, it becomes ``out``. An existing ``out`` is moved aside only at that moment and removed
    once the new one is in place (put back if the rename fails); after an error the temporary
    directory is removed and ``out`` is as it was. So ``out`` is never half-written."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        install_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own; gone already when it became ``out``


def install_directory(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Rename the finished directory ``tmp`` to ``out`` (on the same file system). An existing
    ``out`` is moved aside first, put back if the rename fails, and removed once the new one is in
    place (``atomic_directory``'s last step)."""
    import shutil

    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)  # left by a process of the same id that died here
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: never half-written."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail only after the work that produced ``text``
        raise UserError(f"{path} is a directory: cannot write a file in its place")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write {path}: a file stands where a directory of its path belongs") from None
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


def _require_positive(obj: Any, prefix: str, names: tuple[str, ...]) -> None:
    """Sizes and scales that must be > 0 (None means "use the default" and is skipped)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{prefix}{name} must be > 0, got {value!r}")


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
        _require_positive(self, "rope_scaling.", ("factor", "original_max_position_embeddings"))


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
        _require_positive(self, "mamba.", ("n_heads", "n_kv_heads", "head_dim", "d_state", "chunk_size",
                                           "dt_min", "dt_max", "A_init_min", "A_init_max"))
        if self.dt_min > self.dt_max or self.A_init_min > self.A_init_max:
            raise ConfigError(f"mamba needs dt_min <= dt_max and A_init_min <= A_init_max, got dt "
                              f"[{self.dt_min}, {self.dt_max}], A [{self.A_init_min}, {self.A_init_max}]")


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
            self.mamba = from_dict(MambaConfig, self.mamba, where="ModelConfig.mamba")
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = from_dict(RopeScaling, self.rope_scaling, where="ModelConfig.rope_scaling")
        _require_positive(self, "", ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                                     "d_ff", "max_seq_len", "norm_eps", "rope_theta"))
        if self.init_std < 0:
            raise ConfigError(f"init_std must be >= 0, got {self.init_std!r}")
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
    def from_dict(cls, data: dict[str, Any], source: str | os.PathLike = "", where: str = "") -> "ModelConfig":
        """Strictly (see the module's ``from_dict``); ``source`` names the file in errors."""
        return from_dict(cls, data, source=source, where=where)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ModelConfig":
        return cls.from_dict(read_json_file(path), source=path)

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
