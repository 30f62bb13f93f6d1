"""Sharded checkpoints (torch.distributed.checkpoint) under DDP and FSDP2 on 2 gloo processes:
stopped and resumed on 2 processes or on 1, the run ends where an uninterrupted one ends; FSDP2
with train.bf16 computes in bf16 over fp32 master weights. Plus the single-process checkpoint
rules: the older single-file format still resumes, a damaged state/ is refused, and rotation
deletes only checkpoints the trainer wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from thinkfast.checkpoint import CheckpointError
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill import distributed as D

from dist_worker import trainer

MODES = ["ddp", "fsdp"]


@pytest.fixture(scope="module")
def gloo_runs(tmp_path_factory) -> Path:
    """One torchrun launch (2 CPU processes) doing every multi-process run of this file."""
    import token_data

    root = tmp_path_factory.mktemp("gloo")
    data = token_data.write_token_data(root / "data.jsonl", 48)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "dist_worker.py"), str(root / "out"), str(data), *MODES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _losses(run: Path) -> list[float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_stopped_and_resumed_on_two_end_bit_for_bit_where_the_uninterrupted_run_ends(
        gloo_runs, mode):
    out = gloo_runs / "out" / mode
    a, b = _weights(out / "full"), _weights(out / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(out / "resumed") == _losses(out / "full") and len(_losses(out / "full")) == 4
    # The checkpoint: a DCP directory written by both ranks, no single optimizer file.
    ckpt = out / "full" / "checkpoints" / "step_00000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["format"] == 2 and state["world_size"] == 2
    assert (ckpt / "state" / ".metadata").is_file() and not (ckpt / "optimizer.pt").exists()
    if mode == "fsdp":  # each rank wrote its own shards
        assert sorted(p.name for p in (ckpt / "state").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list((out / "resumed" / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_stopped_then_resumed_on_one_match_the_uninterrupted_run(gloo_runs, mode, tmp_path):
    out = gloo_runs / "out" / mode
    run = tmp_path / "stopped"
    shutil.copytree(out / "stopped", run)
    assert (run / "latest").read_text().strip() == "step_00000002"
    data = load_data(DataConfig(train=str(gloo_runs / "data.jsonl"), seq_len=16, eval_fraction=0.1))
    result = trainer(run, data, D.DistEnv(), distributed=mode).fit()
    assert result["steps"] == 4
    a, b = _weights(out / "full"), _weights(run)
    for k in a:  # one process accumulates the two micro-batches the two processes summed: same up to rounding
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert _losses(run) == pytest.approx(_losses(out / "full"), rel=1e-5)


def test_fsdp_bf16_gathers_bf16_parameters_over_fp32_master_weights(gloo_runs):
    report = json.loads((gloo_runs / "out" / "mp.json").read_text())
    bf16, fp32 = report["bf16"], report["fp32"]
    assert bf16["forward_param_dtypes"] == ["torch.bfloat16"]  # what a block computes with
    assert bf16["optimizer_param_dtypes"] == ["torch.float32"] and bf16["sharded"] == "DTensor"
    assert bf16["grad_dtypes"] == ["torch.float32"]  # reduced in fp32 onto the fp32 shards
    assert fp32["forward_param_dtypes"] == ["torch.float32"]  # the control: no policy without bf16


def test_mixed_precision_policy():
    policy = D.mixed_precision_policy(True)
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert D.mixed_precision_policy(False) is None


# --- one process ---------------------------------------------------------------------------------
@pytest.fixture
def data(token_data):
    return load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_checkpoint_of_the_single_file_format_still_resumes(tmp_path, data):
    env = D.DistEnv()
    trainer(tmp_path / "full", data, env).fit()
    trainer(tmp_path / "old", data, env, stop_after=3).fit()
    ckpt = tmp_path / "old" / "checkpoints" / "step_00000002"
    # Rewrite the checkpoint as the earlier format: a full optimizer state dict in optimizer.pt.
    t = trainer(tmp_path / "old", data, env)
    t._resume(ckpt)
    _, osd = D.full_state_dicts(t.model, t.optimizer)
    torch.save(osd, ckpt / "optimizer.pt")
    shutil.rmtree(ckpt / "state")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["format"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    trainer(tmp_path / "old", data, env).fit()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "old")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Its successors are written in the sharded format.
    assert (tmp_path / "old" / "checkpoints" / "step_00000004" / "state" / ".metadata").is_file()


def test_a_damaged_sharded_state_is_refused_and_nothing_is_overwritten(tmp_path, data):
    env = D.DistEnv()
    trainer(tmp_path / "run", data, env, stop_after=3).fit()
    state = tmp_path / "run" / "checkpoints" / "step_00000002" / "state"
    shard = next(state.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:64])
    before = _tree(tmp_path / "run")
    with pytest.raises(CheckpointError, match="state does not fit this model and optimizer, or is corrupt"):
        trainer(tmp_path / "run", data, env).fit()
    assert _tree(tmp_path / "run") == before
    (state / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"state/\.metadata is missing"):
        trainer(tmp_path / "run", data, env).fit()


def test_rotation_deletes_only_checkpoints_the_trainer_wrote(tmp_path, data):
    ckpts = tmp_path / "run" / "checkpoints"
    foreign = [ckpts / "step_00000000", ckpts / "step_best", ckpts / "step_00000001.bak"]
    for d in foreign:
        d.mkdir(parents=True)
        (d / "notes.txt").write_text("mine")
    trainer(tmp_path / "run", data, D.DistEnv(), save_every=1, keep_checkpoints=2).fit()
    assert all((d / "notes.txt").read_text() == "mine" for d in foreign)
    assert sorted(p.name for p in ckpts.iterdir() if p not in foreign) == ["step_00000003", "step_00000004"]
