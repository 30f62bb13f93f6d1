"""``thinkfast compress`` and ``thinkfast erank`` end to end on a tiny teacher (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from compress_helpers import tiny_teacher, write_token_data

from thinkfast.checkpoint import load_model, save_model
from thinkfast.cli import main
from thinkfast.compress.config import build_config, load_config
from thinkfast.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _recipe(tmp: Path, teacher: Path, data: Path, **top) -> Path:
    cfg = {"out_dir": str(tmp / "run"), "teacher": str(teacher), "d_s": 16, "init": "red",
           "calibration_sequences": 8,
           "data": {"train": str(data), "seq_len": 24, "eval_fraction": 0.1},
           "train": {"steps": 4, "batch_size": 4, "lr": 3e-3, "progress": False, "log_every": 1,
                     "save_every": 2, "schedule": "constant"}}
    cfg.update(top)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def setup(tmp_path):
    teacher = save_model(tiny_teacher(), tmp_path / "teacher")
    return tmp_path, teacher, write_token_data(tmp_path / "data.jsonl")


def test_compress_trains_merges_and_resumes(setup, capsys):
    tmp, teacher_dir, data = setup
    recipe = _recipe(tmp, teacher_dir, data)
    teacher_before = load_model(teacher_dir).state_dict()
    assert main(["compress", "--config", str(recipe), "--threads", "1", "train.stop_after=2"]) == 0
    assert "stopped early" in capsys.readouterr().out
    assert main(["compress", "--config", str(recipe), "--threads", "1"]) == 0  # resumes from step 2
    out = tmp / "run"
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 4 and result["init"] == "red" and len(result["channels"]) == 16
    student = load_model(out / "model")
    assert student.config.d_model == 16 and student.config.n_layers == 2
    # the trainer's model/ and checkpoints hold projections, tagged as such (load_model refuses them)
    for d in [out / "projected" / "model", *(out / "projected" / "checkpoints").glob("step_*/model")]:
        assert json.loads((d / "config.json").read_text())["format"] == "thinkfast-projected", d
    lines = [json.loads(ln) for ln in (out / "projected" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    assert {"kl", "ce", "hidden_mse"} <= set(lines[0])
    # The teacher directory is untouched, and the merged student is what the trained projections give.
    for k, v in load_model(teacher_dir).state_dict().items():
        assert torch.equal(v, teacher_before[k])
    from thinkfast.compress.recipe import CompressObjective
    from thinkfast.compress.config import CompressLoss
    from thinkfast.compress.projected import ProjectedLM

    t = load_model(teacher_dir)
    obj = CompressObjective(ProjectedLM(t, 16, "gaussian"), t, CompressLoss())
    projected = obj.load_student(out / "projected" / "model")
    ids = torch.randint(0, 48, (2, 8))
    torch.testing.assert_close(student(ids).logits, projected(ids).logits, rtol=1e-5, atol=1e-5)


def test_compress_rejects_full_width(setup, capsys):
    tmp, teacher_dir, data = setup
    recipe = _recipe(tmp, teacher_dir, data, d_s=32)
    assert main(["compress", "--config", str(recipe), "--threads", "1"]) == 2
    assert "d_s=32" in capsys.readouterr().err


def test_compress_config_is_strict():
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config({"teacher": "x", "d_s": 8, "widht": 3})
    with pytest.raises(ConfigError, match="init"):
        build_config({"teacher": "x", "d_s": 8, "init": "uniform"})
    with pytest.raises(ConfigError, match="d_s"):
        build_config({"teacher": "x", "d_s": "half"})


@pytest.mark.parametrize("name", ["red_50", "random_50"])
def test_shipped_recipes_build(name):
    cfg = load_config(ROOT / "configs" / "compress" / f"{name}.yaml")
    assert cfg.d_s == 64 and cfg.init == ("red" if name == "red_50" else "gaussian")
    assert cfg.data.prompt_template == "Question: {question}\nAnswer:" and not cfg.data.add_bos


def test_erank_command_prints_and_plots(setup, capsys):
    tmp, teacher_dir, data = setup
    other = save_model(tiny_teacher(seed=1), tmp / "other")
    out = tmp / "erank.png"
    assert main(["erank", "--model", str(teacher_dir), str(other), "--data", str(data), "--seq-len", "24",
                 "--sequences", "8", "--threads", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "eRank[0]" in text and "eRank[1]" in text
    assert out.stat().st_size > 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert set(res) == {str(teacher_dir), str(other)}
    assert all(len(r["erank"]) == 3 for r in res.values())


def test_erank_no_pack_measures_each_example_in_its_own_row(setup):
    """--no-pack: one row per example, padding not counted, and the figures are the library's on
    those rows. The same tokens are counted as when packed, so the embeddings' eRank is the same,
    but no block reads another example as context, so the deeper layers' differ."""
    from thinkfast.compress.erank import per_layer_erank
    from thinkfast.data.dataset import DataConfig, load_data

    tmp, teacher_dir, data = setup
    res = {}
    for name, extra in (("packed", []), ("unpacked", ["--no-pack"])):
        out = tmp / f"{name}.json"
        assert main(["erank", "--model", str(teacher_dir), "--data", str(data), "--seq-len", "24",
                     "--sequences", "64", "--threads", "1", "--out", str(out), *extra]) == 0
        res[name] = json.loads(out.read_text())[str(teacher_dir)]
    teacher = load_model(teacher_dir)
    cfg = DataConfig(train=str(data), eval_fraction=0.0, loss_on="all", seq_len=24, pack=False)
    rows = load_data(cfg, None, teacher.config.vocab_size).train
    n_examples = sum(1 for line in data.read_text().splitlines() if line.strip())
    assert len(rows) == n_examples
    expected = per_layer_erank(teacher, [rows.batch(list(range(i, min(i + 8, len(rows)))))
                                         for i in range(0, len(rows), 8)])
    assert res["unpacked"]["tokens"] == expected["tokens"] == res["packed"]["tokens"]
    assert res["unpacked"]["erank"] == pytest.approx(expected["erank"], rel=1e-4)
    assert res["unpacked"]["erank"][0] == pytest.approx(res["packed"]["erank"][0], rel=1e-4)
    assert res["unpacked"]["erank"][1] != pytest.approx(res["packed"]["erank"][1], rel=1e-3)
