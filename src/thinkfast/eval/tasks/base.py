"""The task plug-in interface: examples, prompts and the answer check.

GSM8K, MATH-500 and the demo's synthetic task are each one small class implementing ``Task``;
``TASKS`` maps a name to its class so commands can say ``--task gsm8k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Verdict:
    """One grading decision. A timeout or an error in the checker counts as incorrect."""

    correct: bool
    timeout: bool = False
    error: bool = False


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

    prompt_styles: tuple[str, ...] = ("fewshot",)
    """The ``style`` values ``prompt`` accepts; the first is the default without a chat template."""

    # --- defaults built on the four methods above; tasks may override them ---------------------
    def gold_answer(self, gold: str) -> str:
        """The canonical final answer inside a dataset gold field (rows carry only ``gold``)."""
        answer = self.extract(gold)
        return answer if answer is not None else gold.strip()

    def judge(self, pred: Optional[str], example: Example) -> Verdict:
        """``is_correct`` with the checker's timeouts and errors reported, not raised."""
        return Verdict(bool(self.is_correct(pred, example)))

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two predicted answers are the same; majority voting groups answers with it."""
        return self.judge(b, Example(id="", question="", gold=a, answer=a)).correct


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    # Importing the modules fills TASKS. A task module that does not exist (yet) must not take
    # the others down with it; an import error inside an existing module still surfaces.
    import importlib

    for module in ("gsm8k", "math500", "synthetic"):
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{module}":
                raise

    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]()
