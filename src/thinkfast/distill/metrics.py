"""How close a student is to its teacher on held-out text: next-token agreement and KL.

agreement = the fraction of counted positions where argmax student == argmax teacher;
kl = mean KL(teacher || student) per counted position (nats); ce = each model's cross-entropy on
the actual next tokens. Counted positions are those with a label (see ``losses.token_mask``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..data.packing import TokenBlocks
from .losses import IGNORE, kl_per_token


@torch.no_grad()
def compare_to_teacher(student, teacher, blocks: TokenBlocks, batch_size: int = 8,
                       max_blocks: Optional[int] = None) -> dict[str, float]:
    """Agreement, KL and both cross-entropies over ``blocks`` (the first ``max_blocks``)."""
    n = len(blocks) if max_blocks is None else min(len(blocks), max_blocks)
    agree = kl = s_ce = t_ce = 0.0
    count = 0
    dev = student.device
    for i in range(0, n, batch_size):
        b = blocks.batch(list(range(i, min(n, i + batch_size))))
        ids, labels = b["input_ids"].to(dev), b["labels"].to(dev)
        m = labels != IGNORE
        s = student(ids).logits.float()
        t = teacher(ids).logits.float()
        agree += float((s.argmax(-1) == t.argmax(-1))[m].sum())
        kl += float(kl_per_token(s, t)[m].sum())
        tgt = labels.clamp(min=0)
        s_ce += float(F.cross_entropy(s.flatten(0, 1), tgt.flatten(), reduction="none").view_as(tgt)[m].sum())
        t_ce += float(F.cross_entropy(t.flatten(0, 1), tgt.flatten(), reduction="none").view_as(tgt)[m].sum())
        count += int(m.sum())
    c = max(count, 1)
    return {"agreement": agree / c, "kl": kl / c, "student_ce": s_ce / c, "teacher_ce": t_ce / c, "tokens": count}


# --- throughput ------------------------------------------------------------------------------------
# Peak dense tensor-core TFLOP/s of one device: (bf16, fp32), from the vendors' datasheets
# (no sparsity). Matched against torch.cuda.get_device_name() by the first key it contains.
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.4, 66.9),
    "H100 PCIe": (756.0, 51.2),
    "H100": (989.4, 66.9),
    "A100": (312.0, 19.5),
    "L40S": (362.05, 91.6),
}


def peak_tflops(device_name: Optional[str], bf16: bool, override: Optional[float] = None) -> Optional[float]:
    """The peak TFLOP/s MFU is measured against: ``override`` when given, else the table entry for
    ``device_name`` (None, e.g. a CPU or an unknown GPU: MFU is then reported as null)."""
    if override is not None:
        return float(override)
    if not device_name:
        return None
    for key, (half, single) in PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return half if bf16 else single
    return None


def throughput(tokens: int, seconds: float, steps: int, world_size: int, flops_per_token: float,
               peak: Optional[float]) -> dict[str, Optional[float]]:
    """Per-step time, tokens/s (all devices and per device) and MFU of ``steps`` optimizer steps
    that processed ``tokens`` tokens in total over ``world_size`` devices in ``seconds`` of
    training time. MFU = flops_per_token x tokens/s per device / (peak TFLOP/s x 1e12)."""
    seconds = max(seconds, 1e-12)
    per_device = tokens / seconds / max(world_size, 1)
    return {
        "step_time_s": seconds / max(steps, 1),
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_device": per_device,
        "mfu": flops_per_token * per_device / (peak * 1e12) if peak else None,
    }


class TrainClock:
    """Training time only: ``with clock.train():`` around each optimizer step; evaluation and
    checkpoints run outside it and are not counted. ``window()`` returns (seconds, steps, tokens)
    since the previous window (the log interval) and starts the next one. ``now`` is injectable."""

    def __init__(self, now=None):
        import time

        self.now = now or time.perf_counter
        self.total = 0.0
        self._win_s, self._win_steps, self._win_tokens = 0.0, 0, 0

    def train(self):
        clock = self

        class _Span:
            def __enter__(self):
                self.t0 = clock.now()

            def __exit__(self, *exc):
                dt = clock.now() - self.t0
                clock.total += dt
                clock._win_s += dt
                return False

        return _Span()

    def count(self, steps: int, tokens: int) -> None:
        self._win_steps += steps
        self._win_tokens += tokens

    def window(self) -> tuple[float, int, int]:
        out = (self._win_s, self._win_steps, self._win_tokens)
        self._win_s, self._win_steps, self._win_tokens = 0.0, 0, 0
        return out
