"""``thinkfast select-layers`` end to end, and layers.json through the distillation config."""

from __future__ import annotations

import json
import re

import pytest
from select_helpers import make_teacher

from thinkfast.checkpoint import save_model
from thinkfast.cli import main
from thinkfast.convert.from_attention import attention_layers
from thinkfast.distill.config import build_config
from thinkfast.distill.recipe import initial_student
from thinkfast.runtime import UserError


def _select(teacher_dir, data, out, *extra):
    return main(["select-layers", "--teacher", str(teacher_dir), "--data", str(data), "--out", str(out),
                 "--seq-len", "16", "--eval-fraction", "0.2", "--no-progress", "--threads", "1", *extra])


def test_loo_cli_writes_layers_json_and_a_table(tmp_path, token_data, capsys):
    teacher_dir = save_model(make_teacher(zero_o_proj=(0,)), tmp_path / "teacher")
    out = tmp_path / "layers.json"
    assert _select(teacher_dir, token_data, out, "--method", "loo", "--keep", "0.75") == 0
    doc = json.loads(out.read_text())
    assert doc["n_layers"] == 4 and doc["method"] == "loo"
    assert doc["scores"][0] == 0.0 and doc["layers"] == [1, 2, 3]
    assert doc["pattern"] == "MAAA" and any("adjacent" in n for n in doc["notes"])
    printed = capsys.readouterr().out
    assert "score" in printed and "MAAA" in printed and "adjacent" in printed


def test_no_pack_scores_one_example_per_row(tmp_path, token_data):
    """--no-pack gives the library's scores on unpacked held-out rows, not those of packed ones."""
    from dataclasses import replace

    from select_helpers import data_config

    from thinkfast.data.dataset import load_data
    from thinkfast.select.layers import loo_scores

    teacher = make_teacher()
    teacher_dir = save_model(teacher, tmp_path / "teacher")
    docs = {}
    for name, extra in (("packed", ()), ("unpacked", ("--no-pack",))):
        out = tmp_path / f"{name}.json"
        assert _select(teacher_dir, token_data, out, "--method", "loo", "--keep", "2", "--no-bos", "--no-eos",
                       *extra) == 0
        docs[name] = json.loads(out.read_text())
    assert docs["packed"]["pack"] is True and docs["unpacked"]["pack"] is False
    assert docs["unpacked"]["seq_len"] == 16
    rows = load_data(replace(data_config(token_data), pack=False), None, teacher.config.vocab_size).eval
    assert len(rows) == 8  # one row per held-out example (20% of 40)
    expected = loo_scores(teacher, rows).scores
    assert docs["unpacked"]["scores"] == pytest.approx(expected, rel=1e-5)
    assert docs["unpacked"]["scores"] != pytest.approx(docs["packed"]["scores"], rel=1e-3)


def test_layers_json_round_trips_through_the_distill_config(tmp_path, token_data):
    teacher = make_teacher()
    teacher_dir = save_model(teacher, tmp_path / "teacher")
    out = tmp_path / "layers.json"
    assert _select(teacher_dir, token_data, out, "--method", "loo", "--keep", "2") == 0
    doc = json.loads(out.read_text())
    cfg = build_config({"teacher": str(teacher_dir), "data": {"train": str(token_data)},
                        "student": {"keep": str(out), "kind": "mamba2"}, "stages": [{"name": "kd"}]})
    assert attention_layers(4, cfg.student.keep) == doc["layers"]
    student = initial_student(cfg, teacher, None)
    assert student.config.layer_pattern == doc["pattern"]
    assert doc["pattern"].count("A") == 2


def test_uniform_cli_needs_no_data_pass(tmp_path):
    teacher_dir = save_model(make_teacher(), tmp_path / "teacher")
    out = tmp_path / "layers.json"
    assert _select(teacher_dir, tmp_path / "unused.jsonl", out, "--method", "uniform", "--keep", "0.5") == 0
    assert json.loads(out.read_text())["layers"] == [1, 3]


def test_kl_guided_cli(tmp_path, token_data):
    teacher_dir = save_model(make_teacher(), tmp_path / "teacher")
    out = tmp_path / "sel" / "layers.json"
    assert _select(teacher_dir, token_data, out, "--method", "kl-guided", "--keep", "1", "--steps", "2",
                   "--batch-size", "4") == 0
    doc = json.loads(out.read_text())
    assert len(doc["layers"]) == 1 and doc["training"]["steps"] == 2
    assert doc["scores"][doc["layers"][0]] == max(doc["scores"])
    assert (tmp_path / "sel" / "layers.runs" / "layer_03" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("keep,msg", [("5", "has 4 layers"), ("1.5", r"outside \(0, 1\)"), ("0.0", r"outside")])
def test_cli_refuses_bad_keep(tmp_path, token_data, capsys, keep, msg):
    teacher_dir = save_model(make_teacher(), tmp_path / "teacher")
    assert _select(teacher_dir, token_data, tmp_path / "l.json", "--method", "loo", "--keep", keep) == 2
    err = capsys.readouterr().err
    assert "error" in err and re.search(msg, err)
    assert not (tmp_path / "l.json").exists()


def test_layers_json_of_another_depth_is_refused(tmp_path, token_data):
    deep_dir = save_model(make_teacher(), tmp_path / "teacher4")  # 4 layers
    out = tmp_path / "layers.json"
    assert _select(deep_dir, token_data, out, "--method", "uniform", "--keep", "1") == 0
    with pytest.raises(UserError, match=r"4 layers.*has 2"):
        attention_layers(2, str(out))
    cfg = build_config({"teacher": "t", "data": {"train": "d"}, "student": {"keep": str(out)},
                        "stages": [{"name": "kd"}]})
    with pytest.raises(UserError, match=r"made for a teacher of 4 layers, but this one has 2"):
        initial_student(cfg, make_teacher(n_layers=2), None)
