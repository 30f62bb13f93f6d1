"""How the demo runs its stages: ``StageRunner`` (each stage once per OUT, its result and wall
time in OUT/stages.json, the run's decisions beside them, independent stages side by side in
worker processes), and the safety of OUT (only a demo run's own directory is written or cleaned;
one run at a time holds its lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..config import atomic_write_text, to_dict
from ..runtime import UserError, die_with_parent
from .config import DemoConfig

DECISIONS = "decisions"
"""The entry of stages.json that holds the run's decisions (``StageRunner.decide``), not a stage."""


class StageRunner:
    """Runs named stages once; records results and wall time in OUT/stages.json, and beside them
    the run's decisions (``decide``)."""

    def __init__(self, out: Path, force: bool, log: Callable[[str], None],
                 on_stage: Optional[Callable[[str, float, bool], None]] = None):
        """``on_stage(name, seconds, reused)`` is called as each stage finishes or is reused."""
        self.out, self.force, self.log = out, force, log
        self.on_stage = on_stage
        self.path = out / "stages.json"
        state: dict[str, Any] = {}
        if self.path.exists() and not force:
            try:
                state = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"{self.path}:{e.lineno}: malformed JSON ({e.msg}); "
                                f"use --force to redo every stage") from None
            if not isinstance(state, dict):
                raise UserError(f"{self.path}: expected an object of stages, found {type(state).__name__}; "
                                f"use --force to redo every stage")
        self.decisions: dict[str, Any] = state.pop(DECISIONS, {})
        self.state: dict[str, Any] = state

    def decide(self, name: str, measured: dict[str, Any], rule: Callable[[dict[str, Any]], Any]) -> Any:
        """``rule(measured)``, decided once per OUT: the first run records it with the
        measurements it came from, and every later run in this OUT reuses the recorded value even
        when its own measurements differ. Timings vary from run to run; a choice made from them
        (how many samples a model draws) must not, or a resumed run would mix two choices and its
        figures that are not timings would depend on the timings of the run that resumed it."""
        if name in self.decisions:
            kept = self.decisions[name]
            note = "" if kept["from"] == measured else f" (measured now: {measured}; kept: {kept['from']})"
            self.log(f"[{name}] decided earlier, reused{note}")
            return kept["value"]
        value = rule(measured)
        self.decisions[name] = {"value": value, "from": measured}
        self._write()
        return value

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        assert name != DECISIONS, f"{DECISIONS!r} is stages.json's entry for decisions, not a stage name"
        if name in self.state:
            self.log(f"[{name}] done earlier ({self.state[name]['seconds']:.0f}s), reused")
            if self.on_stage:
                self.on_stage(name, self.state[name]["seconds"], True)
            return self.state[name]["result"]
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a stage that fails names itself; earlier stages stay on disk
            raise self._failure(name, e) from (None if isinstance(e, UserError) else e)
        self._record(name, result, time.perf_counter() - t0)
        return result

    def run_parallel(self, jobs: dict[str, Callable[[], Any]], workers: int,
                     poll: Optional[Callable[[], None]] = None,
                     after: Optional[dict[str, tuple[str, ...]]] = None) -> dict[str, Any]:
        """Run independent stages at once, each in a spawned worker process, and record each as it
        finishes (its own wall time; they overlap). ``jobs`` values must pickle (module-level
        functions, ``functools.partial`` of them). ``after``: stages that wait for others of
        ``jobs`` (``{"prm": ("orm",)}``); a stage is handed to the pool once those have finished,
        and the pool gives its free workers the stages handed to it in order (``cost.schedule``
        models exactly this). ``jobs`` must list every stage after those it waits for. With
        ``workers`` <= 1, or one stage left to do, they run here one after another. A failing
        stage is named; the others still finish and are kept (a stage waiting for a failed one is
        not run), so a rerun redoes only those. ``poll()`` is called every few seconds while
        workers run (e.g. to read their progress)."""
        after = {k: tuple(v) for k, v in (after or {}).items()}
        names = list(jobs)
        for name, deps in after.items():
            if name not in jobs or any(d not in jobs or names.index(d) > names.index(name) for d in deps):
                raise ValueError(f"stage {name!r} waits for {deps}: each must be one of the jobs, listed before it")
        todo = [name for name in jobs if name not in self.state]
        if workers <= 1 or len(todo) <= 1:
            with _polling(poll):
                return {name: self.run(name, fn) for name, fn in jobs.items()}
        for name in jobs:
            if name not in todo:
                self.run(name, jobs[name])  # reused: logged and reported
        from concurrent.futures import FIRST_COMPLETED, wait

        self.log(f"[{', '.join(todo)}] ... (in parallel, {min(workers, len(todo))} processes)")
        errors: dict[str, BaseException] = {}
        with worker_pool(min(workers, len(todo))) as pool:
            waiting, futures = list(todo), {}

            def hand_over() -> set:
                """Submit every waiting stage whose stages have finished (a failed one never
                does), in jobs' order; returns the new futures."""
                ready = [name for name in waiting if all(d in self.state for d in after.get(name, ()))]
                for name in ready:
                    waiting.remove(name)
                    futures[pool.submit(_timed, jobs[name])] = name
                return {f for f, name in futures.items() if name in ready}

            pending = hand_over()
            while pending:
                finished, pending = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
                if poll is not None:
                    poll()
                for future in finished:
                    self._collect(futures[future], future, errors)
                if finished:
                    pending |= hand_over()
        for name, e in errors.items():
            raise self._failure(name, e) from e
        return {name: self.state[name]["result"] for name in jobs}

    def _collect(self, name: str, future: Any, errors: dict[str, BaseException]) -> None:
        """Record a finished worker's stage, or keep its error for ``run_parallel`` to raise."""
        try:
            result, seconds = future.result()
        except BaseException as e:  # noqa: BLE001 -- named and re-raised by run_parallel
            errors[name] = e
            return
        self._record(name, result, seconds)

    def _failure(self, name: str, e: BaseException) -> UserError:
        detail = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        return UserError(f"stage {name!r} failed: {detail} (earlier stages are kept in {self.out})")

    def _record(self, name: str, result: Any, seconds: float) -> None:
        self.state[name] = {"seconds": seconds, "result": result}
        self._write()
        self.log(f"[{name}] finished in {seconds:.0f}s")
        if self.on_stage:
            self.on_stage(name, seconds, False)

    def _write(self) -> None:
        doc = {**self.state, DECISIONS: self.decisions} if self.decisions else self.state
        atomic_write_text(self.path, json.dumps(doc, indent=2) + "\n")

    def seconds(self) -> dict[str, float]:
        return {k: round(v["seconds"], 1) for k, v in self.state.items()}


