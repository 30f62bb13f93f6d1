"""Run under torchrun (gloo, CPU) by test_dcp.py: tiny trainer runs under DDP and FSDP2.

    python -m torch.distributed.run --standalone --nproc_per_node 2 dist_worker.py OUT DATA MODE...

For each MODE (ddp, fsdp), with activation checkpointing on:
  OUT/<mode>/full      4 steps uninterrupted (a checkpoint at step 2 and at the end)
  OUT/<mode>/resumed   stopped after 3 steps (latest checkpoint: step 2), then the same run again
  OUT/<mode>/stopped   a copy of the stopped directory, for the test to resume on 1 process
and, with fsdp, OUT/mp.json: what FSDP2 with train.bf16 computes in (parameter dtypes seen during forward,
the optimizer's parameter dtypes, the gradient reduction dtype).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from thinkfast.config import ModelConfig
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill import distributed as D
from thinkfast.distill.config import TrainConfig
from thinkfast.distill.stages import LMObjective
from thinkfast.distill.trainer import Trainer
from thinkfast.models.lm import LanguageModel

MODEL = dict(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
             layer_pattern="MA")
TRAIN = dict(steps=4, batch_size=4, micro_batch_size=2, lr=3e-3, schedule="constant", progress=False,
             log_every=1, save_every=2, activation_checkpointing=True)


def student() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(**MODEL))


def trainer(out: Path, data, env, **train) -> Trainer:
    cfg = TrainConfig(**{**TRAIN, **train})
    return Trainer(LMObjective(student(), chunk_size=8), data, cfg, out, env)


def mixed_precision(data, env, bf16: bool) -> dict:
    t = trainer(Path("unused"), data, env, distributed="fsdp", bf16=bf16)
    t.build()
    seen: list[str] = []
    blk = t.obj.student.layers[0]
    handle = blk.register_forward_pre_hook(lambda m, a: seen.append(str(next(m.parameters()).dtype)),
                                           prepend=False)
    t.model.train()
    micro = t.batches.micro_batches(0, env.rank, env.world_size, t.micro)
    t._forward_sums(t.data.train, micro, train=True)
    handle.remove()
    return {"forward_param_dtypes": sorted(set(seen)),
            "optimizer_param_dtypes": sorted({str(p.dtype) for g in t.optimizer.param_groups for p in g["params"]}),
            "grad_dtypes": sorted({str(p.grad.dtype) for p in t.obj.student.parameters() if p.grad is not None}),
            "sharded": type(next(blk.parameters())).__name__}


def main(out: Path, data_path: str, modes: list[str]) -> None:
    env = D.init_distributed("cpu")
    data = load_data(DataConfig(train=data_path, seq_len=16, eval_fraction=0.1))
    for mode in modes:
        trainer(out / mode / "full", data, env, distributed=mode).fit()
        assert trainer(out / mode / "resumed", data, env, distributed=mode, stop_after=3).fit()["interrupted"]
        D.barrier(env)
        if env.is_main:
            shutil.copytree(out / mode / "resumed", out / mode / "stopped")
        D.barrier(env)
        trainer(out / mode / "resumed", data, env, distributed=mode).fit()
    if "fsdp" in modes:
        report = {"bf16": mixed_precision(data, env, True), "fp32": mixed_precision(data, env, False)}
        if env.is_main:
            (out / "mp.json").write_text(json.dumps(report))
    D.barrier(env)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
