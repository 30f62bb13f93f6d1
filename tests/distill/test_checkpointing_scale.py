"""Activation checkpointing (train.activation_checkpointing): the same gradients, less kept."""

from __future__ import annotations

import copy

import pytest
import torch
from distill_helpers import tiny_config, tiny_teacher

from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill import distributed as D
from thinkfast.distill.config import LossConfig, TrainConfig
from thinkfast.distill.stages import HiddenObjective, KDObjective, LMObjective
from thinkfast.distill.trainer import Trainer
from thinkfast.models.lm import LanguageModel
from thinkfast.runtime import UserError


def _batch(seed: int = 0, B: int = 2, T: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 48, (B, T), generator=g)
    labels = torch.cat([ids[:, 1:], torch.full((B, 1), -100)], 1)
    return {"input_ids": ids, "labels": labels, "valid": torch.ones(B, T, dtype=torch.bool)}


def _objectives():
    teacher = tiny_teacher()
    torch.manual_seed(1)
    student = LanguageModel(tiny_config(layer_pattern="MA"))
    yield "lm", LMObjective(copy.deepcopy(student), chunk_size=8)
    yield "lm-full-logits", LMObjective(copy.deepcopy(student), chunk_size=0)
    yield "kd", KDObjective(copy.deepcopy(student), teacher, LossConfig(ce_weight=0.5, hidden_weight=0.1, chunk_size=8))
    pure = LanguageModel(tiny_config(layer_pattern="MM"))
    yield "hidden", HiddenObjective(pure, teacher)


def _grads_and_saved(obj, batch):
    """Gradients of one forward + backward, and the elements autograd kept for backward
    outside any checkpointed region (a checkpointed block keeps only its inputs)."""
    saved = [0]

    def pack(t):
        saved[0] += t.numel()
        return t

    obj.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = obj(batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}, float(loss.detach()), saved[0]


@pytest.mark.parametrize("name", ["lm", "lm-full-logits", "kd", "hidden"])
def test_checkpointed_blocks_give_the_same_gradients_and_keep_less(name):
    obj = dict(_objectives())[name]
    batch = _batch()
    plain, loss_plain, kept_plain = _grads_and_saved(obj, batch)
    assert D.checkpoint_activations(obj.checkpoint_units()) == len(obj.checkpoint_units()) > 0
    ckpt, loss_ckpt, kept_ckpt = _grads_and_saved(obj, batch)
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    assert plain.keys() == ckpt.keys() and plain
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)
    assert kept_ckpt < kept_plain / 2  # the blocks' activations were not kept


def test_checkpointing_is_idempotent_plain_under_no_grad_and_survives_a_deep_copy():
    model = LanguageModel(tiny_config(layer_pattern="MA"))
    assert D.checkpoint_activations(list(model.layers)) == 2
    assert D.checkpoint_activations(list(model.layers)) == 0
    assert all(D.is_checkpointed(b) for b in model.layers)
    assert set(model.state_dict()) == set(LanguageModel(tiny_config(layer_pattern="MA")).state_dict())
    twin = copy.deepcopy(model)
    assert twin.layers[0].forward.__self__ is twin.layers[0]  # bound to the copy, not the original
    ids = _batch()["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(twin(ids).logits, model(ids).logits)


def test_trainer_with_activation_checkpointing_follows_the_same_curve(tmp_path, token_data):
    bundle = load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1))

    def run(out, on):
        torch.manual_seed(0)
        model = LanguageModel(tiny_config(layer_pattern="MA"))
        cfg = TrainConfig(steps=3, batch_size=4, lr=3e-3, progress=False, log_every=1, save_every=0,
                          activation_checkpointing=on)
        t = Trainer(LMObjective(model, chunk_size=8), bundle, cfg, tmp_path / out)
        result = t.fit()
        assert all(D.is_checkpointed(b) == on for b in t.obj.student.layers)
        return [h["loss"] for h in result["history"] if "loss" in h]

    assert run("on", True) == pytest.approx(run("off", False), rel=1e-6)


