"""Each stage's loss falls within a few dozen steps; mismatched pairs are refused clearly."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import tiny_teacher

from thinkfast.config import ModelConfig
from thinkfast.convert.from_attention import student_from_teacher
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.config import LossConfig, StageConfig, TrainConfig
from thinkfast.distill.stages import HiddenObjective, KDObjective, LMObjective, MatrixObjective, build_objective
from thinkfast.distill.trainer import Trainer
from thinkfast.models.lm import LanguageModel
from thinkfast.runtime import UserError


def train(tmp_path, objective, data, steps=30, lr=3e-3, **kw):
    bundle = load_data(DataConfig(train=str(data), seq_len=16, eval_fraction=0.1, **kw))
    tc = TrainConfig(steps=steps, batch_size=4, lr=lr, progress=False, log_every=1, save_every=0,
                     schedule="constant")
    result = Trainer(objective, bundle, tc, tmp_path / objective.name).fit()
    losses = [h["loss"] for h in result["history"] if "loss" in h]
    assert len(losses) == steps
    return losses, result


def falls(losses, factor):
    head, tail = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    return tail < factor * head


def test_lm_pretraining_loss_falls(tmp_path, token_data):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
    losses, result = train(tmp_path, LMObjective(model), token_data, lr=1e-2, loss_on="all")
    assert falls(losses, 0.8), losses
    assert result["eval_loss"] is not None and result["tokens"] > 0


@pytest.mark.parametrize("mamba", [None, {"decay_bias": [2, 32]}])
def test_matrix_orientation_loss_falls_and_trains_only_matrix_parameters(tmp_path, token_data, mamba):
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, 0.0, "discrete", mamba=mamba)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    losses, _ = train(tmp_path, MatrixObjective(student, teacher), token_data, lr=1e-2)
    assert falls(losses, 0.8), losses
    after = student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "layers.0.mixer.in_proj.weight" in changed and "layers.1.mixer.conv1d.weight" in changed
    if mamba:  # the decay bias shapes the mixing matrix, so stage 1 trains it
        assert "layers.0.mixer.a_bias" in changed
    assert not any(".mlp." in k or "embed" in k or "out_proj" in k for k in changed), changed


def test_hidden_alignment_loss_falls(tmp_path, token_data):
    teacher = tiny_teacher()
    losses, _ = train(tmp_path, HiddenObjective(student_from_teacher(teacher, 0.0, "mamba2"), teacher), token_data)
    assert falls(losses, 0.8), losses


def test_kd_loss_falls(tmp_path, token_data):
    teacher = tiny_teacher()
    obj = KDObjective(student_from_teacher(teacher, 0.0, "discrete"), teacher, LossConfig(kind="reverse",
                                                                                         ce_weight=0.1))
    losses, result = train(tmp_path, obj, token_data)
    assert falls(losses, 0.8), losses
    assert "kl" in result["history"][0] and "ce" in result["history"][0]


def test_stepwise_hybrid_schedule_converts_more_layers(tmp_path, token_data):
    teacher = tiny_teacher(n_layers=4)
    stage = StageConfig(name="kd", objective="kd", hybrid_schedule=[[0, 0.5], [3, 0.25]])
    obj = build_objective(stage, student_from_teacher(teacher, 0.5, "mamba2"), teacher, kind="mamba2")
    assert obj.student.config.layer_pattern == "MAMA"
    losses, _ = train(tmp_path, obj, token_data, steps=5)
    assert obj.student.config.layer_pattern == "MMMA"
    assert all(torch.isfinite(torch.tensor(losses)))


def test_mismatched_teacher_and_student_are_refused():
    teacher = tiny_teacher()
    wide = LanguageModel(ModelConfig(vocab_size=48, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                                     layer_pattern="MM"))
    with pytest.raises(UserError, match="shape mismatch: d_model: teacher 32 vs student 64"):
        HiddenObjective(wide, teacher)
    with pytest.raises(UserError, match="vocab_size"):
        KDObjective(LanguageModel(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)),
                    teacher, LossConfig())
    two_heads = LanguageModel(ModelConfig.from_dict(dict(
        vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, layer_pattern="MM",
        mamba={"kind": "discrete", "n_heads": 2, "head_dim": 16, "d_state": 8})))
    with pytest.raises(UserError, match="2 heads but the teacher's attention has 4"):
        MatrixObjective(two_heads, teacher)
    with pytest.raises(UserError, match="no Mamba layers"):
        MatrixObjective(student_from_teacher(teacher, 1.0, "discrete"), teacher)
