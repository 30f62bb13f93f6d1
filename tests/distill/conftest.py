"""Fixtures for the distillation tests; the helpers live in distill_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from distill_helpers import tiny_teacher, write_token_data

from thinkfast.checkpoint import save_model


@pytest.fixture
def teacher_dir(tmp_path) -> Path:
    return save_model(tiny_teacher(), tmp_path / "teacher")


@pytest.fixture
def token_data(tmp_path) -> Path:
    return write_token_data(tmp_path / "data.jsonl")
