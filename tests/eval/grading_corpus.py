"""A labelled corpus of completions for the grader, correct by construction.

Each ``Case`` is a gold answer, a completion ending the way real models end theirs, and whether
the completion's final answer equals the gold one. The corpus is the product of

- **answers** (``ANSWERS``): a gold answer, renderings of it a model might write that are equal
  to it, and near misses that are not (off by one, a sign, a bracket, a missing root, ...);
- **endings** (``ENDINGS``): the styles models finish with (``\\boxed{}`` as Qwen and DeepSeek-R1
  write it, Minerva's "Final Answer: ... I hope it is correct.", Llama's "The final answer is:
  $\\boxed{X}$", ``**Answer:** X``, GSM8K's ``#### N``, "the answer is X", a closing sentence
  with no marker, and the answer alone in ``$...$``, ``$$...$$``, ``\\(...\\)`` or ``\\[...\\]``);
- **chains** (``CHAINS``): reasoning before the ending, with numbers and LaTeX in it that are
  not the answer;

and of families that need no product: an intermediate ``\\boxed{}`` early in the chain before
a different final answer (either may be the gold one), several boxes read as one answer, a box
followed by a check that says "answer" in passing, a reasoning block of tens of kB, and
completions that give no answer at all. ``corpus()`` is deterministic.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    family: str
    gold: str
    completion: str
    correct: bool
    task: str = "math500"


@dataclass(frozen=True)
class Answer:
    gold: str
    equal: tuple[str, ...]
    wrong: tuple[str, ...]
    plain: bool = False
    """A plain number, as GSM8K's answers are (also used for ``#### N`` endings)."""


ANSWERS: list[Answer] = [
    # integers and GSM8K-style amounts
    Answer("35", ("35", "35.00", "\\$35"), ("36", "-35", "3.5"), plain=True),
    Answer("18", ("18", "18.0"), ("17", "81"), plain=True),
    Answer("1000", ("1,000", "1{,}000", "1000"), ("999", "100"), plain=True),
    Answer("1450000", ("1,450,000", "1450000"), ("145000", "1,450,001"), plain=True),
    Answer("-7", ("-7", "- 7"), ("7", "-6"), plain=True),
    Answer("0", ("0", "0.0"), ("1", "-1"), plain=True),
    # decimals and fractions
    Answer("0.5", ("0.5", "\\frac{1}{2}", ".5", "1/2"), ("0.05", "\\frac{1}{3}")),
    Answer("\\frac{7}{5}", ("\\frac{7}{5}", "\\dfrac{7}{5}", "7/5", "1.4"), ("\\frac{5}{7}", "\\frac{7}{6}", "5")),
    Answer("\\frac{2}{3}", ("\\frac23", "\\frac{2}{3}", "2/3", "\\tfrac{2}{3}"), ("\\frac32", "\\frac{2}{5}", "3")),
    Answer("-\\frac{2}{3}", ("-\\frac{2}{3}", "\\frac{-2}{3}", "-2/3"), ("\\frac{2}{3}", "-\\frac{3}{2}")),
    Answer("\\frac{3}{4}", ("\\frac{3}{4}", "3/4", "0.75"), ("\\frac{4}{3}", "0.7", "4")),
    # radicals and constants
    Answer("4\\sqrt{3}", ("4\\sqrt{3}", "4\\sqrt 3", "4 \\sqrt{3}", "\\sqrt{48}"), ("4\\sqrt{2}", "3\\sqrt{4}", "3")),
    Answer("5\\sqrt{2}", ("5\\sqrt{2}", "\\sqrt{50}", "5 \\sqrt 2"), ("5\\sqrt{3}", "2\\sqrt{5}")),
    Answer("\\sqrt{3}", ("\\sqrt 3", "\\sqrt{3}"), ("\\sqrt{2}", "3")),
    Answer("\\frac{3+\\sqrt{7}}{2}", ("\\frac{3+\\sqrt{7}}{2}", "\\frac{3 + \\sqrt 7}{2}", "\\frac{\\sqrt{7}+3}{2}"),
           ("\\frac{3-\\sqrt{7}}{2}", "2", "\\frac{3+\\sqrt{7}}{4}")),
    Answer("4\\pi", ("4\\pi", "4 \\cdot \\pi", "4 \\pi"), ("2\\pi", "4")),
    Answer("\\frac{\\pi}{3}", ("\\frac{\\pi}{3}", "\\pi/3"), ("\\frac{\\pi}{6}", "3")),
    # intervals, tuples, sets
    Answer("[1,3)", ("[1,3)", "\\left[1,3\\right)", "[1, 3)"), ("(1,3)", "[1,3]", "(1,3]")),
    Answer("(1,4)", ("(1,4)", "\\left(1, 4\\right)"), ("[1,4)", "(1,4]", "(1,5)")),
    Answer("(-\\infty, 3]", ("(-\\infty, 3]", "\\left(-\\infty, 3\\right]", "(-\\infty,3]"),
           ("(-\\infty, 3)", "[3, \\infty)")),
    Answer("\\left( 3, \\frac{\\pi}{2} \\right)", ("(3, \\frac{\\pi}{2})", "\\left(3,\\frac{\\pi}{2}\\right)", "(3, \\pi/2)"),
           ("(3, \\pi)", "(\\frac{\\pi}{2}, 3)")),
    Answer("(6,31,-1)", ("(6, 31, -1)", "(6,31,-1)"), ("(6, -1, 31)", "(6, 31, 1)")),
    Answer("\\{1,2\\}", ("\\{1,2\\}", "\\{2, 1\\}"), ("\\{1,3\\}", "\\{1\\}")),
    Answer("\\frac{2+5b}{7}", ("\\frac{2+5b}{7}", "(2+5b)/7", "\\frac{5b+2}{7}"), ("\\frac{2+5b}{5}", "(2-5b)/7", "7")),
    Answer("9:30", ("9:30",), ("9:45", "10:30")),
    # several answers
    Answer("2, -3", ("2, -3", "-3, 2", "-3,2"), ("2", "2, 3", "-2, 3")),
    Answer("1, 5, 7", ("1, 5, 7", "7, 5, 1"), ("1, 5", "1, 5, 8")),
    # text answers and multiple choice
    Answer("\\text{(C)}", ("\\text{(C)}", "\\textbf{(C)}", "(C)"), ("\\text{(D)}", "(B)")),
    Answer("\\text{Evelyn}", ("\\text{Evelyn}", "\\text{Evelyn}"), ("\\text{Bob}",)),
    # money, units, degrees, percent
    Answer("\\$4,\\!210", ("4{,}210 \\text{ dollars}", "\\$4,210", "4210", "\\$4,\\!210"), ("4200", "\\$4,201")),
    Answer("90^\\circ", ("90^\\circ", "90^{\\circ}", "90"), ("45^\\circ", "180")),
    Answer("12", ("12 \\text{ cm}", "12", "12\\text{ square units}"), ("13 \\text{ cm}", "1.2")),
    # complex numbers, bases, polynomials, equations, functions
    Answer("2+3i", ("3i + 2", "2 + 3i", "2+3i"), ("2-3i", "3+2i", "2")),
    Answer("101_2", ("101_{2}", "101_{ 2 }", "101_2"), ("110_2", "111_2")),
    Answer("x^3-2x", ("x^{3} - 2x", "x^3 - 2x", "-2x + x^3"), ("x^3+2x", "x^2-2x")),
    Answer("y = 2x - 3", ("y = 2x - 3", "y=2x-3"), ("y = 2x + 3", "y = 3x - 2")),
    Answer("\\tan x", ("\\tan x", "\\tan(x)"), ("\\cot x", "\\sin x")),
    Answer("2^{10}", ("2^{10}", "1024"), ("2^{9}", "1000")),
    # matrices and vectors
    Answer("\\begin{pmatrix} 1/2 \\\\ 3 \\end{pmatrix}",
           ("\\begin{pmatrix} \\frac{1}{2} \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix} 0.5 \\\\ 3 \\end{pmatrix}"),
           ("\\begin{pmatrix} 3 \\\\ \\frac{1}{2} \\end{pmatrix}", "\\begin{pmatrix} \\frac{1}{3} \\\\ 3 \\end{pmatrix}")),
    Answer("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
           ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
           ("\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}",)),
]

