"""Sampling n completions per problem to a JSONL file that survives interruption.

File discipline (what makes resume safe):
- all n rows of a problem go out in one ``write`` followed by a flush, so a crash leaves at most
  one partial problem, at the end of the file;
- on start, problems with all n finished rows (every field of ``FINISHED_ROW_KEYS``, a string
  ``completion``) are kept and skipped; the unfinished last problem a kill leaves (a cut-off or
  incomplete last line, or fewer than n rows) is dropped by rewriting the file atomically, then
  the run appends. Any other fault (a bad row before the last line, a problem split or repeated)
  is an error naming the line: it was not made by a kill, and resume never discards data;
- rows record the sampling settings, and a file made with other settings is refused rather
  than mixed.

The generator is injected (``GenerateFn``), so this module needs no model and is tested with a
fake one; ``thinkfast sample`` binds it to one of ``thinkfast.inference.backends`` (our engine,
transformers ``generate()`` or vLLM), all returning the same outputs and timings.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..config import json_error_detail
from ..data.jsonl import read_utf8
from ..inference.outputs import TIMING_KEYS
from ..runtime import UserError
from .io import dumps_row, write_jsonl_atomic
from .tasks.base import Example

# generate_fn(prompts as token ids, seed) -> one output per prompt, each with .samples (objects
# with text, token_ids, logprobs, finish_reason) and .timing (dict).
GenerateFn = Callable[[list[list[int]], int], Sequence[Any]]

ROW_TIMING_KEYS = {k: ("batch_problems" if k == "batch_prompts" else k) for k in TIMING_KEYS}
"""A sampler's timing key (``inference.outputs.TIMING_KEYS``) -> its row field. The one rename:
a sampler counts prompts per call (``batch_prompts``); a row counts problems per call
(``batch_problems``, the ``--batch-problems`` / ``run_sampling(batch_problems=)`` knob, read by
``eval.budget``). One problem is one prompt, so the values are equal. Both names stay: rows
already written say ``batch_problems`` (resume checks ``FINISHED_ROW_KEYS``), and every
``GenerateFn`` and ``thinkfast generate --json`` say ``batch_prompts``. Rows per call are
``batch_rows`` in both."""


@dataclass
class SampleSettings:
    """What a samples file was made with; a resumed run must match it exactly."""

    task: str
    model: str
    n: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    seed: int = 0
    prompt_style: str = "fewshot"
    backend: str = "thinkfast"
    """Which sampler made the rows (thinkfast, hf, vllm): a file is never resumed with another."""
    seeding: Optional[str] = None
    """None: randomness keyed on (seed, prompt), the engine's rule (hf: on the batch's prompts).
    "call": vLLM seeded once per engine (``inference.backends``: no per-request seeds), so samples
    depend on the order of requests; a file is never resumed with the other rule."""
    sampler: str = "gumbel"
    """The thinkfast engine's sampler (``inference.engine.SamplingParams.sampler``): 'gumbel' or
    'cdf' draw different tokens for the same seed, so a file is never resumed with the other."""
    dtype: Optional[str] = None
    """The weights' precision when not the default (``--dtype``: float32, bfloat16, float16, or
    int8 weight-only, ``inference.quant``): a file is never resumed at another precision."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["backend"] == "thinkfast":  # files written before backends existed resume as before
            del d["backend"]
        if d["seeding"] is None:  # and so do files written before vLLM could seed per call
            del d["seeding"]
        if d["sampler"] == "gumbel":  # and before the engine had a second sampler
            del d["sampler"]
        if d["dtype"] is None:  # and before --dtype was recorded
            del d["dtype"]
        return d


@dataclass
class SampleReport:
    written: int = 0
    """Problems sampled by this run."""
    skipped: int = 0
    """Problems already finished in the file."""
    dropped_rows: int = 0
    """Rows of unfinished problems removed from the file before resuming."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(problem id, reason) for problems that could not be sampled (e.g. prompt over context)."""
    context_limited: list[str] = field(default_factory=list)
    """Problems of this run whose prompt leaves less than max_new_tokens in the context: their
    samples may be cut by it (each such row has ``hit_context_limit`` true)."""


