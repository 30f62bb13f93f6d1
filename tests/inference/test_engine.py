"""The engine, with tiny random models and a mock model with uniform logits."""

import pytest
import torch

from thinkfast.config import ModelConfig
from thinkfast.inference.engine import ContextLimitWarning, SamplingParams, filter_logits, generate, gumbel_noise
from thinkfast.models.lm import LanguageModel

PATTERNS = [("AAAA", "mamba2"), ("MMMM", "mamba2"), ("AMAM", "mamba2"), ("MMMM", "discrete")]
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [5, 5, 5, 5, 11]]


def _model(pattern, kind, **over):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.from_name("tiny", layer_pattern=pattern, mamba=dict(kind=kind), **over)).eval()


def _ids(outs):
    return [[s.token_ids for s in o.samples] for o in outs]


@pytest.mark.parametrize("pattern,kind", PATTERNS)
def test_left_padded_batch_gives_same_greedy_output_as_each_row_alone(pattern, kind):
    model = _model(pattern, kind)
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    batched = _ids(generate(model, PROMPTS, sp))
    alone = [_ids(generate(model, [p], sp))[0] for p in PROMPTS]
    assert batched == alone


@pytest.mark.parametrize("pattern,kind", PATTERNS)
def test_n_samples_from_one_prefill_equal_separate_runs(pattern, kind):
    model = _model(pattern, kind)
    sp = dict(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=10, eos_token_ids=[3])
    together = _ids(generate(model, PROMPTS, SamplingParams(n=4, seed=11, **sp)))
    for i, p in enumerate(PROMPTS):
        for j in range(4):
            alone = _ids(generate(model, [p], SamplingParams(n=1, seed=11 + j, **sp)))[0][0]
            assert together[i][j] == alone
    assert len({tuple(s) for s in together[0]}) > 1  # the n samples differ


def test_seeded_runs_reproduce_and_seeds_differ():
    model = _model("AMAM", "mamba2")
    a = _ids(generate(model, PROMPTS, SamplingParams(n=3, seed=5, max_new_tokens=8)))
    b = _ids(generate(model, PROMPTS, SamplingParams(n=3, seed=5, max_new_tokens=8)))
    c = _ids(generate(model, PROMPTS, SamplingParams(n=3, seed=6, max_new_tokens=8)))
    assert a == b and a != c


def test_compaction_does_not_change_results():
    model = _model("AMAM", "mamba2")
    sp = dict(n=4, seed=1, max_new_tokens=20, eos_token_ids=list(range(0, 256, 9)))
    eager = _ids(generate(model, PROMPTS, SamplingParams(compact_fraction=0.01, **sp)))
    lazy = _ids(generate(model, PROMPTS, SamplingParams(compact_fraction=2.0, **sp)))
    assert eager == lazy
    assert any(len(s) < 20 for o in eager for s in o)


def test_logprobs_match_the_model():
    model = _model("MMMM", "mamba2")
    out = generate(model, [PROMPTS[0]], SamplingParams(n=1, seed=0, max_new_tokens=6))[0].samples[0]
    seq = torch.tensor([PROMPTS[0] + out.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(seq).logits[0, len(PROMPTS[0]) - 1:-1], -1)
    ref = lp.gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(out.logprobs), ref, atol=1e-4, rtol=1e-4)
    assert out.finish_reason == "length" and len(out.token_ids) == 6


class _Uniform(torch.nn.Module):
    """Mock model: uniform logits; exposes just what the engine uses."""

    def __init__(self, vocab=16):
        super().__init__()
        self.inner = _model("AAAA", "mamba2")
        self.config = self.inner.config
        self.vocab = vocab

    device = property(lambda self: torch.device("cpu"))

    def allocate_cache(self, *a, **k):
        return self.inner.allocate_cache(*a, **k)

    def forward(self, ids, attention_mask=None, cache=None, logits_to_keep=0):
        out = self.inner(ids, attention_mask=attention_mask, cache=cache, logits_to_keep=logits_to_keep)
        out.logits = torch.zeros(*out.logits.shape[:2], self.vocab)
        return out


def test_uniform_logits_sample_uniformly_and_respect_top_k():
    model = _Uniform(vocab=16)
    outs = generate(model, [[1, 2]], SamplingParams(n=64, seed=0, max_new_tokens=20))
    toks = torch.tensor([t for s in outs[0].samples for t in s.token_ids])
    counts = torch.bincount(toks, minlength=16).float()
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()
    k = generate(model, [[1, 2]], SamplingParams(n=8, seed=0, top_k=1, max_new_tokens=5))
    assert len({tuple(s.token_ids) for s in k[0].samples}) == 1  # one token survives, even among ties


def test_gumbel_noise_is_a_function_of_key_step_token():
    keys = torch.tensor([1, 2, 1])
    g = gumbel_noise(keys, 3, 50)
    assert torch.equal(g[0], g[2]) and not torch.equal(g[0], g[1])
    assert not torch.equal(g, gumbel_noise(keys, 4, 50))
    big = gumbel_noise(torch.arange(200), 0, 500)
    assert abs(big.mean().item() - 0.5772) < 0.02  # Euler-Mascheroni: the Gumbel mean


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    z = filter_logits(logits, 1.0, 0, 0.8)
    assert torch.isfinite(z).tolist() == [[True, True, False, False]]
    z = filter_logits(logits, 1.0, 0, 0.81)
    assert torch.isfinite(z).tolist() == [[True, True, True, False]]


def test_prompt_over_context_is_an_error_and_generation_stops_at_context():
    model = _model("AMAM", "mamba2", max_seq_len=16)
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(model, [list(range(17))], SamplingParams(max_new_tokens=2))
    with pytest.warns(ContextLimitWarning, match="at most 6 new tokens"):
        out = generate(model, [list(range(10))], SamplingParams(max_new_tokens=50))[0]
    assert len(out.samples[0].token_ids) == 6 and out.samples[0].finish_reason == "length"
    assert out.samples[0].hit_context_limit


def test_stop_strings_and_eos_with_a_tokenizer():
    from thinkfast.data.tokenizer import build_tokenizer

    tok = build_tokenizer(texts=["Question: a b c . Answer: x y z #### 1 2 \n\n"])
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name("tiny", vocab_size=len(tok), layer_pattern="AMAM")).eval()
    stop_tok = tok.convert_tokens_to_ids("\n\n")
    # Make the stop token overwhelmingly likely after a few steps: bias the LM head towards it.
    with torch.no_grad():
        model.lm_head.weight[stop_tok] += 0.3
    sp = SamplingParams(n=4, seed=0, temperature=1.0, max_new_tokens=40, stop=["\n\n"], eos_token_ids=[])
    outs = generate(model, ["Question: a b c . Answer:"], sp, tokenizer=tok)
    for s in outs[0].samples:
        assert "\n\n" not in s.text
        if s.finish_reason == "stop":
            assert s.token_ids[-1] == stop_tok
    assert any(s.finish_reason == "stop" for s in outs[0].samples)
    eos = generate(model, ["Question: a b c . Answer:"],
                   SamplingParams(n=4, seed=0, max_new_tokens=40, eos_token_ids=[stop_tok]), tokenizer=tok)
    for a, b in zip(outs[0].samples, eos[0].samples):
        assert a.token_ids == b.token_ids  # stopping on the string == stopping on its only token
        assert b.finish_reason == ("eos" if a.finish_reason == "stop" else "length")
