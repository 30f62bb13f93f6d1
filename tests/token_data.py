"""Learnable token-id data for the training tests (distill, compress, select): one shared writer.

A module with a unique name (not conftest), importable from every test directory because
``tests/`` holds the root conftest and so is on ``sys.path``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional


def write_token_data(path: Path, vocab: int, n: int = 48, seed: int = 0, stride: int = 1, length: int = 9,
                     eos: Optional[int] = 2) -> Path:
    """``n`` rows of a prompt [1, a] and a response counting up from a by ``stride`` (``length``
    tokens, then ``eos`` when given), over ids 4..vocab-1."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a = rng.randrange(4, vocab - 4)
            resp = [(a + stride * k) % (vocab - 4) + 4 for k in range(length)]
            f.write(json.dumps({"prompt_ids": [1, a], "response_ids": resp + ([eos] if eos is not None else [])}) + "\n")
    return path
