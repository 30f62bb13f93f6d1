"""The scan and conv backends of both Mamba mixers.

CPU: the torch chunked path against the sequential reference (outputs and gradients) for both
mixers; the entry points' torch implementations against independent loops; the discrete mixer's
rewrite in the kernel's (x, dt, A) form, decay -> 0 and decay -> 1 included; the mixers' wiring
of the mamba_ssm and causal_conv1d calls, with stand-ins written from those functions'
documented contracts; backend selection, its log and its failures.

CUDA (skipped without a GPU and the kernel packages): each real kernel against its reference.

Glossary: b batch, L length, h heads, P head dim, N state size, D d_model, Cd conv channels.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import pytest
import torch
import torch.nn.functional as F

from thinkfast.config import ModelConfig
from thinkfast.models import ssd
from thinkfast.models.cache import MambaState
from thinkfast.models.mamba2 import build_mixer
from thinkfast.models.ssd import (
    BACKEND_ENV, DT_FLOOR, backends_used, chunk_scan, conv_backend, discrete_as_continuous, discrete_chunk_scan,
    scan_backend, ssd_chunked, ssd_chunked_fast, ssd_sequential,
)

CUDA_KERNELS = (torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None)
CUDA_CONV = (torch.cuda.is_available() and importlib.util.find_spec("causal_conv1d") is not None)
needs_mamba_ssm = pytest.mark.skipif(not CUDA_KERNELS, reason="needs CUDA and mamba_ssm (kernel test)")
needs_causal_conv1d = pytest.mark.skipif(not CUDA_CONV, reason="needs CUDA and causal_conv1d (kernel test)")


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def _continuous_loop(x, dt, A, B, C, h0=None):
    """The continuous form written out: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t.
    x (b, L, h, P), dt (b, L, h), A (h,), B, C (b, L, h, N) -> y (b, L, h, P), h_L (b, h, P, N)."""
    b, L, H, P = x.shape
    h = torch.zeros(b, H, P, B.shape[-1]) if h0 is None else h0.clone()
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None]
        ys.append((h * C[:, t, :, None]).sum(-1))
    return torch.stack(ys, 1), h


def _inputs(b=2, L=45, h=3, P=4, N=5, seed=0, device="cpu"):
    """x, raw a (b, L, h) with log_a = -softplus(a), B, C, h0; L = 45 is not a multiple of 8 or 16."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, P, generator=g)
    a = torch.randn(b, L, h, generator=g) * 2
    B = torch.randn(b, L, h, N, generator=g)
    C = torch.randn(b, L, h, N, generator=g)
    h0 = torch.randn(b, h, P, N, generator=g)
    return [t.to(device) for t in (x, a, B, C, h0)]


