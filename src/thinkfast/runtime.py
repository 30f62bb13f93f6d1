"""Process-wide settings: thread counts, the user-facing error type, seeding."""

from __future__ import annotations

import os
import random
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


PROGRESS_POSITION = 0
"""Terminal line of this process's progress bars: a worker process that runs beside another (the
demo's parallel stages) sets its own, so the bars do not overwrite each other."""


class UserError(Exception):
    """A problem with the user's input (file, flag, checkpoint): printed without a traceback."""


def configure_threads(threads: int | None = None) -> int:
    """Pick PyTorch's intra-op threads deliberately.

    OpenMP's default spin-waiting was measured to cut a contended 2-thread training step from
    9.0k to 1.6k tokens/s, so OMP_WAIT_POLICY defaults to PASSIVE. It only takes effect when set
    before OpenMP starts, so the console entry point sets it first thing; a user's own setting
    wins. ``threads`` (or THINKFAST_THREADS) overrides the thread count (default: all cores).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    n = threads or int(os.environ.get("THINKFAST_THREADS", "0") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def native_bf16(device: Any = "cpu") -> bool:
    """Whether ``device`` computes bf16 matrix products natively: a CUDA GPU that supports bf16,
    or a CPU with AVX-512 BF16 or AMX-BF16 instructions. Elsewhere bf16 is emulated through fp32
    and is slower than fp32 (how the demo decides to train in bf16: ``DemoConfig.train_bf16``)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def die_with_parent(parent_pid: int, pdeathsig: bool = True, poll_s: float = 0.5) -> None:
    """End this process when ``parent_pid``, the process that started it, ends: meant as the
    initializer of a worker process. A parent killed with SIGKILL runs no cleanup, and its workers
    would otherwise live on (re-parented) and keep writing into the parent's output.

    On Linux the kernel does it at once (``prctl(PR_SET_PDEATHSIG, SIGKILL)``; ``pdeathsig=False``
    leaves that out). Everywhere, a daemon thread also polls ``os.getppid()`` every ``poll_s``
    seconds and exits when it changes: the portable fallback, and the cover for a prctl that failed."""
    import sys
    import threading
    import time

    if pdeathsig and sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the thread below still watches
    if os.getppid() != parent_pid:  # the parent died before the hook was in place
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="thinkfast-parent-watch", daemon=True).start()


_spawner_lock = threading.Lock()
_spawner_jobs: "Any" = None


def on_lasting_thread(fn: Callable[[], T]) -> T:
    """``fn()`` run on one daemon thread that lives as long as this process, and its result.

    Start a child that calls ``die_with_parent`` through this. The kernel's parent-death signal
    fires when the *thread* that started the child ends, not the process: a child started from a
    short-lived worker thread is killed as soon as that thread returns."""
    import queue

    global _spawner_jobs
    with _spawner_lock:
        if _spawner_jobs is None:
            jobs: "queue.Queue" = queue.Queue()

            def serve() -> None:
                while True:
                    job, done = jobs.get()
                    try:
                        done.put((True, job()))
                    except BaseException as e:  # noqa: BLE001 -- re-raised in the caller
                        done.put((False, e))

            threading.Thread(target=serve, name="thinkfast-spawner", daemon=True).start()
            _spawner_jobs = jobs
    done: "queue.Queue" = queue.Queue(maxsize=1)
    _spawner_jobs.put((fn, done))
    ok, value = done.get()
    if not ok:
        raise value
    return value
