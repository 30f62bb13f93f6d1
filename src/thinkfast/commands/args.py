"""Argument types for the ``thinkfast`` commands: bad values are usage errors at parse time.

Pass one of these as ``type=`` to ``add_argument``. argparse turns the ``ArgumentTypeError`` they
raise into ``thinkfast CMD: error: argument --n: must be an integer >= 1, got '0'`` and exit
status 2, before any model is loaded, instead of a traceback from deep inside the run.

Numbers:  positive_int, non_negative_int, positive_float, non_negative_float, probability
          (0 < p <= 1), fraction (0 <= x < 1).
Paths:    existing_file, existing_dir, data_source (an existing file or ``hf:NAME``) for inputs;
          output_file, output_dir for outputs (an output file must not be an existing directory
          and the reverse; neither needs to exist).
Lists:    comma_list(*choices): "a,b" -> ["a", "b"], each one of ``choices``.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, Optional

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float", "probability",
           "fraction", "existing_file", "existing_dir", "data_source", "output_file", "output_dir", "comma_list"]


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):  # float() accepts "nan" and "inf"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _bounded(parse: Callable[[str, str], Any], what: str, ok: Callable[[Any], bool], name: str):
    """An argparse type: ``parse`` the text, then require ``ok(value)``; errors say ``what``."""
    def check(text: str):
        value = parse(text, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    check.__name__ = name
    return check


positive_int = _bounded(_int, "an integer >= 1", lambda v: v >= 1, "positive_int")
non_negative_int = _bounded(_int, "an integer >= 0", lambda v: v >= 0, "non_negative_int")
positive_float = _bounded(_float, "a number > 0", lambda v: v > 0, "positive_float")
non_negative_float = _bounded(_float, "a number >= 0", lambda v: v >= 0, "non_negative_float")
probability = _bounded(_float, "a number in (0, 1]", lambda v: 0 < v <= 1, "probability")
"""A number in (0, 1], such as top-p."""
fraction = _bounded(_float, "a number in [0, 1)", lambda v: 0 <= v < 1, "fraction")
"""A number in [0, 1), such as a held-out share of the data."""


def existing_file(text: str) -> str:
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


def existing_dir(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    return text


def data_source(text: str) -> str:
    """Training-style data: a JSONL file, or ``hf:NAME[:CONFIG]`` (a Hugging Face dataset)."""
    return text if text.startswith("hf:") else existing_file(text)


def output_file(text: str) -> str:
    """A file to write: it may not exist yet, but it must not be a directory (nor lie in a file)."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name to write")
    _parent_is_not_a_file(text)
    return text


def output_dir(text: str) -> str:
    """A directory to write into: it may not exist yet, but it must not be a file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    _parent_is_not_a_file(text)
    return text


def _parent_is_not_a_file(text: str) -> None:
    parent = os.path.dirname(os.path.abspath(text))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, so nothing can be written under it")


def comma_list(*choices: str):
    """A type for "a,b,c": the list of names, each one of ``choices``, at least one."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(choices)}, got {text!r}")
        return names
    parse.__name__ = "comma_list"
    return parse


def add_threads(parser: argparse.ArgumentParser, default: Optional[int] = None, help: str = "") -> None:
    """The ``--threads`` flag every command has: PyTorch's intra-op threads (``cli.main`` applies
    it through ``runtime.configure_threads``; default all cores, or ``THINKFAST_THREADS``)."""
    parser.add_argument("--threads", type=positive_int, default=default,
                        help=help or "PyTorch intra-op threads (default: all cores, or THINKFAST_THREADS)")
