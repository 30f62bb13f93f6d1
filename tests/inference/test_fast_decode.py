"""The inference fast path (``prepare_for_inference`` + ``forward(fast=True)``, the engine's
``SamplingParams.fast``) against the reference path: same tokens, same logits, no extra weights."""

import copy

import pytest
import torch

from thinkfast.config import ModelConfig
from thinkfast.inference.engine import SamplingParams, generate
from thinkfast.models.layers import apply_rope, apply_rope_fast, signed_rope
from thinkfast.models.lm import LanguageModel

# Llama teacher, Llamba (pure discrete Mamba), hybrids with both mixer kinds
PATTERNS = [("AAAA", "mamba2"), ("MMMM", "discrete"), ("AMAM", "mamba2"), ("MAMA", "discrete")]
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [5, 5, 5, 5, 11], [3] * 12, [7, 1], [40, 41, 42]]


def _pair(pattern, kind, **over):
    """(reference model, packed copy of it)."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", layer_pattern=pattern, mamba=dict(kind=kind), **over)
    ref = LanguageModel(cfg).eval()
    return ref, copy.deepcopy(ref).prepare_for_inference()


def _tokens(model, params, **kw):
    outs = generate(model, PROMPTS, params, **kw)
    return [[(s.token_ids, s.finish_reason) for s in o.samples] for o in outs], outs


def test_rope_fast_is_the_reference_rope():
    model = LanguageModel(ModelConfig.from_name("tiny"))
    x = torch.randn(2, 5, 3, model.config.head_dim)  # (B, T, heads, hd)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    cos, sin = model.rotary(pos, torch.float32)  # (B, 1, T, hd)
    ref = apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2)
    assert torch.equal(apply_rope_fast(x, *signed_rope(cos, sin)), ref)


@pytest.mark.parametrize("pattern,kind", PATTERNS)
def test_packing_moves_the_weights_and_keeps_the_state_dict(pattern, kind):
    ref, packed = _pair(pattern, kind)
    n_params = ref.num_parameters()
    storages = {p.untyped_storage().data_ptr() for p in packed.parameters()}
    assert packed.num_parameters() == n_params  # no parameter kept twice
    assert len(storages) == len(list(packed.parameters()))  # each its own storage: no hidden copy
    if "A" in pattern:
        assert all(not hasattr(b.mixer, "q_proj") and type(b.mixer.qkv_proj) is torch.nn.Linear
                   for b in packed.layers if b.mixer.__class__.__name__ == "Attention")
    assert all(type(b.mlp.gate_up_proj) is torch.nn.Linear and not hasattr(b.mlp, "up_proj") for b in packed.layers)
    sd_ref, sd = ref.state_dict(), packed.state_dict()
    assert sorted(sd) == sorted(sd_ref)
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    # a checkpoint of the unpacked names loads into a packed model
    other, packed2 = _pair(pattern, kind)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    packed2.load_state_dict(other.state_dict())
    assert all(torch.equal(packed2.state_dict()[k], v) for k, v in other.state_dict().items())
    assert packed.prepare_for_inference().num_parameters() == n_params  # idempotent


@pytest.mark.parametrize("pattern,kind", PATTERNS)
def test_fast_logits_equal_the_reference_prefill_and_decode(pattern, kind):
    ref, packed = _pair(pattern, kind)
    ids = torch.randint(4, 256, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, :4] = False  # a left-padded row: decode steps take the masked attention
    with torch.inference_mode():
        c_ref, c_fast = ref.allocate_cache(3, 20), packed.allocate_cache(3, 20)
        a = ref(ids, attention_mask=mask, cache=c_ref).logits
        b = packed(ids, attention_mask=mask, cache=c_fast, fast=True).logits
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
        tok = a[:, -1].argmax(-1, keepdim=True)
        for _ in range(5):
            a = ref(tok, cache=c_ref).logits
            b = packed(tok, cache=c_fast, fast=True).logits
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
            tok = a[:, -1].argmax(-1, keepdim=True)


@pytest.mark.parametrize("pattern,kind", PATTERNS)
@pytest.mark.parametrize("mode", ["batch", "continuous", "shared"])
def test_fast_engine_gives_the_reference_tokens(pattern, kind, mode):
    ref, packed = _pair(pattern, kind)
    extra = {"batch": {}, "continuous": dict(continuous=True, max_batch_rows=5),
             "shared": dict(continuous=True, max_batch_rows=5, shared_prompt=True)}[mode]
    for temperature in (0.0, 1.0):
        sp = dict(n=3, seed=7, temperature=temperature, top_k=40, max_new_tokens=12,
                  eos_token_ids=list(range(0, 256, 13)), **extra)
        want, want_outs = _tokens(ref, SamplingParams(fast=False, **sp), batch_size=2)
        got, got_outs = _tokens(packed, SamplingParams(fast=True, **sp), batch_size=2)
        assert got == want, temperature
        unpacked, _ = _tokens(ref, SamplingParams(fast=True, **sp), batch_size=2)  # fast ops, separate projections
        assert unpacked == want, temperature
        for o, r in zip(got_outs, want_outs):
            for a, b in zip(o.samples, r.samples):
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-6, rtol=1e-6)
    if mode == "batch":
        assert len({len(s[0]) for o in want for s in o}) > 2  # rows ended at different steps


def test_reference_is_the_default_and_fast_opt_in():
    assert SamplingParams().fast is False
    assert SamplingParams(fast=True).fast is True


def test_packed_fast_llama_matches_transformers_step_by_step():
    from transformers import LlamaConfig, LlamaForCausalLM

    from thinkfast.convert.llama import to_hf_state_dict

    torch.manual_seed(0)
    ref, packed = _pair("AAAA", "mamba2", attention_bias=True, mlp_bias=True)
    c = packed.config
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=c.tie_embeddings, attention_bias=True, mlp_bias=True)).eval()
    with torch.no_grad():
        for p in packed.parameters():  # biases start at zero: make them matter
            p.add_(torch.randn_like(p) * 0.02)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(packed), strict=False)  # the packed model exports
    assert not unexpected and all("rotary" in k or k == "lm_head.weight" for k in missing)
    hf.tie_weights()
    ids = torch.randint(4, c.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        cache = packed.allocate_cache(2, 16)
        ours = [packed(ids[:, :6], cache=cache, fast=True).logits]
        ours += [packed(ids[:, t:t + 1], cache=cache, fast=True).logits for t in range(6, 10)]
        want = hf(ids).logits
    torch.testing.assert_close(torch.cat(ours, 1), want, atol=1e-5, rtol=1e-4)


def test_fast_is_an_engine_option_of_the_sampling_backend():
    from thinkfast.eval.sampling import SampleSettings
    from thinkfast.inference.backends import ENGINE_OPTIONS, engine_generate_fn

    assert "fast" in ENGINE_OPTIONS
    ref, packed = _pair("AMAM", "mamba2")
    settings = SampleSettings(task="gsm8k", model="tiny", n=3, temperature=1.0, max_new_tokens=8)
    want = engine_generate_fn(ref, None, settings, ())(PROMPTS, 5)
    got = engine_generate_fn(packed, None, settings, (), {"fast": True})(PROMPTS, 5)
    assert [[s.token_ids for s in o.samples] for o in got] == [[s.token_ids for s in o.samples] for o in want]
