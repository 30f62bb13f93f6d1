"""Adaptive sampling: draw a problem's samples in rounds and stop once its vote is settled.

Round r draws ``rule.window`` samples (the last round: what is left up to ``rule.max_n``) for
every problem still open, ``batch_problems`` problems per engine call, then reads each window's
answers with the task's extraction (``task.extract``; equal answers grouped as ``thinkfast
evaluate`` groups them: ``answer_key``, then ``task.same_answer``) and closes a problem when the
rule (``eval.adaptive.AdaptiveRule``: ``esc`` or ``beta``) says its majority is settled or when
it has ``max_n`` samples. The next round's calls hold only open problems, so the capacity the
closed ones free goes to the rest.

Same samples as a fixed run. The engine keys sample j of a prompt on ``(seed + j, prompt)``, so
a round drawing samples m..m+w-1 calls it with seed ``seed + m`` and n = w: every row is the
same-index row of ``run_sampling`` with n = max_n and the same seed (timings aside), and
``thinkfast evaluate`` can simulate a rule exactly on a fixed file. (That holds for samplers
keyed per prompt: thinkfast's engine and vLLM with per-request seeds; not hf or vLLM "call".)

Rows are ``run_sampling``'s (``sample_index`` continuing across rounds) plus ``round``; their
``settings`` are the ``SampleSettings`` with n = max_n and ``adaptive``: the rule's parameters,
so a file is never resumed with another rule, window, max_n or threshold.

File discipline. A problem's window goes out in one write, then a flush; each call's batch is
fsynced. Which problems are open is a pure function of the rows on disk, so a resumed run reads
them, drops what a kill left unfinished at the end (a cut-off last line, the last window cut
short: the file rewritten atomically) and goes on; problems lagging a round (a kill mid-round)
draw theirs first. Any other fault is a ``UserError`` naming the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..runtime import UserError
from .adaptive import AdaptiveRule
from .grading import answer_key
from .io import dumps_row, write_jsonl_atomic
from .metrics import group_answers
from .sampling import GenerateFn, SampleSettings, _generate_isolating, _read_rows, prompt_does_not_fit, sample_rows
from .tasks.base import Example

MakeGenerateFn = Callable[[SampleSettings], GenerateFn]
"""settings (with n = the samples one call draws per prompt) -> a ``GenerateFn``."""


@dataclass
class AdaptiveReport:
    samples: int = 0
    """Samples drawn by this run."""
    rounds: int = 0
    """Rounds this run drew (a resumed run counts from where it resumed)."""
    closed_by_rule: int = 0
    """Problems (in the whole file) the rule closed before max_n."""
    closed_at_max_n: int = 0
    """Problems (in the whole file) that drew max_n samples."""
    skipped: int = 0
    """Problems already closed in the file when this run started."""
    dropped_rows: int = 0
    """Rows of an unfinished window removed from the file before resuming."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(problem id, reason) for problems that could not be sampled (e.g. prompt over context)."""


@dataclass(frozen=True)
class _FileSettings:
    """What ``sampling._read_rows`` checks rows against: ``settings`` with the rule added."""

    settings: SampleSettings
    rule: AdaptiveRule

    @property
    def n(self) -> int:
        return self.rule.max_n

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings.to_dict(), "adaptive": self.rule.to_dict()}


def file_settings(settings: SampleSettings, rule: AdaptiveRule) -> dict[str, Any]:
    """The ``settings`` every row of an adaptive run records."""
    return _FileSettings(settings, rule).to_dict()


def _check(settings: SampleSettings, rule: AdaptiveRule) -> None:
    if settings.n != rule.max_n:
        raise ValueError(f"settings.n ({settings.n}) must be the rule's max_n ({rule.max_n})")


class _Answers:
    """Each problem's answer groups in sample order, extended window by window."""

    def __init__(self, task: Any):
        self.task = task
        self.preds: dict[str, list[Optional[str]]] = {}
        self._groups: dict[str, list[Optional[int]]] = {}

    def add(self, pid: str, completions: Sequence[str]) -> None:
        self.preds.setdefault(pid, []).extend(self.task.extract(c or "") for c in completions)
        self._groups.pop(pid, None)

    def groups(self, pid: str) -> list[Optional[int]]:
        if pid not in self._groups:
            self._groups[pid] = group_answers(self.preds.get(pid, []), key=answer_key, same=self.task.same_answer)
        return self._groups[pid]


