"""The task plug-in interface: examples, prompts and the answer check.

GSM8K, MATH-500 and the demo's synthetic task are each one small class implementing ``Task``;
``TASKS`` maps a name to its class so commands can say ``--task gsm8k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Example:
    id: str
    """Stable id (dataset index or unique_id): resume and metrics key on it."""
    question: str
    gold: str
    """The dataset's own gold field (GSM8K: the full answer text ending '#### N')."""
    answer: str
    """The canonical final answer extracted from ``gold``."""
    meta: dict[str, Any] = field(default_factory=dict)


class Task:
    """Subclasses set ``name`` and implement ``load``, ``extract`` and ``prompt``."""

    name: str = ""

    def load(self, split: str = "test", path: Optional[str] = None, limit: Optional[int] = None) -> list[Example]:
        raise NotImplementedError

    def prompt(self, example: Example, style: str = "fewshot", tokenizer: Any = None) -> str:
        """The text given to the model ('chat' uses the tokenizer's chat template)."""
        raise NotImplementedError

    def extract(self, completion: str) -> Optional[str]:
        """The final answer in a completion, or None."""
        raise NotImplementedError

    def is_correct(self, pred: Optional[str], example: Example) -> bool:
        raise NotImplementedError

    stop: tuple[str, ...] = ()
    """Stop strings for sampling (e.g. the start of the next few-shot question)."""


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    # Importing the modules fills TASKS.
    from . import gsm8k, math500, synthetic  # noqa: F401

    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]()
