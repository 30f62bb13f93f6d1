"""The 'cdf' sampler: it draws from the distribution the reference filter leaves (chi-square on a
small vocabulary, a fixed set of keys), it depends only on a row's own logits, key and step, and
the engine's exactness properties hold with it."""

import pytest
import torch

from thinkfast.config import ModelConfig
from thinkfast.inference import engine
from thinkfast.inference.engine import SamplingParams, filter_logits, generate, gumbel_noise, sample_cdf
from thinkfast.models.lm import LanguageModel

V, N = 12, 20000
LOGITS = torch.tensor([2.0, 1.5, 1.4, 0.3, 0.0, -0.2, -0.5, -1.0, -1.5, -2.0, -3.0, 0.9])
SETTINGS = [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.7), (1.0, 6, 0.8), (0.8, 0, 0.95)]


def _chi2_pvalue(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=V).double()
    assert counts[probs == 0].sum() == 0  # nothing outside the support
    support = probs > 0
    expected = probs[support].double() * len(tokens)
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    # chi-square survival function: the regularised upper incomplete gamma Q(df / 2, stat / 2)
    df = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(float(stat) / 2, dtype=torch.float64)))


@pytest.mark.parametrize("candidates", [3, 256])  # 3: the nucleus is wider, the full-sort fallback
@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_cdf_sampler_draws_the_filtered_distribution(monkeypatch, candidates, temperature, top_k, top_p):
    monkeypatch.setattr(engine, "NUCLEUS_CANDIDATES", candidates)
    probs = filter_logits(LOGITS[None], temperature, top_k, top_p).softmax(-1)[0]
    keys = torch.arange(N, dtype=torch.int64) * 7 + 3
    toks = sample_cdf(LOGITS.expand(N, V), temperature, top_k, top_p, keys, 5)
    assert _chi2_pvalue(toks, probs) > 1e-4
    # the reference sampler passes the same check (the test is not lenient towards one of them)
    gum = (filter_logits(LOGITS.expand(N, V), temperature, top_k, top_p) + gumbel_noise(keys, 5, V)).argmax(-1)
    assert _chi2_pvalue(gum, probs) > 1e-4


def test_cdf_sampler_depends_only_on_the_row():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=g) * 3
    keys = torch.tensor([5, 9, 5, 1, 2, 3])
    steps = torch.tensor([0, 4, 0, 2, 2, 7])
    for k, p in [(0, 1.0), (20, 1.0), (0, 0.9), (0, 0.999), (30, 0.5)]:
        together = sample_cdf(logits, 1.0, k, p, keys, steps)
        alone = torch.cat([sample_cdf(logits[i:i + 1], 1.0, k, p, keys[i:i + 1], steps[i:i + 1]) for i in range(6)])
        assert torch.equal(together, alone)
        allowed = torch.isfinite(filter_logits(logits, 1.0, k, p))
        assert allowed.gather(-1, together[:, None]).all()
    same = sample_cdf(logits[[0, 0]], 1.0, 0, 1.0, keys[[0, 2]], steps[[0, 2]])
    assert same[0] == same[1]


def test_engine_with_the_cdf_sampler_keeps_its_exactness():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name("tiny", layer_pattern="AMAM")).eval()
    prompts = [[1, 2, 3, 4, 5], [9, 8], [7, 7, 7]]
    sp = dict(n=3, seed=4, top_p=0.9, max_new_tokens=10, eos_token_ids=list(range(0, 256, 17)), sampler="cdf")
    ref = generate(model, prompts, SamplingParams(**sp), batch_size=1)
    cb = generate(model, prompts, SamplingParams(continuous=True, max_batch_rows=4, **sp))
    assert [[s.token_ids for s in o.samples] for o in ref] == [[s.token_ids for s in o.samples] for o in cb]
    alone = generate(model, [prompts[1]], SamplingParams(**dict(sp, n=1, seed=5)))[0].samples[0].token_ids
    assert alone == ref[1].samples[1].token_ids
    assert SamplingParams().sampler == "gumbel"  # the reference stays the default
    with pytest.raises(ValueError, match="sampler"):
        SamplingParams(sampler="nope")
