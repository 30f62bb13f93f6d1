"""Which part of a completion holds its final answer: pure, linear-time text rules.

Math-Verify (github.com/huggingface/Math-Verify) reads the answer out of the text it is given:
``\\boxed{}`` first, then "final answer is ...", "answer: ...", and last the final LaTeX span
or number, rightmost first. This module decides only *what text* it is given, with the few rules
it lacks:

- **the tail.** Only the last ``TAIL_CHARS`` characters are read, cut at a line start, so a
  100 kB completion costs what a short one does and an inline ``$...$`` is never cut in two;
- **the last marker wins.** Math-Verify ranks a ``\\boxed{}`` above "The answer is ...", wherever
  they sit, so an intermediate box early in a chain beats the answer stated at its end. Here the
  text handed over starts at the last answer marker;
- **GSM8K's ``#### N``**, which Math-Verify does not know as a marker: the rest of its line.

Each function scans its input once with regexes that cannot backtrack more than a bounded amount
(no nested quantifiers), so hostile output costs time linear in the tail.
"""

from __future__ import annotations

import re
from typing import Optional

TAIL_CHARS = 4000
"""Characters of a completion's end that are read for its answer."""

MAX_SPANS = 4
"""Answer markers tried, from the last one back, before the whole tail is read."""

# One alternation scanned left to right, so "The final answer is" is one marker, not two.
_MARKER_RE = re.compile(
    r"(?P<box>\\(?:boxed|fbox)(?![A-Za-z]))"
    r"|(?P<hashes>####)"
    r"|(?P<text>(?i:\bfinal\s{1,5}answer(?:\s{0,5}(?:is\b|:))?"
    r"|\b(?:the|correct)\s{1,5}answer\s{0,5}(?:is\b|:)"
    r"|^[ \t*#>_-]{0,8}answer\**\s{0,5}:))",
    re.MULTILINE,
)
# Not markers: "answer" in passing ("we may check our answer: $17 \cdot 44 = 748$", "so our
# answer is correct"), which would otherwise outrank the box before them.