def _grads(fn, tensors):
    """Outputs of fn(*tensors) (a tuple) and the gradients of a fixed random projection of them."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    outs = fn(*leaves)
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g).to(o.device)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], [t.grad for t in leaves]


def _close(got, want, atol=1e-4, rtol=1e-4):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if a is None and b is None:  # no gradient on either side (an unused initial state)
            continue
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# --- the entry points, CPU --------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [8, 16, 64])
def test_chunk_scan_torch_matches_the_continuous_recurrence(chunk):
    x, a, B, C, h0 = _inputs()
    dt = F.softplus(a - 2)
    A = -torch.tensor([0.5, 1.0, 4.0])
    got = _grads(lambda x, dt, A, B, C, h0: chunk_scan(x, dt, A, B, C, chunk, h0, backend="torch"),
                 [x, dt, A, B, C, h0])
    want = _grads(_continuous_loop, [x, dt, A, B, C, h0])
    ref = _grads(lambda x, dt, A, B, C, h0: chunk_scan(x, dt, A, B, C, chunk, h0, backend="reference"),
                 [x, dt, A, B, C, h0])
    _close(got[0] + got[1], want[0] + want[1])
    _close(ref[0] + ref[1], want[0] + want[1])


# decay alpha = exp(-softplus(a)): a = +60 is alpha ~ 1e-26 (~0), a = -30 is 1 - 1e-13 (below
# DT_FLOOR: clamped), a = -120 is alpha == 1.0 exactly (softplus(a) == 0 in fp32: dt would be 0).
EDGES = {"mixed": None, "alpha~0": 60.0, "alpha~1 (clamped)": -30.0, "alpha==1": -120.0, "alpha=1-1e-6": -13.8}


@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("with_state", [False, True])
def test_discrete_form_through_the_kernel_contract_matches_reference(edge, with_state):
    """What the mamba_ssm path computes, with the kernel replaced by its torch implementation:
    discrete_as_continuous, then chunk_scan's torch path == ssd_sequential on (x, log_a)."""
    x, a, B, C, h0 = _inputs(seed=1)
    if EDGES[edge] is not None:
        a = a * 0.01 + EDGES[edge]
    else:  # every regime in one sequence, per token
        a = a * 30
    init = (lambda h0: h0) if with_state else (lambda h0: None)

    def via_kernel_form(x, a, B, C, h0):
        x_in, dt, A = discrete_as_continuous(x, -F.softplus(a))
        return chunk_scan(x_in, dt, A, B, C, 16, init(h0), backend="torch")

    def reference(x, a, B, C, h0):
        return ssd_sequential(x, -F.softplus(a), B, C, init(h0))

    (y, s), grads = _grads(via_kernel_form, [x, a, B, C, h0])
    (y_ref, s_ref), grads_ref = _grads(reference, [x, a, B, C, h0])
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads if g is not None)
    _close([y, s], [y_ref, s_ref])
    _close(grads, grads_ref)


def test_dt_floor_moves_log_decay_by_at_most_the_floor():
    log_a = -torch.tensor([0.0, 1e-30, 1e-12, 1e-9, 1e-3, 40.0])
    x = torch.ones(1, 6, 1, 2)
    x_in, dt, A = discrete_as_continuous(x, log_a.view(1, 6, 1))
    assert (dt > 0).all() and torch.isfinite(x_in).all()
    assert ((dt * A).view(-1) - log_a).abs().max() <= DT_FLOOR
    torch.testing.assert_close((x_in * dt[..., None]), x)  # the input is fed exactly
    assert torch.equal(dt.view(-1)[3:], -log_a[3:])  # above the floor dt is -log_a itself


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_discrete_chunk_scan_matches_chunked_and_sequential(backend):
    x, a, B, C, h0 = _inputs(seed=2)
    log_a = -F.softplus(a)
    y, s = discrete_chunk_scan(x, log_a, B, C, 8, h0, backend=backend)
    y_ref, s_ref = ssd_sequential(x, log_a, B, C, h0)
    _close([y, s], [y_ref, s_ref])
    if backend == "torch":  # the default CPU path is ssd_chunked_fast itself, bit for bit
        y_chk, s_chk = ssd_chunked_fast(x, log_a, B, C, chunk_size=8, initial_state=h0)
        assert torch.equal(y, y_chk) and torch.equal(s, s_chk)


# --- the mixers, CPU --------------------------------------------------------------------------

def _mixer(kind, chunk=8, seed=0):
    torch.manual_seed(seed)
    mamba = dict(kind=kind, chunk_size=chunk)
    if kind == "discrete+bias":
        mamba.update(kind="discrete", decay_bias=[2.0, 64.0])
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128,
                      layer_pattern="M", mamba=mamba)
    m = build_mixer(cfg)
    if kind == "discrete+bias":  # one head per regime: alpha ~ 0, ordinary, ~1 - 1e-13, == 1
        with torch.no_grad():
            m.a_bias.copy_(torch.tensor([60.0, 0.0, -30.0, -120.0]))
    return m


