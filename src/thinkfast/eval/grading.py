"""Grading model output: Math-Verify in a pool of worker processes, each case under a CPU limit.

Model output is untrusted input. Nothing here or in the workers calls ``eval`` or ``sympify`` on
it. The answer is read by Math-Verify's own extraction from the text ``extraction.answer_spans``
picks (the completion's tail, from its last answer marker), and judged by Math-Verify against the
gold answer; all of it runs in ``_verify_worker`` child processes. Each case has a limit on the
child's **CPU time**, enforced from outside by killing the child, so a verdict does not depend on
how busy the machine is. A case over its limit counts as incorrect and is tallied
(``Verdict.timeout``), never raised; the child is restarted.

``Grader`` is the object tasks grade through: a pool of ``workers`` children (one per core by
default) fed from one queue, with results placed by input position, so any number of workers
gives the same results as one, and a cache of verdicts.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from ..runtime import UserError, on_lasting_thread
from .tasks.base import Example, Graded, Task, Verdict, task_by_name

DEFAULT_CPU_LIMIT_S = 5.0


# --- one child process ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _end_child(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except (OSError, AttributeError):
            pass


class VerifyWorker:
    """One ``_verify_worker`` child. ``call`` sends one request and waits for its reply while the
    child's CPU time for it stays under ``cpu_limit_s``; past that, or past ``wall_limit_s`` of
    wall time (a backstop for a starved machine), the child is killed and the call times out.

    Where ``/proc`` is missing (not Linux) the limit falls back to wall time.
    """

    POLL_S = 0.02

    def __init__(self, cpu_limit_s: float = DEFAULT_CPU_LIMIT_S, wall_limit_s: Optional[float] = None,
                 startup_timeout_s: float = 120.0):
        self.cpu_limit_s = cpu_limit_s
        self.wall_limit_s = wall_limit_s if wall_limit_s is not None else max(30.0, 10 * cpu_limit_s)
        self.startup_timeout_s = startup_timeout_s
        self._proc: Optional[subprocess.Popen] = None
        self._replies: "queue.Queue[Optional[str]]" = queue.Queue()

    def _start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        err = tempfile.TemporaryFile()
        # Started from a thread that outlives the pool's threads: the child dies with this
        # process (its parent-death signal), not with the thread that happened to start it.
        self._proc = on_lasting_thread(lambda: subprocess.Popen(
            [sys.executable, "-m", "thinkfast.eval._verify_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1, env=env,
            encoding="utf-8",
        ))
        replies: "queue.Queue[Optional[str]]" = queue.Queue()  # fresh: no stale replies
        self._replies = replies
        stdout = self._proc.stdout
        # A grader nobody closed (a task's own, say) still ends its child and pipes when collected.
        weakref.finalize(self, _end_child, self._proc)

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

    def _wait(self, proc: subprocess.Popen) -> Optional[str]:
        """The reply line; "" on timeout; None if the child died."""
        cpu0, wall0 = _cpu_seconds(proc.pid), time.monotonic()
        while True:
            try:
                return self._replies.get(timeout=self.POLL_S)
            except queue.Empty:
                pass
            wall = time.monotonic() - wall0
            cpu = _cpu_seconds(proc.pid)
            used = cpu - cpu0 if cpu is not None and cpu0 is not None else wall
            if used > self.cpu_limit_s or wall > self.wall_limit_s:
                return ""

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """The child's reply; ``{"timeout": True}`` past the limit, ``{"err": ...}`` if it died."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = self._wait(proc)
        except (BrokenPipeError, OSError):
            line = None
        if line == "":
            self.close()
            return {"timeout": True}
        if line is None:  # crashed (e.g. killed by the memory limit)
            self.close()
            return {"err": "the worker died"}
        return json.loads(line)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _end_child(proc)


# --- the pool -----------------------------------------------------------------------------------