# Reasoning that precedes the ending: numbers and LaTeX that are not the answer, no answer marker.
CHAINS: list[str] = [
    "",
    "Let me work through this step by step.\nFirst, 3 + 4 = 7, and 7 \\times 2 = 14.\nThen we subtract 2 to get 12.\n\n",
    "We start from $x^2 - 5x + 6 = 0$, so $(x-2)(x-3) = 0$. Checking the constraint $x > 1$ and the value "
    "$\\frac{1}{2}$ of the ratio, we simplify.\n\n",
    "## Step 1: Understand the problem\nThere are 15 items and 4 groups.\n\n## Step 2: Compute\n"
    "$15 - 4 = 11$ and $11 \\cdot 3 = 33$.\n\n",
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day at "
    "the market.\n",
]


def _endings(x: str) -> dict[str, str]:
    """The answer ``x`` (LaTeX) written in each ending style."""
    return {
        "boxed": f"Therefore, the answer is $\\boxed{{{x}}}$.",
        "boxed_bare": f"So the result is \\boxed{{{x}}}",
        "r1": f"Okay, so I need to check this.\n</think>\n\nThe computation gives the result.\n\n\\[\n\\boxed{{{x}}}\n\\]",
        "minerva": f"Final Answer: The final answer is ${x}$. I hope it is correct.",
        "minerva_boxed": f"This gives $\\boxed{{{x}}}$.\nFinal Answer: The final answer is ${x}$. I hope it is correct.",
        "llama": f"The final answer is: $\\boxed{{{x}}}$",
        "md_answer": f"**Answer:** ${x}$",
        "answer_is": f"The answer is ${x}$.",
        "closing": f"Putting everything together, the result is ${x}$.",
        "dollar": f"Hence\n${x}$",
        "display_dollar": f"Hence\n$${x}$$",
        "paren": f"Hence \\({x}\\).",
        "bracket": f"Hence\n\\[{x}\\]",
    }