def completion_tail(text: str, stops: tuple[str, ...] = (), max_chars: int = TAIL_CHARS) -> str:
    """The part of ``text`` an answer is read from: before the first stop string, its last
    ``max_chars`` characters, starting at a line start where the cut falls inside a line.

    Lone surrogates (which no UTF-8 writer accepts) become "?".
    """
    for stop in stops:  # a few-shot completion that ran on invents the next question: cut it off
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    if len(text) > max_chars:
        start = len(text) - max_chars
        newline = text.find("\n", start, start + max_chars // 2)
        text = text[newline + 1:] if newline >= 0 else text[start:]
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # a lone surrogate
        return text.encode("utf-8", "replace").decode("utf-8")


_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n[ \t]*\n")


def _first_sentence(text: str, start: int) -> str:
    """``text`` from ``start`` to the end of its sentence (a full stop, or a blank line)."""
    end = _SENTENCE_END_RE.search(text, start, start + 400)
    return text[start:end.end() if end else start + 400]


def _rest_of_line(text: str, start: int) -> Optional[str]:
    end = text.find("\n", start)
    line = text[start:end if end >= 0 else len(text)].strip()
    return line or None


def answer_spans(tail: str) -> list[str]:
    """The texts to read the answer from, in order, until one yields an answer.

    For each of the last ``MAX_SPANS`` markers, from the last one back:
    - ``####``: the rest of its line;
    - "final answer", "the answer is", "Answer:" at a line start: the marker's sentence;
    - ``\\boxed``: the last box, with the boxes joined to it by separators only (",", ", and",
      ";", "\\text{ or }") read as one box. Math-Verify itself joins only some separators, and
      given "\\boxed{12}, no wait: \\boxed{16}" reads both boxes as one set.
    Before a text marker's span, and alone without a marker: the mathematics written as plain
    text that ends the marker's sentence (the tail) ("the result is (2+5b)/7."), read as LaTeX
    (``_plain_math``). Last, the whole tail, where Math-Verify finds an answer with no marker.
    """
    every = list(_MARKER_RE.finditer(tail))
    markers = every[-MAX_SPANS:]
    spans: list[str] = []
    for m in reversed(markers):
        if m.lastgroup == "hashes":
            candidates = [_rest_of_line(tail, m.end()) or ""]
        elif m.lastgroup == "text":
            sentence = _first_sentence(tail, m.end())
            candidates = [_plain_math(sentence) or "", tail[m.start():m.end()] + sentence]
        else:
            group = _joined_boxes(tail, every) if m is markers[-1] else None  # a run of any length
            candidates = [group or "", tail]
        spans += [c for c in candidates if c and c not in spans]
    plain = None if markers else _plain_math(tail.rstrip())
    if plain:
        spans.append(plain)
    if tail not in spans:
        spans.append(tail)
    return spans


# What may stand between two boxes of one answer: punctuation, math delimiters, spacing commands
# and "and" / "or" ("$\boxed{-2}$ \quad \text{and} \quad $\boxed{1}$"), nothing else.
_BOX_GAP_RE = re.compile(
    r"(?:[\s$,;.~]|\\[()\[\]]|\\(?:quad|qquad)\b|\\[,;:! ]|\band\b|\bor\b"
    r"|\\text\{\s*(?:and|or|,)?\s*\})*")


def _box_content(text: str, box: re.Match) -> Optional[tuple[str, int]]:
    """``(content, index after the closing brace)`` of the box starting at ``box``, or None."""
    i = box.end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, start = 0, i
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return text[start + 1:i], i + 1
        i += 1
    return None


def _joined_boxes(tail: str, markers: list[re.Match]) -> Optional[str]:
    """``\\boxed{a, b}`` for the run of boxes that ends with the last one, joined only by
    separators (``\\boxed{b}`` for a box alone); None if the last box does not close."""
    parts = _box_run(tail, [m for m in markers if m.lastgroup == "box"])
    return "\\boxed{" + ", ".join(parts) + "}" if parts else None


def _box_run(tail: str, boxes: list[re.Match]) -> list[str]:
    """Contents of the run of ``boxes`` that ends with the last one, joined only by separators."""
    parts: list[str] = []
    next_start: Optional[int] = None
    for m in reversed(boxes):
        found = _box_content(tail, m)
        if found is None:
            break
        content, end = found
        if next_start is not None and not _BOX_GAP_RE.fullmatch(tail, end, next_start):
            break
        parts.insert(0, content.strip())
        next_start = m.start()
    return parts


# Mathematics written as plain text, one token: "(2+5b)/7", "y=2x-3", "[1,3)", "9:30", "(C)".
# Math-Verify's plain-expression reader takes digits and operators only, so it reads "(2+5b)/7"
# as nothing and "2+3i" as 2. Plain numbers ("1,000", "3.5") are left to it: "$1,000$" would be
# read as a set.
_WORD_RE = re.compile(r"\S+")
_MATH_WORD_RE = re.compile(r"[\w+\-*/^().,:\[\]{}=|]+")
_OPERATOR_WORDS = frozenset("+ - * / ^ = : ±".split())
_LETTERS_RE = re.compile(r"[A-Za-z]{2,}")  # a word ("left", "user", "sqrt"): not LaTeX-readable
_NUMBER_ONLY_RE = re.compile(r"[+-]?[\d.,]+(?: \d{3})*")  # "1,000", "3.5", "1 000": Math-Verify's
_MIXED_RE = re.compile(r"(\d+) (\d+)/(\d+)")  # "4 4/9" in plain text is four and four ninths


def _is_math_word(w: str) -> bool:
    """Digits, operators, brackets and single letters."""
    return bool(_MATH_WORD_RE.fullmatch(w)) and not _LETTERS_RE.search(w)


def _plain_math(sentence: str) -> Optional[str]:
    """``$expr$`` for the mathematics that ends ``sentence`` when it is written as plain text,
    or None: the longest run of math words at its end ("11 + 4/9", "x^2 + 1", "(2+5b)/7",
    "(C)"), with a digit in it. Two operands side by side end the run ("4 4/9 2" is a list of
    numbers, and its last is the answer), except a mixed number ("4 4/9") or a list ("2, -3")."""
    last_line = sentence[-200:].rstrip(" \t\r\n.,;!?*").rsplit("\n", 1)[-1]  # "11\n5/6" is two lines
    words = _WORD_RE.findall(last_line)
    run: list[str] = []
    for w in reversed(words):
        w = w.strip("*")
        if not w or not _is_math_word(w):
            break
        joined = w in _OPERATOR_WORDS or run[:1] and run[0] in _OPERATOR_WORDS or w.endswith(",")
        if run and not joined:
            if len(run) == 1 and _MIXED_RE.fullmatch(f"{w} {run[0]}"):
                run.insert(0, w)
            break
        run.insert(0, w)
    expr = " ".join(run)
    if not expr or _NUMBER_ONLY_RE.fullmatch(expr):
        return None
    if not any(c.isdigit() for c in expr) and not re.fullmatch(r"\([A-E]\)", expr):
        return None
    mixed = _MIXED_RE.fullmatch(expr)
    if mixed:
        whole, num, den = mixed.groups()
        if int(num) >= int(den):  # "11 7/6" is no mixed number: leave it unread
            return None
        expr = f"{whole} + \\frac{{{num}}}{{{den}}}"
    return f"${expr}$"


def last_boxed(text: str, tries: int = 3) -> Optional[str]:
    """Content of the last complete ``\\boxed{...}`` (escaped braces do not count), joined with
    the boxes before it that only separators part from it ("a, b"), or None.

    For gold fields (a MATH solution's answer): a box left unclosed is skipped in favour of an
    earlier one, up to ``tries`` boxes back.
    """
    boxes = [m for m in _MARKER_RE.finditer(text) if m.lastgroup == "box"]
    for end in range(len(boxes), max(0, len(boxes) - tries), -1):
        parts = _box_run(text, boxes[:end])
        if parts:
            return ", ".join(parts)
    return None
