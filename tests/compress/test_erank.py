"""eRank and covariance eRank against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from compress_helpers import batches, tiny_teacher

from thinkfast.compress.erank import covariance_erank, diff_erank, erank, per_layer_erank
from thinkfast.runtime import UserError


def _with_singular_values(s: list[float], n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))  # (N, k)
    v, _ = torch.linalg.qr(torch.randn(d, len(s), generator=g, dtype=torch.float64))  # (D, k)
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T  # (N, D)


def test_erank_matches_closed_form():
    s = [5.0, 3.0, 1.0, 0.5]
    p = [x / sum(s) for x in s]
    expected = math.exp(-sum(q * math.log(q) for q in p))
    assert erank(_with_singular_values(s, 20, 10)) == pytest.approx(expected, rel=1e-9)


def test_erank_of_equal_singular_values_is_their_count():
    assert erank(_with_singular_values([2.0] * 6, 30, 12)) == pytest.approx(6.0, rel=1e-9)
    assert erank(_with_singular_values([1.0], 30, 12)) == pytest.approx(1.0, rel=1e-9)


def test_covariance_erank_closed_form():
    # Rows +-e_1 .. +-e_k: centred already, unit norm, covariance (1/k) I_k on k channels -> eRank k.
    k, d = 5, 9
    eye = torch.eye(d)[:k]
    x = torch.cat([eye, -eye]) * 3.0  # row scale is removed by the normalisation
    assert covariance_erank(x) == pytest.approx(k, rel=1e-9)
    # Unequal spread: counts (2, 1, 1) of +-e_i pairs -> eigenvalues proportional to (2, 1, 1).
    x2 = torch.cat([eye[:1], -eye[:1], eye[:1], -eye[:1], eye[1:3], -eye[1:3]])
    p = [0.5, 0.25, 0.25]
    assert covariance_erank(x2) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-9)
    assert diff_erank(x, x2) == pytest.approx(k - math.exp(-sum(q * math.log(q) for q in p)), rel=1e-9)


def test_per_layer_erank_shapes_and_bounds():
    model = tiny_teacher()
    r = per_layer_erank(model, batches(n_seq=6, T=12))  # 72 tokens >= width 32
    assert r["tokens"] == 72
    assert len(r["erank"]) == len(r["cov_erank"]) == model.config.n_layers + 1
    assert all(1.0 <= e <= 32.0 for e in r["erank"] + r["cov_erank"])


def test_per_layer_erank_refuses_fewer_tokens_than_width():
    with pytest.raises(UserError, match="at least 32 tokens"):
        per_layer_erank(tiny_teacher(), batches(n_seq=2, T=12)[:1])  # 24 tokens < width 32
