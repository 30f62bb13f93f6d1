"""The fast CPU training path of the Mamba mixers against its references.

``ssd_chunked_fast`` (the autograd.Function ``ChunkScan``, a hand-written backward) against the
readable ``ssd_chunked`` under autograd and the sequential recurrence; ``causal_depthwise_conv``
against F.conv1d; the hand-written backwards against finite differences (float64 gradcheck);
both mixers' outputs and parameter gradients on the default backend against
``torch_reference``.

Glossary: b batch, L length, h heads, P head dim, N state size, l chunk length, Cd conv channels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from thinkfast.config import ModelConfig
from thinkfast.models.mamba2 import build_mixer
from thinkfast.models.ssd import (
    BACKEND_ENV, ChunkScan, causal_depthwise_conv, conv_backend, decay_matrix, scan_backend, segsum, ssd_chunked,
    ssd_chunked_fast, ssd_sequential,
)


def _scan_inputs(b=2, L=21, h=3, P=4, N=5, dtype=torch.float32, seed=0, state=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, P, generator=g, dtype=dtype)
    log_a = -F.softplus(torch.randn(b, L, h, generator=g, dtype=dtype))  # (b, L, h) <= 0
    B = torch.randn(b, L, h, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, h, N, generator=g, dtype=dtype)
    h0 = torch.randn(b, h, P, N, generator=g, dtype=dtype) if state else None
    return [t.requires_grad_() if t is not None else None for t in (x, log_a, B, C, h0)]


def _outputs_and_grads(fn, inputs, seed=1):
    """fn(*inputs) -> (y, final); a fixed random projection of both is backpropagated."""
    for t in inputs:
        if t is not None:
            t.grad = None
    y, final = fn(*inputs)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=g, dtype=final.dtype)).sum()
    loss.backward()
    return [y.detach(), final.detach()] + [t.grad.clone() for t in inputs if t is not None]


def test_decay_matrix_is_exp_segsum_float64():
    A = -torch.rand(3, 2, 9, dtype=torch.float64) * 3
    got = decay_matrix(A.cumsum(-1))
    torch.testing.assert_close(got, segsum(A).exp(), rtol=1e-12, atol=1e-14)
    assert torch.all(got.triu(1) == 0)


def test_decay_matrix_does_not_overflow_above_the_diagonal():
    A = torch.full((1, 8), -200.0)  # exp(+1400) above the diagonal would be inf; inf * 0 is NaN
    A.requires_grad_()
    out = decay_matrix(A.cumsum(-1))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(A.grad).all()


@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_scan_backward_gradcheck_float64(with_state):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 3, 8, 4, generator=g, dtype=torch.float64, requires_grad=True)  # (b, h, c, l, P)
    A_cum = (-torch.rand(2, 2, 3, 8, generator=g, dtype=torch.float64)).cumsum(-1).requires_grad_()
    B = torch.randn(2, 2, 3, 8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(2, 2, 3, 8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) if with_state else None
    assert torch.autograd.gradcheck(ChunkScan.apply, (x, A_cum, B, C, h0))


@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_chunked_fast_gradcheck_float64(with_state):
    x, log_a, B, C, h0 = _scan_inputs(b=1, L=11, h=2, P=3, N=2, dtype=torch.float64, state=with_state)
    args = (x, log_a, B, C) + ((h0,) if with_state else ())
    assert torch.autograd.gradcheck(
        lambda *a: ssd_chunked_fast(*a[:4], chunk_size=4, initial_state=a[4] if with_state else None), args)


@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_chunked_fast_float64_matches_the_recurrence(with_state):
    """float64 stays float64, and equals the sequential recurrence (run in float64 by hand)."""
    x, log_a, B, C, h0 = _scan_inputs(dtype=torch.float64, state=with_state)
    y, final = ssd_chunked_fast(x, log_a, B, C, chunk_size=8, initial_state=h0)
    assert y.dtype == torch.float64 and final.dtype == torch.float64
    state = torch.zeros_like(final) if h0 is None else h0.detach().clone()
    ys = []
    for t in range(x.shape[1]):
        state = log_a[:, t].exp()[..., None, None] * state + x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    torch.testing.assert_close(y, torch.stack(ys, 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L,chunk", [(21, 8), (32, 8), (64, 64), (5, 16)])
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_chunked_fast_matches_ssd_chunked_float32(L, chunk, with_state):
    """Outputs, final state and every input gradient, padding (L % chunk) and initial state included."""
    inputs = _scan_inputs(L=L, state=with_state)
    ref = _outputs_and_grads(lambda *a: ssd_chunked(*a[:4], chunk_size=chunk, initial_state=a[4]), inputs)
    got = _outputs_and_grads(lambda *a: ssd_chunked_fast(*a[:4], chunk_size=chunk, initial_state=a[4]), inputs)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
    y_seq, s_seq = ssd_sequential(*[t.detach() if t is not None else None for t in inputs])
    torch.testing.assert_close(got[0], y_seq, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], s_seq, rtol=1e-4, atol=1e-4)


def test_ssd_chunked_fast_long_decay_at_the_demo_chunk():
    """Chunk 64 with strong decay (cumulative log-decay near -300 inside a chunk): the differences
    of cumulative sums agree with the per-entry sums of the reference."""
    x, _, B, C, _ = _scan_inputs(b=1, L=128, h=2, P=4, N=4, state=False)
    log_a = torch.full((1, 128, 2), -5.0).requires_grad_()
    inputs = [x, log_a, B, C, None]
    ref = _outputs_and_grads(lambda *a: ssd_chunked(*a[:4], chunk_size=64), inputs)
    got = _outputs_and_grads(lambda *a: ssd_chunked_fast(*a[:4], chunk_size=64), inputs)
    for g, r in zip(got, ref):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


# --- causal depthwise conv -----------------------------------------------------------------------

def _conv_ref(x, w, b):
    """F.conv1d over K-1 zeros and x, on (B, T, Cd)."""
    K = w.shape[-1]
    return F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), w, b, groups=x.shape[-1]).transpose(1, 2)


@pytest.mark.parametrize("T", [1, 3, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_causal_depthwise_conv_gradcheck_float64(T, bias):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(2, T, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    torch.testing.assert_close(causal_depthwise_conv(x, w, b), _conv_ref(x, w, b), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(causal_depthwise_conv, (x, w, b))


def test_causal_depthwise_conv_matches_conv1d_float32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 24, generator=g, requires_grad=True)
    w = torch.randn(24, 1, 4, generator=g, requires_grad=True)
    b = torch.randn(24, generator=g, requires_grad=True)
    dy = torch.randn(3, 40, 24, generator=g)
    outs = []
    for fn in (_conv_ref, causal_depthwise_conv):
        for t in (x, w, b):
            t.grad = None
        y = fn(x, w, b)
        y.backward(dy)
        outs.append([y.detach(), x.grad.clone(), w.grad.clone(), b.grad.clone()])
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_causal_depthwise_conv_rejects_a_full_weight():
    with pytest.raises(ValueError, match="depthwise weight"):
        causal_depthwise_conv(torch.randn(1, 4, 6), torch.randn(6, 2, 4), None)


# --- the mixers ----------------------------------------------------------------------------------

def test_backend_names(monkeypatch):
    assert scan_backend("cpu") == "torch" and conv_backend("cpu") == "torch"
    monkeypatch.setenv(BACKEND_ENV, "torch_reference")
    assert scan_backend("cpu") == "torch_reference" and conv_backend("cpu") == "torch_reference"
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert conv_backend("cpu") == "torch_reference"


def _mixer(kind: str, chunk: int = 8):
    torch.manual_seed(0)
    mamba = dict(kind=kind, chunk_size=chunk)
    if kind == "discrete":
        mamba["decay_bias"] = [2.0, 64.0]
    cfg = ModelConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
                      layer_pattern="M", mamba=mamba)
    return build_mixer(cfg)


@pytest.mark.parametrize("kind", ["mamba2", "discrete"])
@pytest.mark.parametrize("masked", [False, True])
def test_mixer_fast_path_matches_reference_path(kind, masked, monkeypatch):
    """The default backend (fast scan + conv) against torch_reference: the output and every
    parameter's gradient, left padding included."""
    m = _mixer(kind)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 19, 32, generator=g)
    dy = torch.randn(2, 19, 32, generator=g)
    ctx = None
    if masked:
        mask = torch.ones(2, 19, dtype=torch.bool)
        mask[0, :5] = False
        ctx = type("Ctx", (), {"token_mask": mask})()
    res = {}
    for backend in ("torch_reference", "torch"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        m.zero_grad(set_to_none=True)
        y = m(u, ctx)
        y.backward(dy)
        res[backend] = [y.detach()] + [p.grad.clone() for _, p in sorted(m.named_parameters())]
    names = ["y"] + [n for n, _ in sorted(m.named_parameters())]
    for name, got, want in zip(names, res["torch"], res["torch_reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