@contextlib.contextmanager
def _polling(poll: Optional[Callable[[], None]], every: float = 5.0) -> Iterator[None]:
    """Call ``poll()`` every ``every`` seconds from a thread while the block runs here."""
    if poll is None:
        yield
        return
    import threading

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            poll()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def in_worker(threads: int, position: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker process, with ``threads`` PyTorch threads and its progress bars on
    terminal line ``position``."""
    from .. import runtime

    runtime.configure_threads(threads)
    runtime.PROGRESS_POSITION = position
    return fn(*args)


def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def run_in_workers(calls: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Each of ``calls`` in a spawned worker process, at most ``workers`` at once, side by side;
    their results in order (the first error is raised). With ``workers`` <= 1 or one call, here,
    one after another. ``calls`` must pickle (``functools.partial`` of module-level functions);
    the workers die with this process, as ``StageRunner.run_parallel``'s do."""
    if workers <= 1 or len(calls) <= 1:
        return [fn() for fn in calls]
    with worker_pool(min(workers, len(calls))) as pool:
        return list(pool.map(_call, calls))


def worker_pool(workers: int) -> Any:
    """A pool of ``workers`` spawned processes (a fresh interpreter each: no forked OpenMP or torch
    state), each of which dies with this process, even on kill -9: a worker left running would
    keep writing into OUT beside a rerun. Use it as a context manager."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))


def parallel_workers(threads: int, jobs: Optional[int]) -> int:
    """Processes for the stages that run side by side: ``jobs`` if given, else as many as there are
    cores for ``threads`` threads each, at most 2 (the students are the long ones)."""
    if jobs is not None:
        return max(1, jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores // max(1, threads)))


# --- the output directory -----------------------------------------------------------------------

OWN_DIRS = ("data", "teacher", "tokenizer", "select", "llamba", "hybrid", "temperature", "orm", "prm", "samples")
"""The stage directories the demo writes in OUT (``tokenizer`` only with ``retrain_teacher``); each
is the demo's own, whole, in a directory that holds a demo run (``prm`` only with the PRM verifier)."""
OWN_FILES = ("demo_config.json", "stages.json", "metrics.json", "results.json", "report.md")
OWN_PLOTS = ("coverage_vs_k_*.png", "accuracy_vs_k_*.png", "accuracy_vs_seconds_*.png")
"""The report's figures (``thinkfast.eval.report.write_report``), one of each per task."""
LOCK_NAME = ".thinkfast-demo.lock"
"""The file a running demo holds locked (``lock_out_dir``); it stays, and is the demo's own."""


def is_demo_output(p: Path) -> bool:
    """Whether ``p``, an entry of OUT, is one the demo writes: a stage directory, one of its files
    or figures, the lock, or what an interrupted atomic write of one of those left behind
    (``.NAME.<random>.tmp``). A symlink never is: the demo writes none."""
    if p.is_symlink():
        return False
    if p.is_dir():
        return p.name in OWN_DIRS
    if not p.is_file():
        return False
    name = p.name
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 2)[0]  # ".report.md.k3j9x.tmp" -> "report.md"
    elif name == LOCK_NAME:
        return True
    return name in OWN_FILES or any(Path(name).match(g) for g in OWN_PLOTS)


