"""Attention -> Mamba initialisation (MambaInLlama / Llamba) and the choice of layers."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import tiny_teacher

from thinkfast.convert.from_attention import (ConversionError, attention_layers, evenly_spaced, layer_pattern,
                                              student_from_teacher)
from thinkfast.runtime import UserError


def test_fractions_are_evenly_spread_and_nested():
    assert attention_layers(32, 0.5) == list(range(1, 32, 2))  # MambaInLlama's 50%: odd layers
    assert attention_layers(32, 0.25) == list(range(3, 32, 4))
    assert attention_layers(32, 0.125) == [7, 15, 23, 31]
    assert set(attention_layers(32, 0.125)) <= set(attention_layers(32, 0.25)) <= set(attention_layers(32, 0.5))
    assert layer_pattern(4, 0.5) == "MAMA"
    assert layer_pattern(4, 0.0) == "MMMM" and layer_pattern(4, 1.0) == "AAAA"
    assert evenly_spaced(30, 15) == list(range(1, 30, 2))


def test_explicit_lists_patterns_and_bad_input(tmp_path):
    assert attention_layers(4, [3, 0]) == [0, 3]
    assert attention_layers(4, "amma") == [0, 3]
    f = tmp_path / "layers.json"
    f.write_text('{"n_layers": 4, "layers": [2]}')
    assert attention_layers(4, str(f)) == [2]
    with pytest.raises(UserError, match="8 layers, but this one has 4"):
        f.write_text('{"n_layers": 8, "layers": [2]}')
        attention_layers(4, str(f))
    with pytest.raises(UserError, match="out of range"):
        attention_layers(4, [4])
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        attention_layers(4, 1.5)
    with pytest.raises(UserError, match="3 letters"):
        attention_layers(4, "AMA")


@pytest.mark.parametrize("kind", ["mamba2", "discrete"])
def test_all_attention_hybrid_equals_teacher_exactly(kind):
    teacher = tiny_teacher(n_layers=3)
    student = student_from_teacher(teacher, keep=1.0, kind=kind, seed=0)
    assert student.config.layer_pattern == "AAA"
    ids = torch.randint(0, teacher.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(student(ids).logits, teacher(ids).logits)


def test_mamba2_rows_come_from_attention_with_gqa():
    teacher = tiny_teacher()  # 4 heads, 2 kv heads, head_dim 8
    student = student_from_teacher(teacher, keep=0.5, kind="mamba2", seed=3)
    assert student.config.layer_pattern == "MA"
    attn, mx = teacher.layers[0].mixer, student.layers[0].mixer
    z, x, B, C, dt = torch.split(mx.in_proj.weight, mx.splits, dim=0)
    assert (mx.G, mx.H) == (2, 4)
    assert torch.equal(x, attn.v_proj.weight) and torch.equal(B, attn.k_proj.weight)
    assert torch.equal(C, attn.q_proj.weight) and torch.equal(mx.out_proj.weight, attn.o_proj.weight)
    dt_val = torch.nn.functional.softplus(mx.dt_bias)
    assert bool(((dt_val >= 1e-3 - 1e-7) & (dt_val <= 0.1 + 1e-7)).all())
    A = torch.exp(mx.A_log)
    assert bool(((A >= 1) & (A <= 16)).all()) and bool((mx.D == 1).all())
    # Non-mixer weights are copies.
    for name in ("embed_tokens.weight", "layers.0.mlp.up_proj.weight", "layers.0.input_norm.weight", "norm.weight"):
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    assert torch.equal(student.layers[1].mixer.q_proj.weight, teacher.layers[1].mixer.q_proj.weight)


def test_discrete_rows_repeat_kv_groups_per_head():
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, keep=0.0, kind="discrete", seed=0)
    attn, mx = teacher.layers[1].mixer, student.layers[1].mixer
    hd = attn.head_dim
    x, B, C, z, a = torch.split(mx.in_proj.weight, [mx.d_inner, mx.H * mx.N, mx.H * mx.N, mx.d_inner, mx.H], dim=0)
    k = attn.k_proj.weight.view(2, hd, -1)
    for h in range(4):  # head h reads kv group h // 2
        assert torch.equal(B[h * hd:(h + 1) * hd], k[h // 2])
    assert torch.equal(x.view(4, hd, -1)[3], attn.v_proj.weight.view(2, hd, -1)[1])
    assert torch.equal(C, attn.q_proj.weight)
    assert bool((mx.z_bias == 0).all()) and bool((mx.D == 1).all())


def test_a_wider_llamba_state_keeps_the_attention_rows_and_adds_unread_keys():
    teacher = tiny_teacher()  # head_dim 8
    narrow = student_from_teacher(teacher, keep=0.0, kind="discrete", seed=0)
    wide = student_from_teacher(teacher, keep=0.0, kind="discrete", seed=0, mamba={"d_state": 12})
    attn, mx = teacher.layers[1].mixer, wide.layers[1].mixer
    hd, N = attn.head_dim, mx.N
    assert N == 12 and mx.conv_dim == mx.d_inner + 2 * mx.H * N
    x, B, C, z, a = torch.split(mx.in_proj.weight.detach(), [mx.d_inner, mx.H * N, mx.H * N, mx.d_inner, mx.H], dim=0)
    k, q = attn.k_proj.weight.view(2, hd, -1), attn.q_proj.weight.view(4, hd, -1)
    for h in range(4):
        assert torch.equal(B[h * N:h * N + hd], k[h // 2]) and torch.equal(C[h * N:h * N + hd], q[h])
        assert bool((C[h * N + hd:(h + 1) * N] == 0).all())  # extra keys are not read at first ...
        assert float(B[h * N + hd:(h + 1) * N].abs().sum()) > 0  # ... but exist, so queries can learn them
    assert torch.equal(x, narrow.layers[1].mixer.in_proj.weight[:mx.d_inner])
    with pytest.raises(ConversionError, match="N >= head_dim"):
        student_from_teacher(teacher, 0.0, "discrete", mamba={"d_state": 4})
    with pytest.raises(ConversionError, match="N = head_dim"):  # MambaInLlama's mixer keeps N = head_dim
        student_from_teacher(teacher, 0.0, "mamba2", mamba={"d_state": 12})


def test_seeded_and_independent_of_global_rng():
    teacher = tiny_teacher()
    torch.manual_seed(123)
    a = student_from_teacher(teacher, 0.0, "mamba2", seed=7).state_dict()
    torch.manual_seed(999)
    b = student_from_teacher(teacher, 0.0, "mamba2", seed=7).state_dict()
    c = student_from_teacher(teacher, 0.0, "mamba2", seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.mixer.dt_bias"], c["layers.0.mixer.dt_bias"])


def test_mismatches_are_refused():
    teacher = tiny_teacher()
    with pytest.raises(ConversionError, match="head-count mismatch"):
        student_from_teacher(teacher, 0.0, "discrete", mamba={"n_heads": 2})
    hybrid = student_from_teacher(teacher, 0.5, "mamba2")
    with pytest.raises(ConversionError, match="cannot become attention"):
        student_from_teacher(hybrid, [0], "mamba2")
    # A stepwise schedule converts one more layer and keeps the converted one.
    pure = student_from_teacher(hybrid, 0.0, "mamba2", seed=1)
    assert pure.config.layer_pattern == "MM"
    assert torch.equal(pure.layers[0].mixer.in_proj.weight, hybrid.layers[0].mixer.in_proj.weight)


def test_random_mixer_init_keeps_everything_else():
    teacher = tiny_teacher()
    rand = student_from_teacher(teacher, 0.0, "discrete", seed=0, mixer_init="random")
    attn = student_from_teacher(teacher, 0.0, "discrete", seed=0)
    assert not torch.equal(rand.layers[0].mixer.out_proj.weight, teacher.layers[0].mixer.o_proj.weight)
    assert torch.equal(rand.layers[0].mixer.conv1d.weight, attn.layers[0].mixer.conv1d.weight)
    assert torch.equal(rand.layers[0].mlp.up_proj.weight, teacher.layers[0].mlp.up_proj.weight)


@pytest.mark.parametrize("kind", ["mamba2", "discrete"])
def test_identity_conv_init_passes_the_current_token(kind):
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, 0.0, kind, seed=0, conv_init="identity")
    mx = student.layers[0].mixer
    xbc = torch.randn(2, 7, mx.conv_dim, generator=torch.Generator().manual_seed(0))
    raw = mx.conv1d(xbc.transpose(1, 2))[..., :7].transpose(1, 2)  # the causal conv before its activation
    assert torch.equal(raw, xbc)
    default = student_from_teacher(teacher, 0.0, kind, seed=0)
    assert not torch.equal(default.layers[0].mixer.conv1d.weight, mx.conv1d.weight)
    with pytest.raises(ConversionError, match="conv_init"):
        student_from_teacher(teacher, 0.0, kind, conv_init="zeros")


def test_shifted_conv_init_gives_each_key_its_querys_window_one_token_later():
    """With the same input in B and C, B's conv output at t is C's at t - 1 (bias aside): a key
    holds the tokens before it exactly as the query a step earlier did. x and C keep the default."""
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, 0.0, "discrete", seed=0, conv_init="shifted")
    default = student_from_teacher(teacher, 0.0, "discrete", seed=0)
    mx, ref = student.layers[0].mixer, default.layers[0].mixer
    nx, nb = mx.d_inner, mx.H * mx.N
    w, w0 = mx.conv1d.weight, ref.conv1d.weight
    assert torch.equal(w[:nx], w0[:nx]) and torch.equal(w[nx + nb:], w0[nx + nb:])
    u = torch.randn(2, 9, nb, generator=torch.Generator().manual_seed(1))
    xbc = torch.cat([torch.zeros(2, 9, nx), u, u], dim=-1)
    with torch.no_grad():
        out = mx.conv1d(xbc.transpose(1, 2))[..., :9].transpose(1, 2)  # (B, T, channels), before the activation
    b_part = out[..., nx:nx + nb] - mx.conv1d.bias[nx:nx + nb]
    c_part = out[..., nx + nb:] - mx.conv1d.bias[nx + nb:]
    # B at t = C at t - 1 without C's oldest tap (which reaches t - K, beyond B's window)
    torch.testing.assert_close(b_part[:, 1:], _c_without_oldest_tap(u, w[nx + nb:, 0])[:, :-1])
    assert c_part.abs().sum() > 0
    assert not b_part[:, 0].any()  # token 0 has nothing before it
    # a mamba2 mixer whose B is grouped (fewer groups than heads) has no one-to-one B and C
    with pytest.raises(ConversionError, match="shifted"):
        student_from_teacher(teacher, 0.0, "mamba2", seed=0, conv_init="shifted")


def _c_without_oldest_tap(u: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
    """C's causal conv of u (B, T, n) without its oldest tap (taps 1..K-1 of wc (n, K))."""
    K = wc.shape[1]
    out = torch.zeros_like(u)
    for j in range(1, K):  # tap j multiplies token t - (K - 1 - j)
        lag = K - 1 - j
        out[:, lag:] += u[:, : u.shape[1] - lag] * wc[:, j]
    return out


