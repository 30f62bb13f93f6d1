"""train.compile: the compiled training step equals the eager one (losses and gradients to float
rounding) for KD and SFT, Llamba and hybrid students; a backend that fails to compile falls back
to the eager step with a warning. The compiled tests run inductor (tens of seconds on a CPU):
they are marked slow."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from distill_helpers import tiny_teacher

from thinkfast.convert.from_attention import student_from_teacher
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.config import LossConfig, TrainConfig
from thinkfast.distill.stages import KDObjective, LMObjective
from thinkfast.distill.trainer import Trainer

STUDENTS = {"llamba": (0.0, "discrete"), "hybrid": ([0], "mamba2")}


def objective(student: str, stage: str, chunk_size: int = 1024):
    teacher = tiny_teacher()
    keep, kind = STUDENTS[student]
    s = student_from_teacher(teacher, keep, kind, seed=0)
    if stage == "kd":
        loss = LossConfig(kind="forward" if student == "llamba" else "reverse", chunk_size=chunk_size)
        return KDObjective(s, teacher, loss, kind=kind)
    return LMObjective(s, None, chunk_size=chunk_size)


def batch(seed: int = 0, B: int = 3, T: int = 16, V: int = 48) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, : T // 3] = -100  # response-only loss, as the demo trains
    return {"input_ids": ids, "labels": labels, "valid": torch.ones(B, T, dtype=torch.bool)}


def loss_and_grads(obj, fn, b):
    obj.zero_grad(set_to_none=True)
    loss, _ = fn(b)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}


def train_losses(tmp_path, obj, data, compile_: bool, steps: int = 3):
    bundle = load_data(DataConfig(train=str(data), seq_len=16, eval_fraction=0.1, loss_on="response"))
    tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, progress=False, log_every=1, save_every=0,
                     schedule="constant", compile=compile_)
    result = Trainer(obj, bundle, tc, tmp_path / f"{obj.name}-{compile_}").fit()
    return [h["loss"] for h in result["history"] if "loss" in h], obj.student.state_dict()


def test_compile_is_off_by_default():
    assert TrainConfig().compile is False


def test_failing_compile_falls_back_to_eager(tmp_path, token_data, monkeypatch, caplog):
    """A backend error (BackendCompilerFailed) leaves the step eager: the same losses, a warning."""
    ref, ref_sd = train_losses(tmp_path, objective("llamba", "kd"), token_data, compile_=False)

    def failing_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=failing_backend))
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="thinkfast.distill.trainer"):
        got, got_sd = train_losses(tmp_path, objective("llamba", "kd"), token_data, compile_=True)
    torch._dynamo.reset()
    assert got == ref
    assert all(torch.equal(got_sd[k], ref_sd[k]) for k in ref_sd)
    assert any("train.compile failed" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
@pytest.mark.parametrize("student", list(STUDENTS))
@pytest.mark.parametrize("stage", ["kd", "sft"])
@pytest.mark.parametrize("chunk_size", [1024, 0])
def test_compiled_forward_backward_matches_eager(student, stage, chunk_size):
    torch._dynamo.reset()
    eager = objective(student, stage, chunk_size)
    compiled_obj = copy.deepcopy(eager)
    fn = torch.compile(compiled_obj, dynamic=False)
    for seed in range(2):
        b = batch(seed)
        loss_e, grads_e = loss_and_grads(eager, eager, b)
        loss_c, grads_c = loss_and_grads(compiled_obj, fn, b)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        assert grads_c.keys() == grads_e.keys()
        for name in grads_e:
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("student", list(STUDENTS))
@pytest.mark.parametrize("stage", ["kd", "sft"])
def test_compiled_trainer_matches_eager(tmp_path, token_data, student, stage):
    """Three optimizer steps with train.compile: the same losses and weights, to float rounding."""
    torch._dynamo.reset()
    ref, ref_sd = train_losses(tmp_path, objective(student, stage), token_data, compile_=False)
    got, got_sd = train_losses(tmp_path, objective(student, stage), token_data, compile_=True)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # AdamW divides each gradient by its running RMS: where a gradient is near zero, a rounding-
    # level difference moves that weight by a visible share of lr (3e-3) -- measured up to 3.3e-5
    # on one element of 4224 after three steps; the gradients themselves agree to 1e-4 (above).
    for k in ref_sd:
        torch.testing.assert_close(got_sd[k], ref_sd[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
