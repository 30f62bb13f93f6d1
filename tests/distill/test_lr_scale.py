"""train.lr_scale: per-parameter learning-rate multipliers by name pattern."""

from __future__ import annotations

import pytest
import torch

from thinkfast.config import ConfigError, ModelConfig
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.config import TrainConfig, build_config
from thinkfast.distill.schedule import param_groups
from thinkfast.distill.stages import LMObjective
from thinkfast.distill.trainer import Trainer
from thinkfast.models.lm import LanguageModel


def _model() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=48, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=32))


def _trainer(out, data, **train) -> Trainer:
    tc = TrainConfig(**{"steps": 4, "batch_size": 4, "lr": 1e-2, "progress": False, "log_every": 1,
                        "save_every": 0, "seed": 0, **train})
    bundle = load_data(DataConfig(train=str(data), seq_len=16, eval_fraction=0.1))
    return Trainer(LMObjective(_model()), bundle, tc, out)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.obj.student.named_parameters()}


def test_groups_take_the_first_matching_pattern_and_split_decay():
    model = _model()
    named = dict(model.named_parameters())
    groups = param_groups(list(model.parameters()), named, 0.1,
                          {"layers.0.*": 3.0, "layers.*.mlp.*": 2.0, "*norm*": 5.0})
    scale_of = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(scale_of) == len(named)  # every parameter in exactly one group
    for n, p in named.items():
        want = 3.0 if n.startswith("layers.0.") else 2.0 if ".mlp." in n else 5.0 if "norm" in n else 1.0
        assert scale_of[id(p)] == (want, 0.1 if p.ndim >= 2 else 0.0), n
    assert all(g["params"] for g in groups)


def test_a_pattern_that_matches_nothing_is_refused():
    model = _model()
    with pytest.raises(ConfigError, match=r"\*\.conv1d\.\*.*match no parameter"):
        param_groups(list(model.parameters()), dict(model.named_parameters()), 0.0, {"*.conv1d.*": 10.0})


def test_bad_factors_and_types_are_config_errors():
    base = {"out_dir": "x", "teacher": "t", "data": {"train": "d.jsonl"}, "stages": [{"objective": "lm"}]}
    for bad in ({"*": 0}, {"*": -1.0}, {"*": float("inf")}):
        with pytest.raises(ConfigError, match="lr_scale"):
            build_config({**base, "train": {"lr_scale": bad}})
    with pytest.raises(ConfigError, match=r"train\.lr_scale\.\*: expected float"):
        build_config({**base, "train": {"lr_scale": {"*": "ten"}}})
    cfg = build_config({**base, "train": {"lr_scale": {"*mlp*": 2}}})
    assert cfg.train.lr_scale == {"*mlp*": 2.0} and isinstance(cfg.train.lr_scale["*mlp*"], float)


def test_a_scaled_parameter_moves_by_its_factor_and_the_rest_as_before(tmp_path, token_data):
    # One AdamW step from zero moments moves each weight by lr * g / (|g| + eps): exactly
    # proportional to its learning rate, so the scaled parameters move 4x as far.
    plain = _trainer(tmp_path / "plain", token_data, steps=1)
    scaled = _trainer(tmp_path / "scaled", token_data, steps=1, lr_scale={"layers.1.mlp.*": 4.0})
    start = _weights(plain)
    assert all(torch.equal(start[n], w) for n, w in _weights(scaled).items())
    plain.fit()
    scaled.fit()
    a, b = _weights(plain), _weights(scaled)
    moved = 0
    for n in start:
        da, db = a[n] - start[n], b[n] - start[n]
        factor = 4.0 if n.startswith("layers.1.mlp.") else 1.0
        torch.testing.assert_close(db, factor * da, rtol=1e-4, atol=1e-7, msg=n)
        moved += factor != 1.0 and bool(da.abs().max() > 0)
    assert moved == 3  # gate, up and down projections


def test_resumed_run_keeps_its_scales(tmp_path, token_data):
    scale = {"layers.0.*": 3.0, "*norm*": 0.5}
    whole = _trainer(tmp_path / "whole", token_data, lr_scale=scale)
    whole.fit()
    _trainer(tmp_path / "cut", token_data, lr_scale=scale, save_every=2, stop_after=2).fit()
    resumed = _trainer(tmp_path / "cut", token_data, lr_scale=scale, save_every=2)
    resumed.fit()
    for n, w in _weights(whole).items():
        torch.testing.assert_close(_weights(resumed)[n], w, msg=n)
    with pytest.raises(Exception, match="lr_scale"):  # another multiplier is another run
        _trainer(tmp_path / "cut", token_data, lr_scale={"layers.0.*": 2.0}, save_every=2).fit()
