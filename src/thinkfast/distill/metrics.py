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
