"""The one seed derivation of every sampler: (seed, prompt tokens) -> an integer.

The engine keys each sample's counter-based noise on ``derive_seed(seed + j, prompt, bits=32)``;
the hf backend seeds torch's RNG from ``derive_seed(seed, prompts of the call)`` and vLLM each
request from ``derive_seed(seed, prompt)``. The same problem gets the same seed in any run.
"""

from __future__ import annotations

import hashlib
from typing import Sequence, Union


def derive_seed(seed: int, prompt_ids: Union[Sequence[int], Sequence[Sequence[int]]], bits: int = 31) -> int:
    """A ``bits``-bit integer hashed from ``seed`` and the token ids of a prompt (or of several)."""
    toks = [p if isinstance(p, int) else list(p) for p in prompt_ids]
    h = hashlib.blake2b(repr((int(seed), toks)).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & ((1 << bits) - 1)
