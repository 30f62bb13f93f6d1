"""Time budgets: seconds per problem for k samples, and the Pareto front across models.

Cost model. Every samples row carries the timings of the engine call that produced it
(``prefill_s``, ``decode_s`` for the whole call, which held ``batch_problems`` problems and
``batch_rows`` sequences). Within a call the prompt is prefilled once per problem and decoding is
shared by all rows, so at the batch size actually used

    seconds_per_problem(k) = prefill_s / batch_problems + k * decode_s / batch_rows

averaged over calls. Because each row repeats its call's timings, summing ``t / batch_rows``
over rows counts each call exactly once, with no batch id needed. The figure is throughput at
that batch size: it assumes the batch stays as full when fewer samples are drawn per problem
(more problems share it), which is how a serving system runs a fixed budget.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional, Sequence

TIMING_FIELDS = ("prefill_s", "decode_s", "batch_problems", "batch_rows")


@dataclass
class RunTiming:
    prefill_s_per_problem: float
    decode_s_per_sample: float
    problems: int
    samples: int
    calls: float
    """Engine calls the rows came from (sum of 1/batch_rows over rows)."""
    mean_batch_rows: float
    new_tokens_per_sample: Optional[float]
    hardware: str

    def seconds_per_problem(self, k: int) -> float:
        return self.prefill_s_per_problem + k * self.decode_s_per_sample

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def largest_k_within(seconds: float, timing: RunTiming, n: int) -> int:
    """The most samples (at most ``n``) whose seconds per problem fit in ``seconds``; 0 if none."""
    if timing.decode_s_per_sample <= 0:
        return n if timing.prefill_s_per_problem <= seconds else 0
    k = int((seconds - timing.prefill_s_per_problem) / timing.decode_s_per_sample)
    k = max(0, min(n, k))
    while k > 0 and timing.seconds_per_problem(k) > seconds:  # float rounding at the boundary
        k -= 1
    while k < n and timing.seconds_per_problem(k + 1) <= seconds:
        k += 1
    return k


def hardware_string(device: Any = None) -> str:
    """What the timings were measured on: the GPU name, or the CPU and its thread count."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


def timing_from_rows(rows: Sequence[dict[str, Any]]) -> Optional[RunTiming]:
    """The cost model of one run, or None when its rows carry no timings."""
    timed = [r for r in rows if all(r.get(f) is not None for f in TIMING_FIELDS)]
    if not timed or len(timed) < len(rows):
        return None
    prefill = sum(r["prefill_s"] / r["batch_rows"] for r in timed)
    decode = sum(r["decode_s"] / r["batch_rows"] for r in timed)
    calls = sum(1.0 / r["batch_rows"] for r in timed)
    problems = len({r.get("problem_id") for r in timed})
    tokens = [r["num_tokens"] for r in timed if r.get("num_tokens") is not None]
    hardware = sorted({str(r.get("hardware", "unknown")) for r in timed})
    return RunTiming(
        prefill_s_per_problem=prefill / problems,
        decode_s_per_sample=decode / len(timed),
        problems=problems,
        samples=len(timed),
        calls=calls,
        mean_batch_rows=len(timed) / calls,
        new_tokens_per_sample=sum(tokens) / len(tokens) if tokens else None,
        hardware=" | ".join(hardware),
    )


# --- Pareto front --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One (model, selection method, k) operating point."""

    model: str
    method: str
    k: int
    seconds: float
    value: float
    lo: float = 0.0
    hi: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """Points no other point beats on both axes (fewer seconds, higher value), cheapest first.

    Ties are broken deterministically: among equal (seconds, value) the first by (model,
    method, k) is kept; a point costing more must be strictly better to join the front.
    """
    ordered = sorted(points, key=lambda p: (p.seconds, -p.value, p.model, p.method, p.k))
    front: list[Point] = []
    for p in ordered:
        if not front or p.value > front[-1].value:
            front.append(p)
    return front


def best_at_budget(points: Iterable[Point], seconds: float) -> Optional[Point]:
    """The highest-value point that fits in ``seconds`` per problem (None if none fits)."""
    front = [p for p in pareto_front(points) if p.seconds <= seconds]
    return front[-1] if front else None
