"""`thinkfast distill` and `thinkfast sample` killed with SIGKILL and run again end where an
uninterrupted run ends: the same weights, bit for bit, and the same rows, none twice, none missing.

Each run is a real CLI process. It kills itself at a chosen point, so the point is the same on
every machine however fast it is: a test-side wrapper (below) patches one function of the
process before running the CLI, and the patched function sends SIGKILL to its own process,
which dies as a killed process does: no handlers, no cleanup, no flush of anything unwritten.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import token_data
import torch
import yaml
from safetensors.torch import load_file

from thinkfast.checkpoint import save_model
from thinkfast.cli import main
from thinkfast.config import ModelConfig
from thinkfast.eval.io import read_jsonl
from thinkfast.models.lm import LanguageModel

# Run the CLI with one function patched to SIGKILL the process at the chosen point:
#   checkpoint K  after the K-th checkpoint of this process is complete
#   rename K      inside the K-th checkpoint save: every file written, not yet renamed into place
#   step K        before the K-th optimizer step (the previous step is logged, maybe not saved)
#   problem K     after K problems' rows were written, before the next problem's are made
WRAPPER = r"""
import json, os, signal, sys

where, k = json.loads(sys.argv[1]) or (None, 0)
count = 0

def tick():
    global count
    count += 1
    return count == k

def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if where in ("checkpoint", "rename", "step"):
    import thinkfast.distill.trainer as T
if where == "checkpoint":
    save = T.Trainer.save_checkpoint
    def save_then_die(self, *a, **kw):
        out = save(self, *a, **kw)
        if tick():
            die()
        return out
    T.Trainer.save_checkpoint = save_then_die
elif where == "rename":
    replace = os.replace
    def die_before_rename(src, dst, *a, **kw):
        if os.path.basename(str(src)).startswith(".tmp-step_") and tick():
            die()
        return replace(src, dst, *a, **kw)
    os.replace = die_before_rename
elif where == "step":
    step = T.Trainer.train_step
    def die_before_step(self, *a, **kw):
        if tick():
            die()
        return step(self, *a, **kw)
    T.Trainer.train_step = die_before_step
elif where == "problem":
    import thinkfast.eval.sampling as S
    rows = S.sample_rows
    def die_before_rows(*a, **kw):
        if count == k:
            die()
        tick()
        return rows(*a, **kw)
    S.sample_rows = die_before_rows

from thinkfast.cli import main
sys.exit(main(sys.argv[2:]))
"""


def thinkfast(argv: list[str], kill: tuple[str, int] | None = None) -> None:
    """Run ``thinkfast ARGV`` in a new process; with ``kill``, assert that it died by SIGKILL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(kill), *argv, "--threads", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    want = -signal.SIGKILL if kill else 0
    assert proc.returncode == want, f"thinkfast {argv[0]} {kill}: rc {proc.returncode}\n{proc.stderr[-3000:]}"


# --- distillation ----------------------------------------------------------------------------------

VOCAB = 48
STAGES = [{"name": "matrix", "objective": "matrix"}, {"name": "hidden", "objective": "hidden"},
          {"name": "kd", "objective": "kd", "loss": {"kind": "forward"}}]
STAGE_DIRS = ("1-matrix", "2-hidden", "3-kd")


