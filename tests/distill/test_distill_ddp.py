"""The same command under torchrun (2 CPU processes, gloo) gives the 1-process loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from distill_helpers import recipe

from thinkfast.distill.config import build_config
from thinkfast.distill.recipe import run_recipe

STAGES = [{"name": "matrix", "objective": "matrix"}, {"name": "hidden", "objective": "hidden"},
          {"name": "kd", "objective": "kd", "loss": {"kind": "reverse", "ce_weight": 0.5}}]


def curve(run: Path) -> dict[str, list[float]]:
    out = {}
    for stage in sorted(p for p in run.iterdir() if p.is_dir() and p.name[0].isdigit()):
        rows = [json.loads(ln) for ln in (stage / "metrics.jsonl").read_text().splitlines()]
        out[stage.name] = [r.get("loss", r.get("eval_loss")) for r in rows]
    return out


def torchrun(cfg_path: Path, overrides: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "thinkfast.cli", "distill", "--config", str(cfg_path), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_process_gloo_matches_one_process(tmp_path, teacher_dir, token_data, mode):
    # micro batch 2: one process accumulates 2 micro-batches, two processes take one each.
    base = recipe(tmp_path, teacher_dir, token_data, STAGES,
                  train={"steps": 3, "batch_size": 4, "micro_batch_size": 2, "eval_every": 2})
    single = run_recipe(build_config({**base, "out_dir": str(tmp_path / "one")}))
    assert not single.get("interrupted")
    cfg_path = tmp_path / "recipe.yaml"
    cfg_path.write_text(yaml.safe_dump({**base, "out_dir": str(tmp_path / "two")}))
    torchrun(cfg_path, [f"train.distributed={mode}"])
    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert one.keys() == two.keys() == {"1-matrix", "2-hidden", "3-kd"}
    for stage in one:
        assert len(one[stage]) == len(two[stage]) >= 4  # 3 steps + evals
        assert two[stage] == pytest.approx(one[stage], rel=1e-5, abs=1e-7), stage