def read_adaptive_rows(path: str | os.PathLike, settings: SampleSettings, rule: AdaptiveRule,
                       log: Callable[[str], None] = lambda s: None) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``path`` to resume from and how many were dropped (then the file is rewritten).

    Rows come as windows: consecutive rows of one problem and round, sample indices the round's
    range once each, each round the problem's next while it was open. The last window may be cut
    short by a kill (dropped); any other fault is a ``UserError`` naming the line."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return [], 0
    fs = _FileSettings(settings, rule)
    rows, dropped_tail = _read_rows(path, fs, log)  # type: ignore[arg-type]  # duck-typed settings
    blocks: list[list[tuple[int, dict[str, Any]]]] = []
    for lineno, row in rows:
        if not isinstance(row.get("round"), int) or isinstance(row.get("round"), bool):
            raise UserError(f"{path}:{lineno}: row has no integer 'round'; not a row of an adaptive run")
        last = blocks[-1][0][1] if blocks else None
        if last is not None and (last["problem_id"], last["round"]) == (row["problem_id"], row["round"]):
            blocks[-1].append((lineno, row))
        else:
            blocks.append([(lineno, row)])
    checkpoints = [0] + rule.checkpoints()
    drawn: dict[str, int] = {}
    kept: list[dict[str, Any]] = []
    for b, block in enumerate(blocks):
        first, row = block[0]
        pid, r = row["problem_id"], row["round"]
        start = drawn.get(pid, 0)
        expected = list(range(start, checkpoints[r + 1])) if 0 <= r < len(checkpoints) - 1 else None
        indices = [x["sample_index"] for _, x in block]
        if expected is None or start != checkpoints[r]:
            raise UserError(f"{path}:{first}: problem {pid!r} has round {r} after {start} samples; rounds "
                            f"of window {rule.window} up to max_n {rule.max_n} come in order. Choose another --out.")
        if indices != expected:
            if b == len(blocks) - 1 and indices == expected[:len(indices)]:
                break  # the window a kill cut short: redrawn on resume
            raise UserError(f"{path}:{first}: problem {pid!r} round {r} has sample indices {indices}, not "
                            f"{expected[0]}..{expected[-1]}. Choose another --out.")
        drawn[pid] = checkpoints[r + 1]
        kept.extend(x for _, x in block)
    if len(kept) < len(rows) or dropped_tail or not path.read_bytes().endswith(b"\n"):
        write_jsonl_atomic(path, kept)
    return kept, len(rows) - len(kept) + (dropped_tail == "row")


def run_adaptive_sampling(examples: Sequence[Example], prompts: Sequence[list[int]], make_generate_fn: MakeGenerateFn,
                          out_path: str | os.PathLike, settings: SampleSettings, rule: AdaptiveRule, task: Any,
                          batch_problems: int = 1, context_len: Optional[int] = None, hardware: str = "unknown",
                          log: Callable[[str], None] = lambda s: None) -> AdaptiveReport:
    """Sample every example of ``examples`` by rounds until ``rule`` closes it (module doc).

    ``settings.n`` is ``rule.max_n``. ``make_generate_fn(settings with n = w)`` gives the sampler
    of one round (w = the window, or fewer in the last round); ``task`` reads the answers."""
    if len(prompts) != len(examples):
        raise ValueError("one prompt per example")
    _check(settings, rule)
    report = AdaptiveReport()
    kept, report.dropped_rows = read_adaptive_rows(out_path, settings, rule, log)
    answers = _Answers(task)
    drawn: dict[str, int] = {}
    for row in kept:
        answers.add(row["problem_id"], [row["completion"]])
        drawn[row["problem_id"]] = row["sample_index"] + 1
    for pid in drawn:  # a file made by the same rule: every problem it left open was open at each round
        g = answers.groups(pid)
        if any(not rule.is_open(g[:m]) for m in [0] + rule.checkpoints() if m < drawn[pid]):
            raise UserError(f"{out_path}: problem {pid!r} has {drawn[pid]} samples, more than rule "
                            f"{rule.to_dict()} draws from its answers. Choose another --out.")
    todo: list[tuple[Example, list[int]]] = []
    for ex, p in zip(examples, prompts):
        if not rule.is_open(answers.groups(ex.id)):
            report.skipped += 1
        elif (why := prompt_does_not_fit(p, context_len)) is not None:
            report.failed.append((ex.id, why))
            log(f"skipped {ex.id}: {why}")
        else:
            todo.append((ex, p))
    failed: set[str] = set()
    makers: dict[int, GenerateFn] = {}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a", encoding="utf-8") as f:
        while True:
            open_ = [(ex, p) for ex, p in todo if ex.id not in failed and rule.is_open(answers.groups(ex.id))]
            if not open_:
                break
            m = min(drawn.get(ex.id, 0) for ex, _ in open_)  # laggards of a killed round first
            batch_all = [(ex, p) for ex, p in open_ if drawn.get(ex.id, 0) == m]
            w = rule.next_window(m)
            if w not in makers:
                makers[w] = make_generate_fn(replace(settings, n=w))
            r = m // rule.window  # every round before the last draws a whole window
            for start in range(0, len(batch_all), batch_problems):
                batch = batch_all[start:start + batch_problems]
                outs = _generate_isolating(makers[w], [p for _, p in batch], settings.seed + m,
                                           [ex.id for ex, _ in batch], report)  # type: ignore[arg-type]
                for (ex, _), out in zip(batch, outs):
                    if out is None:
                        failed.add(ex.id)
                        log(f"skipped {ex.id}: {dict(report.failed).get(ex.id)}")
                        continue
                    if len(out.samples) != w:
                        raise RuntimeError(f"engine returned {len(out.samples)} samples for {ex.id}, expected {w}")
                    rows = sample_rows(ex, out, settings, hardware)
                    row_settings = file_settings(settings, rule)
                    for row in rows:
                        row["sample_index"] += m
                        row["settings"] = row_settings
                        row["round"] = r
                    f.write("".join(dumps_row(x) for x in rows))
                    f.flush()  # one window = one write: a crash cuts at most the last one
                    answers.add(ex.id, [x["completion"] for x in rows])
                    drawn[ex.id] = m + w
                    report.samples += w
                os.fsync(f.fileno())
            report.rounds += 1
            still = sum(rule.is_open(answers.groups(ex.id)) for ex, _ in batch_all if ex.id not in failed)
            log(f"round {r}: {len(batch_all)} problems drew samples {m}..{m + w - 1}; {still} still open")
    for pid, n in drawn.items():
        if pid in failed:
            continue
        if n >= rule.max_n:
            report.closed_at_max_n += 1
        else:
            report.closed_by_rule += 1
    return report
