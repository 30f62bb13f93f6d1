"""The demo's training objectives on the fast CPU training path (the default scan backend:
``ssd_chunked_fast`` and ``causal_depthwise_conv``) against the reference path
(``THINKFAST_SCAN_BACKEND=torch_reference``: ``ssd_chunked`` and F.conv1d under autograd):
the same losses, gradients and trained weights to float rounding, for KD and SFT, Llamba and
hybrid students."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import tiny_teacher

from thinkfast.convert.from_attention import student_from_teacher
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.config import LossConfig, TrainConfig
from thinkfast.distill.stages import KDObjective, LMObjective
from thinkfast.distill.trainer import Trainer
from thinkfast.models.ssd import BACKEND_ENV

STUDENTS = {"llamba": (0.0, "discrete"), "hybrid": ([0], "mamba2")}


def objective(student: str, stage: str):
    """The demo's objectives at a tiny size: Llamba KD is forward KL, hybrid KD reverse KL; SFT
    is next-token CE; the losses are the chunked ones the demo trains with."""
    teacher = tiny_teacher()
    keep, kind = STUDENTS[student]
    s = student_from_teacher(teacher, keep, kind, seed=0)
    for m in s.modules():  # chunks of 8 over seq_len 16: the cross-chunk state passing runs
        if hasattr(m, "chunk_size") and hasattr(m, "conv1d"):
            m.chunk_size = 8
    if stage == "kd":
        return KDObjective(s, teacher, LossConfig(kind="forward" if student == "llamba" else "reverse"), kind=kind)
    return LMObjective(s, None)


def train(tmp_path, student, stage, data, backend, monkeypatch, steps=4):
    monkeypatch.setenv(BACKEND_ENV, backend)
    obj = objective(student, stage)
    bundle = load_data(DataConfig(train=str(data), seq_len=16, eval_fraction=0.1, loss_on="response"))
    tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, progress=False, log_every=1, save_every=0,
                     schedule="constant")
    result = Trainer(obj, bundle, tc, tmp_path / f"{student}-{stage}-{backend}").fit()
    return [h["loss"] for h in result["history"] if "loss" in h], obj.student.state_dict()


@pytest.mark.parametrize("student", list(STUDENTS))
@pytest.mark.parametrize("stage", ["kd", "sft"])
def test_fast_path_trains_like_the_reference_path(tmp_path, token_data, monkeypatch, student, stage):
    """Four optimizer steps from the same start: the same losses and weights, to float rounding."""
    ref, ref_sd = train(tmp_path, student, stage, token_data, "torch_reference", monkeypatch)
    got, got_sd = train(tmp_path, student, stage, token_data, "torch", monkeypatch)
    assert len(got) == len(ref) == 4
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert_weights_close(got_sd, ref_sd, lr=3e-3, steps=4)


def assert_weights_close(got: dict, ref: dict, lr: float, steps: int) -> None:
    """AdamW's first steps move every weight by about lr whatever its gradient's size, so where a
    gradient is near zero a rounding-level difference (which kernels a CPU dispatches to) can flip
    an update's sign: a few weights then differ by up to 2 lr per step. A wrong gradient moves most
    weights by about lr, so: almost every weight within 1e-4, and none beyond 2 lr x steps."""
    for k in ref:
        diff = (got[k] - ref[k]).abs()
        off = (diff > 1e-4 + 1e-4 * ref[k].abs()).float().mean().item()
        assert off <= 0.005, f"{k}: {off:.2%} of the weights differ by more than 1e-4"
        assert diff.max().item() <= 2 * lr * steps, f"{k}: a weight differs by {diff.max().item():.3g}"


@pytest.mark.parametrize("student", list(STUDENTS))
def test_fast_path_gradients_match_the_reference_path(monkeypatch, student):
    """One KD forward and backward: the loss and every parameter's gradient."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 48, (3, 16), generator=g)
    labels = torch.randint(0, 48, (3, 16), generator=g)
    labels[:, :5] = -100
    b = {"input_ids": ids, "labels": labels, "valid": torch.ones(3, 16, dtype=torch.bool)}
    res = {}
    for backend in ("torch_reference", "torch"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        obj = objective(student, "kd")
        loss, _ = obj(b)
        loss.backward()
        res[backend] = (loss.detach(), {n: p.grad for n, p in obj.named_parameters() if p.grad is not None})
    (loss_r, grads_r), (loss_f, grads_f) = res["torch_reference"], res["torch"]
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-6, atol=1e-7)
    assert grads_f.keys() == grads_r.keys() and any("mixer.conv1d" in n for n in grads_r)
    for name in grads_r:
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-4, atol=1e-6, msg=name)
