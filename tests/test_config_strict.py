"""The one strict loader for config files (thinkfast.config.from_dict), and its users: a
checkpoint's config.json and the distill / compress recipes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from thinkfast.config import ConfigError, ModelConfig, from_dict
from thinkfast.runtime import UserError


@dataclass
class Inner:
    width: int = 1


@dataclass
class Sample:
    count: int = 1
    scale: float = 1.0
    flag: bool = False
    name: str = "x"
    maybe: Optional[int] = None
    sizes: list[int] = field(default_factory=list)
    pair: tuple[int, float] = (0, 0.0)
    mode: Literal["fast", "slow"] = "fast"
    inner: Inner = field(default_factory=Inner)
    inners: list[Inner] = field(default_factory=list)


def test_a_config_error_is_a_user_error_and_a_value_error():
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("data,key,expected", [
    ({"count": "128"}, "count", "expected int, got '128' (str); write the number without quotes"),
    ({"count": True}, "count", "expected int, got True (bool)"),
    ({"count": 2.5}, "count", "expected int, got 2.5 (float)"),
    ({"flag": "no"}, "flag", "expected bool, got 'no' (str)"),
    ({"flag": 1}, "flag", "expected bool, got 1 (int)"),
    ({"scale": "1e-3"}, "scale", "expected float, got '1e-3' (str); write the number without quotes "
                                 "(YAML reads 1e-3 as a string: write 1.0e-3)"),
    ({"scale": False}, "scale", "expected float, got False (bool)"),
    ({"name": 3}, "name", "expected str, got 3 (int)"),
    ({"maybe": "3"}, "maybe", "expected int, got '3' (str)"),
    ({"sizes": [1, "2"]}, "sizes[1]", "expected int, got '2' (str)"),
    ({"sizes": 3}, "sizes", "expected list[int], got 3 (int)"),
    ({"pair": [1]}, "pair", "expected 2 entries (tuple[int, float]), got [1] (list)"),
    ({"pair": [1, "x"]}, "pair[1]", "expected float, got 'x' (str)"),
    ({"mode": "medium"}, "mode", "expected one of 'fast', 'slow', got 'medium' (str)"),
    ({"inner": {"width": "2"}}, "inner.width", "expected int, got '2' (str)"),
    ({"inner": 2}, "inner", "expected a mapping, got 2 (int)"),
    ({"inners": [{"width": 1}, {"widht": 1}]}, "inners[1]", "unknown config key(s) ['widht']"),
])
def test_wrong_types_name_the_file_and_the_key(data, key, expected):
    with pytest.raises(ConfigError) as e:
        from_dict(Sample, data, source="cfg.json", where="top")
    assert str(e.value).startswith(f"cfg.json: top.{key}: {expected}")


def test_accepted_values_are_converted_to_their_annotation():
    cfg = from_dict(Sample, {"scale": 2, "maybe": None, "pair": [1, 2], "mode": "slow",
                             "inner": {"width": 3}, "inners": [{"width": 4}]})
    assert cfg.scale == 2.0 and isinstance(cfg.scale, float)
    assert cfg.pair == (1, 2.0) and isinstance(cfg.pair, tuple) and isinstance(cfg.pair[1], float)
    assert cfg.inner == Inner(3) and cfg.inners == [Inner(4)] and cfg.mode == "slow" and cfg.maybe is None


def test_unknown_keys_and_a_non_mapping_name_the_file():
    with pytest.raises(ConfigError, match=r"^f\.json: Sample: unknown config key\(s\) \['cuont'\]; known keys: \['count'"):
        from_dict(Sample, {"cuont": 1}, source="f.json")
    with pytest.raises(ConfigError, match=r"^f\.json: Sample: expected a mapping, got \[1\] \(list\)"):
        from_dict(Sample, [1], source="f.json")


@pytest.mark.parametrize("model,expected", [
    ({"d_model": "128"}, "model.d_model: expected int, got '128'"),
    ({"tie_embeddings": "no"}, "model.tie_embeddings: expected bool, got 'no'"),
    ({"n_layers": True}, "model.n_layers: expected int, got True"),
    ({"mamba": {"chunk_size": "64"}}, "model.mamba.chunk_size: expected int"),
    ({"rope_scaling": {"factor": "8"}}, "model.rope_scaling.factor: expected float"),
    ({"n_heads": 0}, "n_heads must be > 0, got 0"),
    ({"vocab_size": -1}, "vocab_size must be > 0, got -1"),
    ({"mamba": {"dt_min": 0.5, "dt_max": 0.1}}, "dt_min <= dt_max"),
])
def test_model_config_json_is_checked_strictly(tmp_path, model, expected):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**ModelConfig.from_name("tiny").to_dict(), **model}))
    data = json.loads(path.read_text())
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(data, source=path, where="model")
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value)


def test_model_config_from_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{\n  "d_model": "64"\n}\n')
    with pytest.raises(ConfigError, match=rf"^{path}: d_model: expected int"):
        ModelConfig.from_file(path)
    path.write_text('{\n  "d_model": "64\n}\n')
    with pytest.raises(ConfigError, match=rf"^{path}:2: not valid JSON \(Invalid control character at column 17\)"):
        ModelConfig.from_file(path)
    with pytest.raises(ConfigError, match=rf"^cannot read {tmp_path}: Is a directory"):
        ModelConfig.from_file(tmp_path)


def _distill_recipe(tmp_path, **train):
    return {"out_dir": str(tmp_path / "run"), "teacher": str(tmp_path / "t"), "data": {"train": "d.jsonl"},
            "train": train, "stages": [{"name": "kd", "objective": "kd"}]}


def test_distill_recipe_errors_name_the_recipe_file(tmp_path):
    from thinkfast.distill.config import load_config

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_distill_recipe(tmp_path, bf16=1)))
    with pytest.raises(ConfigError, match=rf"^{path}: config\.train\.bf16: expected bool, got 1 \(int\)"):
        load_config(path)
    path.write_text(yaml.safe_dump(_distill_recipe(tmp_path)))
    with pytest.raises(ConfigError, match=rf"^{path} \(with overrides train\.lr=fast\): "
                                          r"config\.train\.lr: expected float, got 'fast'"):
        load_config(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"stages\[0\] \(kd\)\.train\.steps: expected int, got 'x'"):
        load_config(path, ["stages.kd.train.steps=x"])


def test_distill_ints_become_floats_through_the_loader(tmp_path):
    from thinkfast.distill.config import build_config, resolve_train

    cfg = build_config({**_distill_recipe(tmp_path, lr=1, betas=[1, 1]),
                        "stages": [{"name": "kd", "train": {"clip_grad": 2}}]})
    assert isinstance(cfg.train.lr, float) and all(isinstance(b, float) for b in cfg.train.betas)
    assert isinstance(resolve_train(cfg, 0).clip_grad, float)


def test_recipe_yaml_errors_name_the_line(tmp_path):
    from thinkfast.distill.config import load_config

    path = tmp_path / "r.yaml"
    path.write_text("train:\n  steps: 3\n  lr: [1\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: not valid YAML"):
        load_config(path)
    path.write_bytes(b"train:\n  steps: 3\n  name: \xff\n")
    with pytest.raises(UserError, match=rf"^{path}:3: not UTF-8 text"):
        load_config(path)


def test_compress_recipe_goes_through_the_same_loader(tmp_path):
    from thinkfast.compress.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"teacher": "t", "d_s": 8, "train": {"bf16": "yes"}}))
    with pytest.raises(ConfigError, match=rf"^{path}: config\.train\.bf16: expected bool, got 'yes'"):
        load_config(path)


def test_distill_and_compress_losses_are_one_set_of_weights(tmp_path):
    """distill's LossConfig and compress's CompressLoss are the shared LossWeights with their own
    defaults: the same keys mean the same, the same checks apply, and each keeps exactly its own
    keys (compress has no KL direction or chunking, so a recipe naming them is refused)."""
    from dataclasses import fields

    from thinkfast.compress.config import CompressLoss
    from thinkfast.compress.config import build_config as build_compress
    from thinkfast.config import to_dict
    from thinkfast.distill.config import LossConfig, LossWeights, build_config

    assert issubclass(LossConfig, LossWeights) and issubclass(CompressLoss, LossWeights)
    assert to_dict(CompressLoss()) == {"temperature": 1.0, "kl_weight": 1.0, "ce_weight": 1.0, "hidden_weight": 1.0}
    assert to_dict(LossConfig()) == {"kind": "forward", "temperature": 1.0, "kl_weight": 1.0, "ce_weight": 0.0,
                                     "hidden_weight": 0.0, "chunk_size": 1024, "long_window": 0, "long_cap": 5.0}
    shared = {f.name for f in fields(LossWeights)}
    assert shared == {f.name for f in fields(CompressLoss)} < {f.name for f in fields(LossConfig)}
    recipe = _distill_recipe(tmp_path)
    for bad, message in (({"temperature": 0}, "loss.temperature must be > 0"),
                         ({"ce_weight": -1.0}, "loss weights must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            build_config({**recipe, "stages": [{"name": "kd", "objective": "kd", "loss": bad}]})
        with pytest.raises(ConfigError, match=message):
            build_compress({"teacher": "t", "d_s": 8, "loss": bad})
    with pytest.raises(ConfigError, match="at least one loss weight must be > 0"):
        build_compress({"teacher": "t", "d_s": 8, "loss": {"kl_weight": 0, "ce_weight": 0, "hidden_weight": 0}})
    with pytest.raises(ConfigError, match="kind"):
        build_compress({"teacher": "t", "d_s": 8, "loss": {"kind": "reverse"}})


def test_atomic_directory_replaces_out_only_when_the_new_one_is_whole(tmp_path):
    """The installer every model / ORM / export directory goes through: an error inside the block
    leaves OUT as it was and no temporary directory behind; success replaces OUT whole."""
    from thinkfast.config import atomic_directory

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_directory(out) as tmp:
        assert tmp.parent == tmp_path and not (tmp / "old.txt").exists()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    with atomic_directory(tmp_path / "a" / "fresh") as tmp:  # parents are made
        (tmp / "x").write_text("x")
    assert (tmp_path / "a" / "fresh" / "x").read_text() == "x"