# --- resume --------------------------------------------------------------------------------------

FINISHED_ROW_KEYS = ("task", "model", "problem_id", "sample_index", "question", "gold", "answer", "completion",
                     "num_tokens", "logprob_sum", "finish_reason", "settings", "prefill_s", "decode_s",
                     "batch_problems", "batch_rows", "new_tokens", "prompt_tokens", "hardware")
"""The keys every row of ``sample_rows`` has (and had before ``hit_context_limit`` was added, so
older files still resume): a row lacking one was not written by a finished sampling step."""


def _row_problem(row: dict[str, Any], settings: SampleSettings) -> Optional[str]:
    """Why ``row`` is not a finished sample row of a run with ``settings`` (None when it is)."""
    missing = [k for k in FINISHED_ROW_KEYS if k not in row]
    if missing:
        return f"row lacks {', '.join(repr(k) for k in missing)}"
    if not isinstance(row["completion"], str):
        return f"'completion' is {type(row['completion']).__name__}, not a string"
    if not isinstance(row["problem_id"], str):
        return f"'problem_id' is {type(row['problem_id']).__name__}, not a string"
    i = row["sample_index"]
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < settings.n:
        return f"'sample_index' is {i!r}, not an integer in 0..{settings.n - 1}"
    return None


def _read_rows(path: Path, settings: SampleSettings,
               log: Callable[[str], None]) -> tuple[list[tuple[int, dict[str, Any]]], Optional[str]]:
    """``(line number, row)`` of every row of ``path``, each a valid finished row; and, when the
    last line was dropped, what it was: ``"row"`` (a JSON object, but no finished row) or
    ``"text"`` (no JSON: cut off). None when every line was kept.

    The last line may be what a killed run left: cut mid-write (no JSON) or otherwise not a
    finished row. It is dropped, with a log line; the problem it belongs to is redone. The same
    fault on any earlier line was not made by a kill, so it is an error naming the line, and
    nothing is rewritten: those rows may be someone's data.
    """
    text = read_utf8(path)
    numbered = [(i, ln) for i, ln in enumerate(text.split("\n"), start=1) if ln.strip()]
    rows = []
    for k, (lineno, line) in enumerate(numbered):
        is_last = k == len(numbered) - 1
        try:
            row = json.loads(line)
            why = None if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"
        except json.JSONDecodeError as e:
            row, why = None, f"malformed JSON row ({json_error_detail(e)})"
        if why is None and row.get("settings") != settings.to_dict():
            # other settings are never a half-written row: refuse even on the last line
            raise UserError(f"{path}:{lineno}: made with other settings ({row.get('settings')}); "
                            f"this run uses {settings.to_dict()}. Choose another --out.")
        if why is None:
            why = _row_problem(row, settings)
        if why is not None:
            if is_last:
                log(f"{path}:{lineno}: dropped the last line, left unfinished by an interrupted run ({why})")
                return rows, ("row" if isinstance(row, dict) else "text")
            raise UserError(f"{path}:{lineno}: {why}; only the last line may be unfinished (a run killed "
                            "mid-write). Fix or remove this row, or choose another --out.")
        rows.append((lineno, row))
    return rows, None


