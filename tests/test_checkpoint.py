import json
from pathlib import Path

import pytest
import torch

from thinkfast.checkpoint import CheckpointError, load_model, load_pretrained, save_model
from thinkfast.config import ModelConfig
from thinkfast.models.lm import LanguageModel


@pytest.mark.parametrize("pattern,kind,tie", [("AAAA", "mamba2", True), ("AMAM", "mamba2", False),
                                              ("MMMM", "discrete", True), ("MMMM", "discrete+bias", True)])
def test_save_load_round_trips_exactly(tmp_path, pattern, kind, tie):
    torch.manual_seed(0)
    mamba = dict(kind="discrete", decay_bias=[2, 64]) if kind == "discrete+bias" else dict(kind=kind)
    model = LanguageModel(ModelConfig.from_name("tiny", layer_pattern=pattern, tie_embeddings=tie,
                                                mamba=mamba)).eval()
    save_model(model, tmp_path / "m")
    loaded, tok = load_pretrained(tmp_path / "m")
    assert tok is None
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    ids = torch.randint(0, 256, (2, 11))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_mismatched_checkpoint_names_every_problem(tmp_path):
    model = LanguageModel(ModelConfig.from_name("tiny"))
    save_model(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["d_ff"] = 96
    meta["model"]["layer_pattern"] = "AAAM"
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "missing keys" in msg and "layers.3.mixer.in_proj.weight" in msg
    assert "unexpected keys" in msg and "layers.3.mixer.q_proj.weight" in msg
    assert "mismatched shapes" in msg and "gate_proj" in msg


def test_corrupt_files_give_clear_errors(tmp_path):
    model = LanguageModel(ModelConfig.from_name("tiny"))
    save_model(model, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)
    bad = tmp_path / "cfg2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"format": "thinkfast", "model": {"d_modle": 3}}))
    with pytest.raises(CheckpointError, match="unknown config key"):
        load_model(bad)


@pytest.mark.parametrize("change,expected", [
    ({"d_model": "64"}, "model.d_model: expected int, got '64' (str); write the number without quotes"),
    ({"tie_embeddings": "no"}, "model.tie_embeddings: expected bool, got 'no' (str)"),
    ({"n_kv_heads": 0}, "n_kv_heads must be > 0, got 0"),
])
def test_a_badly_typed_config_json_names_the_file_and_the_key(tmp_path, change, expected):
    save_model(LanguageModel(ModelConfig.from_name("tiny")), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    assert str(e.value) == f"{tmp_path / 'config.json'}: {expected}"


def test_a_model_path_that_is_no_model_directory(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'weights.bin'} is not a directory"):
        load_model(tmp_path / "weights.bin")
    (tmp_path / "config.json").write_text("[1, 2]\n")
    with pytest.raises(CheckpointError, match=r"is not a thinkfast config"):
        load_model(tmp_path)


class _DyingTokenizer:
    """save_pretrained writes half a tokenizer.json and dies, as a killed process would."""

    def save_pretrained(self, path):
        from pathlib import Path

        (Path(path) / "tokenizer.json").write_text('{"version": ')
        raise KeyboardInterrupt


def test_a_tokenizer_save_that_dies_leaves_the_previous_tokenizer_whole(tmp_path):
    model = LanguageModel(ModelConfig.from_name("tiny"))
    (tmp_path / "tokenizer.json").write_text('{"previous": true}\n')
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tmp_path, tokenizer=_DyingTokenizer())
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_save_pretrained_files_never_leaves_half_a_file(tmp_path):
    """A save that dies midway leaves ``out`` as it was; a finished one moves every file in."""
    from thinkfast.checkpoint import save_pretrained_files

    class Saver:
        def __init__(self, fail: bool):
            self.fail = fail

        def save_pretrained(self, d):
            (Path(d) / "a.json").write_text("{}")
            (Path(d) / "big.bin").write_text("half")
            if self.fail:
                raise OSError("disk full")
            (Path(d) / "big.bin").write_text("whole")

    out = tmp_path / "m"
    out.mkdir()
    (out / "kept.txt").write_text("mine")
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_files(Saver(fail=True), out)
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]
    save_pretrained_files(Saver(fail=False), out)
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "big.bin", "kept.txt"]
    assert (out / "big.bin").read_text() == "whole"
