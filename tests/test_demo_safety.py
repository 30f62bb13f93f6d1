"""The demo's output directory is safe to share with other files and other runs: ``--force``
removes only what the demo wrote, a bad ``--out`` is a usage error, a run holds OUT locked, its
worker processes die with it, and what it decides from a timing is decided once per OUT."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import thinkfast.demo as demo
from thinkfast.cli import main
from thinkfast.runtime import UserError

QUICK = demo.DemoConfig.preset(True)


# --- --force keeps what the demo did not write ----------------------------------------------------

def _fake_demo_run(out: Path) -> None:
    """An OUT as a demo run leaves it: its configuration, stage outputs, figures, a half-done write."""
    with demo.lock_out_dir(out):
        demo.check_out_dir(out, QUICK, "shipped", force=False)
    for rel in ("samples/teacher.jsonl", "llamba/1-matrix/model.safetensors", "stages.json", "report.md",
                "coverage_vs_k_synthetic.png", ".results.json.k3j9x_1.tmp"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("demo\n")


def _foreign_files(out: Path) -> dict[str, str]:
    """Files a user keeps in OUT, among them names that look like the demo's own."""
    files = {"t.txt": "a\n", "sub/notes.md": "b\n", "plot.png": "c\n", "results.json.bak": "d\n",
             ".hidden.tmp": "e\n", "other/stages.json": "f\n"}
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    return files


def test_force_on_a_demo_run_removes_only_the_demos_own_files(tmp_path):
    out = tmp_path / "out"
    _fake_demo_run(out)
    foreign = _foreign_files(out)
    (out / "link").symlink_to(out / "sub", target_is_directory=True)
    other_cfg = demo.DemoConfig.preset(False)
    logged = []
    with demo.lock_out_dir(out):
        demo.check_out_dir(out, other_cfg, "shipped", force=True, log=logged.append)
    for rel, text in foreign.items():
        assert (out / rel).read_text() == text
    assert (out / "link").is_symlink()
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted([".hidden.tmp", ".thinkfast-demo.lock", "demo_config.json", "link", "other", "plot.png",
                           "results.json.bak", "sub", "t.txt"])
    assert json.loads((out / "demo_config.json").read_text())["demo"]["quick"] is False
    assert logged and "t.txt" in logged[0] and "kept" in logged[0]