def _plain_endings(x: str, number: bool) -> dict[str, str]:
    """Endings for an answer written without LaTeX; GSM8K's for a plain number."""
    out = {
        "answer_is_plain": f"The answer is {x}.",
        "closing_plain": f"Putting everything together, the result is {x}.",
        "minerva_sentence": f"Final Answer: The value we are looking for is {x}.",
    }
    if number:
        out.update({
            "hashes": f"#### {x}",
            "closing_number": f"So she has {x} left at the end.",
            "minerva_dollar": f"Final Answer: The final answer is $\\${x}$. I hope it is correct.",
        })
    return out


ENDINGS = tuple(_endings("X")) + tuple(_plain_endings("X", number=True))
_LATEX_FREE = re.compile(r"[^\\{}$ ]+")
# "-3,2" in plain text is as much a decimal comma as a list: it gets LaTeX endings only.
_BARE_COMMA = re.compile(r"^[+-]?\d+,[+-]?\d+$")


def _product(rng: random.Random) -> list[Case]:
    cases = []
    for a in ANSWERS:
        variants = [(r, True) for r in a.equal] + [(r, False) for r in a.wrong]
        for rendering, ok in variants:
            endings = dict(_endings(rendering))
            if _LATEX_FREE.fullmatch(rendering) and not _BARE_COMMA.search(rendering):
                endings.update(_plain_endings(rendering, number=a.plain))
            for family, ending in endings.items():
                chain = rng.choice(CHAINS)
                cases.append(Case(family, a.gold, chain + ending, ok, "gsm8k" if family == "hashes" else "math500"))
    return cases


def _intermediate(rng: random.Random) -> list[Case]:
    """An early box, then more work and a different final answer: the last one counts."""
    cases = []
    for a in ANSWERS:
        for early, final, ok in ((a.wrong[0], a.equal[0], True), (a.equal[0], a.wrong[0], False)):
            for tail in (f"The final answer is ${final}$.", f"So the answer is ${final}$.",
                         f"**Answer:** ${final}$", f"Final Answer: The final answer is ${final}$. I hope it is correct."):
                text = (f"A first attempt gives $\\boxed{{{early}}}$, but that ignores the second condition.\n"
                        f"Redoing the computation with it included:\n\n{tail}")
                cases.append(Case("intermediate_box", a.gold, text, ok))
    return cases


def _several_boxes() -> list[Case]:
    """One answer written over several boxes."""
    cases = []
    for gold, parts, wrong in (("(1,3),(5,3)", ("(1,3)", "(5,3)"), ("(1,3)",)),
                               ("2, -3", ("2", "-3"), ("2",)),
                               ("1, 5, 7", ("1", "5", "7"), ("1", "5")),
                               ("-1, 4", ("-1", "4"), ("4",))):
        for sep in (", ", " and ", ", and ", " \\quad \\text{and} \\quad "):
            for parts_, ok in ((parts, True), (wrong, False)):
                joined = sep.join(f"\\boxed{{{p}}}" for p in parts_)
                cases.append(Case("several_boxes", gold, f"The solutions are {joined}.", ok))
                joined = sep.join(f"$\\boxed{{{p}}}$" for p in parts_)
                cases.append(Case("several_boxes", gold, f"So $x$ is {joined}.", ok))
    return cases


def _checked_after() -> list[Case]:
    """A boxed answer followed by a check that mentions "answer" in passing: the box counts."""
    cases = []
    for a in ANSWERS[::3]:
        for boxed, ok in ((a.equal[0], True), (a.wrong[0], False)):
            for check in ("We may check our answer: substituting back gives $3 \\cdot 4 = 12$, as required.",
                          "Checking with $x = 2$ shows our answer is correct.",
                          "This answer satisfies both conditions, e.g. $1 + 1 = 2$."):
                cases.append(Case("checked_after", a.gold, f"So the result is $\\boxed{{{boxed}}}$.\n\n{check}", ok))
    return cases


def _long() -> list[Case]:
    """A long reasoning block (tens of kB, numbers throughout) before the answer."""
    block = "".join(f"Step {i}: we have {i} + {i + 1} = {2 * i + 1}, so $y_{{{i}}} = {i * i}$.\n" for i in range(1, 800))
    cases = []
    for a in ANSWERS[::2]:
        for x, ok in ((a.equal[-1], True), (a.wrong[-1], False)):
            cases.append(Case("long", a.gold, f"<think>\n{block}</think>\n\nThe final answer is $\\boxed{{{x}}}$.", ok))
    return cases


def _no_answer() -> list[Case]:
    """Completions that never state an answer (cut off, or a refusal): always incorrect."""
    texts = [
        "I am not sure how to solve this problem.",
        "Let me think about the constraints. If we let $x$ be the unknown, then",
        "We need to consider the cases where the expression is",
        "",
        "The problem asks for the value of the expression, but the information given is insufficient.",
    ]
    return [Case("no_answer", a.gold, t, False) for a in ANSWERS for t in texts]


def corpus(seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    return _product(rng) + _intermediate(rng) + _several_boxes() + _checked_after() + _long() + _no_answer()
