"""Throughput you can trust: the metrics' arithmetic, training time only (evaluation and
checkpoints excluded, shown with a fake clock), one host sync per step whatever the accumulation,
and one W&B run per stage directory, finished with the stage."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from distill_helpers import tiny_config, tiny_teacher

from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.config import LossConfig, TrainConfig
from thinkfast.distill.metrics import TrainClock, peak_tflops, throughput
from thinkfast.distill.stages import KDObjective, LMObjective, matmul_params
from thinkfast.distill.trainer import Trainer, wandb_run_id
from thinkfast.models.lm import LanguageModel


def test_throughput_arithmetic():
    r = throughput(tokens=4096, seconds=2.0, steps=4, world_size=2, flops_per_token=6e9, peak=100.0)
    assert r["step_time_s"] == 0.5
    assert r["tokens_per_s"] == 2048.0 and r["tokens_per_s_per_device"] == 1024.0
    assert r["mfu"] == pytest.approx(6e9 * 1024 / 100e12)
    assert throughput(4096, 2.0, 4, 2, 6e9, None)["mfu"] is None  # no peak known (a CPU): null


def test_peak_table_and_override():
    assert peak_tflops("NVIDIA H100 80GB HBM3", bf16=True) == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", bf16=True) == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", bf16=False) == 19.5
    assert peak_tflops("NVIDIA H200", bf16=True) == 989.4
    assert peak_tflops(None, bf16=True) is None and peak_tflops("Some New GPU", bf16=True) is None
    assert peak_tflops(None, bf16=True, override=123.0) == 123.0


def test_flops_per_token_counts_matmul_parameters():
    teacher = tiny_teacher()
    student = LanguageModel(tiny_config(layer_pattern="MA"))
    embed = student.embed_tokens.weight.numel()
    assert student.config.tie_embeddings  # the head shares the table but is a matmul: counted once
    assert matmul_params(student) == student.num_parameters()
    untied = LanguageModel(tiny_config(tie_embeddings=False))
    assert matmul_params(untied) == untied.num_parameters() - embed
    kd = KDObjective(student, teacher, LossConfig())
    assert kd.flops_per_token() == 6 * matmul_params(student) + 2 * matmul_params(teacher)
    assert LMObjective(untied).flops_per_token() == 6 * matmul_params(untied)


def test_train_clock_counts_only_its_spans():
    t = [0.0]
    clock = TrainClock(now=lambda: t[0])
    with clock.train():
        t[0] += 2.0
    clock.count(1, 100)
    t[0] += 50.0  # outside: evaluation, checkpoints
    with clock.train():
        t[0] += 3.0
    clock.count(1, 300)
    assert clock.window() == (5.0, 2, 400) and clock.total == 5.0
    assert clock.window() == (0.0, 0, 0)


@pytest.fixture
def bundle(token_data):
    return load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1))


def _trainer(tmp_path, bundle, **train) -> Trainer:
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(n_layers=1))
    cfg = TrainConfig(**{"steps": 4, "batch_size": 4, "lr": 1e-3, "progress": False, "log_every": 2,
                         "save_every": 0, **train})
    return Trainer(LMObjective(model, chunk_size=8), bundle, cfg, tmp_path / "run")


def test_evaluation_and_checkpoint_time_is_not_training_time(tmp_path, bundle):
    t = _trainer(tmp_path, bundle, steps=3, eval_every=1, save_every=1, log_every=2, peak_tflops=2.0)
    fake = [0.0]
    t.clock = TrainClock(now=lambda: fake[0])
    step, evaluate, save = t.train_step, t.evaluate, t.save_checkpoint

    def timed(fn, seconds):
        def run(*a, **kw):
            fake[0] += seconds
            return fn(*a, **kw)
        return run

    t.train_step, t.evaluate, t.save_checkpoint = timed(step, 1.0), timed(evaluate, 1000.0), timed(save, 1000.0)
    result = t.fit()
    recs = [r for r in result["history"] if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2, 3]  # eval every step: each is logged
    for r in recs:
        assert r["step_time_s"] == 1.0 and r["train_time_s"] == r["step"]
        window = r["tokens"] - ([0] + [x["tokens"] for x in recs])[r["step"] - 1]
        assert r["tokens_per_s"] == window and r["tokens_per_s_per_device"] == window
        assert r["mfu"] == pytest.approx(t.flops_per_token * window / 2e12)
    rows = [json.loads(ln) for ln in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert {"step_time_s", "tokens_per_s_per_device", "mfu", "train_time_s"} <= set(rows[0])


def test_mfu_is_null_on_a_cpu_without_a_peak(tmp_path, bundle):
    result = _trainer(tmp_path, bundle, steps=2).fit()
    assert all(r["mfu"] is None for r in result["history"] if "loss" in r)


def test_one_host_sync_per_step_whatever_the_accumulation(tmp_path, bundle, monkeypatch):
    """Reading a tensor's value on the host (.item, .tolist, float()) is counted during one step:
    4 micro-batches cost what 1 does (a float(loss) per micro-batch would add 3)."""
    def syncs(micro: int) -> int:
        t = _trainer(tmp_path / f"m{micro}", bundle, micro_batch_size=micro)
        t.build()
        t.train_step()  # warm
        count = [0]
        for name in ("item", "tolist", "__float__"):
            orig = getattr(torch.Tensor, name)

            def counted(self, *a, _orig=orig, **kw):
                count[0] += 1
                return _orig(self, *a, **kw)
            monkeypatch.setattr(torch.Tensor, name, counted)
        t.train_step()
        monkeypatch.undo()
        return count[0]

    accum_4, accum_1 = syncs(1), syncs(4)  # micro-batches of 1 or 4 sequences, batch 4
    assert accum_4 == accum_1, (accum_4, accum_1)  # (the rest: AdamW reading its CPU step counters)


def test_wandb_run_ids_are_unique_per_directory_and_stage_and_stable_on_resume(tmp_path, bundle, monkeypatch):
    assert wandb_run_id(tmp_path / "a", "kd", "x") == wandb_run_id(tmp_path / "a", "kd", "x")
    ids = {wandb_run_id(tmp_path / d, s, "x") for d in ("a", "b") for s in ("kd", "hidden")}
    assert len(ids) == 4 and wandb_run_id(tmp_path / "a", "kd", "y") not in ids
    runs = []

    class FakeRun:
        def __init__(self, **kw):
            self.kw, self.logged, self.finished = kw, [], 0
            runs.append(self)

        def log(self, record, step):
            self.logged.append(step)

        def finish(self):
            self.finished += 1

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: FakeRun(**kw)))
    _trainer(tmp_path, bundle, wandb=True, save_every=2, stop_after=3).fit()
    _trainer(tmp_path, bundle, wandb=True, save_every=2).fit()  # resumed
    stored = json.loads((tmp_path / "run/wandb_id.json").read_text())
    assert [r.kw["id"] for r in runs] == [stored["id"], stored["id"]]
    assert stored["id"] == wandb_run_id(tmp_path / "run", "train", stored["suffix"])
    assert [r.finished for r in runs] == [1, 1]  # each run ended with its invocation of the stage
    assert runs[1].logged == [4, 4]  # step 4, then the final evaluation at step 4
