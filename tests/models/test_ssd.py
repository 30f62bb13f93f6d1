import pytest
import torch

from thinkfast.models.ssd import ssd_chunked, ssd_matrix, ssd_matrix_apply, ssd_sequential


def _inputs(b=2, L=37, h=3, P=4, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, P, generator=g)
    log_a = -torch.rand(b, L, h, generator=g) * 2
    B = torch.randn(b, L, h, N, generator=g)
    C = torch.randn(b, L, h, N, generator=g)
    h0 = torch.randn(b, h, P, N, generator=g)
    return x, log_a, B, C, h0


@pytest.mark.parametrize("chunk", [1, 4, 8, 16, 37, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_sequential_equals_matrix(chunk, with_state):
    x, log_a, B, C, h0 = _inputs()
    init = h0 if with_state else None
    y_ref, s_ref = ssd_sequential(x, log_a, B, C, init)
    y_chk, s_chk = ssd_chunked(x, log_a, B, C, chunk_size=chunk, initial_state=init)
    y_mat, s_mat = ssd_matrix_apply(x, log_a, B, C, init)
    torch.testing.assert_close(y_chk, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_chk, s_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y_mat, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_mat, s_ref, atol=1e-4, rtol=1e-4)


def test_matrix_is_causal_and_matches_definition():
    x, log_a, B, C, _ = _inputs(b=1, L=6, h=2)
    M = ssd_matrix(log_a, B, C)
    assert torch.all(M.triu(1) == 0)
    t, s, hd = 4, 1, 1
    expected = torch.exp(log_a[0, s + 1:t + 1, hd].sum()) * (C[0, t, hd] @ B[0, s, hd])
    torch.testing.assert_close(M[0, hd, t, s], expected)


def test_split_sequence_continues_from_state():
    x, log_a, B, C, _ = _inputs(L=30)
    y_full, s_full = ssd_chunked(x, log_a, B, C, chunk_size=8)
    y1, s1 = ssd_chunked(x[:, :13], log_a[:, :13], B[:, :13], C[:, :13], chunk_size=8)
    y2, s2 = ssd_chunked(x[:, 13:], log_a[:, 13:], B[:, 13:], C[:, 13:], chunk_size=8, initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s2, s_full, atol=1e-4, rtol=1e-4)
