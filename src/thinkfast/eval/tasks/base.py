"""The task plug-in interface: examples, prompts and the answer check.

GSM8K, MATH-500 and the demo's synthetic task are each one small class implementing ``Task``;
``TASKS`` maps a name to its class so commands can say ``--task gsm8k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence


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


@dataclass(frozen=True)
class Graded:
    """A completion graded: the answer read from it (None if none) and the verdict."""

    pred: Optional[str]
    verdict: Verdict


class Task:
    """Subclasses set ``name`` and implement ``load``, ``prompt``, ``extract`` and ``judge``.

    ``extract`` reads a completion's final answer; ``judge`` decides a read answer against an
    example's gold answer; ``grade_many`` does both for many completions at once (a task whose
    check is costly overrides it to run them in parallel).
    """

    name: str = ""

    def load(self, split: str = "test", path: Optional[str] = None, limit: Optional[int] = None) -> list[Example]:
        raise NotImplementedError

    def prompt(self, example: Example, style: str = "fewshot", tokenizer: Any = None) -> str:
        """The text given to the model ('chat' uses the tokenizer's chat template)."""
        raise NotImplementedError

    def extract(self, completion: str) -> Optional[str]:
        """The final answer in a completion, or None."""
        raise NotImplementedError

    def judge(self, pred: Optional[str], example: Example) -> Verdict:
        """Whether ``pred`` is the example's answer; a checker's timeout or error is reported in
        the verdict (and counts as incorrect), never raised."""
        raise NotImplementedError

    stop: tuple[str, ...] = ()
    """Stop strings for sampling (e.g. the start of the next few-shot question)."""

    prompt_styles: tuple[str, ...] = ("fewshot",)
    """The ``style`` values ``prompt`` accepts; the first is the default without a chat template."""

    # --- defaults built on the methods above; tasks may override them --------------------------
    def gold_answer(self, gold: str) -> str:
        """The canonical final answer inside a dataset gold field (rows carry only ``gold``)."""
        answer = self.extract(gold)
        return answer if answer is not None else gold.strip()

    def grade_many(self, items: Sequence[tuple[str, Example]],
                   on_graded: Optional[Callable[[int, Graded], None]] = None) -> list[Graded]:
        """``Graded`` per ``(completion, example)``, in order; ``on_graded(i, graded)`` as each is
        decided."""
        out = []
        for i, (completion, example) in enumerate(items):
            pred = self.extract(completion)
            out.append(Graded(pred, self.judge(pred, example)))
            if on_graded is not None:
                on_graded(i, out[-1])
        return out

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two read answers are the same; majority voting groups answers with it."""
        return self.judge(b, Example(id="", question="", gold=a, answer=a)).correct

    def use_grader(self, grader: Any) -> "Task":
        """Grade through ``grader`` (an ``eval.grading.Grader``) where the task uses one."""
        return self


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


def task_by_name(name: str) -> Task:
    """``get_task`` with an unknown name reported as a user error."""
    from ...runtime import UserError

    try:
        return get_task(name)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