class VerifyPool:
    """``workers`` children fed from one queue; results come back in input order."""

    def __init__(self, workers: int = 1, cpu_limit_s: float = DEFAULT_CPU_LIMIT_S):
        if workers < 1:
            raise UserError(f"grading workers must be at least 1, not {workers}")
        self.workers = [VerifyWorker(cpu_limit_s) for _ in range(workers)]

    def run(self, requests: Sequence[dict[str, Any]],
            on_reply: Optional[Callable[[int, dict[str, Any]], None]] = None) -> list[dict[str, Any]]:
        """Every request's reply, by position. ``on_reply(i, reply)`` is called as each arrives
        (from one thread at a time)."""
        replies: list[Optional[dict[str, Any]]] = [None] * len(requests)
        todo: "queue.Queue[int]" = queue.Queue()
        for i in range(len(requests)):
            todo.put(i)
        lock = threading.Lock()
        failures: list[BaseException] = []

        def drain(worker: VerifyWorker) -> None:
            try:
                while not failures:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    reply = worker.call(requests[i])
                    with lock:
                        replies[i] = reply
                        if on_reply is not None:
                            on_reply(i, reply)
            except BaseException as e:  # noqa: BLE001  -- re-raised in the caller's thread
                failures.append(e)

        active = self.workers[:max(1, min(len(self.workers), len(requests)))]
        if len(active) == 1:
            drain(active[0])
        else:
            threads = [threading.Thread(target=drain, args=(w,), daemon=True) for w in active]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if failures:
            raise failures[0]
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        for w in self.workers:
            w.close()


def _verdict(reply: dict[str, Any]) -> Verdict:
    if reply.get("timeout"):
        return Verdict(False, timeout=True)
    if "err" in reply:
        return Verdict(False, error=True)
    return Verdict(bool(reply["ok"]))


# --- the grader ----------------------------------------------------------------------------------


class Grader:
    """Math-Verify grading through a ``VerifyPool``, cached.

    ``grade(items)`` reads and judges completions (``(gold answer, completion tail)`` pairs);
    ``equivalent(gold, pred)`` judges two extracted answers (majority voting groups with it).
    Neither is symmetric (Math-Verify's check is not): the reference comes first.
    ``stats`` counts the checks run, cache hits, timeouts and errors.
    """

    def __init__(self, workers: int = 1, cpu_limit_s: float = DEFAULT_CPU_LIMIT_S):
        self.workers, self.cpu_limit_s = workers, cpu_limit_s
        self._pool: Optional[VerifyPool] = None
        self._lock = threading.Lock()
        self._graded: dict[tuple[str, str], Graded] = {}
        self._same: dict[tuple[str, str], Verdict] = {}
        self.stats: dict[str, int] = {"checked": 0, "cached": 0, "timeout": 0, "error": 0}

    @property
    def pool(self) -> VerifyPool:
        if self._pool is None:  # started on first use: a task that never grades costs nothing
            self._pool = VerifyPool(self.workers, self.cpu_limit_s)
        return self._pool

    def _count(self, verdict: Verdict) -> None:
        self.stats["checked"] += 1
        self.stats["timeout"] += verdict.timeout
        self.stats["error"] += verdict.error

    def grade(self, items: Sequence[tuple[str, str]],
              on_graded: Optional[Callable[[int, Graded], None]] = None) -> list[Graded]:
        """A ``Graded`` per ``(gold answer, completion tail)``, in order; ``on_graded(i, graded)``
        as each is decided (cache hits first)."""
        out: list[Optional[Graded]] = [None] * len(items)
        fresh: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(items):
            hit = self._graded.get(key)
            if hit is not None:
                self.stats["cached"] += 1
                out[i] = hit
                if on_graded is not None:
                    on_graded(i, hit)
            else:
                fresh.setdefault(key, []).append(i)
        keys = list(fresh)

        def take(j: int, reply: dict[str, Any]) -> None:
            verdict = _verdict(reply)
            graded = Graded(reply.get("pred"), verdict)
            self._count(verdict)
            self._graded[keys[j]] = graded
            for i in fresh[keys[j]]:
                out[i] = graded
                if on_graded is not None:
                    on_graded(i, graded)

        requests = [{"op": "grade", "gold": g, "tail": t} for g, t in keys]
        with self._lock:
            self.pool.run(requests, take)
        return out  # type: ignore[return-value]

    def equivalent(self, gold: Optional[str], pred: Optional[str]) -> Verdict:
        if gold is None or pred is None or not gold.strip() or not pred.strip():
            return Verdict(False)
        key = (gold, pred)
        if key in self._same:
            self.stats["cached"] += 1
            return self._same[key]
        if answer_key(gold) == answer_key(pred):
            verdict = Verdict(True)
        else:
            with self._lock:
                verdict = _verdict(self.pool.run([{"op": "same", "a": gold, "b": pred}])[0])
            self._count(verdict)
        self._same[key] = verdict
        return verdict

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def answer_key(pred: Optional[str]) -> str:
    """The exact-match key of an extracted answer (whitespace removed); '' for None. Equal keys
    are the same answer without asking Math-Verify."""
    return "" if pred is None else "".join(pred.split())


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


def graded_row(row: dict[str, Any], graded: Graded) -> dict[str, Any]:
    """``row`` with ``pred`` (str or None), ``correct``, ``grade_timeout`` and ``grade_error``."""
    v = graded.verdict
    return {**row, "pred": graded.pred, "correct": v.correct, "grade_timeout": v.timeout,
            "grade_error": v.error}


