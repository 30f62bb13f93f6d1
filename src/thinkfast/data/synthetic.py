"""The demo's synthetic reasoning task: multi-step arithmetic word problems with a chain of
thought designed to be learnable by a ~1M-parameter Llama in minutes of CPU training.

A problem is a chain of named quantities. The first sentence sets one; each later sentence
derives a new one from an earlier one (by default the one just before) with one operation::

    Box one has 347 apples. Box two has 128 more apples than box one. Box three has 3 times as
    many apples as box two. Box four has 56 fewer apples than box three. How many apples are in
    box four?

The number of operations is the problem's number of *steps* (3 above): the main difficulty knob.

The chain of thought has one line per sentence. Everything a line needs is either copied from
close before it or found through a key the model must learn anyway, and no line ever copies a
word that carries no meaning (a person's name, the item):

  * a quantity's name is a number word ("three"): the line's name is the previous line's plus
    one, and it is the key that finds the sentence in the question. It sits right before "has",
    so the operand is two tokens after the key -- the copy a small model learns. (With ordinals,
    "The third box has 669", the key was three tokens before the operand, and a 0.8M Llama
    trained on 12M tokens copied the wrong operand from the third sentence on: teacher-forced,
    every error of a test chain was that first operand digit.)
  * the line restates its sentence without the item: "Box three has 3 times as many as box two.";
  * the value it reads is restated as ``two = digits``, copied from the line that bound it;
  * numbers are written at a fixed width (``width`` digits), least-significant digit first, one
    token per digit, so column i of every number sits at the same offset;
  * the operation is worked column by column, each column written out with its carry / borrow
    ("a + b + carry_in = carry_out digit"); multiplication is by a single digit;
  * the line ends by binding the result: ``three = 5 2 4 1``;
  * ``answer = 1 4 2 5`` restates the last value most significant digit first, so writing the
    answer is a copy, not a reversal.

The answer line is ``#### N`` with N written normally, so grading is an integer comparison::

    Box one has 347. one = 7 4 3 0
    Box two has 128 more than box one. one = 7 4 3 0 plus 8 2 1 0 : 7 + 8 + 0 = 1 5 ,
      4 + 2 + 1 = 0 7 , 3 + 1 + 0 = 0 4 , 0 + 0 + 0 = 0 0 . two = 5 7 4 0
    Box three has 3 times as many as box two. two = 5 7 4 0 times 3 : 5 * 3 + 0 = 1 5 ,
      7 * 3 + 1 = 2 2 , 4 * 3 + 2 = 1 4 , 0 * 3 + 1 = 0 1 . three = 5 2 4 1
    Box four has 56 fewer than box three. three = 5 2 4 1 minus 6 5 0 0 : ... . four = 9 6 3 1
    answer = 1 3 6 9
    #### 1369

(each CoT line is one text line; wrapped here). ``naming="names"`` names people ("Second, Bob
has 128 more apples than Ann.") and the CoT restates each sentence verbatim.

What a 0.8M Llama learns, and what it does not (each run ~12M tokens or less, CPU minutes): the
column arithmetic, the bindings and the answer line are learned early; the step learned last is
the **look-up of sentence k in the question** -- teacher-forced, nearly every remaining error is
the first token of a restated sentence (the name after "Third," or the operand after "Box three
has"). Three things made that look-up learnable, measured on the names design with 2-5 steps:

  * one problem per training row, not packed rows: earlier problems in a packed row hold other
    "Third" sentences, decoys for the look-up (with a one-shot prompt and packed rows: greedy 10%);
  * many small steps: batch 4 x 3000 steps reached a loss of 0.05 where batch 16 x 800 steps
    reached 0.22 (both zero-shot, unpacked; greedy 4% and 7%: the look-up was still missing);
  * ``marker_comma=False`` and ``sentence_sep="\n"``: "Third Vic has ..." on a line of its own.
    The name then follows its key directly, and the key is the same token in the question and in
    the chain (both after a newline; the tokenizer tells "Third" from " Third"). Greedy went from
    4% to 25% at the same budget (2 operations: 84%), and the errors left moved to the operand
    after "Vic has" (a two-token key).

The shipped demo teacher uses all three, with 2-5 operations (``assets/demo_task.json``), trained
for 8000 steps x 4 rows: greedy 61% (by operations 100 / 77 / 57 / 12%). The same recipe on 2-4
operations reached 95%, on 2-6 only 28%.

Train and test problems are disjoint by construction: a problem belongs to the test split iff a
hash of its question text falls in the test fraction of the hash space, so no size or seed
choice can make the splits overlap. Everything is deterministic by seed (``random.Random``; the
global RNG is never used).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

NAMES = (
    "Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jay", "Kim", "Lou",
    "Max", "Ned", "Oli", "Pam", "Ray", "Sue", "Tom", "Uma", "Vic", "Wes", "Zoe", "Lea",
)
ITEMS = (
    "apples", "books", "coins", "pens", "shells", "stamps", "marbles", "cards", "beads",
    "stickers", "cookies", "pebbles",
)
MARKERS = ("First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth", "Ninth")
ORDINALS = tuple(m.lower() for m in MARKERS)
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""Names of the quantities in 'ordinal' naming: "Box three has 669 more shells than box two."."""
CONTAINERS = ("box",)
"""Containers for 'ordinal' naming (one: a CoT line names it, and copying a word that varies
from problem to problem was measured not to be learned)."""
NAMINGS = ("ordinal", "names")
OPS = ("add", "sub", "mul")
_OP_WORD = {"add": "plus", "sub": "minus", "mul": "times"}
_SPLITS = ("train", "test")