def _recipe(tmp_path: Path) -> Path:
    """A 3-stage MOHAWK recipe on a tiny teacher: 5 steps a stage, a checkpoint every 2 (and at 5)."""
    torch.manual_seed(0)
    teacher = LanguageModel(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                        d_ff=64, max_seq_len=64, init_std=0.15)).eval()
    save_model(teacher, tmp_path / "teacher")
    data = token_data.write_token_data(tmp_path / "data.jsonl", VOCAB)
    recipe = {"teacher": str(tmp_path / "teacher"), "student": {"init": "teacher", "keep": 0.0, "kind": "discrete"},
              "data": {"train": str(data), "seq_len": 16, "eval_fraction": 0.1},
              "train": {"steps": 5, "batch_size": 4, "lr": 3e-3, "progress": False, "log_every": 1,
                        "save_every": 2, "schedule": "constant"},
              "stages": STAGES}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _losses(stage: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (stage / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _latest(stage: Path) -> str:
    return (stage / "latest").read_text().strip()


def _left_a_temp_save(stage: Path) -> bool:
    return bool(list((stage / "checkpoints").glob(".tmp-*")))


# Each kill point and what it leaves (a check that the kill fell where it was meant to). A process
# counts its own checkpoints and steps: a resumed one starts at its stage's latest checkpoint.
DISTILL_KILLS = {
    # inside stage 2's step-4 save (the 5th of the run), steps 3-4 logged past its step-2 checkpoint
    "mid-save": [(("rename", 5), lambda r: _latest(r / "2-hidden") == "step_00000002"
                  and _left_a_temp_save(r / "2-hidden") and [s for s, _ in _losses(r / "2-hidden")] == [1, 2, 3, 4])],
    "three-points": [
        # stage 1, just after its step-4 checkpoint
        (("checkpoint", 2), lambda r: _latest(r / "1-matrix") == "step_00000004"),
        # saves stage 1's step 5, stage 2's step 2, then dies inside stage 2's step-4 save
        (("rename", 3), lambda r: _latest(r / "2-hidden") == "step_00000002" and _left_a_temp_save(r / "2-hidden")),
        # from stage 2's step 2: steps 3-5, then stage 3's 1-3; dies before step 4 with step 3
        # logged but its last checkpoint at step 2
        (("step", 7), lambda r: _latest(r / "3-kd") == "step_00000002"
         and [s for s, _ in _losses(r / "3-kd")] == [1, 2, 3]),
    ],
}


@pytest.mark.parametrize("points", [
    "mid-save",
    pytest.param("three-points", marks=pytest.mark.slow),  # four process starts more
])
def test_distill_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, points):
    recipe = _recipe(tmp_path)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    # the uninterrupted run in this process (one thread, as the CLI runs below): a process start saved
    assert main(["distill", "--config", str(recipe), f"out_dir={full}", "--threads", "1"]) == 0
    run = ["distill", "--config", str(recipe), f"out_dir={resumed}"]
    for kill, left in DISTILL_KILLS[points]:
        thinkfast(run, kill=kill)
        assert left(resumed), kill
    thinkfast(run)

    a, b = _weights(full / "model"), _weights(resumed / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for stage in STAGE_DIRS:
        a, b = _weights(full / stage / "model"), _weights(resumed / stage / "model")
        assert all(torch.equal(a[k], b[k]) for k in a), stage
        assert _losses(full / stage) == _losses(resumed / stage) and len(_losses(resumed / stage)) == 5
        assert not _left_a_temp_save(resumed / stage)  # the killed save was cleared


# --- sampling --------------------------------------------------------------------------------------

PROBLEMS, N, BATCH = 7, 2, 2
MEASURED = {"prefill_s", "decode_s"}
"""Row fields that are measurements; everything else in a row is a function of the problem, the
settings and the batch. (The kills below fall between batches, so a resumed run forms the same
batches: a batch of other problems would change the logprobs in their last bits.)"""


def _sample_setup(tmp_path: Path) -> list[str]:
    from eval.conftest import save_tiny_gsm8k  # the eval tests' tiny model and tokenizer

    model, data = save_tiny_gsm8k(tmp_path, [{"question": f"question {i} + {i % 3} ?", "answer": f"so\n#### {i}"}
                                             for i in range(PROBLEMS)])
    return ["sample", "--model", str(model), "--task", "gsm8k", "--n", str(N), "--data", str(data),
            "--max-new-tokens", "6", "--temperature", "1.0", "--seed", "3", "--batch-problems", str(BATCH),
            "--device", "cpu"]


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]


def _cut_tail(lines: list[str], problems: int):
    """Append to a file of ``problems`` finished problems what a kill in the middle of writing
    the next one leaves: its first row whole, its second cut off (the rows of the uninterrupted run)."""
    def cut(path: Path) -> None:
        row = lines[problems * N + 1]
        with open(path, "a") as f:
            f.write(lines[problems * N] + row[: len(row) // 2])
    return cut


@pytest.mark.parametrize("points", [
    "once",
    pytest.param("three-points", marks=pytest.mark.slow),  # two process starts more
])
def test_sample_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, points):
    base = _sample_setup(tmp_path)
    full, resumed = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl"
    assert main(base + ["--out", str(full), "--threads", "1"]) == 0  # uninterrupted, in this process
    reference = read_jsonl(full)
    lines = full.read_text().splitlines(keepends=True)
    run = base + ["--out", str(resumed)]
    # (kill point, problems finished when it dies, then what else a kill mid-write would leave)
    chain = {
        "once": [(("problem", 2), 2, _cut_tail(lines, 2))],
        "three-points": [
            (("problem", 2), 2, None),  # after the first batch
            (("problem", 2), 4, _cut_tail(lines, 4)),  # resumed at problem 2, killed after its first batch
            (("problem", 2), 6, None),  # drops that cut tail, redoes problems 4-5, dies before 6
        ],
    }[points]
    for kill, finished, cut in chain:
        thinkfast(run, kill=kill)
        assert len(read_jsonl(resumed)) == finished * N
        if cut is not None:
            cut(resumed)
    thinkfast(run)

    rows = read_jsonl(resumed)
    keys = [(r["problem_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == PROBLEMS * N  # no duplicates, no gaps
    assert keys == [(f"test/{i}", j) for i in range(PROBLEMS) for j in range(N)]
    assert _comparable(rows) == _comparable(reference)
