"""Stopping rules for adaptive sampling: stop drawing a problem's samples once its vote is settled.

Each rule is a pure function of the answers drawn so far (in order, ``None`` for a sample with no
answer) and returns whether to stop. They are used by rounds: draw a window of samples for every
open problem, apply the rule, keep sampling only the problems still open.

- ``esc_should_stop``: Early-Stopping Self-Consistency (Li et al., 2024, "Escape Sky-high Cost"):
  samples come in windows of ``window``; stop after the first window whose answers all agree.
- ``beta_should_stop``: Adaptive-Consistency's Beta criterion (Aggarwal et al., 2023, "Let's
  Sample Step by Step"): with v1 and v2 votes for the two leading answers, stop when
  P(p1 > p2) under a Beta(v1 + 1, v2 + 1) posterior on p1 / (p1 + p2) exceeds ``confidence``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Optional, Sequence


def esc_should_stop(answers: Sequence[Optional[Hashable]], window: int = 8) -> bool:
    """True once the last complete window of ``window`` answers is one answer, not None."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    n = len(answers) // window * window
    if n == 0:
        return False
    last = answers[n - window:n]
    return last[0] is not None and all(a == last[0] for a in last)


def beta_majority_probability(v1: int, v2: int) -> float:
    """P(X > 1/2) for X ~ Beta(v1 + 1, v2 + 1): the posterior probability that the leading answer
    is more likely than the runner-up. Exact for integer votes: with a = v1 + 1, b = v2 + 1,
    P(X <= x) = P(Binomial(a + b - 1, x) >= a), so P(X > 1/2) = P(Binomial(a + b - 1, 1/2) < a)."""
    a, b = v1 + 1, v2 + 1
    n = a + b - 1
    return sum(math.comb(n, j) for j in range(a)) / 2 ** n


def beta_should_stop(answers: Sequence[Optional[Hashable]], confidence: float = 0.95) -> bool:
    """True when the leading answer beats the runner-up with posterior probability > confidence."""
    votes = Counter(a for a in answers if a is not None).most_common(2)
    if not votes:
        return False
    v1 = votes[0][1]
    v2 = votes[1][1] if len(votes) > 1 else 0
    return beta_majority_probability(v1, v2) > confidence


# --- rules with their parameters, applied by rounds ----------------------------------------------

RULES = ("esc", "beta")


@dataclass(frozen=True)
class AdaptiveRule:
    """A stopping rule and its parameters. Samples are drawn in rounds of ``window`` per open
    problem; after each round the rule is applied to the answers drawn so far, and a problem
    closes when it says stop or when it has ``max_n`` samples (the last round draws what is
    left up to ``max_n``). ``threshold`` is the beta rule's confidence (unused by esc)."""

    rule: str
    window: int = 8
    max_n: int = 64
    threshold: float = 0.95

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown adaptive rule {self.rule!r}; choose one of {', '.join(RULES)}")
        if self.window < 1 or self.max_n < 1:
            raise ValueError(f"window and max_n must be at least 1 (window={self.window}, max_n={self.max_n})")
        if not 0.5 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0.5, 1), not {self.threshold}")

    @property
    def method(self) -> str:
        """The method name in ``thinkfast evaluate``'s output: ``adaptive-esc`` or ``adaptive-beta``."""
        return f"adaptive-{self.rule}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.rule == "esc":
            del d["threshold"]  # esc has no threshold: two esc runs differing in it are one run
        return d

    def should_stop(self, answers: Sequence[Hashable]) -> bool:
        """The rule alone on the answers drawn so far (not the ``max_n`` cap)."""
        if self.rule == "esc":
            return esc_should_stop(answers, self.window)
        return beta_should_stop(answers, self.threshold)

    def checkpoints(self) -> list[int]:
        """Samples drawn after each round: window, 2 window, ..., max_n."""
        return [min(m, self.max_n) for m in range(self.window, self.max_n + self.window, self.window)]

    def is_open(self, answers: Sequence[Hashable]) -> bool:
        """Whether a problem with these answers drawn (by whole rounds) gets another round."""
        return len(answers) < self.max_n and (len(answers) == 0 or not self.should_stop(answers))

    def next_window(self, drawn: int) -> int:
        """Samples the next round draws for an open problem with ``drawn`` samples."""
        return min(self.window, self.max_n - drawn)

    def stop_after(self, answers: Sequence[Hashable]) -> int:
        """Samples a problem draws before it closes, when its samples in index order have these
        answers: the first checkpoint where the rule stops, else ``max_n`` (or all of
        ``answers`` when there are fewer, as in a run cut short)."""
        for m in self.checkpoints():
            if m >= len(answers) or self.should_stop(answers[:m]):
                return min(m, len(answers))
        return min(self.max_n, len(answers))
