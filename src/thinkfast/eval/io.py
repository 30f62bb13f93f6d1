"""JSONL in and out for the evaluation pipeline.

Every step (sample -> grade -> score -> evaluate -> report) reads and writes JSONL, so metrics
can be recomputed without a model. Two rules hold everywhere:

- a malformed row is a ``UserError`` naming the file and the line, never a bare traceback;
- a results file is replaced whole (temp file + rename), never half-overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..config import atomic_write_text, json_error_detail
from ..data.jsonl import decode_utf8, parse_row
from ..runtime import UserError


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:  # a directory, no permission
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def iter_jsonl(path: str | os.PathLike, allow_truncated_tail: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for each non-blank line of ``path``.

    With ``allow_truncated_tail`` a last line that has no newline and does not parse (a crash
    mid-write) is skipped silently; anywhere else a bad line is an error with file and line.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if allow_truncated_tail:  # a writer killed mid-character leaves half a UTF-8 sequence at the end
        cut = raw.rfind(b"\n") + 1
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start >= cut:
                raw = raw[:cut]
    lines = decode_utf8(raw, path).split("\n")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_tail = i == len(lines)  # no newline after it: the writer may have died mid-line
        try:
            yield i, parse_row(line, path, i, malformed="malformed JSON row")
        except UserError as e:
            if allow_truncated_tail and is_tail:
                return
            if is_tail:  # the usual cause: a writer killed mid-line
                raise UserError(f"{e} -- the last line is cut off; if this is a samples file, re-run "
                                "`thinkfast sample` with the same arguments to repair and finish it") from None
            raise


def read_jsonl(path: str | os.PathLike, allow_truncated_tail: bool = False) -> list[dict[str, Any]]:
    """All rows of a JSONL file (see ``iter_jsonl``)."""
    return [row for _, row in iter_jsonl(path, allow_truncated_tail)]


def read_graded_rows(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The rows of graded samples files (``thinkfast grade``), every row checked for a string
    'question' and 'completion' and a 'correct' field; a row without them is named by file and row."""
    rows = []
    for path in paths:
        for i, r in enumerate(read_jsonl(path), start=1):
            if "correct" not in r or not isinstance(r.get("question"), str) or not isinstance(r.get("completion"), str):
                raise UserError(f"{path}: row {i} needs 'question', 'completion' and 'correct' "
                                "(grade the samples first with `thinkfast grade`)")
            rows.append(r)
    return rows


def dumps_row(row: dict[str, Any]) -> str:
    """One JSONL line (with its newline). ``ensure_ascii=False`` keeps LaTeX and text readable;
    a row with a lone surrogate (model output read from a ``\\ud800`` escape), which UTF-8
    cannot encode, is written with ASCII escapes instead, so it reads back the same."""
    line = json.dumps(row, ensure_ascii=False, allow_nan=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(row, ensure_ascii=True, allow_nan=False)
    return line + "\n"


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows`` in one rename: readers see the old file or the new one."""
    atomic_write_text(path, "".join(dumps_row(r) for r in rows))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(decode_utf8(_read_bytes(path), path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({json_error_detail(e)})") from None
