"""The demo's synthetic multi-step arithmetic task as a task plug-in (see ``thinkfast.data.synthetic``).

Prompt format (plain text, GSM8K style)::

    Question: Box one has 347 apples. Box two has 128 more apples than box one. ... How many apples are in box four?
    Answer: Box one has 347. one = 7 4 3 0
    Box two has 128 more than box one. one = 7 4 3 0 plus 8 2 1 0 : ... . two = 5 7 4 0
    ...
    #### 1369

    Question: <the problem>
    Answer:

``fewshot`` puts ``n_shots`` worked examples from the TRAIN split first (fixed: the first train
problems with ``shot_steps`` operations); ``plain`` is the question alone. A completion ends with
a blank line, so the stop string is ``"\\n\\n"`` (and the tokenizer's EOS).
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from ...data import synthetic as syn
from .base import Example, Task, Verdict, register

DEFAULT_SIZES = {"train": 20000, "test": 500}


@register
class SyntheticTask(Task):
    name = "synthetic"
    stop: tuple[str, ...] = (syn.EXAMPLE_END,)

    def __init__(self, config: Optional[syn.SyntheticConfig] = None, seed: int = 0, n_shots: int = 1,
                 shot_steps: Optional[int] = None):
        self.config = config or syn.SyntheticConfig()
        self.seed = seed
        self.n_shots = n_shots
        cfg = self.config
        self.shot_steps = shot_steps if shot_steps is not None else max(cfg.min_steps, cfg.max_steps - 1)
        if not cfg.min_steps <= self.shot_steps <= cfg.max_steps:
            raise ValueError(f"shot_steps {self.shot_steps} is outside {cfg.min_steps}..{cfg.max_steps}")
        self._shots: Optional[list[syn.Problem]] = None

    # --- data ---------------------------------------------------------------------------------
    @staticmethod
    def _example(split: str, i: int, question: str, solution: str, meta: dict) -> Example:
        h = hashlib.sha256(question.encode()).hexdigest()[:8]
        ans = syn.parse_answer(solution)
        if ans is None:
            raise ValueError(f"{split} example {i}: its answer does not end with '#### N'")
        return Example(id=f"synthetic-{split}-{i}-{h}", question=question, gold=solution, answer=str(ans),
                       meta=meta)

    def load(self, split: str = "test", path: Optional[str] = None, limit: Optional[int] = None) -> list[Example]:
        if path is not None:
            recs = syn.read_jsonl(path)
            if limit is not None:
                recs = recs[:limit]
            return [self._example(split, i, r["question"], r["answer"],
                                  {k: r[k] for k in ("n_steps",) if k in r}) for i, r in enumerate(recs)]
        if split not in DEFAULT_SIZES:
            raise ValueError(f"synthetic has splits {sorted(DEFAULT_SIZES)}, not {split!r}")
        n = DEFAULT_SIZES[split] if limit is None else limit
        probs = syn.generate(self.config, split, n, self.seed)
        return [self._example(split, i, p.question, p.solution, {"n_steps": p.n_steps})
                for i, p in enumerate(probs)]

    def shots(self) -> list[syn.Problem]:
        """The worked examples of the few-shot prompt: train problems, never test ones."""
        if self._shots is None:
            out: list[syn.Problem] = []
            for p in syn.iter_problems(self.config, "train", self.seed) if self.n_shots > 0 else ():
                if p.n_steps == self.shot_steps:
                    out.append(p)
                    if len(out) == self.n_shots:
                        break
            self._shots = out
        return self._shots

    # --- prompting and grading ----------------------------------------------------------------
    def prompt(self, example: Example, style: str = "fewshot", tokenizer: Any = None) -> str:
        if style == "plain":
            return syn.format_prompt(example.question)
        if style == "fewshot":
            head = "".join(syn.format_example(s.question, s.solution) for s in self.shots())
            return head + syn.format_prompt(example.question)
        raise ValueError(f"synthetic supports prompt styles 'fewshot' and 'plain', not {style!r}")

    def extract(self, completion: str) -> Optional[str]:
        n = syn.parse_answer(completion)
        return None if n is None else str(n)

    def judge(self, pred: Optional[str], example: Example) -> Verdict:
        # Answers are integers written plainly (``#### N``): exact comparison is the whole check.
        if pred is None:
            return Verdict(False)
        try:
            return Verdict(int(pred) == int(example.answer))
        except (TypeError, ValueError):
            return Verdict(False)
