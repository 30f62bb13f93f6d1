"""JSON Lines reading with errors that name the file and the line.

A training run that dies an hour in on row 48,213 should instead refuse at start-up and say
where: every row is parsed before training begins, and a malformed one raises
``DataError("path:LINE: ...")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..config import json_error_detail
from ..runtime import UserError


class DataError(UserError):
    """Unusable training data: a malformed row, a missing field, a token id out of range."""


def decode_utf8(raw: bytes, path: str | os.PathLike, first_line: int = 1) -> str:
    """``raw`` as text; bytes that are not UTF-8 are a DataError at ``path:LINE`` (the line
    counted from ``first_line``), the position the rest of thinkfast reports errors at."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {column} of the line)") from None


def read_utf8(path: str | os.PathLike) -> str:
    """The whole of a UTF-8 text file; unreadable or non-UTF-8 files are a DataError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return decode_utf8(raw, path)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each non-blank line; a row must be a JSON object."""
    path = Path(path)
    try:
        f = open(path, "rb")  # decoded line by line, so bad bytes are reported by line
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            # without its newline, a row cut inside a string reads "Unterminated string", not
            # "Invalid control character"
            line = decode_utf8(raw, path, lineno).rstrip("\r\n")
            if line.strip():
                yield lineno, parse_row(line, path, lineno)


def parse_row(line: str, path: str | os.PathLike, lineno: int, malformed: str = "malformed JSON") -> dict[str, Any]:
    """One JSONL line as its row, a JSON object; anything else is a DataError at ``path:LINE``
    (``malformed`` starts the message for text that is not JSON)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: {malformed} ({json_error_detail(e)})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def read_jsonl(path: str | os.PathLike, limit: Optional[int] = None) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a JSONL file as (``"path:line"``, row) pairs; at most ``limit`` rows."""
    out = []
    for lineno, row in iter_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        out.append((f"{path}:{lineno}", row))
    return out


def open_hf(spec: str, split: str, streaming: bool = False,
            load_dataset: Optional[Callable[..., Any]] = None) -> Any:
    """The Hugging Face dataset named ``hf:NAME[:CONFIG]`` (local or hub; needs ``datasets``),
    loaded by ``load_dataset`` (default: ``datasets.load_dataset``); a DataError naming it when it
    cannot be loaded."""
    if load_dataset is None:
        try:
            from datasets import load_dataset  # optional dependency
        except ImportError:
            raise DataError(f"{spec} needs the 'datasets' package: pip install 'thinkfast[datasets]'") from None
    parts = spec[len("hf:"):].split(":")
    name, config = parts[0], (parts[1] if len(parts) > 1 else None)
    try:
        return load_dataset(name, config, split=split, **({"streaming": True} if streaming else {}))
    except Exception as e:  # datasets raises many types (network, missing split, ...)
        raise DataError(f"cannot load {spec} (split {split!r}): {e}") from None


def read_hf(spec: str, split: str, limit: Optional[int] = None) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a Hugging Face dataset named ``hf:NAME[:CONFIG]`` (local or hub; needs ``datasets``)."""
    ds = open_hf(spec, split)
    n = len(ds) if limit is None else min(limit, len(ds))
    return [(f"{spec}[{split}][{i}]", dict(ds[i])) for i in range(n)]


def read_rows(path: str, split: str = "train", limit: Optional[int] = None) -> list[tuple[str, dict[str, Any]]]:
    """Rows from a JSONL file or an ``hf:`` dataset, each with a where-string for errors."""
    if path.startswith("hf:"):
        return read_hf(path, split, limit)
    return read_jsonl(path, limit)
