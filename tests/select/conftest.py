"""Fixtures for the layer-selection tests; the helpers live in select_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from select_helpers import VOCAB, data_config, write_token_data

from thinkfast.data.dataset import load_data


@pytest.fixture
def token_data(tmp_path) -> Path:
    return write_token_data(tmp_path / "data.jsonl")


@pytest.fixture
def eval_blocks(token_data):
    return load_data(data_config(token_data), None, VOCAB).eval
