"""Learning-rate schedules as pure functions of the step (so a resumed run needs no scheduler
object: the step *is* the scheduler state).

wsd: linear warmup, a constant stage, then a linear decay to ``min_lr_ratio`` over the last
``decay_fraction`` of the steps (warmup-stable-decay, Hu et al. 2024, MiniCPM).
cosine: linear warmup, then half a cosine from 1 to ``min_lr_ratio``.
"""

from __future__ import annotations

import math


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
