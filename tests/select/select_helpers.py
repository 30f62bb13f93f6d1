"""A tiny 4-layer teacher and token data for the layer-selection tests (CPU, seconds).

A module with a unique name (not conftest) so test files can import it unambiguously."""

from __future__ import annotations

from pathlib import Path

import token_data
import torch

from thinkfast.checkpoint import save_model
from thinkfast.config import ModelConfig
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.models.lm import LanguageModel

VOCAB = 48


def make_teacher(seed: int = 0, zero_o_proj: tuple[int, ...] = (), n_layers: int = 4) -> LanguageModel:
    """The "tiny" preset (4 layers, 4 q / 2 kv heads) with logits far from uniform (init_std 0.15);
    the attention output of the layers in ``zero_o_proj`` is switched off (W_O = 0)."""
    torch.manual_seed(seed)
    cfg = ModelConfig.from_name("tiny", vocab_size=VOCAB, max_seq_len=64, init_std=0.15, n_layers=n_layers)
    model = LanguageModel(cfg).eval()
    with torch.no_grad():
        for i in zero_o_proj:
            model.layers[i].mixer.o_proj.weight.zero_()
    return model


def write_token_data(path: Path, n: int = 40, seed: int = 0) -> Path:
    return token_data.write_token_data(path, VOCAB, n=n, seed=seed, stride=3, length=11, eos=None)


def data_config(path: Path) -> DataConfig:
    return DataConfig(train=str(path), seq_len=16, eval_fraction=0.2, add_bos=False, add_eos=False)