def grade_rows(task: Task, rows: Sequence[dict[str, Any]], source: str = "rows",
               on_graded: Optional[Callable[[int, dict[str, Any]], None]] = None) -> list[dict[str, Any]]:
    """Copies of ``rows`` graded (``graded_row``), in order. Each row needs ``gold`` and
    ``completion``; a row that lacks one is an error naming it, before anything is graded.
    ``on_graded(i, graded_row)`` is called as each row is decided, in any order."""
    items = []
    for i, row in enumerate(rows, start=1):
        where = f"{source}: row {i}"
        if "completion" not in row:
            raise UserError(f"{where}: row has no 'completion' field")
        completion = row["completion"]
        if completion is not None and not isinstance(completion, str):
            raise UserError(f"{where}: 'completion' is a {type(completion).__name__}, not a string")
        items.append((completion or "", example_from_row(task, row, where)))
    hook = None if on_graded is None else (lambda i, g: on_graded(i, graded_row(rows[i], g)))
    graded = task.grade_many(items, hook)
    return [graded_row(row, g) for row, g in zip(rows, graded)]


def summarize(rows: Iterable[dict[str, Any]]) -> GradeSummary:
    rows = list(rows)
    return GradeSummary(
        rows=len(rows),
        correct=sum(bool(r.get("correct")) for r in rows),
        no_answer=sum(r.get("pred") is None for r in rows),
        timeouts=sum(bool(r.get("grade_timeout")) for r in rows),
        errors=sum(bool(r.get("grade_error")) for r in rows),
    )


# --- grading a file, resumably -------------------------------------------------------------------


def progress_path(out: str | os.PathLike) -> str:
    """Where ``grade_file`` keeps the rows graded so far (removed once ``out`` is written)."""
    return f"{os.fspath(out)}.grading.jsonl"


def _row_digest(row: dict[str, Any]) -> str:
    import hashlib

    text = json.dumps([row.get("gold"), row.get("completion")], ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_GRADED_FIELDS = ("pred", "correct", "grade_timeout", "grade_error")


def grade_file(path: str | os.PathLike, out: Optional[str | os.PathLike] = None, task_name: Optional[str] = None,
               workers: Optional[int] = None, cpu_limit_s: float = DEFAULT_CPU_LIMIT_S,
               log: Callable[[str], None] = lambda msg: None) -> GradeSummary:
    """Grade the samples file ``path`` into ``out`` (default: ``path`` itself, replaced whole).

    Each row is appended to ``progress_path(out)`` as it is graded, so an interrupted run keeps
    its work: the next run with the same ``out`` grades only the rest. ``out`` is written in one
    rename at the end, and nothing is written when the input is malformed or empty.
    """
    from .io import dumps_row, iter_jsonl, read_jsonl, write_jsonl_atomic

    rows = read_jsonl(path)
    if not rows:
        raise UserError(f"{path}: no rows to grade (the file is empty)")
    name = task_name or rows[0].get("task")
    if not name:
        raise UserError(f"{path}: rows name no task; pass --task")
    out = os.fspath(out if out is not None else path)
    progress = progress_path(out)
    digests = [_row_digest(r) for r in rows]
    done: dict[int, dict[str, Any]] = {}
    if os.path.exists(progress):
        for _, rec in iter_jsonl(progress, allow_truncated_tail=True):
            i = rec.get("i")
            if isinstance(i, int) and 0 <= i < len(rows) and rec.get("digest") == digests[i]:
                done[i] = {k: rec.get(k) for k in _GRADED_FIELDS}
        log(f"resuming: {len(done)} of {len(rows)} rows already graded ({progress})")
    todo = [i for i in range(len(rows)) if i not in done]
    with Grader(workers=workers or os.cpu_count() or 1, cpu_limit_s=cpu_limit_s) as grader, \
            open(progress, "a", encoding="utf-8") as sink:
        task = task_by_name(name).use_grader(grader)

        def keep(j: int, graded: dict[str, Any]) -> None:
            i = todo[j]
            done[i] = {k: graded[k] for k in _GRADED_FIELDS}
            sink.write(dumps_row({"i": i, "digest": digests[i], **done[i]}))
            sink.flush()

        grade_rows(task, [rows[i] for i in todo], source=str(path), on_graded=keep)
    graded = [{**row, **done[i]} for i, row in enumerate(rows)]
    write_jsonl_atomic(out, graded)
    os.unlink(progress)
    return summarize(graded)
