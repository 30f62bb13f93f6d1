"""bf16 mixed precision (``train.bf16``) on the demo's objectives, against the fp32 step: the
same loss and gradients to bf16's rounding, for KD and SFT, Llamba and hybrid students, and a
trained run that follows the fp32 one. On a CPU with native bf16 (AVX-512 BF16 or AMX) the
demo trains this way (docs/performance.md, "bf16 training on CPU")."""

from __future__ import annotations

import pytest
import torch
from test_fast_train_step import STUDENTS, objective

from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.config import TrainConfig
from thinkfast.distill.trainer import Trainer


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 48, (3, 16), generator=g)
    labels = torch.randint(0, 48, (3, 16), generator=g)
    labels[:, :5] = -100
    return {"input_ids": ids, "labels": labels, "valid": torch.ones(3, 16, dtype=torch.bool)}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("student", list(STUDENTS))
@pytest.mark.parametrize("stage", ["kd", "sft"])
def test_bf16_step_matches_the_fp32_step(student, stage):
    b = _batch()
    res = {}
    for bf16 in (False, True):
        obj = objective(student, stage)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = obj(b)
        loss.backward()
        res[bf16] = (loss.detach().float(), {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None})
    (l32, g32), (l16, g16) = res[False], res[True]
    assert g16.keys() == g32.keys() and any("mixer.conv1d" in n for n in g32)
    assert all(g.dtype == torch.float32 for g in g16.values())  # fp32 master weights and gradients
    torch.testing.assert_close(l16, l32, rtol=2e-2, atol=1e-3)
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g16[n].flatten() for n in g32])
    assert _cos(flat16, flat32) > 0.998
    big = [n for n in g32 if g32[n].norm() > 1e-3 * flat32.norm()]
    assert big and all(_cos(g16[n], g32[n]) > 0.99 for n in big), \
        {n: round(_cos(g16[n], g32[n]), 4) for n in big}


@pytest.mark.parametrize("student", list(STUDENTS))
def test_bf16_training_follows_the_fp32_run(tmp_path, token_data, student):
    """Eight KD steps: the bf16 run's losses stay within a few percent of the fp32 run's."""
    runs = {}
    for bf16 in (False, True):
        bundle = load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1, loss_on="response"))
        tc = TrainConfig(steps=8, batch_size=4, lr=3e-3, progress=False, log_every=1, save_every=0,
                         schedule="constant", bf16=bf16)
        result = Trainer(objective(student, "kd"), bundle, tc, tmp_path / f"{student}-{bf16}").fit()
        runs[bf16] = [h["loss"] for h in result["history"] if "loss" in h]
    assert len(runs[True]) == len(runs[False]) == 8
    assert runs[True] == pytest.approx(runs[False], rel=5e-2)
    assert runs[False][-1] < runs[False][0]  # the run trains, so following it means something
