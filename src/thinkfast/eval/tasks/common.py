"""What the dataset tasks share: loading a local JSONL or a Hugging Face dataset, chat prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ...runtime import UserError
from .base import Example, Task, Verdict

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
    """A task whose answers are graded by ``eval.grading`` (extraction, normalisation, Math-Verify).

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

    def extract(self, completion: str) -> Optional[str]:
        from ..grading import extract_answer

        # A few-shot completion that ran past its stop string goes on to invent the next
        # question and answer it; only the text before that is this problem's answer.
        for stop in self.stop:
            completion = completion.split(stop, 1)[0]
        return extract_answer(completion)

    def judge(self, pred: Optional[str], example: Example) -> Verdict:
        from ..grading import default_grader

        return default_grader().equivalent(example.answer, pred)

    def is_correct(self, pred: Optional[str], example: Example) -> bool:
        return self.judge(pred, example).correct

    def same_answer(self, a: str, b: str) -> bool:
        from ..grading import default_grader

        return default_grader().equivalent(a, b).correct


def task_by_name(name: str) -> Task:
    """``get_task`` with an unknown name reported as a user error."""
    from .base import get_task

    try:
        return get_task(name)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
