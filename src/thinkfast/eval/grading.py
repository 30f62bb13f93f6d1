"""Grading model output: extract the final answer, normalise it, decide equivalence.

Model output is untrusted input. Nothing here calls ``eval`` or ``sympify``: the fast path
compares normalised strings and exact rationals parsed by regex, and the general check runs
Math-Verify (github.com/huggingface/Math-Verify) in a child process with a deadline enforced
from outside (``MathVerifyWorker``). Math-Verify's own timeouts use SIGALRM, which fails off
the main thread and cannot interrupt a long C-level SymPy call, so they are switched off there.

A timeout counts as incorrect and is tallied (``Verdict.timeout``), never raised.

Normalisation follows the spirit of Hendrycks et al. (2021, MATH) and Lewkowycz et al. (2022,
Minerva, appendix D.1): strip delimiters, text wrappers, units, degrees and percent signs.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Optional

from ..runtime import UserError
from .tasks.base import Example, Task, Verdict

# --- extraction ----------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_IS_RE = re.compile(r"(?i)(?:final\s+answer|the\s+answer)\s*(?:is\b|:)\s*:?\s*")
_HASHES_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def match_brace(text: str, open_idx: int) -> Optional[int]:
    """Index of the ``}`` that closes ``text[open_idx] == "{"``, or None if it never closes.

    Escaped braces (``\\{``, ``\\}``) do not count, so ``\\boxed{\\{1,2\\}}`` is read whole.
    """
    depth, i = 0, open_idx
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``).

    A box left unclosed (a completion cut off by the token limit) is skipped in favour of an
    earlier, complete one.
    """
    for m in reversed(list(_BOX_RE.finditer(text))):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = match_brace(text, j)
            if close is not None:
                return text[j + 1 : close]
        elif j > m.end():  # "\boxed 5": one token after a space
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                return tok.group(0)
    return None


def _cut_phrase(rest: str) -> str:
    """The answer at the start of ``rest``: a $...$ / \\(...\\) span, or up to the sentence end."""
    rest = rest.split("\n", 1)[0].strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(left):
            end = rest.find(right, len(left))
            if end > 0:
                return rest[len(left) : end]
    return re.split(r"\.(?=\s|$)", rest, maxsplit=1)[0]


