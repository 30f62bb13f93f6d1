"""Typed, strict recipe configs for ``thinkfast distill``.

A recipe is one YAML file: the teacher, how the student starts, the data, shared training
settings, and a list of stages run in order (MOHAWK is three: matrix -> hidden -> kd). Each
stage may override any training setting. Unknown keys and wrongly typed values are errors;
``key.sub=value`` overrides from the command line are applied to the YAML before building
(``stages.0.train.steps=10`` or ``stages.kd.train.steps=10``).
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import ConfigError, from_dict, to_dict
from ..data.dataset import DataConfig
from ..data.jsonl import DataError, read_utf8

OBJECTIVES = ("lm", "matrix", "hidden", "kd")


@dataclass
class TrainConfig:
    """Settings of one training loop (shared by the stages unless a stage overrides them)."""

    steps: int = 100
    batch_size: int = 8
    """Global batch: sequences per optimizer step, summed over processes and accumulation."""
    micro_batch_size: Optional[int] = None
    """Sequences per forward pass per process (default: batch_size / processes)."""
    lr: float = 3e-4
    schedule: str = "wsd"
    """wsd (warmup-stable-decay) | cosine | constant"""
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    """wsd: the final fraction of steps over which the rate decays linearly to min_lr_ratio*lr."""
    min_lr_ratio: float = 0.1
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers by parameter name: glob patterns over the student's parameter
    names (``fnmatch``, e.g. ``{"*.conv1d.*": 10}``), each parameter taking the factor of the first
    pattern it matches (1 if none). The schedule's rate is multiplied by it, step by step. A pattern
    that matches none of the student's parameters is an error."""
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: float = 1.0
    """Max gradient norm (per layer in stages 1-2, which train layers independently); 0 = off."""
    bf16: bool = False
    """bf16 mixed precision: autocast for the forward passes under ddp / a single process, and
    FSDP2's MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) under fsdp. The optimizer's
    master weights stay fp32 either way."""
    activation_checkpointing: bool = False
    """Recompute each Block's activations in backward (torch.utils.checkpoint, non-reentrant)
    instead of keeping them: less activation memory for about one extra forward pass."""
    compile: bool = False
    """Compile the stage's training forward (student, teacher and loss) and its backward with
    ``torch.compile`` (inductor; on a CPU its C++ backend, which needs a C++ compiler). The same
    losses to float rounding, not bit for bit; evaluation stays eager. The first step pays the
    compilation (minutes on a small CPU), and inductor caches its output under its own cache
    directory (TORCHINDUCTOR_CACHE_DIR, default a folder in the system temp dir). A backend that
    fails to compile falls back to the eager step with a logged warning. On the demo's stages on
    one CPU thread it measured 1.25-1.35x once its recompiles had settled (docs/performance.md,
    "Training speed on CPU"); the demo leaves it off."""
    trim_padding: int = 16
    """Cut each micro-batch of right-padded rows (``data.pack: false``) to its longest row, rounded
    up to this many tokens, before the forward pass; 0 keeps every row at ``data.seq_len``. The
    cut positions hold only padding, so the losses are those of the full rows to float rounding
    (a causal model never looks right); packed rows are full and are never cut. Objectives whose
    loss counts padded positions (MOHAWK's matrix orientation compares whole T x T matrices) are
    never cut. On the demo's rows (prompt and chain, 199-430 of 512 tokens) it removes about a
    fifth of every step's work (docs/performance.md, "Training speed on CPU")."""
    teacher_dtype: str = "auto"
    """auto (bf16 on an accelerator when bf16 is on, else fp32) | fp32 | bf16: the dtype the
    frozen teacher is held in."""
    peak_tflops: Optional[float] = None
    """Peak dense TFLOP/s of one device, for MFU (default: looked up for known GPUs; on CPU MFU
    is reported as null unless this is given)."""
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    """Steps between held-out evaluations (0: only at the end)."""
    eval_batches: int = 16
    """Micro-batches of held-out data per evaluation, at most."""
    save_every: int = 100
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = 2
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "thinkfast"
    distributed: str = "ddp"
    """Under torchrun: ddp | fsdp (PyTorch's own FSDP2, fully_shard)."""
    device: str = "auto"
    threads: Optional[int] = None
    stop_after: Optional[int] = None
    """Testing aid: stop after this many steps of this invocation as if killed (no checkpoint)."""

    def __post_init__(self) -> None:
        if self.schedule not in ("wsd", "cosine", "constant"):
            raise ConfigError(f"train.schedule must be wsd, cosine or constant, got {self.schedule!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ConfigError(f"train.distributed must be ddp or fsdp, got {self.distributed!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("train.steps and train.batch_size must be >= 1")
        if not 0.0 <= self.decay_fraction <= 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("train.decay_fraction and train.min_lr_ratio must be in [0, 1]")
        if len(self.betas) != 2:
            raise ConfigError("train.betas must be two numbers")
        if self.teacher_dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.teacher_dtype must be auto, fp32 or bf16, got {self.teacher_dtype!r}")
        if self.trim_padding < 0:
            raise ConfigError(f"train.trim_padding must be >= 0 (0: no cut), got {self.trim_padding}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError("train.peak_tflops must be > 0")
        bad = {k: v for k, v in self.lr_scale.items() if not (v > 0 and math.isfinite(v))}
        if bad:
            raise ConfigError(f"train.lr_scale factors must be finite and > 0, got {bad}")


@dataclass
class LossWeights:
    """The weighted distillation loss every trainer shares: kl_weight * KL(T) + ce_weight * CE on
    the labels + hidden_weight * the MSE of every block output. ``LossConfig`` (distill's kd
    stages) and ``compress.config.CompressLoss`` are this with their own defaults and fields."""

    temperature: float = 1.0
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    """Weight of the MSE between student and teacher hidden states (every block output)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("loss.temperature must be > 0")
        if min(self.kl_weight, self.ce_weight, self.hidden_weight) < 0:
            raise ConfigError("loss weights must be >= 0")


@dataclass
class LossConfig(LossWeights):
    """End-to-end distillation loss (objective kd): kl_weight*KL + ce_weight*CE + hidden_weight*MSE."""

    kind: str = "forward"
    """KL direction: forward = KL(teacher || student), reverse = KL(student || teacher)."""
    chunk_size: int = 1024
    """Positions per chunk of the logit losses (objectives kd and lm): each chunk is projected
    through the LM heads, reduced and dropped (backward recomputes it), so no (B, T, V) logits are
    ever held. 0 = the reference path on full logits (same result, O(B*T*V) memory)."""
    long_window: int = 0
    """Long-context token weights (objectives kd and lm, scored by the teacher; ``token_weights``):
    each counted position's loss times min(exp(LSD), long_cap), LSD the teacher's log-probability
    of the label with the whole prefix minus with only the last long_window..2*long_window tokens.
    0 = off (every position weighs 1)."""
    long_cap: float = 5.0
    """The largest weight a position can get from ``long_window``."""

    def __post_init__(self) -> None:
        if self.kind not in ("forward", "reverse"):
            raise ConfigError(f"loss.kind must be forward or reverse, got {self.kind!r}")
        if not isinstance(self.long_window, int) or self.long_window < 0:
            raise ConfigError(f"loss.long_window must be a whole number of tokens >= 0, got {self.long_window!r}")
        if self.long_cap <= 0:
            raise ConfigError(f"loss.long_cap must be > 0, got {self.long_cap!r}")
        super().__post_init__()


@dataclass
class StageConfig:
    name: str = "train"
    objective: str = "kd"
    """lm (cross-entropy) | matrix (MOHAWK 1) | hidden (MOHAWK 2) | kd (end-to-end distillation)"""
    train: dict[str, Any] = field(default_factory=dict)
    """Overrides of the recipe's ``train`` settings for this stage."""
    loss: LossConfig = field(default_factory=LossConfig)
    trainable: str = "auto"
    """auto | all | mixers (Mamba mixers only) | mamba_layers (whole Mamba blocks) | no_mlp"""
    seq_len: Optional[int] = None
    """Override of data.seq_len (stage 1 materialises T x T matrices: keep it short)."""
    hybrid_schedule: list[list[Any]] = field(default_factory=list)
    """Stepwise hybrid schedule: [[step, keep], ...]; at each step the student keeps only
    ``keep`` attention layers (a fraction or list), the others becoming attention-initialised Mamba."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"stage {self.name!r}: objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.trainable not in ("auto", "all", "mixers", "mamba_layers", "no_mlp"):
            raise ConfigError(f"stage {self.name!r}: trainable {self.trainable!r} is not one of "
                              f"auto, all, mixers, mamba_layers, no_mlp")
        for entry in self.hybrid_schedule:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)):
                raise ConfigError(f"stage {self.name!r}: hybrid_schedule entries are [step, keep], got {entry!r}")
        if self.hybrid_schedule and self.objective not in ("kd", "lm"):
            raise ConfigError(f"stage {self.name!r}: hybrid_schedule needs objective kd or lm")


@dataclass
class StudentConfig:
    init: str = "teacher"
    """teacher (attention-initialised from the teacher) | new (fresh weights, for pretraining) |
    a path to a thinkfast model directory."""
    keep: Any = 0.0
    """Attention layers kept: a fraction (0 = pure Mamba), a list, a pattern "MAMA" or layers.json."""
    kind: str = "discrete"
    """discrete (Llamba) | mamba2 (MambaInLlama)"""
    seed: int = 0
    mixer_init: str = "attention"
    """attention (x <- V, B <- K, C <- Q, out <- O) | random (ablation: projections drawn at random)"""
    conv_init: str = "default"
    """The converted mixers' causal conv: default (PyTorch's init, seeded) | identity (each channel
    passes its current token: the mixer starts as exactly the linear attention it was read from) |
    shifted (the default, with each B channel taking its C channel's filter one token later: a
    key holds what the query held a step earlier, an induction head's shift)."""
    mamba: dict[str, Any] = field(default_factory=dict)
    """MambaConfig overrides (e.g. chunk_size)."""
    model: Any = None
    """init=new: a ModelConfig mapping, or a preset name ("tiny")."""

    def __post_init__(self) -> None:
        if self.mixer_init not in ("attention", "random"):
            raise ConfigError(f"student.mixer_init must be attention or random, got {self.mixer_init!r}")
        if self.conv_init not in ("default", "identity", "shifted"):
            raise ConfigError(f"student.conv_init must be default, identity or shifted, got {self.conv_init!r}")
        if self.kind not in ("discrete", "mamba2"):
            raise ConfigError(f"student.kind must be discrete or mamba2, got {self.kind!r}")


@dataclass
class DistillConfig:
    out_dir: str = "runs/distill"
    teacher: Optional[str] = None
    """A thinkfast model directory (``thinkfast convert`` or an earlier pretraining run)."""
    tokenizer: Optional[str] = None
    """Directory of the tokenizer (default: the teacher's, else the student's init directory)."""
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, StageConfig) else from_dict(StageConfig, s, where=f"stages[{i}]")
                       for i, s in enumerate(self.stages)]
        if not self.stages:
            raise ConfigError("a recipe needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique, got {names}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# --- building ----------------------------------------------------------------------------------
# Types, unknown keys and values are checked by the one strict loader every config file goes
# through (``thinkfast.config.from_dict``); what is left here is recipe-specific: the stages'
# train overrides are merged into the shared settings and checked the same way.
def build_config(data: dict[str, Any], source: str | Path = "") -> DistillConfig:
    """A DistillConfig from a recipe mapping; ``source`` (the recipe file) starts every error."""
    cfg = from_dict(DistillConfig, data, source=source, where="config")
    for i in range(len(cfg.stages)):
        resolve_train(cfg, i, source)  # stage overrides must be valid too
    return cfg


def resolve_train(cfg: DistillConfig, index: int, source: str | Path = "") -> TrainConfig:
    """The recipe's train settings with stage ``index``'s overrides applied."""
    stage = cfg.stages[index]
    merged = {**to_dict(cfg.train), **stage.train}
    return from_dict(TrainConfig, merged, source=source, where=f"stages[{index}] ({stage.name}).train")


def recipe_source(path: str | Path, overrides: Optional[list[str]]) -> str:
    """How errors name a recipe: its file, and the command-line overrides when a value may come
    from one of them rather than from the file."""
    return f"{path} (with overrides {' '.join(overrides)})" if overrides else str(path)


# --- files and overrides ------------------------------------------------------------------------
def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, k, ".".join(keys[:i + 1]))]
            continue
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {dotted}: {'.'.join(keys[:i + 1])} is a value, not a section")
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted)] = value
    else:
        node[last] = value


def _list_index(items: list, key: str, where: str) -> int:
    if key.isdigit():
        if int(key) >= len(items):
            raise ConfigError(f"override {where}: index {key} out of range ({len(items)} entries)")
        return int(key)
    for i, item in enumerate(items):  # stages by name
        if isinstance(item, dict) and item.get("name") == key:
            return i
    raise ConfigError(f"override {where}: no entry named {key!r}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML: 3, 0.5, true, [1, 3], null)."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value)
    return data


def read_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """A YAML recipe as a mapping, with ``key=value`` overrides applied (clear errors on bad files)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(read_utf8(path)) or {}
    except DataError as e:  # unreadable, or not UTF-8 (named by line)
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping at the top level")
    return apply_overrides(data, overrides or [])


def load_config(path: str | Path, overrides: Optional[list[str]] = None) -> DistillConfig:
    return build_config(read_recipe(path, overrides), recipe_source(path, overrides))


def config_to_yaml(cfg: DistillConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
