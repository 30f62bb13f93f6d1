"""The paper-scale recipes in configs/distill/paper/: each loads through the strict loader with the
overrides of its header command, runs on 8 GPUs under FSDP2 in bf16 with activation checkpointing,
spends the token budget its header states, and has a plan."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from thinkfast.cli import main
from thinkfast.config import ConfigError
from thinkfast.distill.config import load_config, resolve_train

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "distill" / "paper"
RECIPES = sorted(PAPER.glob("*.yaml"))
COMMAND = "# torchrun --nproc_per_node 8 -m thinkfast.cli distill --config "


def _command(path: Path) -> list[str]:
    first = path.read_text().splitlines()[0]
    rel = path.relative_to(ROOT)
    assert first.startswith(f"{COMMAND}{rel} "), first
    return shlex.split(first[len(f"{COMMAND}{rel}"):])


def test_the_paper_recipes_are_there():
    assert {p.stem for p in RECIPES} >= {"llamba_1b", "mambainllama_50_1b", "mambainllama_25_1b",
                                         "mambainllama_50_3b", "mambainllama_25_3b", "sft_2048"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_strictly_with_its_header_command(path):
    overrides = _command(path)
    cfg = load_config(path, overrides)
    assert cfg.data.train and cfg.data.train.startswith("store:"), "the command names a token store"
    assert cfg.teacher or cfg.student.init not in ("teacher", "new")
    for i in range(len(cfg.stages)):
        tc = resolve_train(cfg, i)
        assert (tc.bf16, tc.activation_checkpointing, tc.distributed) == (True, True, "fsdp")
        assert tc.batch_size % (tc.micro_batch_size * 8) == 0, "the batch splits over 8 GPUs"
    # A misspelt key in the same file is an error, not an ignored setting.
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(path, overrides + ["train.activation_checkpointng=true"])


def _tokens(path: Path) -> int:
    cfg = load_config(path)
    return sum(resolve_train(cfg, i).steps * resolve_train(cfg, i).batch_size * (s.seq_len or cfg.data.seq_len)
               for i, s in enumerate(cfg.stages))


@pytest.mark.parametrize("name", ["llamba_1b", "mambainllama_50_1b", "mambainllama_25_1b", "mambainllama_50_3b",
                                  "mambainllama_25_3b"])
def test_distillation_spends_the_stated_8b_tokens(name):
    path = PAPER / f"{name}.yaml"
    assert "8.0B tokens" in path.read_text()
    assert abs(_tokens(path) - 8.0e9) / 8.0e9 < 0.001


@pytest.mark.parametrize("name,teacher,pattern", [
    ("llamba_1b", "llama-3.2-1b", "M" * 16), ("mambainllama_50_1b", "llama-3.2-1b", "MA" * 8),
    ("mambainllama_25_1b", "llama-3.2-1b", "MMMA" * 4), ("mambainllama_50_3b", "llama-3.2-3b", "MA" * 14),
    ("mambainllama_25_3b", "llama-3.2-3b", "MMMA" * 7)])
def test_plan_of_each_recipe(name, teacher, pattern, capsys):
    path = PAPER / f"{name}.yaml"
    shapes = PAPER / f"{teacher}.config.json"
    assert f"--teacher-config configs/distill/paper/{teacher}.config.json" in path.read_text()
    assert main(["distill", "--plan", str(path), "--devices", "8", "--teacher-config", str(shapes)]) == 0
    out = capsys.readouterr().out
    assert f"pattern {pattern}" in out and "8 device(s), fsdp" in out