def extract_answer(text: Optional[str]) -> Optional[str]:
    """The final answer in a completion, or None.

    Tried in order: the last ``\\boxed{}``; ``#### N`` (GSM8K); "the answer is ..." /
    "final answer is ..."; the last number in the text.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    hashes = _HASHES_RE.findall(text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    phrases = list(_ANSWER_IS_RE.finditer(text))
    if phrases:
        ans = _cut_phrase(text[phrases[-1].end() :]).strip()
        if ans:
            return ans
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return numbers[-1].rstrip(",")
    return None


# --- normalisation -------------------------------------------------------------------------------

_TEXT_WRAPPERS = ("text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mbox")
# Single-letter or unspaced units; any spaced word of 2+ letters after a number is a unit anyway.
_SHORT_UNITS = {"m", "g", "s", "h", "cm", "mm", "km", "kg", "mg", "lb", "lbs", "ft", "in", "mph",
                "min", "hr", "hrs", "sec", "oz", "yd", "mi", "ml", "l", "kmh"}
_UNIT_RE = re.compile(
    r"^(?P<num>[+-]?(?:\d[\d,]*(?:\.\d+)?|\.\d+|\\frac\{\d+\}\{\d+\}))(?P<sep>\s*)"
    r"(?P<unit>[A-Za-z][A-Za-z.\s]*?)\s*(?:\^\{?[23]\}?)?$"
)
_ASSIGN_RE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*(?P<rhs>[^=]+)$")
_DECIMAL_RE = re.compile(r"[+-]?(?:\d{1,60}(?:\.\d{0,60})?|\.\d{1,60})")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def unwrap_command(s: str, name: str) -> str:
    """Replace every ``\\name{X}`` by ``X`` (brace-matched, so nested braces survive)."""
    pat = re.compile(r"\\" + name + r"\s*\{")
    while True:
        m = pat.search(s)
        if not m:
            return s
        close = match_brace(s, m.end() - 1)
        if close is None:
            return s
        s = s[: m.start()] + s[m.end() : close] + s[close + 1 :]


def _strip_units(s: str) -> str:
    m = _UNIT_RE.match(s)
    if not m:
        return s
    words = m.group("unit").replace(".", " ").split()
    if m.group("sep"):
        ok = all(len(w) >= 2 or w.lower() in _SHORT_UNITS for w in words)
    else:
        ok = len(words) == 1 and words[0].lower() in _SHORT_UNITS
    return m.group("num") if ok else s


def _canonical_number(s: str) -> str:
    """'1,000' -> '1000', '18.00' -> '18', '.5' -> '0.5', '+3' -> '3'; other strings unchanged."""
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if not _DECIMAL_RE.fullmatch(s):
        return s
    sign = "-" if s.startswith("-") else ""
    body = s.lstrip("+-")
    whole, _, frac = body.partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    out = whole + ("." + frac if frac else "")
    return "0" if out == "0" else sign + out


def _unwrap_whole_box(s: str) -> str:
    """'\\boxed{\\boxed{7}}' -> '7'; a box that is only part of the string stays."""
    while True:
        t = s.strip()
        m = _BOX_RE.match(t)
        j = t.find("{", m.end()) if m else -1
        if j < 0 or t[m.end() : j].strip() or match_brace(t, j) != len(t) - 1:
            return s
        s = t[j + 1 : -1]


def canonical_latex(ans: str) -> str:
    """Normalise an extracted answer, keeping spaces (they can separate LaTeX commands)."""
    s = ans.strip()
    s = s.replace("\\$", "").replace("$", "")
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)]
    s = _unwrap_whole_box(s)
    s = re.sub(r"\\left\b|\\right\b", "", s)
    s = re.sub(r"(?<=\d)\\,(?=\d{3})", "", s)  # 10\,000
    # Spacing commands go; a LaTeX line break "\\" (matrices) must survive, hence the pairs.
    s = re.sub(r"\\\\|\\[!,;: ]|~", lambda m: {"\\\\": "\\\\", "\\!": ""}.get(m.group(0), " "), s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\dbinom", "\\binom")
    for name in _TEXT_WRAPPERS:
        s = unwrap_command(s, name)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b", "", s)
    s = re.sub(r"\\%|%|\s+percent\b", "", s)
    s = s.strip().rstrip(".").strip()
    s = _strip_units(s)
    if (m := _ASSIGN_RE.match(s)) is not None:
        s = m.group("rhs").strip()
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\d)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)  # \sqrt23 is sqrt(2) * 3 in LaTeX
    return _canonical_number(s.strip())


def normalize_answer(ans: Optional[str]) -> str:
    """The comparison key of an answer: ``canonical_latex`` without whitespace ('' for None)."""
    if ans is None:
        return ""
    return _canonical_number(re.sub(r"\s+", "", canonical_latex(ans)))


def numeric_value(key: str) -> Optional[Fraction]:
    """The exact value of a plain number, ``a/b`` or ``\\frac{a}{b}`` key; None otherwise.

    Regex first, so a huge or malicious string is never handed to a number parser.
    """
    if _DECIMAL_RE.fullmatch(key):
        try:
            return Fraction(key)
        except (ValueError, ZeroDivisionError):
            return None
    m = re.fullmatch(r"([+-]?)(?:\\frac\{([+-]?\d{1,60})\}\{([+-]?\d{1,60})\}|(\d{1,60})/(\d{1,60}))", key)
    if m:
        num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if m.group(1) == "-" else value
    return None


def fast_equal(gold_key: str, pred_key: str) -> Optional[bool]:
    """A decision without Math-Verify where one is certain, else None.

    Equal keys or equal exact values are equivalent. Two plain numbers that differ by more than
    any rounding Math-Verify allows (it rounds to 6 decimals) are not.
    """
    if gold_key == pred_key:
        return True
    g, p = numeric_value(gold_key), numeric_value(pred_key)
    if g is None or p is None:
        return None
    if g == p:
        return True
    if abs(g - p) > Fraction(1, 10_000) * max(1, abs(g)):
        return False
    return None


# --- Math-Verify in a child process --------------------------------------------------------------


class MathVerifyWorker:
    """Math-Verify in a child process; each call has a deadline, enforced by killing the child.

    Works from any thread (calls are serialised by a lock). The child is started on first use
    and restarted after a timeout or a crash.
    """

    def __init__(self, timeout_s: float = 5.0, startup_timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self._proc: Optional[subprocess.Popen] = None
        self._replies: "queue.Queue[Optional[str]]" = queue.Queue()
        self._lock = threading.Lock()

    def _start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "thinkfast.eval._verify_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1, env=env,
        )
        replies: "queue.Queue[Optional[str]]" = queue.Queue()  # fresh: no stale replies
        self._replies = replies
        stdout = self._proc.stdout

        def pump() -> None:
            for line in stdout:
                replies.put(line)
            replies.put(None)  # EOF: the child died

        threading.Thread(target=pump, daemon=True).start()
        try:
            ready = replies.get(timeout=self.startup_timeout_s)
        except queue.Empty:
            ready = None
        if ready is None:
            self.close()
            err.seek(0)
            detail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"the Math-Verify worker did not start:\n{detail}")
        err.close()

    def verify(self, gold: str, pred: str) -> Verdict:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps({"g": gold, "p": pred}) + "\n")
                self._proc.stdin.flush()
                line = self._replies.get(timeout=self.timeout_s)
            except queue.Empty:
                self.close()
                return Verdict(False, timeout=True)
            except (BrokenPipeError, OSError):
                line = None
            if line is None:  # crashed (e.g. killed by the memory limit)
                self.close()
                return Verdict(False, error=True)
            reply = json.loads(line)
            if "err" in reply:
                return Verdict(False, error=True)
            return Verdict(bool(reply["ok"]))

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except (OSError, AttributeError):
                    pass


class Grader:
    """Answer equivalence: normalised fast path, then Math-Verify under a deadline. Cached.

    ``equivalent(gold, pred)`` is not symmetric (Math-Verify's is not): pass the reference first.
    ``stats`` counts how each decision was made (fast, math_verify, timeout, error).
    ``fast_path=False`` sends every pair to Math-Verify (slow; used to test it on its own).
    """

    def __init__(self, timeout_s: float = 5.0, use_math_verify: bool = True, fast_path: bool = True):
        self.fast_path = fast_path
        self._worker = MathVerifyWorker(timeout_s) if use_math_verify else None
        self._cache: dict[tuple[str, str], Verdict] = {}
        self.stats: dict[str, int] = {"fast": 0, "math_verify": 0, "timeout": 0, "error": 0, "cached": 0}

    def equivalent(self, gold: Optional[str], pred: Optional[str]) -> Verdict:
        if gold is None or pred is None:
            return Verdict(False)
        g_tex, p_tex = canonical_latex(gold), canonical_latex(pred)
        key = (normalize_answer(g_tex), normalize_answer(p_tex))
        if not key[0] or not key[1]:
            return Verdict(False)
        if key in self._cache:
            self.stats["cached"] += 1
            return self._cache[key]
        verdict = fast_equal(*key) if self.fast_path else None
        if verdict is not None:
            self.stats["fast"] += 1
            result = Verdict(verdict)
        elif self._worker is None:
            result = Verdict(False)
        else:
            result = self._worker.verify(g_tex, p_tex)
            self.stats["timeout" if result.timeout else "error" if result.error else "math_verify"] += 1
        self._cache[key] = result
        return result

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_DEFAULT: Optional[Grader] = None
_DEFAULT_LOCK = threading.Lock()


def default_grader() -> Grader:
    """The process-wide grader the built-in tasks share (one worker, one cache)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Grader()
        return _DEFAULT


def configure_default_grader(timeout_s: float = 5.0, use_math_verify: bool = True) -> Grader:
    """Replace the shared grader (e.g. with another timeout); returns the new one."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is not None:
            _DEFAULT.close()
        _DEFAULT = Grader(timeout_s=timeout_s, use_math_verify=use_math_verify)
        return _DEFAULT


@atexit.register
def _close_default() -> None:
    if _DEFAULT is not None:
        _DEFAULT.close()


# --- grading rows --------------------------------------------------------------------------------


@dataclass
class GradeSummary:
    rows: int
    correct: int
    no_answer: int
    timeouts: int
    errors: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "correct": self.correct, "accuracy": self.accuracy,
                "no_answer": self.no_answer, "timeouts": self.timeouts, "errors": self.errors}


def example_from_row(task: Task, row: dict[str, Any], where: str = "") -> Example:
    """An ``Example`` rebuilt from a samples row (``gold`` is the dataset's own gold field)."""
    if "gold" not in row or row["gold"] is None:
        raise UserError(f"{where}: row has no 'gold' field")
    gold = str(row["gold"])
    # Always re-derived from gold: an "answer" field in a user's file may mean something else
    # (in GSM8K's own rows it is the full solution).
    return Example(id=str(row.get("problem_id", "")), question=str(row.get("question", "")),
                   gold=gold, answer=task.gold_answer(gold))


def grade_rows(task: Task, rows: Iterable[dict[str, Any]], source: str = "rows") -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``pred`` (str or None), ``correct`` (bool), ``grade_timeout``
    (bool) and ``grade_error`` (bool) set. Each row needs ``gold`` and ``completion``."""
    out = []
    for i, row in enumerate(rows, start=1):
        where = f"{source}: row {i}"
        if "completion" not in row:
            raise UserError(f"{where}: row has no 'completion' field")
        example = example_from_row(task, row, where)
        completion = row["completion"]
        pred = task.extract(completion) if isinstance(completion, str) else None
        verdict = task.judge(pred, example)
        out.append({**row, "pred": pred, "correct": verdict.correct,
                    "grade_timeout": verdict.timeout, "grade_error": verdict.error})
    return out


def summarize(rows: Iterable[dict[str, Any]]) -> GradeSummary:
    rows = list(rows)
    return GradeSummary(
        rows=len(rows),
        correct=sum(bool(r.get("correct")) for r in rows),
        no_answer=sum(r.get("pred") is None for r in rows),
        timeouts=sum(bool(r.get("grade_timeout")) for r in rows),
        errors=sum(bool(r.get("grade_error")) for r in rows),
    )
