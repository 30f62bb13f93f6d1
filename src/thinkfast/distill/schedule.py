"""Learning-rate schedules as pure functions of the step (so a resumed run needs no scheduler
object: the step *is* the scheduler state).

wsd: linear warmup, a constant stage, then a linear decay to ``min_lr_ratio`` over the last
``decay_fraction`` of the steps (warmup-stable-decay, Hu et al. 2024, MiniCPM).
cosine: linear warmup, then half a cosine from 1 to ``min_lr_ratio``.
"""

from __future__ import annotations

import math
from typing import Any


def lr_factor(step: int, total: int, schedule: str = "wsd", warmup: int = 0, decay_fraction: float = 0.2,
              min_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = round(decay_fraction * total)
        start = total - decay_steps
        if step < start or decay_steps == 0:
            return 1.0
        progress = (step - start + 1) / decay_steps
        return 1.0 - (1.0 - min_ratio) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


def param_groups(params: list, named: dict[str, Any], weight_decay: float,
                 lr_scale: dict[str, float]) -> list[dict[str, Any]]:
    """AdamW's parameter groups: weight decay on matrices only (``ndim >= 2``), and each
    parameter's learning-rate multiplier (``"lr_scale"``, by which the trainer multiplies the
    schedule's rate) from the first glob pattern of ``lr_scale`` that its name in ``named``
    matches (1 if none). A pattern that matches no name in ``named`` is a ConfigError (a typo
    would otherwise train at the plain rate unnoticed). Empty groups are left out."""
    from fnmatch import fnmatchcase

    from ..config import ConfigError

    unused = [pat for pat in lr_scale if not any(fnmatchcase(n, pat) for n in named)]
    if unused:
        sample = ", ".join(list(named)[:6])
        raise ConfigError(f"train.lr_scale: pattern(s) {unused} match no parameter of the student "
                          f"(names look like {sample}, ...)")
    name_of = {id(p): n for n, p in named.items()}
    groups: dict[tuple[bool, float], list] = {}
    for p in params:
        name = name_of.get(id(p), "")
        scale = next((float(f) for pat, f in lr_scale.items() if fnmatchcase(name, pat)), 1.0)
        groups.setdefault((p.ndim >= 2, scale), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