def prepare_resume(path: str | os.PathLike, settings: SampleSettings,
                   log: Callable[[str], None] = lambda s: None) -> tuple[set[str], int]:
    """Finished problem ids in ``path`` and how many rows were dropped to make it appendable.

    A problem's n rows are written together, so the file is a run of whole problems, each its
    rows with sample indices 0..n-1 once, then possibly one unfinished problem at the end (a
    kill mid-write). That tail is dropped, by rewriting the file atomically. Anything else --
    other settings, a row that is not a finished row, a problem whose rows are split or
    repeated -- is a ``UserError`` naming the file and line.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set(), 0
    rows, dropped_tail = _read_rows(path, settings, log)
    # consecutive rows of one problem form a block; every block but the last must be whole
    blocks: list[list[tuple[int, dict[str, Any]]]] = []
    for lineno, row in rows:
        if blocks and blocks[-1][0][1]["problem_id"] == row["problem_id"]:
            blocks[-1].append((lineno, row))
        else:
            blocks.append([(lineno, row)])
    done: set[str] = set()
    kept: list[dict[str, Any]] = []
    for b, block in enumerate(blocks):
        pid, first = block[0][1]["problem_id"], block[0][0]
        whole = sorted(r["sample_index"] for _, r in block) == list(range(settings.n))
        if pid in done:
            raise UserError(f"{path}:{first}: problem {pid!r} appears again (its rows are repeated or split); "
                            "a samples file holds each problem once. Choose another --out.")
        if not whole:
            if b == len(blocks) - 1:
                break  # the unfinished problem of an interrupted run: redone below
            raise UserError(f"{path}:{first}: problem {pid!r} has sample indices "
                            f"{[r['sample_index'] for _, r in block]}, not 0..{settings.n - 1} once each, and "
                            "is not the last problem in the file. Choose another --out.")
        done.add(pid)
        kept.extend(r for _, r in block)
    if len(kept) < len(rows) or dropped_tail or not path.read_bytes().endswith(b"\n"):
        write_jsonl_atomic(path, kept)
    # a cut-off line of text was no row; a whole but unfinished last row was one
    return done, len(rows) - len(kept) + (dropped_tail == "row")


# --- rows ----------------------------------------------------------------------------------------


def _finite(x: Any) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def sample_rows(example: Example, output: Any, settings: SampleSettings, hardware: str) -> list[dict[str, Any]]:
    """The n JSONL rows of one problem from one engine output."""
    timing = dict(getattr(output, "timing", None) or {})
    batch = {row_key: timing.get(k) for k, row_key in ROW_TIMING_KEYS.items()}
    rows = []
    for i, s in enumerate(output.samples):
        logprobs = getattr(s, "logprobs", None)
        rows.append({
            "task": settings.task, "model": settings.model, "problem_id": example.id,
            "sample_index": i, "question": example.question, "gold": example.gold,
            "answer": example.answer, "completion": s.text,
            "num_tokens": len(s.token_ids) if getattr(s, "token_ids", None) is not None else None,
            "logprob_sum": _finite(sum(float(x) for x in logprobs)) if logprobs is not None else None,
            "finish_reason": getattr(s, "finish_reason", None),
            # 'length' says only that the sample was cut; this says the context, not max_new_tokens, cut it
            "hit_context_limit": bool(getattr(s, "hit_context_limit", False)),
            "settings": settings.to_dict(), **batch, "hardware": hardware,
        })
    return rows


# --- the loop ------------------------------------------------------------------------------------


def _generate_isolating(generate_fn: GenerateFn, prompts: list[list[int]], seed: int,
                        ids: list[str], report: SampleReport) -> list[Optional[Any]]:
    """Outputs for ``prompts``; if the batch fails with a ValueError (e.g. prompt plus new tokens
    over the context), retry one by one so only the offending problems are reported."""
    try:
        return list(generate_fn(prompts, seed))
    except ValueError:
        if len(prompts) == 1:
            raise
    outs: list[Optional[Any]] = []
    for pid, p in zip(ids, prompts):
        try:
            outs.append(generate_fn([p], seed)[0])
        except ValueError as e:
            report.failed.append((pid, str(e)))
            outs.append(None)
    return outs


def prompt_does_not_fit(prompt: Sequence[int], context_len: Optional[int]) -> Optional[str]:
    """Why ``prompt`` cannot be sampled in a ``context_len``-token context, or None when it can
    (it leaves at least one position for a new token)."""
    if context_len is not None and len(prompt) >= context_len:
        return f"prompt of {len(prompt)} tokens does not fit the model's context of {context_len}"
    return None


def run_sampling(examples: Sequence[Example], prompts: Sequence[list[int]], generate_fn: GenerateFn,
                 out_path: str | os.PathLike, settings: SampleSettings, batch_problems: int = 1,
                 context_len: Optional[int] = None, hardware: str = "unknown",
                 log: Callable[[str], None] = lambda s: None,
                 on_progress: Optional[Callable[[int, int], None]] = None) -> SampleReport:
    """Sample ``settings.n`` completions for every example not yet finished in ``out_path``.

    ``on_progress(done, total)`` is called after each batch of problems is written (``done``
    counts problems finished, including those a resumed run skipped).

    ``prompts[i]`` is the token ids of ``examples[i]``'s prompt. A prompt that does not fit
    ``context_len`` is reported in ``SampleReport.failed`` and the run goes on. A prompt that
    fits but leaves less than ``max_new_tokens`` is sampled with the room left: the run logs it
    once, lists it in ``SampleReport.context_limited``, and each sample the context cut has
    ``hit_context_limit`` true in its row.
    """
    if len(prompts) != len(examples):
        raise ValueError("one prompt per example")
    report = SampleReport()
    done, report.dropped_rows = prepare_resume(out_path, settings, log)
    todo = []
    room: list[int] = []  # new tokens the context leaves each context-limited prompt
    for pos, (ex, p) in enumerate(zip(examples, prompts)):
        if ex.id in done:
            report.skipped += 1
        elif (why := prompt_does_not_fit(p, context_len)) is not None:
            report.failed.append((ex.id, why))
            log(f"skipped {ex.id}: {why}")
        else:
            todo.append((pos, ex, p))
            if context_len is not None and len(p) + settings.max_new_tokens > context_len:
                report.context_limited.append(ex.id)
                room.append(context_len - len(p))
    if room:  # said once per run; the rows say which samples it cut
        log(f"{len(report.context_limited)} of {len(todo)} problems to sample leave less than "
            f"max_new_tokens={settings.max_new_tokens} in the model's {context_len}-token context (first: "
            f"{report.context_limited[0]}): up to {settings.max_new_tokens - min(room)} fewer new tokens; "
            "their samples cut by the context have hit_context_limit true")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_problems):
            batch = todo[start : start + batch_problems]
            # The engine keys its randomness on (seed, prompt), so one seed for every call gives
            # each problem the same samples however the problems were batched or resumed.
            outs = _generate_isolating(generate_fn, [p for _, _, p in batch], settings.seed,
                                       [ex.id for _, ex, _ in batch], report)
            for (_, ex, _), out in zip(batch, outs):
                if out is None:
                    log(f"skipped {ex.id}: {dict(report.failed).get(ex.id)}")
                    continue
                if len(out.samples) != settings.n:
                    raise RuntimeError(f"engine returned {len(out.samples)} samples for {ex.id}, "
                                       f"expected {settings.n}")
                f.write("".join(dumps_row(r) for r in sample_rows(ex, out, settings, hardware)))
                f.flush()  # one problem = one write: a crash never splits two problems
                report.written += 1
            os.fsync(f.fileno())
            log(f"{report.skipped + report.written}/{len(examples)} problems")
            if on_progress is not None:
                on_progress(report.skipped + report.written, len(examples))
    return report


# --- binding to a model --------------------------------------------------------------------------


def encode_prompts(task: Any, examples: Sequence[Example], tokenizer: Any, style: str,
                   add_special_tokens: Optional[bool] = None) -> list[list[int]]:
    """Token ids of every prompt. ``add_special_tokens`` (the tokenizer's BOS): by default yes,
    except for a chat template, which already holds BOS; a model trained without BOS says no."""
    if add_special_tokens is None:
        add_special_tokens = style != "chat"
    out = []
    for ex in examples:
        try:
            text = task.prompt(ex, style=style, tokenizer=tokenizer)
        except ValueError as e:  # e.g. a style the task does not have
            raise UserError(f"task {getattr(task, 'name', task)}: {e}") from None
        out.append(list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]))
    return out