def test_identity_conv_discrete_mixer_is_the_linear_attention_it_was_read_from():
    """With the identity conv, Llamba's mixing matrix at initialisation is attention without its
    softmax: decay(t, s) * <W_Q u_t, W_K u_s> per head (K repeated over its GQA group)."""
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, 0.0, "discrete", seed=0, conv_init="identity")
    attn, mx = teacher.layers[0].mixer, student.layers[0].mixer
    u = torch.randn(2, 6, teacher.config.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        M = mx.mixing_matrix(u)  # (b, h, t, s)
        a = torch.split(mx.in_proj(u), mx.splits, dim=-1)[2]
        log_a = -torch.nn.functional.softplus(a)  # (b, t, h)
        hd = attn.head_dim
        q = attn.q_proj(u).unflatten(-1, (attn.n_heads, hd))
        k = attn.k_proj(u).unflatten(-1, (attn.n_kv_heads, hd)).repeat_interleave(attn.n_heads // attn.n_kv_heads, 2)
        cum = log_a.cumsum(1).transpose(1, 2)  # (b, h, t)
        decay = (cum[..., :, None] - cum[..., None, :]).exp().tril()
        expect = decay * torch.einsum("bthn,bshn->bhts", q, k)
    torch.testing.assert_close(M, expect, rtol=1e-5, atol=1e-6)
