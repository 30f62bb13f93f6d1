"""Every YAML under configs/ validates; overrides and strictness; the CLI end to end."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from distill_helpers import recipe

from thinkfast.cli import main
from thinkfast.config import ConfigError
from thinkfast.distill.config import build_config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DISTILL = sorted((CONFIGS / "distill").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in DISTILL}
    assert {"llamba_mohawk", "mambainllama_50", "sft", "pretrain_teacher"} <= names


@pytest.mark.parametrize("path", DISTILL, ids=lambda p: p.name)
def test_distill_recipe_validates_and_its_header_is_its_command(path):
    first = path.read_text().splitlines()[0]
    rel = path.relative_to(CONFIGS.parent)
    assert first.startswith(f"# thinkfast distill --config {rel}"), first
    overrides = shlex.split(first[len(f"# thinkfast distill --config {rel}"):])
    cfg = load_config(path, overrides)
    assert cfg.data.train, "the header command must say where the data is"
    for i in range(len(cfg.stages)):
        from thinkfast.distill.config import resolve_train

        resolve_train(cfg, i)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_in_configs_parses(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    if path.parent.name == "distill":
        load_config(path)


def test_strictness_and_overrides(tmp_path):
    base = recipe(tmp_path, tmp_path / "t", tmp_path / "d.jsonl", [{"name": "kd", "objective": "kd"}])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['stepz'\]"):
        build_config({**base, "train": {"stepz": 3}})
    with pytest.raises(ConfigError, match="config.train.steps: expected int"):
        build_config({**base, "train": {"steps": "many"}})
    with pytest.raises(ConfigError, match=r"stages\[0\] \(kd\).train: unknown config key"):
        build_config({**base, "stages": [{"name": "kd", "train": {"lrr": 1}}]})
    with pytest.raises(ConfigError, match="objective must be one of"):
        build_config({**base, "stages": [{"name": "x", "objective": "mohawk"}]})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base))
    cfg = load_config(path, ["train.lr=0.01", "stages.kd.loss.kind=reverse", "stages.0.train.steps=7",
                             "student.keep=[1]"])
    assert cfg.train.lr == 0.01 and cfg.stages[0].loss.kind == "reverse" and cfg.stages[0].train == {"steps": 7}
    assert cfg.student.keep == [1]
    with pytest.raises(ConfigError, match="no entry named 'nope'"):
        load_config(path, ["stages.nope.train.steps=1"])


def test_cli_runs_a_recipe_and_reports_errors_plainly(tmp_path, teacher_dir, token_data, capsys):
    base = recipe(tmp_path, teacher_dir, token_data, [{"name": "kd", "objective": "kd"}], train={"steps": 2})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base))
    assert main(["distill", "--config", str(path), "student.kind=mamba2", "student.keep=0.5"]) == 0
    out = capsys.readouterr().out
    assert "kd: 2 steps" in out and (tmp_path / "run/model/model.safetensors").exists()
    assert main(["distill", "--config", str(path), "train.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [1]}\n{oops\n')
    assert main(["distill", "--config", str(path), f"data.train={bad}", f"out_dir={tmp_path / 'other'}"]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err


def test_fingerprint_leaves_out_defaults_so_new_settings_do_not_orphan_old_runs(tmp_path):
    from thinkfast.distill.recipe import _fingerprint

    base = recipe(tmp_path, tmp_path / "t", tmp_path / "d.jsonl", [{"name": "kd", "objective": "kd"}])
    fp = _fingerprint(build_config(base), 0, 16)
    assert "mixer_init" not in fp["student"] and "loss" not in fp["stage"] and "progress" not in fp["stage"]["train"]
    changed = _fingerprint(build_config({**base, "student": {**base["student"], "mixer_init": "random"},
                                         "stages": [{"name": "kd", "loss": {"kind": "reverse"}}]}), 0, 16)
    assert changed["student"]["mixer_init"] == "random" and changed["stage"]["loss"] == {"kind": "reverse"}
