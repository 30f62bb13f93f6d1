"""Prompts near the context limit: the cut is warned about, recorded per sample, and never
spreads to the other prompts of a batch."""

import warnings

import pytest
import torch

from thinkfast.config import ModelConfig
from thinkfast.inference.engine import ContextLimitWarning, SamplingParams, generate
from thinkfast.models.lm import LanguageModel

CTX = 32


def _model(pattern="AMAM"):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.from_name("tiny", layer_pattern=pattern, max_seq_len=CTX)).eval()


def _prompt(length, start=1):
    return [(start + k) % 200 + 1 for k in range(length)]


def test_prompt_near_the_context_is_cut_with_a_warning_and_marked():
    # the 1024-token case scaled down: 21 prompt tokens + 50 asked on a 32-token model
    with pytest.warns(ContextLimitWarning, match=r"1 of 1 prompts leave less than max_new_tokens=50 in the "
                                                  r"model's 32-token context: they get at most 11 new tokens, "
                                                  r"up to 39 fewer than asked"):
        out = generate(_model(), [_prompt(21)], SamplingParams(n=2, max_new_tokens=50))[0]
    for s in out.samples:
        assert len(s.token_ids) == 11 and s.finish_reason == "length" and s.hit_context_limit


def test_one_warning_per_call_counting_the_prompts_and_the_shortfall():
    prompts = [_prompt(4), _prompt(30, 5), _prompt(25, 9)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = generate(_model(), prompts, SamplingParams(n=2, max_new_tokens=10))
    msgs = [str(w.message) for w in caught if issubclass(w.category, ContextLimitWarning)]
    assert len(msgs) == 1 and "2 of 3 prompts" in msgs[0] and "at most 2 to 7 new tokens, up to 8 fewer" in msgs[0]
    assert [[len(s.token_ids) for s in o.samples] for o in outs] == [[10, 10], [2, 2], [7, 7]]
    # the short prompt ran out of max_new_tokens, not of context
    assert [[s.hit_context_limit for s in o.samples] for o in outs] == [[False, False], [True, True], [True, True]]


def test_no_warning_when_every_prompt_has_room():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLimitWarning)
        out = generate(_model(), [_prompt(22)], SamplingParams(max_new_tokens=10))[0]
    assert len(out.samples[0].token_ids) == 10 and not out.samples[0].hit_context_limit


@pytest.mark.parametrize("pattern", ["AMAM", "MMMM"])
def test_a_long_prompt_does_not_cut_the_prompts_batched_with_it(pattern):
    model = _model(pattern)
    short, long_ = _prompt(5), _prompt(28, 3)
    sp = SamplingParams(n=3, seed=4, max_new_tokens=12)
    with pytest.warns(ContextLimitWarning):
        together = generate(model, [short, long_, short[::-1]], sp)
    alone = [generate(model, [short], sp)[0], generate(model, [short[::-1]], sp)[0]]
    for got, ref in zip([together[0], together[2]], alone):
        assert [s.token_ids for s in got.samples] == [s.token_ids for s in ref.samples]
        assert all(len(s.token_ids) == 12 for s in got.samples)
    assert all(len(s.token_ids) == 4 and s.hit_context_limit for s in together[1].samples)


def test_prompt_that_fills_the_context_is_an_error():
    with pytest.raises(ValueError, match=r"prompt of 32 tokens fills the model's context \(32\): no room"):
        generate(_model(), [_prompt(32)], SamplingParams(max_new_tokens=5))
