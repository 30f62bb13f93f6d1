"""benchmarks/study_decode.py's pieces: the cache size it reports and its per-round ratios."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("study_decode", ROOT / "benchmarks" / "study_decode.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


sd = _load()


def test_cache_mb_of_a_llama_is_its_kv_cache():
    from thinkfast.config import ModelConfig
    from thinkfast.models.lm import LanguageModel

    cfg = ModelConfig.from_name("tiny")
    model = LanguageModel(cfg)
    rows, positions = 3, 40
    kv = 2 * cfg.n_layers * rows * cfg.n_kv_heads * positions * cfg.head_dim * 4  # k and v, fp32
    assert sd.cache_mb(model, rows, positions) == pytest.approx(kv / 2**20)


def test_students_keep_the_demo_shapes_and_a_constant_state():
    from thinkfast.config import ModelConfig
    from thinkfast.models.lm import LanguageModel

    torch.manual_seed(0)
    teacher = LanguageModel(ModelConfig.from_name("tiny")).eval()
    st = sd.students(teacher, [4.0, 1024.0])
    assert st["llamba"].config.layer_pattern == "MMMM" and st["llamba"].config.mamba.kind == "discrete"
    assert st["hybrid"].config.layer_pattern.count("A") == 2 and st["hybrid"].config.mamba.kind == "mamba2"
    # a Mamba layer's state does not grow with the context; attention's does
    assert sd.cache_mb(st["llamba"], 2, 64) == sd.cache_mb(st["llamba"], 2, 128)
    assert sd.cache_mb(teacher, 2, 128) == 2 * sd.cache_mb(teacher, 2, 64)


def test_round_ratios_pair_each_round_with_the_reference_of_that_round():
    res = {"ref": [{"decode_tokens_per_s": 100.0}, {"decode_tokens_per_s": 50.0}],
           "m": [{"decode_tokens_per_s": 200.0}, {"decode_tokens_per_s": 150.0}]}
    assert sd.round_ratios(res, "ref") == {"ref": [1.0, 1.0], "m": [2.0, 3.0]}