def out_dir_meta(cfg: DemoConfig, teacher_tag: str, teacher_weights: Optional[str] = None) -> dict[str, Any]:
    """What OUT/demo_config.json records, and a rerun in the same OUT must match."""
    meta = {"demo": to_dict(cfg), "teacher": teacher_tag}
    if teacher_weights is not None:
        meta["teacher_weights"] = teacher_weights
    return meta


def refuse_unusable_out(out: Path, meta: dict[str, Any], force: bool) -> None:
    """Raise a UserError unless OUT can take this run, without writing anything: OUT must not
    exist yet, or be a directory that holds a demo run of this configuration (``meta``; of any
    configuration with ``force``), or one that holds nothing but what a run leaves before it
    records its configuration (``_left_before_config``). A directory that holds no demo run is
    refused even with ``force``: what is in it is not the demo's to remove."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a directory; name a directory (it is created if missing)")
    if not out.exists():
        return
    path = out / "demo_config.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != meta and not force:
            raise UserError(f"{out} holds a demo run with a different configuration ({path}); use another "
                            f"--out, or --force to redo every stage there (it removes only the demo's own files)")
        return
    # Without demo_config.json (the first file a run writes, once it holds the lock) even a
    # stage-named entry may be someone else's: only what a run leaves before it is accepted.
    foreign = sorted(p.name for p in out.iterdir() if not _left_before_config(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"{out} is not empty and holds no demo run (no demo_config.json; it holds {shown}); "
                        f"use an empty or new --out")


def _left_before_config(p: Path) -> bool:
    """Whether ``p`` is what a run leaves in OUT before demo_config.json: the lock, or a
    half-written demo_config.json."""
    return (p.is_file() and not p.is_symlink()
            and (p.name == LOCK_NAME or (p.name.startswith(".demo_config.json.") and p.name.endswith(".tmp"))))


def remove_demo_outputs(out: Path) -> list[str]:
    """Remove the demo's own entries of OUT (``is_demo_output``) but the lock, which the caller
    holds; returns the names of the entries kept that the demo did not write."""
    kept = []
    for p in sorted(out.iterdir()):
        if p.name == LOCK_NAME:
            continue
        if not is_demo_output(p):
            kept.append(p.name)
        elif p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return kept


def check_out_dir(out: Path, cfg: DemoConfig, teacher_tag: str, force: bool,
                  teacher_weights: Optional[str] = None, log: Callable[[str], None] = print) -> None:
    """Make OUT ready for this run and record its configuration: refuse an unusable OUT
    (``refuse_unusable_out``), and with ``force`` remove the demo's own files there, so that no
    stage resumes from an old checkpoint. ``teacher_weights`` (a digest of the shipped teacher)
    makes a run of an older shipped teacher another configuration. The caller holds OUT's lock."""
    meta = out_dir_meta(cfg, teacher_tag, teacher_weights)
    refuse_unusable_out(out, meta, force)
    if force and out.exists():
        kept = remove_demo_outputs(out)
        if kept:
            log(f"--force: kept what the demo did not write in {out}: {', '.join(kept)}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "demo_config.json", json.dumps(meta, indent=2) + "\n")


@contextlib.contextmanager
def lock_out_dir(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUT (``flock`` on OUT/.thinkfast-demo.lock) while the block runs;
    a second run on the same OUT is refused meanwhile. The kernel drops the lock when its holder
    dies, so a killed run leaves no stale lock, and the descriptor is not inherited by the
    workers the run starts (Python's default), so a worker never holds it. Where ``fcntl`` is
    missing (Windows) the run is not locked."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a parent of OUT is a file
        raise UserError(f"cannot create --out {out}: {e.strerror or e}") from None
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # e.g. OUT is not writable
        raise UserError(f"cannot write into --out {out}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise UserError(f"{out} is in use by another thinkfast demo run"
                            f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to end, "
                            f"or use another --out") from None
        # The holder's pid, for that message. Written in place: the lock belongs to this inode,
        # which a rename would replace.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)