def _state(m, b):
    return MambaState(b, m.conv_dim, m.conv1d.kernel_size[0], m.H, m.P, m.N, torch.float32, "cpu")


def _mixer_run(m, u):
    """Forward of u (b, L, D) with state (a 13-token prefill, then the rest as a second prefill,
    so the second one starts from a cached state), plus gradients wrt u and every parameter."""
    u = u.detach().clone().requires_grad_(True)
    m.zero_grad()
    y = m(u)
    g = torch.Generator().manual_seed(3)
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    st = _state(m, u.shape[0])
    with torch.no_grad():
        y2 = torch.cat([m(u[:, :13], state=st), m(u[:, 13:], state=st)], 1)
    return [y.detach(), y2, st.ssm.clone(), st.conv.clone(), u.grad] + [p.grad.clone() for p in m.parameters()]


KINDS = ["mamba2", "discrete", "discrete+bias"]


@pytest.mark.parametrize("kind", KINDS)
def test_mixer_torch_chunked_matches_reference_forward_and_backward(kind, monkeypatch):
    m = _mixer(kind)
    u = torch.randn(2, 29, 32, generator=torch.Generator().manual_seed(0))  # 29: not a multiple of 8
    got = _mixer_run(m, u)
    monkeypatch.setenv(BACKEND_ENV, "reference")
    want = _mixer_run(m, u)
    assert "reference" in backends_used()["scan"]
    _close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_mixer_prefill_equals_its_decode_steps(kind):
    m = _mixer(kind)
    u = torch.randn(2, 21, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(u)
        st = _state(m, 2)
        steps = torch.cat([m(u[:, :5], state=st)] + [m(u[:, t:t + 1], state=st) for t in range(5, 21)], 1)
    _close([steps], [full], atol=1e-5, rtol=1e-4)


def _stand_in_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                   dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False):
    """mamba_chunk_scan_combined's contract, as a loop: x (b, L, h, P), dt (b, L, h), A (h,) fp32,
    B, C (b, L, g, N) with h a multiple of g, initial_states (b, h, P, N)."""
    assert A.dtype == torch.float32 and A.shape == (x.shape[2],) and x.is_contiguous() and dt.is_contiguous()
    assert D is None and z is None and dt_bias is None and not dt_softplus and return_final_states
    assert chunk_size > 0 and (dt > 0).all() and torch.isfinite(x).all()
    rep = x.shape[2] // B.shape[2]
    B, C = B.repeat_interleave(rep, 2).float(), C.repeat_interleave(rep, 2).float()
    y, final = _continuous_loop(x.float(), dt.float(), A, B, C, None if initial_states is None else initial_states.float())
    return y.to(x.dtype), final


def _stand_in_conv(x, weight, bias=None, activation=None):
    """causal_conv1d_fn's contract: x (b, Cd, L), weight (Cd, K), left zero padding, silu or none."""
    assert weight.dim() == 2 and activation in (None, "silu", "swish")
    K = weight.shape[1]
    out = F.conv1d(F.pad(x, (K - 1, 0)), weight[:, None], bias, groups=x.shape[1])
    return F.silu(out) if activation else out


@pytest.mark.parametrize("kind", KINDS)
def test_mixer_kernel_wiring_with_stand_in_kernels(kind, monkeypatch):
    """The mixers' mamba_ssm and causal_conv1d calls (arguments, the discrete rewrite, the conv
    window, state in and out), with the kernels replaced by loops of their contracts, equal the
    reference path. The real kernels are tested on a GPU below."""
    m = _mixer(kind)
    u = torch.randn(2, 29, 32, generator=torch.Generator().manual_seed(2))
    monkeypatch.setenv(BACKEND_ENV, "reference")
    want = _mixer_run(m, u)
    monkeypatch.setattr(ssd, "_used", {"scan": [], "conv": []})  # keep the stand-ins out of backends_used()
    monkeypatch.setattr(ssd, "_logged", set())
    monkeypatch.setitem(ssd._kernels, "mamba_ssm", _stand_in_scan)
    monkeypatch.setitem(ssd._kernels, "causal_conv1d", _stand_in_conv)
    monkeypatch.setattr(ssd, "scan_backend", lambda device, backend=None: "mamba_ssm")
    monkeypatch.setattr(ssd, "conv_backend", lambda device, backend=None: "causal_conv1d")
    monkeypatch.setattr("thinkfast.models.mamba2.conv_backend", lambda device, backend=None: "causal_conv1d")
    got = _mixer_run(m, u)
    _close(got, want, atol=1e-4, rtol=1e-4)


