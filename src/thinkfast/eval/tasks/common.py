"""What the dataset tasks share: loading a local JSONL or a Hugging Face dataset, chat prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ...runtime import UserError
from .base import Example, Graded, Task, Verdict

CHAT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def load_records(task: str, split: str, path: Optional[str], hf_name: str, hf_config: Optional[str],
                 limit: Optional[int]) -> list[dict[str, Any]]:
    """Rows of a dataset in its original release format.

    ``path`` is a JSONL file, or a directory holding ``{task}_{split}.jsonl``. Without a path the
    rows come from Hugging Face ``datasets`` (online, optional dependency).
    """
    if path is not None:
        from ..io import read_jsonl

        p = Path(path)
        if p.is_dir():
            p = p / f"{task}_{split}.jsonl"
        rows = read_jsonl(p)
    else:
        try:
            from datasets import load_dataset
        except ImportError:
            raise UserError(f"no local data given for {task}: pass --data PATH (a JSONL file in the "
                            "original release format) or `pip install datasets` to download it") from None
        try:
            ds = load_dataset(hf_name, hf_config, split=split)
        except Exception as e:  # noqa: BLE001  -- offline, unknown split, hub errors: all user-facing
            raise UserError(f"could not load {hf_name} ({split}) from Hugging Face: {e}") from None
        rows = [dict(r) for r in ds]
    return rows[:limit] if limit is not None else rows


def require_fields(row: dict[str, Any], fields: tuple[str, ...], task: str, index: int) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise UserError(f"{task} row {index + 1}: missing field(s) {missing}; "
                        f"expected the original release format with {list(fields)}")


def chat_prompt(tokenizer: Any, question: str, instruction: str = CHAT_INSTRUCTION) -> str:
    """One user turn through the tokenizer's chat template, ready for the assistant's reply."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError("prompt style 'chat' needs a tokenizer with a chat template; "
                        "use --prompt-style fewshot for a base model")
    messages = [{"role": "user", "content": f"{question}\n\n{instruction}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def fewshot_prompt(shots: list[tuple[str, str]], question: str, q_label: str, a_label: str) -> str:
    """Plain-text few-shot prompt: worked examples, then the question and an open answer."""
    parts = [f"{q_label}: {q}\n{a_label}: {a}" for q, a in shots]
    parts.append(f"{q_label}: {question}\n{a_label}:")
    return "\n\n".join(parts)


class MathTask(Task):
    """A task graded by Math-Verify through an ``eval.grading.Grader`` (passed in with
    ``use_grader``, or one of its own with one worker, started on first use).

    Subclasses set ``name``, ``stop``, ``fewshot`` with its labels, and implement ``load``.
    """

    fewshot: list[tuple[str, str]] = []
    fewshot_labels: tuple[str, str] = ("Question", "Answer")
    prompt_styles = ("fewshot", "chat")

    def prompt(self, example: Example, style: str = "fewshot", tokenizer: Any = None) -> str:
        if style == "chat":
            return chat_prompt(tokenizer, example.question)
        if style == "fewshot":
            return fewshot_prompt(self.fewshot, example.question, *self.fewshot_labels)
        raise UserError(f"unknown prompt style {style!r} (chat, fewshot)")

    def __init__(self, grader: Any = None):
        self._grader = grader

    @property
    def grader(self) -> Any:
        """The ``eval.grading.Grader`` this task grades through (one worker unless given one)."""
        if self._grader is None:
            from ..grading import Grader

            self._grader = Grader()
        return self._grader

    def use_grader(self, grader: Any) -> "MathTask":
        self._grader = grader
        return self

    def tail(self, completion: str) -> str:
        """The part of a completion its answer is read from (``extraction.completion_tail``)."""
        from ..extraction import completion_tail

        return completion_tail(completion, self.stop)

    def grade_many(self, items: Sequence[tuple[str, Example]],
                   on_graded: Optional[Callable[[int, Graded], None]] = None) -> list[Graded]:
        tails = [self.tail(c) for c, _ in items]
        out: list[Optional[Graded]] = [None] * len(items)
        todo = []
        for i, t in enumerate(tails):
            if t.strip():
                todo.append(i)
            else:  # nothing written: nothing to read
                out[i] = Graded(None, Verdict(False))
                if on_graded is not None:
                    on_graded(i, out[i])

        def take(j: int, graded: Graded) -> None:
            out[todo[j]] = graded
            if on_graded is not None:
                on_graded(todo[j], graded)

        self.grader.grade([(items[i][1].answer, tails[i]) for i in todo], take)
        return out  # type: ignore[return-value]

    def extract(self, completion: str) -> Optional[str]:
        return self.grade_many([(completion, Example(id="", question="", gold="", answer=""))])[0].pred

    def judge(self, pred: Optional[str], example: Example) -> Verdict:
        return self.grader.equivalent(example.answer, pred)

    def same_answer(self, a: str, b: str) -> bool:
        return self.grader.equivalent(a, b).correct
