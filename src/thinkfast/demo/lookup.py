"""Has a model learned the look-up of sentence k in the question? A teacher-forced probe.

Each line of a synthetic chain of thought restates sentence k of the question ("Third Vic has 28
more apples than Tom."). The name after the marker ("Third") can only come from the question, so
whether a model predicts it, with the reference chain fed in, probes the look-up directly: the
step a small model learns last, and the one a student that does not distil is missing
(docs/demo-study.md, "When a student does not distil"). The number the restated sentence copies
("28") is a look-up too, its second digit keyed by the first; the probe reads its digits as well.
One forward pass per problem.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..data.synthetic import MARKERS
from .config import TASK_FORMAT

PROBED = MARKERS[1:]
"""Every marker but "First", whose sentence is the question's first line."""


def question_names(question: str) -> list[str]:
    """The name after each marker at the start of a question line, in order."""
    names = []
    for line in question.split("\n"):
        words = line.split()
        if len(words) > 1 and words[0] in MARKERS:
            names.append(words[1])
    return names


@torch.inference_mode()
def teacher_forced(model, tok, question: str, chain: str) -> tuple[list[int], list[int]]:
    """The chain's token ids in the demo's training layout (``TASK_FORMAT``) and the model's argmax
    prediction of each, with the question and the chain before it fed in."""
    p = tok(TASK_FORMAT["prompt_template"].format(question=question), add_special_tokens=False)["input_ids"]
    a = tok(TASK_FORMAT["response_template"].format(answer=chain), add_special_tokens=False)["input_ids"]
    logits = model(torch.tensor([p + a], device=next(model.parameters()).device)).logits[0]  # (T, V)
    return a, logits[len(p) - 1:-1].argmax(-1).tolist()  # pred[i] predicts a[i]


def _restated_operand(tok, a: list[int], start: int) -> list[int]:
    """Positions in ``a`` of the first number of the sentence restated from ``start`` (the digits of
    its operand: " 5", "6"), up to the sentence's full stop; [] when it has none."""
    digits: list[int] = []
    for i in range(start, len(a)):
        piece = tok.decode([a[i]])
        if piece.strip().isdigit():
            digits.append(i)
        elif digits or "." in piece or "\n" in piece:
            break
    return digits


def lookup_probes(model, tok, problems: Iterable[tuple[str, str]]) -> tuple[dict, dict]:
    """(names, operands) over ``problems`` (question, chain), teacher-forced (``teacher_forced``),
    one forward pass per problem.

    names ``{marker: {"right", "total", "other_sentence", "nobody"}}``: for each marker after the
    first at which a chain line starts, whether the argmax after it is the reference's name; a
    wrong one names a person of another sentence of the same question (a look-up that found the
    wrong line) or nobody in it (no look-up). Markers never met are left out.

    operands ``{"digit 1": {"right", "total"}, "digit 2": ...}``: the digits of the number each
    restated sentence copies from the question, from sentence 2 on, by place in the number (the
    second digit needs a look-up keyed by the first, the step that failing students miss)."""
    names_out = {m: {"right": 0, "total": 0, "other_sentence": 0, "nobody": 0} for m in PROBED}
    ops: dict[str, dict[str, int]] = {}
    for question, chain in problems:
        a, pred = teacher_forced(model, tok, question, chain)
        names = set(question_names(question))
        for i in range(len(a) - 1):
            cell = names_out.get(tok.decode([a[i]]).strip())
            if cell is None:
                continue
            cell["total"] += 1
            if pred[i + 1] == a[i + 1]:
                cell["right"] += 1
            elif tok.decode([pred[i + 1]]).strip() in names:
                cell["other_sentence"] += 1
            else:
                cell["nobody"] += 1
            for place, j in enumerate(_restated_operand(tok, a, i + 1), start=1):
                c = ops.setdefault(f"digit {place}", {"right": 0, "total": 0})
                c["total"] += 1
                c["right"] += int(pred[j] == a[j])
    return {m: v for m, v in names_out.items() if v["total"]}, dict(sorted(ops.items()))


def lookup_probe(model, tok, problems: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """The names part of ``lookup_probes``."""
    return lookup_probes(model, tok, problems)[0]


def operand_share(operands: dict[str, dict[str, int]], skip: tuple[str, ...] = ("digit 1",)) -> Any:
    """The share of right operand digits over the places but ``skip`` (None when there are none):
    by default the digits after a number's first, each keyed by the digit before it (the first
    digit, keyed by the name, nearly every student gets)."""
    cells = [v for k, v in operands.items() if k not in skip]
    total = sum(v["total"] for v in cells)
    return sum(v["right"] for v in cells) / total if total else None


def lookup_share(probe: dict[str, dict[str, int]], skip: tuple[str, ...] = ("Second",)) -> Any:
    """The share of right names over the probed markers but ``skip`` (None when there are none):
    by default from sentence 3 on, the look-ups a student learns last (sentence 2's, a short
    distance back, every student gets)."""
    cells = [v for m, v in probe.items() if m not in skip]
    total = sum(v["total"] for v in cells)
    return sum(v["right"] for v in cells) / total if total else None
