"""Child process that runs Math-Verify for ``grading.MathVerifyWorker``; not a public module.

Protocol: one JSON object per line on stdin, ``{"g": gold, "p": pred}`` (LaTeX answers, already
extracted); one line back per request, ``{"ok": bool}`` or ``{"err": message}``. The first line
written is ``{"ready": true}`` once the imports are done, so start-up never counts against a
request's deadline.

Math-Verify's own timeouts are disabled: they use SIGALRM, which cannot interrupt a long C-level
SymPy call and fails outright off the main thread. The parent enforces the deadline by killing
this process instead. Math-Verify parses LaTeX with an ANTLR grammar and plain expressions only
after a regex has restricted them to digits and operators, so model text is never executed as
Python; what remains (``9^9^9^9``) is a question of time and memory, bounded here and by the parent.
"""

from __future__ import annotations

import json
import logging
import sys

MEMORY_LIMIT_BYTES = 4 << 30  # a runaway expansion fails with MemoryError instead of swapping


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit already set
        pass


def _answer_is_equivalent(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    # \boxed{} makes Math-Verify take the whole string as one answer (a bare "3, 5" would
    # otherwise be read as the number 5).
    g = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    p = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def main() -> int:
    _limit_memory()
    logging.disable(logging.WARNING)  # Math-Verify warns once per process that timeouts are off
    import math_verify  # noqa: F401  (imported before "ready" so start-up is not a timeout)

    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            reply = {"ok": _answer_is_equivalent(str(req["g"]), str(req["p"]))}
        except MemoryError:
            reply = {"err": "MemoryError"}
        except Exception as e:  # noqa: BLE001  -- any failure is "not verified", reported
            reply = {"err": f"{type(e).__name__}: {e}"[:200]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
