"""The one RoPE reading rule (convert.rope), shared by the Llama and GraniteMoeHybrid imports:
``rope_parameters`` first, the legacy ``rope_scaling`` only when ``rope_parameters`` names no scaling."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from thinkfast.config import RopeScaling
from thinkfast.convert.rope import rope_from_hf
from thinkfast.runtime import UserError

L3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
          original_max_position_embeddings=16)
LLAMA3 = RopeScaling("llama3", 8.0, 1.0, 4.0, 16)


def test_rope_parameters_win_over_a_disagreeing_legacy_rope_scaling():
    hc = NS(rope_parameters={**L3, "rope_theta": 5e5}, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert rope_from_hf(hc) == (5e5, LLAMA3)


def test_legacy_rope_scaling_is_read_when_rope_parameters_name_no_scaling():
    assert rope_from_hf(NS(rope_theta=5e5, rope_scaling=L3)) == (5e5, LLAMA3)
    hc = NS(rope_parameters={"rope_type": "default", "rope_theta": 1e4}, rope_scaling={"type": "linear", "factor": 2.0})
    assert rope_from_hf(hc) == (1e4, RopeScaling("linear", 2.0))


def test_no_scaling_and_an_unknown_one():
    assert rope_from_hf(NS()) == (10000.0, None)
    with pytest.raises(UserError, match="unsupported rope scaling 'yarn'"):
        rope_from_hf(NS(rope_parameters={"rope_type": "yarn", "factor": 4.0}))
