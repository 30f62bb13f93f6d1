"""Sampling n completions per problem to a JSONL file that survives interruption.

File discipline (what makes resume safe):
- all n rows of a problem go out in one ``write`` followed by a flush, so a crash leaves at most
  one partial problem, at the end of the file;
- on start, problems with all n samples are kept and skipped; rows of partial problems and a
  truncated last line are dropped by rewriting the file atomically, then the run appends;
- rows record the sampling settings, and a file made with other settings is refused rather
  than mixed.

The generator is injected (``GenerateFn``), so this module needs no model and is tested with a
fake one; ``thinkfast sample`` binds it to one of ``thinkfast.generate.backends`` (our engine,
transformers ``generate()`` or vLLM), all returning the same outputs and timings.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..runtime import UserError
from .io import dumps_row, iter_jsonl, write_jsonl_atomic
from .tasks.base import Example

# generate_fn(prompts as token ids, seed) -> one output per prompt, each with .samples (objects
# with text, token_ids, logprobs, finish_reason) and .timing (dict).
GenerateFn = Callable[[list[list[int]], int], Sequence[Any]]

TIMING_KEYS = ("prefill_s", "decode_s", "batch_prompts", "batch_rows", "new_tokens", "prompt_tokens")


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["backend"] == "thinkfast":  # files written before backends existed resume as before
            del d["backend"]
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


# --- resume --------------------------------------------------------------------------------------


def _complete_problems(rows: list[dict[str, Any]], n: int) -> set[str]:
    """Problems whose rows are exactly sample indices 0..n-1, each once."""
    seen: dict[str, list[Any]] = {}
    for r in rows:
        seen.setdefault(str(r.get("problem_id")), []).append(r.get("sample_index"))
    return {pid for pid, idx in seen.items()
            if all(isinstance(i, int) for i in idx) and sorted(idx) == list(range(n))}


def prepare_resume(path: str | os.PathLike, settings: SampleSettings) -> tuple[set[str], int]:
    """Finished problem ids in ``path`` and how many rows were dropped to make it appendable.

    Raises ``UserError`` when the file was made with other settings, or has a malformed line
    anywhere but at its very end.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set(), 0
    rows = []
    for lineno, row in iter_jsonl(path, allow_truncated_tail=True):
        if row.get("settings") != settings.to_dict():
            raise UserError(f"{path}:{lineno}: made with other settings ({row.get('settings')}); "
                            f"this run uses {settings.to_dict()}. Choose another --out.")
        rows.append(row)
    done = _complete_problems(rows, settings.n)
    kept = [r for r in rows if str(r.get("problem_id")) in done]
    ends_cleanly = path.read_bytes().endswith(b"\n")
    if len(kept) < len(rows) or not ends_cleanly:
        write_jsonl_atomic(path, kept)
    return done, len(rows) - len(kept)


# --- rows ----------------------------------------------------------------------------------------


def _finite(x: Any) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def sample_rows(example: Example, output: Any, settings: SampleSettings, hardware: str) -> list[dict[str, Any]]:
    """The n JSONL rows of one problem from one engine output."""
    timing = dict(getattr(output, "timing", None) or {})
    batch = {k: timing.get(k) for k in TIMING_KEYS}
    # budget.py expects batch_problems; the engine calls the same count batch_prompts.
    batch["batch_problems"] = batch.pop("batch_prompts")
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


def run_sampling(examples: Sequence[Example], prompts: Sequence[list[int]], generate_fn: GenerateFn,
                 out_path: str | os.PathLike, settings: SampleSettings, batch_problems: int = 1,
                 context_len: Optional[int] = None, hardware: str = "unknown",
                 log: Callable[[str], None] = lambda s: None) -> SampleReport:
    """Sample ``settings.n`` completions for every example not yet finished in ``out_path``.

    ``prompts[i]`` is the token ids of ``examples[i]``'s prompt. A prompt that does not fit
    ``context_len`` is reported in ``SampleReport.failed`` and the run goes on.
    """
    if len(prompts) != len(examples):
        raise ValueError("one prompt per example")
    report = SampleReport()
    done, report.dropped_rows = prepare_resume(out_path, settings)
    todo = []
    for pos, (ex, p) in enumerate(zip(examples, prompts)):
        if ex.id in done:
            report.skipped += 1
        elif context_len is not None and len(p) >= context_len:
            report.failed.append((ex.id, f"prompt of {len(p)} tokens does not fit the model's "
                                         f"context of {context_len}"))
            log(f"skipped {ex.id}: {report.failed[-1][1]}")
        else:
            todo.append((pos, ex, p))
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


def engine_generate_fn(model: Any, tokenizer: Any, settings: SampleSettings, stop: Sequence[str]) -> GenerateFn:
    """A ``GenerateFn`` over ``thinkfast.generate.engine.generate`` with ``settings``."""
    from ..generate.engine import SamplingParams, generate

    def gen(prompts: list[list[int]], seed: int) -> Sequence[Any]:
        params = SamplingParams(n=settings.n, temperature=settings.temperature, top_p=settings.top_p,
                                top_k=settings.top_k, max_new_tokens=settings.max_new_tokens,
                                stop=tuple(stop), seed=seed)  # EOS: the tokenizer's
        return generate(model, prompts, params, tokenizer=tokenizer)

    return gen


def context_length(model: Any) -> Optional[int]:
    cfg = getattr(model, "config", None)
    for attr in ("max_seq_len", "max_position_embeddings"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    return None
