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
from typing import Optional, Sequence


def esc_should_stop(answers: Sequence[Optional[str]], window: int = 8) -> bool:
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


def beta_should_stop(answers: Sequence[Optional[str]], confidence: float = 0.95) -> bool:
    """True when the leading answer beats the runner-up with posterior probability > confidence."""
    votes = Counter(a for a in answers if a is not None).most_common(2)
    if not votes:
        return False
    v1 = votes[0][1]
    v2 = votes[1][1] if len(votes) > 1 else 0
    return beta_majority_probability(v1, v2) > confidence
