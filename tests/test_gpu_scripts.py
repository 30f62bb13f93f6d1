"""The GPU checks in benchmarks/gpu/ can be parsed and smoke-run on a CPU (the real run needs a GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_distill_check_arguments(tmp_path):
    dc = _load("distill_check")
    a = dc.parse_args(["--out", str(tmp_path / "x.json")])
    assert (a.device, a.steps, a.seq_len, a.batch, a.micro_batch) == ("cuda", 300, 2048, 8, 4)
    assert a.budget_s < 8 * 60 and a.students == ["llamba", "hybrid50"]
    t = dc.parse_args(["--out", "x.json", "--device", "cpu", "--tiny", "--steps", "5"])
    assert (t.steps, t.seq_len) == (5, 64)
    for bad in (["--students", "nope"], ["--batch", "6", "--micro-batch", "4"], []):
        with pytest.raises(SystemExit):
            dc.parse_args((["--out", "x.json"] if bad else []) + bad)


def test_distill_check_cpu_smoke(tmp_path):
    dc = _load("distill_check")
    out = tmp_path / "check.json"
    assert dc.main(["--device", "cpu", "--tiny", "--students", "hybrid50", "--steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["status"] == 0 and not report["errors"]
    entry = report["students"]["hybrid50"]
    assert entry["train"]["steps"] == 2 and entry["train"]["tokens_per_s"] > 0 and entry["train"]["plan_peak"] > 0
    assert entry["parity"]["passed"]
    for row in entry["parity"]["layers"]:
        assert row["auto_backend"] == "torch" and row["chunked_vs_reference_fp32"] < dc.PARITY_TOL_FP32
    # A mixer output that disagrees with the reference scan fails the parity check.
    import torch

    from thinkfast.convert.from_attention import student_from_teacher
    from thinkfast.models.lm import LanguageModel

    student = student_from_teacher(LanguageModel(dc.teacher_config(True)), 0.5, "mamba2")
    assert dc.mixer_parity(student, torch.device("cpu"), 16)["passed"]
    assert not dc.mixer_parity(student, torch.device("cpu"), 16, inject=0.01)["passed"]


def test_run_all_runs_every_check_with_out(tmp_path):
    script = GPU / "run_all.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert '"$here"/*.py' in text and '--out "$OUT/$name.json"' in text
    # Without OUT it refuses to run rather than writing somewhere unexpected.
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "OUT" in r.stderr


@pytest.mark.slow
def test_distill_check_exits_non_zero_on_parity_failure(tmp_path):
    dc = _load("distill_check")
    bad = tmp_path / "bad.json"
    assert dc.main(["--device", "cpu", "--tiny", "--students", "llamba", "--steps", "1", "--out", str(bad),
                    "--inject-parity-error", "0.01"]) == 1
    report = json.loads(bad.read_text())
    assert report["status"] == 1 and "parity failed" in report["errors"][0]


def test_time_guards_nest():
    import time

    dc = _load("distill_check")
    with pytest.raises(dc.TimeGuard, match="outer"):
        with dc.time_guard(0.3, "outer"):
            with dc.time_guard(10, "inner"):
                pass  # leaving the inner guard must not disarm the outer one
            time.sleep(5)
    with pytest.raises(dc.TimeGuard, match="inner"):
        with dc.time_guard(10, "outer"):
            with dc.time_guard(0.2, "inner"):
                time.sleep(5)
