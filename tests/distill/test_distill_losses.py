"""The losses against brute-force loops over the definitions."""

from __future__ import annotations

import math

import pytest
import torch

from thinkfast.distill.losses import (IGNORE, cross_entropy, distillation_loss, forward_kl, hidden_alignment_loss,
                                      hidden_mse, matrix_orientation_loss, reverse_kl)

g = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_stage1_loss_equals_brute_force():
    B, H, T = 3, 2, 5
    M, A = rand(B, H, T, T), rand(B, H, T, T).softmax(-1)
    expected = 0.0
    for b in range(B):
        for h in range(H):
            expected += math.sqrt(sum(float(M[b, h, i, j] - A[b, h, i, j]) ** 2 for i in range(T) for j in range(T)))
    expected /= B * H
    assert matrix_orientation_loss(M, A).item() == pytest.approx(expected, rel=1e-6)
    assert matrix_orientation_loss(A, A).item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        matrix_orientation_loss(M[:, :1], A)


def test_stage2_loss_equals_brute_force_with_mask():
    y, t = rand(2, 4, 3), rand(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    norms = [math.sqrt(sum(float(y[b, i, d] - t[b, i, d]) ** 2 for d in range(3)))
             for b in range(2) for i in range(4) if mask[b, i]]
    assert hidden_alignment_loss(y, t, mask).item() == pytest.approx(sum(norms) / len(norms), rel=1e-6)
    assert hidden_mse(y, t, mask).item() == pytest.approx(
        sum(n**2 for n in norms) / (3 * len(norms)), rel=1e-6)


def _kl(p, q):
    return sum(float(pi * (math.log(pi) - math.log(qi))) for pi, qi in zip(p, q))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_and_reverse_kl_brute_force_masked(temperature):
    s, t = rand(2, 3, 5), rand(2, 3, 5)
    labels = torch.tensor([[4, IGNORE, 1], [IGNORE, 0, 2]])
    fwd = rev = 0.0
    n = 0
    for b in range(2):
        for i in range(3):
            if labels[b, i] == IGNORE:
                continue
            ps, pt = (s[b, i] / temperature).softmax(-1).tolist(), (t[b, i] / temperature).softmax(-1).tolist()
            fwd += _kl(pt, ps) * temperature**2
            rev += _kl(ps, pt) * temperature**2
            n += 1
    assert forward_kl(s, t, labels, temperature=temperature).item() == pytest.approx(fwd / n, rel=1e-5)
    assert reverse_kl(s, t, labels, temperature=temperature).item() == pytest.approx(rev / n, rel=1e-5)
    assert forward_kl(s, t, labels, temperature=temperature) != reverse_kl(s, t, labels, temperature=temperature)


def test_ce_mix_and_empty_mask():
    s, t = rand(1, 4, 6), rand(1, 4, 6)
    labels = torch.tensor([[1, 2, IGNORE, 5]])
    ce = sum(-float(s[0, i].log_softmax(-1)[labels[0, i]]) for i in (0, 1, 3)) / 3
    assert cross_entropy(s, labels).item() == pytest.approx(ce, rel=1e-6)
    total, kl, ce_t = distillation_loss(s, t, labels, kind="reverse", kl_weight=0.5, ce_weight=2.0)
    assert total.item() == pytest.approx(0.5 * reverse_kl(s, t, labels).item() + 2.0 * ce, rel=1e-6)
    none = torch.full_like(labels, IGNORE)
    assert forward_kl(s, t, none).item() == 0.0 and cross_entropy(s, none).item() == 0.0
    # A NaN at an ignored position does not leak into the mean.
    s2 = s.clone()
    s2[0, 2] = float("nan")
    assert torch.isfinite(cross_entropy(s2, labels))


def test_kl_is_zero_for_identical_logits_and_gradients_flow():
    s = rand(2, 3, 7).requires_grad_(True)
    assert forward_kl(s, s.detach()).item() == pytest.approx(0.0, abs=1e-12)
    reverse_kl(s, rand(2, 3, 7)).backward()
    assert s.grad is not None and bool(torch.isfinite(s.grad).all())