# --- backend selection ------------------------------------------------------------------------

def test_backend_choice_env_and_argument(monkeypatch):
    assert scan_backend("cpu") == "torch" and conv_backend("cpu") == "torch"
    assert scan_backend("cpu", backend="reference") == "reference"
    monkeypatch.setenv(BACKEND_ENV, "Reference")
    assert scan_backend("cpu") == "reference"
    assert scan_backend("cpu", backend="torch") == "torch"  # the argument wins
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert scan_backend("cuda") == "torch" and conv_backend("cuda") == "torch"  # forced even on CUDA
    monkeypatch.setenv(BACKEND_ENV, "triton")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        scan_backend("cpu")
    monkeypatch.setenv(BACKEND_ENV, "mamba_ssm")
    with pytest.raises(RuntimeError, match="CUDA-only"):
        scan_backend("cpu")


@pytest.fixture
def fresh_imports(monkeypatch):
    """Forget which kernels were imported, and hide any installed mamba_ssm / causal_conv1d."""
    monkeypatch.setattr(ssd, "_kernels", {})
    monkeypatch.setattr(ssd, "_import_errors", {})
    for name in list(sys.modules):
        if name.split(".")[0] in ("mamba_ssm", "causal_conv1d"):
            monkeypatch.delitem(sys.modules, name)


def test_missing_kernel_falls_back_and_says_why(fresh_imports, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # importing it raises ImportError
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)
    assert scan_backend("cuda") == "torch" and conv_backend("cuda") == "torch"
    monkeypatch.setenv(BACKEND_ENV, "mamba_ssm")
    with pytest.raises(RuntimeError, match=r"mamba_ssm not importable \(\w*Error"):
        scan_backend("cuda")
    # the log: once per process per backend, with the reason
    monkeypatch.delenv(BACKEND_ENV)
    monkeypatch.setattr(ssd, "_used", {"scan": [], "conv": []})
    monkeypatch.setattr(ssd, "_logged", set())
    x, a, B, C, _ = _inputs(L=9)
    with caplog.at_level(logging.INFO, logger="thinkfast.models.ssd"):
        discrete_chunk_scan(x, -F.softplus(a), B, C, 8)
        discrete_chunk_scan(x, -F.softplus(a), B, C, 8)
        chunk_scan(x, F.softplus(a), -torch.ones(3), B, C, 8, backend="reference")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["Mamba scan backend: torch (cpu tensors; mamba_ssm is CUDA-only)",
                    "Mamba scan backend: reference (forced by argument=reference)"]
    assert backends_used()["scan"] == ("torch", "reference")


class _BrokenFinder:
    """A meta-path finder for which importing mamba_ssm fails with something other than ImportError."""

    def find_spec(self, name, path=None, target=None):
        if name == "mamba_ssm":
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
        return None


def test_broken_kernel_install_is_raised_not_hidden(fresh_imports, monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_BrokenFinder(), *sys.meta_path])
    with pytest.raises(RuntimeError, match="CUDA driver"):
        scan_backend("cuda")
    assert scan_backend("cpu") == "torch"  # a CPU run never imports the kernel


# --- the real kernels, CUDA -------------------------------------------------------------------
# The kernels may run their fp32 products in TF32: tolerances are relative to the output's scale.

