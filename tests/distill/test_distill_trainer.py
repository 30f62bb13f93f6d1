"""The shared loop: exact resume after a kill, NaN handling, bad checkpoints, schedules, bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distill_helpers import recipe
from safetensors.torch import load_file

from thinkfast.checkpoint import CheckpointError, load_model
from thinkfast.config import ModelConfig
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.config import TrainConfig, build_config
from thinkfast.distill.recipe import run_recipe
from thinkfast.distill.schedule import lr_factor
from thinkfast.distill.stages import LMObjective
from thinkfast.distill.trainer import NonFiniteLossError, Trainer
from thinkfast.models.lm import LanguageModel
from thinkfast.runtime import UserError

MOHAWK = [{"name": "matrix", "objective": "matrix"}, {"name": "hidden", "objective": "hidden"},
          {"name": "kd", "objective": "kd", "loss": {"kind": "forward"}}]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def losses(stage_dir: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (stage_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(ln)]


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, teacher_dir, token_data):
    def cfg(out, **hidden_train):
        d = recipe(tmp_path, teacher_dir, token_data, [dict(s) for s in MOHAWK],
                   train={"steps": 5, "save_every": 2}, out_dir=str(tmp_path / out))
        d["stages"][1]["train"] = hidden_train
        return build_config(d)

    assert not run_recipe(cfg("full")).get("interrupted")
    # Killed in stage 2 after step 3 (its last checkpoint is step 2), then the same command again.
    first = run_recipe(cfg("resumed", stop_after=3))
    assert first.get("interrupted") and (tmp_path / "resumed/2-hidden/latest").read_text().strip() == "step_00000002"
    second = run_recipe(cfg("resumed"))
    assert second["stages"][0]["steps"] == 5
    a = load_file(str(tmp_path / "full/model/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/model/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for stage in ("1-matrix", "2-hidden", "3-kd"):
        assert losses(tmp_path / "full" / stage) == losses(tmp_path / "resumed" / stage)
    assert len(losses(tmp_path / "resumed/2-hidden")) == 5  # lines past the checkpoint were dropped
    # The resolved config sits beside every checkpoint and the final model.
    assert (tmp_path / "full/3-kd/checkpoints/step_00000005/run_config.yaml").exists()
    assert (tmp_path / "full/3-kd/model/run_config.yaml").exists()
    # A finished recipe is not redone.
    assert run_recipe(cfg("full"))["stages"][2]["steps"] == 5


class Exploding(LMObjective):
    """The loss turns NaN on its third call."""

    calls = 0

    def forward(self, batch):
        loss, metrics = super().forward(batch)
        self.calls += 1
        return (loss * float("nan") if self.calls >= 3 else loss), metrics


def _lm_trainer(tmp_path, data, objective=None, **train):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=48, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32))
    tc = TrainConfig(**{"steps": 6, "batch_size": 4, "progress": False, "log_every": 1, "save_every": 0, **train})
    bundle = load_data(DataConfig(train=str(data), seq_len=16, eval_fraction=0.1))
    return Trainer(objective or LMObjective(model), bundle, tc, tmp_path / "lm")


def test_nan_loss_stops_naming_the_step_and_saves(tmp_path, token_data):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=48, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32))
    trainer = _lm_trainer(tmp_path, token_data, Exploding(model))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3.*step_00000002"):
        trainer.fit()
    assert (tmp_path / "lm/latest").read_text().strip() == "step_00000002"
    saved = load_model(tmp_path / "lm/checkpoints/step_00000002/model")
    assert all(torch.isfinite(p).all() for p in saved.parameters())


def test_corrupt_or_incompatible_checkpoint_is_refused_and_nothing_is_overwritten(tmp_path, token_data):
    _lm_trainer(tmp_path, token_data, save_every=2, stop_after=3).fit()
    ckpt = tmp_path / "lm/checkpoints/step_00000002"
    before = snapshot(tmp_path / "lm")
    with pytest.raises(UserError, match="lr"):
        _lm_trainer(tmp_path, token_data, lr=1e-2).fit()
    assert snapshot(tmp_path / "lm") == before
    weights = ckpt / "model/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = snapshot(tmp_path / "lm")
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        _lm_trainer(tmp_path, token_data).fit()
    assert snapshot(tmp_path / "lm") == before
    (ckpt / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="trainer_state.json is missing or corrupt"):
        _lm_trainer(tmp_path, token_data).fit()


def test_bf16_autocast_trains(tmp_path, token_data):
    result = _lm_trainer(tmp_path, token_data, bf16=True, steps=3, lr=1e-2).fit()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result["history"] if "loss" in h)


def test_schedules():
    assert lr_factor(0, 100, "wsd", warmup=10) == pytest.approx(0.1)
    assert lr_factor(50, 100, "wsd", warmup=10, decay_fraction=0.2) == 1.0
    assert lr_factor(99, 100, "wsd", warmup=10, decay_fraction=0.2, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(89, 100, "wsd", warmup=10, decay_fraction=0.2, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(10, 100, "cosine", warmup=10, min_ratio=0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, "cosine", warmup=10, min_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", warmup=10, min_ratio=0.2) == pytest.approx(0.2)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    from thinkfast.distill.trainer import _rng_state, _set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    torch.save(_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.randn()), torch.rand(2).tolist())
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.randn()), torch.rand(2).tolist()) == expected


def test_resume_after_a_stepwise_hybrid_conversion(tmp_path, teacher_dir, token_data):
    stage = {"name": "kd", "objective": "kd", "hybrid_schedule": [[2, 0.0]]}

    def cfg(out, **train):
        return build_config(recipe(tmp_path, teacher_dir, token_data, [stage], out_dir=str(tmp_path / out),
                                   student={"init": "teacher", "keep": 0.5, "kind": "mamba2"},
                                   train={"steps": 5, "save_every": 3, **train}))

    run_recipe(cfg("full"))
    assert run_recipe(cfg("resumed", stop_after=4)).get("interrupted")
    assert load_model(tmp_path / "resumed/1-kd/checkpoints/step_00000003/model").config.layer_pattern == "MM"
    run_recipe(cfg("resumed"))
    a = load_file(str(tmp_path / "full/model/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/model/model.safetensors"))
    assert load_model(tmp_path / "full/model").config.layer_pattern == "MM"
    assert all(torch.equal(a[k], b[k]) for k in a)
