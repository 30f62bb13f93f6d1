"""Typed, strict configs for ``thinkfast compress`` (one YAML per recipe, see configs/compress/).

Unknown keys and wrongly typed values are errors; ``key.sub=value`` overrides from the command line
are applied to the YAML before building, as for ``thinkfast distill``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import ConfigError, from_dict, to_dict
from ..data.dataset import DataConfig
from ..distill.config import LossWeights, TrainConfig, read_recipe, recipe_source
from .init import INITS


@dataclass
class CompressLoss(LossWeights):
    """kl_weight * KL(teacher || student, T) + ce_weight * CE + hidden_weight * hidden MSE: the
    shared ``LossWeights`` with every term on by default (the KL is always forward, on full logits)."""

    ce_weight: float = 1.0
    hidden_weight: float = 1.0
    """MSE between each student block output (d) and the teacher's (D) mapped by the embedding
    projection, treated as a constant target."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_weight + self.ce_weight + self.hidden_weight == 0:
            raise ConfigError("at least one loss weight must be > 0")


@dataclass
class CompressConfig:
    out_dir: str = "runs/compress"
    teacher: Optional[str] = None
    """A thinkfast model directory (all-attention)."""
    tokenizer: Optional[str] = None
    """Directory of the tokenizer (default: the teacher's)."""
    d_s: int = 0
    """Student hidden width, 1 <= d_s < the teacher's d_model."""
    init: str = "red"
    """red (channel selection by Minitron importance) | gaussian (Low-Rank Clone) | orthogonal"""
    seed: int = 0
    """Seed of the random projections."""
    calibration_sequences: int = 64
    """Training blocks (the first ones, in file order) used to score channels for init=red."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: CompressLoss = field(default_factory=CompressLoss)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {self.init!r}")
        if self.calibration_sequences < 1:
            raise ConfigError("calibration_sequences must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def build_config(data: dict[str, Any], source: str | Path = "") -> CompressConfig:
    """A CompressConfig from a recipe mapping, through the strict loader every config file uses."""
    return from_dict(CompressConfig, data, source=source, where="config")


def load_config(path: str | Path, overrides: Optional[list[str]] = None) -> CompressConfig:
    return build_config(read_recipe(path, overrides), recipe_source(path, overrides))
