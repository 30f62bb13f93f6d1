"""Loading a state dict into a ``LanguageModel`` strictly: the one check every reader uses.

It sits below ``checkpoint`` and ``convert`` (which both read weights), so neither imports the
other for it.
"""

from __future__ import annotations

import torch

from ..runtime import UserError
from .lm import LanguageModel


class CheckpointError(UserError):
    """A checkpoint that does not fit the model: missing/unexpected keys, shapes, corrupt file."""


def load_state_dict_strict(model: LanguageModel, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into ``model``; one error naming every missing, unexpected or misshapen key."""
    own = model.state_dict()
    optional = {"lm_head.weight"} if model.config.tie_embeddings else set()
    missing = sorted(k for k in own if k not in sd and k not in optional)
    unexpected = sorted(k for k in sd if k not in own)
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in sd if k in own and sd[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"mismatched shapes [{'; '.join(shapes)}]")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)
    model.tie_weights()
