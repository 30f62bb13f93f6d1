import pytest
import torch

from thinkfast.config import ConfigError, ModelConfig
from thinkfast.models.lm import LanguageModel

KINDS = [("AAAA", "mamba2"), ("MMMM", "mamba2"), ("AMMA", "mamba2"), ("MMMM", "discrete"), ("MAMA", "discrete"),
         ("MMMM", "discrete+bias")]


def _model(pattern, kind, seed=0, **over):
    """kind "discrete+bias": the discrete mixer with mamba.decay_bias."""
    torch.manual_seed(seed)
    mamba = dict(kind="discrete", decay_bias=[2, 64]) if kind == "discrete+bias" else dict(kind=kind)
    cfg = ModelConfig.from_name("tiny", layer_pattern=pattern, mamba=dict(mamba, chunk_size=8), **over)
    return LanguageModel(cfg).eval()


@pytest.mark.parametrize("prefill", [1, 7])  # 1: the conv window starts part empty
@pytest.mark.parametrize("pattern,kind", KINDS)
def test_token_by_token_decoding_matches_parallel_forward(pattern, kind, prefill):
    model = _model(pattern, kind)
    ids = torch.randint(0, 256, (3, 29), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.allocate_cache(3, 40)
        steps = [model(ids[:, :prefill], cache=cache).logits]  # a prefill, then one token at a time
        steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(prefill, 29)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pattern,kind", KINDS)
def test_left_padding_does_not_change_real_tokens(pattern, kind):
    model = _model(pattern, kind)
    g = torch.Generator().manual_seed(1)
    short = torch.randint(0, 256, (1, 9), generator=g)
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), short], 1)
    mask = torch.cat([torch.zeros(1, 6), torch.ones(1, 9)], 1).long()
    with torch.no_grad():
        alone = model(short).logits
        batched = model(padded, attention_mask=mask).logits[:, 6:]
        cache = model.allocate_cache(1, 20)
        model(padded, attention_mask=mask, cache=cache)
        nxt = torch.tensor([[5]])
        step = model(nxt, cache=cache).logits
        ref = model(torch.cat([short, nxt], 1)).logits[:, -1:]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pattern,kind", [("AMAM", "mamba2"), ("MMMM", "discrete"), ("MMMM", "discrete+bias")])
def test_bf16_decoding_tracks_fp32(pattern, kind):
    model = _model(pattern, kind)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
        m16 = model.to(torch.bfloat16)
        cache = m16.allocate_cache(2, 16)
        out = torch.cat([m16(ids[:, :8], cache=cache).logits]
                        + [m16(ids[:, t:t + 1], cache=cache).logits for t in range(8, 16)], 1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_one_class_for_every_kind():
    kinds = {_model(p, k).config.kind for p, k in KINDS}
    assert kinds == {"llama", "mamba", "hybrid"}
    m = _model("AMMA", "mamba2")
    assert m.mamba_layers == [1, 2]


def test_mamba_state_does_not_grow_with_context():
    model = _model("MMMM", "mamba2")
    short, long = model.allocate_cache(2, 16), model.allocate_cache(2, 512)
    assert short.nbytes() == long.nbytes()
    attn = _model("AAAA", "mamba2")
    assert attn.allocate_cache(2, 512).nbytes() == 32 * attn.allocate_cache(2, 16).nbytes()


def test_prompt_longer_than_context_is_an_error():
    model = _model("AMAM", "mamba2", max_seq_len=16)
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_unknown_and_bad_config_keys_are_errors():
    with pytest.raises(ConfigError, match="unknown config key"):
        ModelConfig.from_dict({"d_model": 64, "n_layer": 3})
    with pytest.raises(ConfigError, match="unknown config key"):
        ModelConfig.from_dict({"mamba": {"kind": "mamba2", "dstate": 4}})
    with pytest.raises(ConfigError, match="layer_pattern"):
        ModelConfig.from_name("tiny", layer_pattern="AMX")
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig.from_name("tiny", n_kv_heads=3)


def test_decay_bias_sets_each_heads_memory_at_init():
    from thinkfast.models.mamba2 import decay_bias_init

    b = decay_bias_init(4, 2.0, 128.0)
    taus = 1.0 / torch.nn.functional.softplus(b.double())
    torch.testing.assert_close(taus, torch.tensor([2.0, 8.0, 32.0, 128.0], dtype=torch.float64), rtol=1e-5, atol=0)
    model = _model("MMMM", "discrete+bias")
    mixer = model.layers[0].mixer
    assert mixer.a_bias.shape == (mixer.H,) and mixer.a_bias.requires_grad
    # a_t = 0: alpha = exp(-softplus(a_bias)) = exp(-1/tau); the plain Llamba mixer has 0.5 everywhere
    xbc = torch.zeros(1, 1, mixer.conv_dim)
    _, log_a, *_ = mixer._heads(xbc, torch.zeros(1, 1, mixer.H))
    taus = decay_bias_init(mixer.H, 2.0, 64.0)
    torch.testing.assert_close(log_a[0, 0], -torch.nn.functional.softplus(taus))
    plain = _model("MMMM", "discrete").layers[0].mixer
    assert plain.a_bias is None
    torch.testing.assert_close(plain._heads(xbc, torch.zeros(1, 1, plain.H))[1].exp(), torch.full((1, 1, plain.H), 0.5))


@pytest.mark.parametrize("bad", [[2], [0, 4], [8, 2], "2,8"])
def test_bad_decay_bias_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="decay_bias"):
        ModelConfig.from_name("tiny", layer_pattern="MM", mamba=dict(kind="discrete", decay_bias=bad))
    with pytest.raises(ConfigError, match="discrete mixer only"):
        ModelConfig.from_name("tiny", layer_pattern="MM", mamba=dict(kind="mamba2", decay_bias=[2, 8]))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("H,G", [(4, 2), (6, 2), (3, 3), (8, 1)])
def test_grouped_decode_attention_matches_sdpa_with_repeated_kv(H, G, dtype, tol):
    from thinkfast.models.layers import grouped_decode_attention, repeat_heads

    g = torch.Generator().manual_seed(H * 10 + G)
    B, S, hd = 3, 11, 16
    cache_k = torch.randn(B, G, S + 5, hd, generator=g).to(dtype)
    cache_v = torch.randn(B, G, S + 5, hd, generator=g).to(dtype)
    k, v = cache_k[:, :, :S], cache_v[:, :, :S]  # a view of a larger cache, as in decoding
    q = torch.randn(B, H, 1, hd, generator=g).to(dtype)
    mask = torch.rand(B, 1, 1, S, generator=g) > 0.3
    mask[..., -1] = True  # the token itself is always visible
    for m in (None, mask):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.float(), repeat_heads(k, H // G).float(), repeat_heads(v, H // G).float(), attn_mask=m)
        out = grouped_decode_attention(q, k, v, m)
        assert out.shape == (B, H, 1, hd) and out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