class SyntheticError(ValueError):
    """A configuration that cannot generate problems."""


@dataclass
class SyntheticConfig:
    """Difficulty knobs of the synthetic task (all plain values: JSON round-trips)."""

    min_steps: int = 2
    """Fewest operations per problem (a problem has steps + 1 named quantities)."""
    max_steps: int = 5
    step_weights: Optional[list[float]] = None
    """Relative frequency of min_steps..max_steps operations (None = uniform)."""
    ops: list[str] = field(default_factory=lambda: list(OPS))
    """Operations to draw from: 'add', 'sub', 'mul' (single-digit multiplier)."""
    width: int = 4
    """Digits per number in the chain of thought; every value stays below 10**width."""
    start_range: list[int] = field(default_factory=lambda: [10, 999])
    """Inclusive range of the first quantity."""
    operand_range: list[int] = field(default_factory=lambda: [10, 999])
    """Inclusive range of an added / subtracted amount."""
    mul_range: list[int] = field(default_factory=lambda: [2, 9])
    """Inclusive range of a multiplier (single digit: 2..9)."""
    backref_prob: float = 0.0
    """Probability that a step refers to an earlier quantity than the previous one."""
    naming: str = "ordinal"
    """How quantities are named. 'ordinal': numbered boxes ("Box three") -- the name is the
    sentence's position, and a CoT line restates its sentence without the item ("Box three has 3
    times as many as box two."), so the chain never has to copy a name or an item word. 'names': people ("Cal"), each CoT line restates
    its sentence verbatim (names and item words included)."""
    msb_line: bool = True
    """End the chain with ``answer = 0 3 7 1`` (the answer's digits most significant first, fixed
    width) before ``#### 371``: writing N then becomes a copy that skips leading zeros and stops
    where the line stops, instead of a reversal that must count digits."""
    markers: bool = True
    """'names' only: start each sentence with an ordinal marker ("Second,") that the CoT repeats."""
    marker_comma: bool = True
    """Write the marker as "Third, Fay has ..." (True) or "Third Fay has ..." (False). Without the
    comma the name sits right after its key, so restating the sentence starts with a one-token
    look-up (the token after "Third"), not a two-token one (the token after "Third ,")."""
    sentence_sep: str = " "
    """Between the question's sentences. "\n" puts each on a line of its own, so a sentence's first
    word is the same token in the question and in the chain of thought, where every line starts
    after a newline (the tokenizer tells "Third" from " Third")."""
    test_fraction: float = 0.2
    """Share of the question-hash space reserved for the test split."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise SyntheticError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if self.max_steps + 1 > min(len(NAMES), len(MARKERS)):
            raise SyntheticError(f"max_steps {self.max_steps} is more than the {len(MARKERS) - 1} supported")
        n = self.max_steps - self.min_steps + 1
        if self.step_weights is not None:
            if len(self.step_weights) != n or any(w < 0 for w in self.step_weights) or sum(self.step_weights) <= 0:
                raise SyntheticError(f"step_weights needs {n} non-negative weights with a positive sum")
        if not self.ops or set(self.ops) - set(OPS):
            raise SyntheticError(f"ops must be a non-empty subset of {OPS}, got {self.ops}")
        if not 1 <= self.width <= 12:
            raise SyntheticError("width must be in 1..12")
        top = 10 ** self.width - 1
        for key in ("start_range", "operand_range", "mul_range"):
            lo, hi = getattr(self, key)
            if not 0 <= lo <= hi:
                raise SyntheticError(f"{key} must be [lo, hi] with 0 <= lo <= hi, got {[lo, hi]}")
        if self.start_range[0] < 1 or self.start_range[1] > top:
            raise SyntheticError(f"start_range must lie in [1, {top}] for width {self.width}")
        if self.operand_range[0] < 1:
            raise SyntheticError("operand_range must start at 1 or more")
        if self.mul_range[0] < 2 or self.mul_range[1] > 9:
            raise SyntheticError("mul_range must lie in [2, 9] (single-digit multipliers)")
        if self.sentence_sep not in (" ", "\n"):
            raise SyntheticError(f"sentence_sep must be ' ' or '\\n', got {self.sentence_sep!r}")
        if self.naming not in NAMINGS:
            raise SyntheticError(f"naming must be one of {NAMINGS}, got {self.naming!r}")
        if not 0 <= self.backref_prob <= 1:
            raise SyntheticError("backref_prob must be in [0, 1]")
        if not 0 < self.test_fraction < 1:
            raise SyntheticError("test_fraction must be in (0, 1)")

    @property
    def max_value(self) -> int:
        return 10 ** self.width - 1

    @classmethod
    def from_dict(cls, data: dict) -> "SyntheticConfig":
        from ..config import from_dict

        return from_dict(cls, data)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Step:
    """One sentence: ``name`` gets ``value`` = (quantity ``ref``'s value) op ``operand``."""

    name: str
    op: str
    """'set' for the first sentence, else 'add' / 'sub' / 'mul'."""
    operand: int
    ref: Optional[int]
    """Index of the quantity this one is derived from (None for 'set')."""
    value: int


@dataclass
class Problem:
    item: str
    """The counted thing ("apples"); in 'ordinal' naming also ``container``."""
    steps: list[Step]
    question: str
    solution: str
    """The chain of thought, ending with the line ``#### N``."""
    answer: int
    container: str = ""
    naming: str = "ordinal"

    @property
    def n_steps(self) -> int:
        """Number of operations (sentences minus one)."""
        return len(self.steps) - 1

    def to_record(self) -> dict:
        """The GSM8K-like JSONL record (plus the structured form, for checking)."""
        return {"question": self.question, "answer": self.solution, "n_steps": self.n_steps,
                "item": self.item, "container": self.container, "naming": self.naming,
                "steps": [asdict(s) for s in self.steps]}


# --- arithmetic on the structured form --------------------------------------------------------

def apply_op(op: str, a: int, b: int) -> int:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    raise ValueError(f"unknown op {op!r}")


def evaluate(steps: Sequence[Step]) -> list[int]:
    """Recompute every quantity's value from the structured form (ignores ``Step.value``)."""
    values: list[int] = []
    for i, s in enumerate(steps):
        if s.op == "set":
            if i != 0:
                raise ValueError("only the first step may be 'set'")
            values.append(s.operand)
        else:
            if s.ref is None or not 0 <= s.ref < i:
                raise ValueError(f"step {i} refers to {s.ref}")
            values.append(apply_op(s.op, values[s.ref], s.operand))
    return values


# --- surface text -----------------------------------------------------------------------------

def lsb_digits(n: int, width: int) -> list[int]:
    """``n`` as ``width`` digits, least significant first."""
    if not 0 <= n < 10 ** width:
        raise ValueError(f"{n} does not fit in {width} digits")
    return [(n // 10 ** i) % 10 for i in range(width)]


def _digits_text(n: int, width: int) -> str:
    return " ".join(str(d) for d in lsb_digits(n, width))


def _sentence(i: int, steps: Sequence[Step], item: str, container: str = "", cot: bool = False) -> str:
    """Sentence ``i`` of the question, or (``cot``) its restatement in the chain of thought.

    'names' (no container): "Bob has 128 more apples than Ann." -- the CoT repeats it verbatim.
    'ordinal': "Box two has 128 more apples than box one." The CoT drops the item: "Box two has
    128 more than box one."
    """
    step = steps[i]
    item_ = "" if cot else f" {item}"
    if container:
        subj = f"{container.capitalize()} {step.name}"
        ref = "" if step.ref is None else f"{container} {steps[step.ref].name}"
    else:
        subj = step.name
        ref = steps[step.ref].name if step.ref is not None else ""
    if step.op == "set":
        return f"{subj} has {step.operand}{item_}."
    if step.op == "add":
        return f"{subj} has {step.operand} more{item_} than {ref}."
    if step.op == "sub":
        return f"{subj} has {step.operand} fewer{item_} than {ref}."
    return f"{subj} has {step.operand} times as many{item_} as {ref}."


def _marked(i: int, sentence: str, markers: bool, comma: bool = True) -> str:
    if not markers:
        return sentence
    return f"{MARKERS[i]}, {sentence}" if comma else f"{MARKERS[i]} {sentence}"


def columns_text(op: str, a: int, b: int, width: int) -> str:
    """The column-by-column working of ``a op b`` (LSB first), e.g. ``7 + 8 + 0 = 1 5 , ...``.

    add: ``x + y + carry_in = carry_out digit``; sub: ``x - y - borrow_in = borrow_out digit``;
    mul (b a single digit): ``x * b + carry_in = carry_out digit``.
    """
    xs = lsb_digits(a, width)
    cols = []
    c = 0
    if op == "add":
        ys = lsb_digits(b, width)
        for x, y in zip(xs, ys):
            s = x + y + c
            cols.append(f"{x} + {y} + {c} = {s // 10} {s % 10}")
            c = s // 10
    elif op == "sub":
        ys = lsb_digits(b, width)
        for x, y in zip(xs, ys):
            s = x - y - c
            nb = 1 if s < 0 else 0
            cols.append(f"{x} - {y} - {c} = {nb} {s + 10 * nb}")
            c = nb
    elif op == "mul":
        if not 0 <= b <= 9:
            raise ValueError("multiplication is by a single digit")
        for x in xs:
            s = x * b + c
            cols.append(f"{x} * {b} + {c} = {s // 10} {s % 10}")
            c = s // 10
    else:
        raise ValueError(f"unknown op {op!r}")
    if c:
        raise ValueError(f"{a} {op} {b} overflows {width} digits")
    return " , ".join(cols)


def render_question(steps: Sequence[Step], item: str, markers: bool = True, container: str = "",
                    marker_comma: bool = True, sep: str = " ") -> str:
    """The question. ``container`` given = 'ordinal' naming (steps are named "one", "two", ...)."""
    if container:
        parts = [_sentence(i, steps, item, container) for i in range(len(steps))]
        parts.append(f"How many {item} are in {container} {steps[-1].name}?")
    else:
        parts = [_marked(i, _sentence(i, steps, item), markers, marker_comma) for i in range(len(steps))]
        parts.append(f"How many {item} does {steps[-1].name} have?")
    return sep.join(parts)


def render_solution(steps: Sequence[Step], item: str, width: int, markers: bool = True,
                    container: str = "", msb_line: bool = True, marker_comma: bool = True) -> str:
    """The chain of thought, one line per sentence, then ``#### N``."""
    values = evaluate(steps)
    lines = []
    for i, s in enumerate(steps):
        if container:
            head = _sentence(i, steps, item, container, cot=True)
        else:
            head = _marked(i, _sentence(i, steps, item), markers, marker_comma)
        if s.op == "set":
            lines.append(f"{head} {s.name} = {_digits_text(values[i], width)}")
            continue
        ref = steps[s.ref]
        a = values[s.ref]
        b_text = str(s.operand) if s.op == "mul" else _digits_text(s.operand, width)
        lines.append(
            f"{head} {ref.name} = {_digits_text(a, width)} {_OP_WORD[s.op]} {b_text} : "
            f"{columns_text(s.op, a, s.operand, width)} . {s.name} = {_digits_text(values[i], width)}"
        )
    if msb_line:
        lines.append("answer = " + " ".join(str(x) for x in reversed(lsb_digits(values[-1], width))))
    lines.append(f"#### {values[-1]}")
    return "\n".join(lines)


def parse_answer(text: str) -> Optional[int]:
    """The integer after the last ``####`` (None if there is none or it is not an integer)."""
    if text is None or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    tok = tail.split()[0] if tail.split() else ""
    tok = tok.replace(",", "").rstrip(".")
    try:
        return int(tok)
    except ValueError:
        return None


# --- generation -------------------------------------------------------------------------------

def _draw_steps(rng: random.Random, cfg: SyntheticConfig) -> Optional[list[Step]]:
    """One random chain, or None when the draw got stuck (no operation fits a value)."""
    counts = list(range(cfg.min_steps, cfg.max_steps + 1))
    n_ops = rng.choices(counts, weights=cfg.step_weights)[0] if cfg.step_weights else rng.choice(counts)
    names = list(NUMBER_WORDS[:n_ops + 1]) if cfg.naming == "ordinal" else rng.sample(NAMES, n_ops + 1)
    top = cfg.max_value
    v0 = rng.randint(*cfg.start_range)
    steps = [Step(names[0], "set", v0, None, v0)]
    olo, ohi = cfg.operand_range
    mlo, mhi = cfg.mul_range
    for i in range(1, n_ops + 1):
        ref = i - 1
        if i >= 2 and cfg.backref_prob > 0 and rng.random() < cfg.backref_prob:
            ref = rng.randrange(0, i - 1)
        base = steps[ref].value
        allowed = []
        for op in cfg.ops:
            if op == "add" and base + olo <= top:
                allowed.append(op)
            elif op == "sub" and base - olo >= 1:
                allowed.append(op)
            elif op == "mul" and base >= 1 and base * mlo <= top:
                allowed.append(op)
        if not allowed:
            return None
        op = rng.choice(allowed)
        if op == "add":
            b = rng.randint(olo, min(ohi, top - base))
        elif op == "sub":
            b = rng.randint(olo, min(ohi, base - 1))
        else:
            b = rng.randint(mlo, min(mhi, top // base))
        steps.append(Step(names[i], op, b, ref, apply_op(op, base, b)))
    return steps


def question_hash(question: str) -> int:
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")


def split_of(question: str, cfg: SyntheticConfig) -> str:
    """'test' iff the question's hash falls in the test share of the hash space."""
    return "test" if question_hash(question) < cfg.test_fraction * 2.0 ** 64 else "train"


def _question(steps: Sequence[Step], item: str, cfg: SyntheticConfig, container: str) -> str:
    """``render_question`` with the layout knobs of ``cfg``."""
    return render_question(steps, item, cfg.markers, container, cfg.marker_comma, cfg.sentence_sep)


def make_problem(steps: list[Step], item: str, cfg: SyntheticConfig, container: str = "") -> Problem:
    """Render a structured chain (``container`` is needed for 'ordinal' naming)."""
    if cfg.naming == "ordinal" and not container:
        raise ValueError("'ordinal' naming needs a container word")
    container = container if cfg.naming == "ordinal" else ""
    question = _question(steps, item, cfg, container)
    solution = render_solution(steps, item, cfg.width, cfg.markers, container, cfg.msb_line, cfg.marker_comma)
    return Problem(item, steps, question, solution, evaluate(steps)[-1], container, cfg.naming)


def iter_problems(cfg: SyntheticConfig, split: str, seed: int = 0) -> Iterator[Problem]:
    """An endless, deterministic stream of distinct problems of ``split`` ('train' / 'test')."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    rng = random.Random(f"thinkfast-synthetic/{seed}/{split}")
    seen: set[int] = set()
    misses = 0
    while True:
        steps = _draw_steps(rng, cfg)
        if steps is None:
            misses += 1
            if misses > 10000:
                raise SyntheticError("the configuration almost never yields a valid problem")
            continue
        item = rng.choice(ITEMS)
        container = rng.choice(CONTAINERS) if cfg.naming == "ordinal" else ""
        question = _question(steps, item, cfg, container)
        if split_of(question, cfg) != split:
            continue
        h = question_hash(question)
        if h in seen:
            misses += 1
            if misses > 100000:
                raise SyntheticError("the configuration has run out of distinct problems")
            continue
        seen.add(h)
        misses = 0
        yield make_problem(steps, item, cfg, container)


def generate(cfg: SyntheticConfig, split: str, n: int, seed: int = 0) -> list[Problem]:
    """The first ``n`` problems of the split's stream (a prefix of any longer request)."""
    it = iter_problems(cfg, split, seed)
    return [next(it) for _ in range(n)]


def problem_from_record(rec: dict, cfg: Optional[SyntheticConfig] = None) -> Problem:
    """Rebuild a Problem from ``to_record`` output (checks that the texts match)."""
    steps = [Step(**s) for s in rec["steps"]]
    values = evaluate(steps)
    container = rec.get("container", "")
    prob = Problem(rec["item"], steps, rec["question"], rec["answer"], values[-1], container,
                   rec.get("naming", "ordinal" if container else "names"))
    if cfg is not None:
        if _question(steps, rec["item"], cfg, container) != rec["question"]:
            raise ValueError("record's question does not match its steps")
    return prob


# --- files ------------------------------------------------------------------------------------

def write_jsonl(problems: Iterable[Problem], path: str | os.PathLike) -> int:
    """Write GSM8K-like records (``question``, ``answer`` = CoT ending ``#### N``) atomically."""
    from ..config import atomic_write_text

    lines = [json.dumps(p.to_record()) for p in problems]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The problems of a task file (``data.jsonl`` rules: a bad line is a DataError naming it)."""
    from .jsonl import DataError, iter_jsonl

    out = []
    for i, rec in iter_jsonl(path):
        if "question" not in rec or "answer" not in rec:
            raise DataError(f"{path}:{i}: a record needs 'question' and 'answer'")
        out.append(rec)
    return out


def write_splits(out_dir: str | os.PathLike, cfg: Optional[SyntheticConfig] = None, n_train: int = 20000,
                 n_test: int = 500, seed: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (and ``config.json``) under ``out_dir``."""
    from ..config import atomic_write_text

    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    paths = {"train": out / "train.jsonl", "test": out / "test.jsonl"}
    write_jsonl(generate(cfg, "train", n_train, seed), paths["train"])
    write_jsonl(generate(cfg, "test", n_test, seed), paths["test"])
    atomic_write_text(out / "config.json",
                      json.dumps({"config": cfg.to_dict(), "seed": seed, "n_train": n_train,
                                  "n_test": n_test}, indent=2) + "\n")
    return paths


# --- formatting for training / prompting ------------------------------------------------------

QUESTION_PREFIX = "Question: "
ANSWER_PREFIX = "\nAnswer:"
EXAMPLE_END = "\n\n"
"""A worked example ends with a blank line; the next starts with ``Question:``."""


def format_prompt(question: str) -> str:
    return f"{QUESTION_PREFIX}{question}{ANSWER_PREFIX}"


def format_completion(solution: str) -> str:
    """What the model must write after the prompt: the CoT, then the blank line that stops it."""
    return f" {solution}{EXAMPLE_END}"


def format_example(question: str, solution: str) -> str:
    return format_prompt(question) + format_completion(solution)


def tokenizer_texts(cfg: Optional[SyntheticConfig] = None) -> list[str]:
    """Texts that together contain every piece the task (prompts included) can produce."""
    cfg = cfg or SyntheticConfig()
    words = list(NAMES) + list(ITEMS) + list(MARKERS) + list(ORDINALS) + list(CONTAINERS) + list(NUMBER_WORDS)
    words += [c.capitalize() for c in CONTAINERS]
    words += list(_OP_WORD.values())
    words += ["has", "more", "fewer", "than", "times", "as", "many", "How", "does", "have", "are", "in",
              "the", "The", "previous", "last", "Question", "Answer"]
    every = words + list("0123456789") + list(",.:;=+-*#?")
    # each piece with and without its leading space ("\n" + piece has none)
    texts = ["\n".join(every), " " + " ".join(every), EXAMPLE_END]
    # a few real problems, so nothing produced by the templates is missed
    rng_cfg = SyntheticConfig(**{**cfg.to_dict(), "min_steps": cfg.max_steps, "step_weights": None})
    for p in generate(rng_cfg, "train", 3, seed=12345):
        texts.append(format_example(p.question, p.solution))
    return texts
