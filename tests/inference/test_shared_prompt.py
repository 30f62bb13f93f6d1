"""Shared prompt state: the n samples of a prompt read one copy of its KV cache, with the same
attention (to float rounding) and the same samples as the repeated cache."""

import pytest
import torch

from thinkfast.config import ModelConfig
from thinkfast.inference.engine import SamplingParams, generate
from thinkfast.models.layers import sdpa_gqa, shared_prompt_decode_attention
from thinkfast.models.lm import LanguageModel

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [5, 5, 5, 5, 11], [3] * 12, [7, 1], [40, 41, 42]]


def _model(pattern, kind="mamba2"):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.from_name("tiny", layer_pattern=pattern, mamba=dict(kind=kind))).eval()


def test_merged_attention_equals_attention_over_the_concatenated_keys():
    g = torch.Generator().manual_seed(0)
    Q, n, G, rep, hd, Lp, S = 3, 4, 2, 3, 8, 10, 5
    kp, vp = torch.randn(Q, G, Lp, hd, generator=g), torch.randn(Q, G, Lp, hd, generator=g)
    pmask = torch.ones(Q, Lp, dtype=torch.bool)
    pmask[1, :4] = False  # left padding of a shorter prompt
    pmask[2] = False  # an empty entry: no row reads it
    # five rows: (entry, sample) pairs in any order, and one finished row reading no prompt
    pairs = [(1, 3), (0, 0), (0, 2), (1, 0), None]
    flat = torch.tensor([Q * n if p is None else p[0] * n + p[1] for p in pairs])
    B = len(pairs)
    q = torch.randn(B, G * rep, 1, hd, generator=g)
    k, v = torch.randn(B, G, S, hd, generator=g), torch.randn(B, G, S, hd, generator=g)
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
    mask[0, ..., 3:] = False  # a row with fewer own tokens
    got = shared_prompt_decode_attention(q, kp, vp, pmask, flat, n, k, v, mask)
    for b, p in enumerate(pairs):
        if p is None:
            kk, vv, mm = k[b:b + 1], v[b:b + 1], mask[b:b + 1]
        else:
            kk = torch.cat([kp[p[0]][None], k[b:b + 1]], 2)
            vv = torch.cat([vp[p[0]][None], v[b:b + 1]], 2)
            mm = torch.cat([pmask[p[0]][None, None, None], mask[b:b + 1]], -1)
        ref = sdpa_gqa(q[b:b + 1], kk, vv, mm, causal=False)
        torch.testing.assert_close(got[b:b + 1], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pattern", ["AAAA", "AMAM"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prompt_samples_equal_the_repeated_cache(pattern, temperature):
    model = _model(pattern)
    sp = dict(n=3, seed=2, temperature=temperature, max_new_tokens=12, eos_token_ids=list(range(0, 256, 11)))
    ref = generate(model, PROMPTS, SamplingParams(**sp), batch_size=2)
    for slots in ((2, 7) if pattern == "AMAM" else (5,)):  # a prompt's samples split; entries reused
        got = generate(model, PROMPTS, SamplingParams(continuous=True, shared_prompt=True, max_batch_rows=slots, **sp))
        for o, r in zip(got, ref):
            for a, b in zip(o.samples, r.samples):
                assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)


def test_prompts_of_one_length_need_no_prompt_mask():
    model = _model("AAAA")
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    sp = dict(n=2, seed=0, temperature=1.0, max_new_tokens=6, eos_token_ids=[5, 9, 13])
    ref = generate(model, prompts, SamplingParams(**sp))
    got = generate(model, prompts, SamplingParams(continuous=True, shared_prompt=True, max_batch_rows=3, **sp))
    assert [[s.token_ids for s in o.samples] for o in got] == [[s.token_ids for s in o.samples] for o in ref]


def test_shared_prompt_logits_match_the_repeated_cache_step_by_step():
    model = _model("AMAM")
    prompt = [[4, 5, 6, 7, 8, 9], [1, 2, 3]]
    from thinkfast.inference.padding import left_pad

    ids, m = left_pad(prompt, 0, mask_dtype=torch.bool)
    with torch.no_grad():
        pre = model.allocate_cache(2, ids.shape[1])
        first = model(ids, attention_mask=m, cache=pre, logits_to_keep=1).logits[:, -1]
        rep = model.allocate_cache(2, ids.shape[1] + 4)
        model(ids, attention_mask=m, cache=rep)
        rep.select(torch.tensor([0, 0, 1, 1]))
        sh = model.allocate_cache(4, 4).to_slots().share_prompts(2, ids.shape[1], entries=1)  # grows to 2
        e0, e1 = sh.prompts.load(pre, 0), sh.prompts.load(pre, 1)
        sh.load_rows_shared([0, 1, 2, 3], pre, [0, 0, 1, 1], [e0, e0, e1, e1], [0, 1, 0, 1])
        tok = first.argmax(-1).repeat_interleave(2)
        for _ in range(4):
            a = model(tok[:, None], cache=rep).logits[:, -1]
            b = model(tok[:, None], cache=sh).logits[:, -1]
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            tok = a.argmax(-1)
    assert sh.nbytes() < rep.nbytes()


def test_shared_prompt_needs_continuous():
    with pytest.raises(ValueError, match="continuous"):
        SamplingParams(shared_prompt=True)