def test_force_refuses_a_directory_that_holds_no_demo_run(tmp_path, capsys):
    out = tmp_path / "x"
    foreign = _foreign_files(out)
    (out / "samples").mkdir()  # a stage's name, but no demo run wrote it
    for argv in (["demo", "--quick", "--out", str(out)], ["demo", "--quick", "--force", "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{out} is not empty and holds no demo run" in err and "samples" in err
        assert "--force" not in err  # it must not suggest a flag, and --force would not help
    for rel, text in foreign.items():
        assert (out / rel).read_text() == text
    assert sorted(p.name for p in out.iterdir()) == sorted([".hidden.tmp", "other", "plot.png", "results.json.bak",
                                                            "samples", "sub", "t.txt"])


def test_a_directory_left_with_only_the_lock_is_accepted(tmp_path):
    out = tmp_path / "out"
    with demo.lock_out_dir(out):  # a run killed before it wrote anything else
        pass
    assert [p.name for p in out.iterdir()] == [demo.LOCK_NAME]
    with demo.lock_out_dir(out):
        demo.check_out_dir(out, QUICK, "shipped", force=False)
    assert (out / "demo_config.json").is_file()


@pytest.mark.slow
def test_force_redoes_a_real_run_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0
    foreign = _foreign_files(out)
    first = json.loads((out / "stages.json").read_text())
    (out / "llamba" / "model" / "stale").write_text("")  # inside a stage's output: the demo's own
    assert main(["demo", "--quick", "--force", "--out", str(out), "--threads", "1"]) == 0
    for rel, text in foreign.items():
        assert (out / rel).read_text() == text
    assert not (out / "llamba" / "model" / "stale").exists()  # the stage was redone from scratch
    assert json.loads((out / "stages.json").read_text()).keys() == first.keys()


# --- --out that is not a directory ---------------------------------------------------------------

def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep\n")
    assert main(["demo", "--quick", "--out", str(f)]) == 2
    assert f"--out {f} is not a directory" in capsys.readouterr().err
    assert main(["demo", "--quick", "--out", str(f / "sub")]) == 2
    assert f"cannot create --out {f / 'sub'}" in capsys.readouterr().err
    assert f.read_text() == "keep\n" and sorted(tmp_path.iterdir()) == [f]


# --- the lock --------------------------------------------------------------------------------------

def test_a_second_run_on_a_locked_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    with demo.lock_out_dir(out):
        assert main(["demo", "--quick", "--out", str(out)]) == 2
        assert f"{out} is in use by another thinkfast demo run (pid {os.getpid()})" in capsys.readouterr().err
        with pytest.raises(UserError, match="in use by another thinkfast demo run"):
            with demo.lock_out_dir(out):
                pass
    assert [p.name for p in out.iterdir()] == [demo.LOCK_NAME]  # the refused run wrote nothing
    with demo.lock_out_dir(out):  # released when its holder is done
        pass


# --- workers die with their parent -----------------------------------------------------------------

PARENT = textwrap.dedent('''
    """Runs two never-ending jobs in worker processes while holding OUT's lock, until killed."""
    import functools, os, sys, threading, time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context, resource_tracker
    from pathlib import Path

    from thinkfast import demo
    from thinkfast.runtime import die_with_parent


    def publish(path, text):
        Path(str(path) + ".tmp").write_text(text)
        os.replace(str(path) + ".tmp", path)


    def hang(pid_file):
        publish(pid_file, str(os.getpid()))
        while True:  # as a distilling worker would, it keeps writing into OUT
            publish(Path(pid_file).with_suffix(".beat"), str(time.time()))
            time.sleep(0.05)


    if __name__ == "__main__":
        out, how = Path(sys.argv[1]), sys.argv[2]
        jobs = {n: functools.partial(hang, out / f"{n}.pid") for n in "ab"}

        def publish_tracker():  # the resource tracker the pool started, once the workers run
            while not all((out / f"{n}.pid").exists() for n in jobs):
                time.sleep(0.05)
            publish(out / "tracker.pid", str(resource_tracker._resource_tracker._pid))

        threading.Thread(target=publish_tracker, daemon=True).start()
        with demo.lock_out_dir(out):
            if how == "run_parallel":  # the demo's own helper
                demo.StageRunner(out, False, print).run_parallel(jobs, workers=2)
            else:  # only the portable fallback: no prctl
                with ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=die_with_parent,
                                         initargs=(os.getpid(), False)) as pool:
                    [f.result() for f in [pool.submit(job) for job in jobs.values()]]
''')


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.mark.parametrize("how", ["run_parallel", "watchdog"])
def test_workers_die_when_their_parent_is_killed(tmp_path, how):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, str(script), str(out), how], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        names = ("a.pid", "b.pid", "tracker.pid")
        assert _wait_for(lambda: all((out / n).exists() for n in names) or parent.poll() is not None, 60)
        assert parent.poll() is None, "the parent script ended before its workers started"
        pids = [int((out / n).read_text()) for n in names]
        assert all(_alive(p) for p in pids) and parent.pid not in pids
        with pytest.raises(UserError, match=rf"in use by another thinkfast demo run \(pid {parent.pid}\)"):
            with demo.lock_out_dir(out):
                pass
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait_for(lambda: not any(_alive(p) for p in pids), 10), \
            f"still running after their parent was killed: {[p for p in pids if _alive(p)]}"
        beat = (out / "a.beat").read_text()
        time.sleep(0.3)
        assert (out / "a.beat").read_text() == beat  # nothing writes into OUT any more
        with demo.lock_out_dir(out):  # the killed run left no stale lock
            pass
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for p in pids:  # whatever this test started and outlived its parent
            if _alive(p):
                os.kill(p, signal.SIGKILL)


# --- decisions made from timings -----------------------------------------------------------------

def test_a_decision_is_recorded_with_its_measurements_and_kept_by_a_resumed_run(tmp_path):
    rule = lambda speeds: demo.samples_per_problem(QUICK, speeds)  # noqa: E731
    first = {"teacher": 0.04, "llamba": 0.01, "hybrid": 0.04}  # Llamba 4x as fast, the hybrid as fast
    runner = demo.StageRunner(tmp_path, False, lambda msg: None)
    runner.run("data", lambda: {"rows": 1})
    decided = runner.decide("samples_per_problem", first, rule)
    assert decided == rule(first) and decided["llamba"] > decided["hybrid"] == decided["teacher"]
    state = json.loads((tmp_path / "stages.json").read_text())
    assert state[demo.DECISIONS] == {"samples_per_problem": {"value": decided, "from": first}}
    assert state["data"]["result"] == {"rows": 1}

    logged = []
    resumed = demo.StageRunner(tmp_path, False, logged.append)
    assert "data" in resumed.state and demo.DECISIONS not in resumed.state  # not taken for a stage
    second = {"teacher": 0.04, "llamba": 0.04, "hybrid": 0.01}  # this run's timings say the opposite
    assert rule(second) != decided
    assert resumed.decide("samples_per_problem", second, rule) == decided
    assert "decided earlier, reused" in logged[0] and "kept" in logged[0]
    assert json.loads((tmp_path / "stages.json").read_text()) == state
    assert resumed.seconds().keys() == {"data"}

    forced = demo.StageRunner(tmp_path, True, lambda msg: None)  # --force decides again
    assert forced.decide("samples_per_problem", second, rule) == rule(second)


def test_malformed_stages_json_names_the_file(tmp_path):
    (tmp_path / "stages.json").write_text('{"data": ')
    with pytest.raises(UserError, match=r"stages\.json:1: malformed JSON"):
        demo.StageRunner(tmp_path, False, print)
    (tmp_path / "stages.json").write_text('["data"]\n')
    with pytest.raises(UserError, match=r"stages\.json: expected an object of stages, found list"):
        demo.StageRunner(tmp_path, False, print)
