"""Child process that grades with Math-Verify for ``grading.VerifyPool``; not a public module.

Protocol: one JSON object per line on stdin, one line back per request:

- ``{"op": "grade", "gold": ANSWER, "tail": TEXT}``: read the answer out of a completion's tail
  (``extraction.answer_spans``, then Math-Verify's own extraction) and judge it against the gold
  answer; reply ``{"pred": str | null, "ok": bool}``;
- ``{"op": "same", "a": ANSWER, "b": ANSWER}``: whether two extracted answers are equivalent
  (``b`` judged against reference ``a``); reply ``{"ok": bool}``.

Any failure replies ``{"err": message}``. The first line written is ``{"ready": true}`` once the
imports are done, so start-up never counts against a request's limit.

Math-Verify's own timeouts are off: they use SIGALRM, which cannot interrupt a long C-level SymPy
call. The parent enforces the limit from outside, by this process's CPU time, and kills it.
Math-Verify parses LaTeX with an ANTLR grammar and plain expressions only after a regex has
restricted them to digits and operators, so model text is never executed as Python; what remains
(``9^9^9^9``) is a question of time and memory, bounded here (``RLIMIT_AS``) and by the parent.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

MEMORY_LIMIT_BYTES = 4 << 30  # a runaway expansion fails with MemoryError instead of swapping


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit already set
        pass


class Judge:
    """Math-Verify with thinkfast's extraction configuration."""

    def __init__(self) -> None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

        self._parse, self._verify = parse, verify
        # Boxes first, at the same priority as Minerva's "final answer is $X$. I hope", so the
        # rightmost of the two wins.
        self.config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    def parse_answer(self, answer: str) -> list:
        # \boxed{} makes Math-Verify read the whole string as one answer ("3, 5" is a set, not 5).
        return self._parse("\\boxed{" + answer + "}", self.config, parsing_timeout=None)

    def parse_completion(self, tail: str) -> list:
        from thinkfast.eval.extraction import answer_spans

        for span in answer_spans(tail):
            parsed = self._parse(span, self.config, parsing_timeout=None)
            if parsed:
                return parsed
        return []

    def equal(self, gold: list, pred: list) -> bool:
        return bool(gold) and bool(pred) and bool(self._verify(gold, pred, timeout_seconds=None))

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req["op"] == "grade":
            pred = self.parse_completion(str(req["tail"]))
            text = None if not pred else pred[-1] if isinstance(pred[-1], str) else str(pred[0])
            return {"pred": text, "ok": self.equal(self.parse_answer(str(req["gold"])), pred)}
        if req["op"] == "same":
            return {"ok": self.equal(self.parse_answer(str(req["a"])), self.parse_answer(str(req["b"])))}
        raise ValueError(f"unknown op {req['op']!r}")


def main() -> int:
    from thinkfast.runtime import die_with_parent

    _limit_memory()
    die_with_parent(os.getppid())  # it may be deep in SymPy, not reading stdin, when the parent dies
    logging.disable(logging.WARNING)  # Math-Verify warns once per process that timeouts are off
    judge = Judge()  # imported before "ready" so start-up is never a timeout
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            reply = judge.handle(json.loads(line))
        except MemoryError:
            reply = {"err": "MemoryError"}
        except Exception as e:  # noqa: BLE001  -- any failure is "not verified", reported
            reply = {"err": f"{type(e).__name__}: {e}"[:200]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