# --- the teacher's precision (train.teacher_dtype) ------------------------------------------------
@pytest.mark.parametrize("device,bf16,asked,want", [
    ("cpu", True, "auto", torch.float32),  # a bf16 teacher on a CPU only when asked
    ("cpu", True, "bf16", torch.bfloat16),
    ("cuda", True, "auto", torch.bfloat16),  # on an accelerator, bf16 with train.bf16
    ("cuda", False, "auto", torch.float32),
    ("cuda", True, "fp32", torch.float32),
])
def test_teacher_dtype(tmp_path, token_data, device, bf16, asked, want):
    bundle = load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1))
    obj = KDObjective(LanguageModel(tiny_config()), tiny_teacher(), LossConfig())
    env = D.DistEnv(device=torch.device(device))
    t = Trainer(obj, bundle, TrainConfig(bf16=bf16, teacher_dtype=asked, progress=False), tmp_path, env)
    assert t.teacher_dtype() == want


def test_a_bf16_teacher_on_cpu_when_asked_trains_an_fp32_student(tmp_path, token_data):
    bundle = load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1))
    torch.manual_seed(0)
    obj = KDObjective(LanguageModel(tiny_config()), tiny_teacher(), LossConfig(chunk_size=8))
    cfg = TrainConfig(steps=2, batch_size=4, progress=False, save_every=0, teacher_dtype="bf16")
    result = Trainer(obj, bundle, cfg, tmp_path / "run").fit()
    assert {p.dtype for p in obj.teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in obj.student.parameters()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result["history"] if "loss" in h)
    with pytest.raises(UserError, match="casting it back to torch.float32"):
        obj.hold_teacher(torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_bf16_holds_the_teacher_in_bf16_and_trains_with_checkpointed_blocks(tmp_path, token_data):
    bundle = load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1))
    torch.manual_seed(0)
    obj = KDObjective(LanguageModel(tiny_config(layer_pattern="MA")), tiny_teacher(), LossConfig(chunk_size=8))
    cfg = TrainConfig(steps=2, batch_size=4, progress=False, save_every=0, bf16=True, activation_checkpointing=True)
    env = D.DistEnv(device=torch.device("cuda:0"))
    result = Trainer(obj, bundle, cfg, tmp_path / "run", env).fit()
    assert {p.dtype for p in obj.teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in obj.student.parameters()} == {torch.float32}
    recs = [h for h in result["history"] if "loss" in h]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in recs)


def test_every_stage_objective_implements_the_trainer_interface():
    from thinkfast.compress.config import CompressLoss
    from thinkfast.compress.projected import ProjectedLM
    from thinkfast.compress.recipe import CompressObjective
    from thinkfast.distill.stages import MatrixObjective, StageObjective

    teacher = tiny_teacher()
    objectives = [obj for _, obj in _objectives()]
    objectives.append(MatrixObjective(LanguageModel(tiny_config(layer_pattern="MM")), teacher))
    objectives.append(CompressObjective(ProjectedLM(teacher, 16, "gaussian"), teacher, CompressLoss()))
    for obj in objectives:
        assert isinstance(obj, StageObjective), type(obj).__name__
        assert obj.trainable_parameters() and obj.flops_per_token() > 0
    assert not isinstance(torch.nn.Linear(2, 2), StageObjective)


def test_checkpointing_may_be_switched_on_when_resuming(tmp_path, token_data):
    from safetensors.torch import load_file

    bundle = load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1))

    def run(out, **train):
        torch.manual_seed(0)
        cfg = TrainConfig(**{"steps": 4, "batch_size": 4, "lr": 3e-3, "progress": False, "save_every": 2, **train})
        return Trainer(LMObjective(LanguageModel(tiny_config(layer_pattern="MA")), chunk_size=8), bundle, cfg,
                       tmp_path / out).fit()

    run("full")
    assert run("resumed", stop_after=3)["interrupted"]
    run("resumed", activation_checkpointing=True)
    a, b = (load_file(str(tmp_path / d / "model/model.safetensors")) for d in ("full", "resumed"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