def _close_scaled(got, want, rel=1e-2):
    for a, b in zip(got, want):
        if a is None and b is None:  # no gradient on either side
            continue
        scale = b.abs().max().clamp(min=1e-6)
        assert (a.float() - b.float()).abs().max() <= rel * scale, (a - b).abs().max() / scale


@needs_mamba_ssm
@pytest.mark.parametrize("with_state", [False, True])
def test_cuda_mamba_ssm_chunk_scan_matches_ssd_chunked(with_state):
    x, a, B, C, h0 = _inputs(b=2, L=200, h=4, P=16, N=16, device="cuda")
    dt, A = F.softplus(a - 2), -torch.tensor([0.5, 1.0, 4.0, 8.0], device="cuda")
    init = (lambda h0: h0) if with_state else (lambda h0: None)
    got = _grads(lambda x, dt, B, C, h0: chunk_scan(x, dt, A, B, C, 64, init(h0), backend="mamba_ssm"),
                 [x, dt, B, C, h0])
    want = _grads(lambda x, dt, B, C, h0: ssd_chunked(x * dt[..., None], dt * A, B, C, 64, init(h0)),
                  [x, dt, B, C, h0])
    _close_scaled(got[0] + got[1], want[0] + want[1])


@needs_mamba_ssm
@pytest.mark.parametrize("edge", list(EDGES))
def test_cuda_mamba_ssm_discrete_scan_matches_ssd_chunked(edge):
    x, a, B, C, h0 = _inputs(b=2, L=200, h=4, P=16, N=16, seed=3, device="cuda")
    a = a * 30 if EDGES[edge] is None else a * 0.01 + EDGES[edge]
    got = _grads(lambda x, a, B, C, h0: discrete_chunk_scan(x, -F.softplus(a), B, C, 64, h0, backend="mamba_ssm"),
                 [x, a, B, C, h0])
    want = _grads(lambda x, a, B, C, h0: ssd_chunked(x, -F.softplus(a), B, C, 64, h0), [x, a, B, C, h0])
    _close_scaled(got[0] + got[1], want[0] + want[1])


def _cuda_mixer_run(m, u):
    u = u.detach().clone().requires_grad_(True)
    m.zero_grad()
    y = m(u)
    (y * torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)).sum().backward()
    st = MambaState(u.shape[0], m.conv_dim, m.conv1d.kernel_size[0], m.H, m.P, m.N, torch.float32, "cuda")
    with torch.no_grad():
        y2 = torch.cat([m(u[:, :70], state=st), m(u[:, 70:], state=st)], 1)
    return [y.detach(), y2, st.ssm.clone(), st.conv.clone(), u.grad] + [p.grad.clone() for p in m.parameters()]


@needs_mamba_ssm
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_mixer_kernel_path_matches_torch_path(kind, monkeypatch):
    m = _mixer(kind, chunk=64).cuda()
    u = torch.randn(2, 150, 32, device="cuda")
    assert scan_backend("cuda") == "mamba_ssm"
    got = _cuda_mixer_run(m, u)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    want = _cuda_mixer_run(m, u)
    _close_scaled(got, want)


@needs_causal_conv1d
@pytest.mark.parametrize("kind", ["mamba2", "discrete"])
def test_cuda_causal_conv1d_matches_torch_conv(kind, monkeypatch):
    m = _mixer(kind).cuda()
    xbc = torch.randn(2, 37, m.conv_dim, device="cuda")
    assert conv_backend("cuda") == "causal_conv1d"
    outs = []
    for backend in ("auto", "torch"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        st = MambaState(2, m.conv_dim, m.conv1d.kernel_size[0], m.H, m.P, m.N, torch.float32, "cuda")
        with torch.no_grad():
            outs.append([m._conv(xbc[:, :20], st, None), m._conv(xbc[:, 20:], st, None), st.conv.clone()])
    _close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
