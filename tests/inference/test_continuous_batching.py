"""Continuous batching gives every sample the tokens of the reference path.

The engine's noise is keyed on (sample, token index), so a sample cannot depend on the rows
beside it; with fixed seeds the refilling path must give the same tokens, finish reasons and
log-probabilities as the reference path, whatever the number of slots (fewer than one prompt's
samples, a prompt's samples split over refills, all rows at once)."""

import pytest
import torch

from thinkfast.config import ModelConfig
from thinkfast.inference.engine import SamplingParams, generate
from thinkfast.models.cache import InferenceCache
from thinkfast.models.lm import LanguageModel

PATTERNS = [("AAAA", "mamba2"), ("MMMM", "mamba2"), ("AMAM", "mamba2"), ("MMMM", "discrete")]
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [5, 5, 5, 5, 11], [3] * 12, [7, 1], [40, 41, 42]]


def _model(pattern, kind, **over):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.from_name("tiny", layer_pattern=pattern, mamba=dict(kind=kind), **over)).eval()


def _run(model, prompts, tok=None, batch_size=None, **kw):
    outs = generate(model, prompts, SamplingParams(**kw), tokenizer=tok, batch_size=batch_size)
    return [[(s.token_ids, s.finish_reason, s.hit_context_limit) for s in o.samples] for o in outs], outs


@pytest.mark.parametrize("pattern,kind", PATTERNS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_refilling_gives_the_reference_samples(pattern, kind, temperature):
    model = _model(pattern, kind)
    # EOS on 1 token in 13 and a short max_new_tokens: chains of many lengths, so slots free up
    sp = dict(n=3, seed=7, temperature=temperature, top_p=0.9, top_k=40, max_new_tokens=14,
              eos_token_ids=list(range(0, 256, 13)))
    ref, ref_outs = _run(model, PROMPTS, batch_size=2, **sp)
    for slots in ((2, 7) if pattern == "AMAM" else (5,)):  # fewer than n, a prompt's samples split, ...
        got, outs = _run(model, PROMPTS, continuous=True, max_batch_rows=slots, **sp)
        assert got == ref, slots
        for o, r in zip(outs, ref_outs):
            for a, b in zip(o.samples, r.samples):
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
    if temperature:  # the chains differ in length, so rows finish at different steps
        assert len({len(s[0]) for o in ref for s in o}) > 2
        assert any(len({tuple(s[0]) for s in o}) > 1 for o in ref)


def test_stop_strings_and_eos_with_a_tokenizer_refilling():
    from thinkfast.data.tokenizer import build_tokenizer

    tok = build_tokenizer(texts=["Question: a b c . Answer: x y z #### 1 2 \n\n"])
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name("tiny", vocab_size=len(tok), layer_pattern="AMAM")).eval()
    with torch.no_grad():
        model.lm_head.weight[tok.convert_tokens_to_ids("\n\n")] += 0.3
    prompts = ["Question: a b c . Answer:", "Question: x", "Answer: y z"]
    sp = dict(n=4, seed=3, temperature=1.0, max_new_tokens=30, stop=["\n\n", "####"])
    ref, ref_outs = _run(model, prompts, tok, **sp)
    got, outs = _run(model, prompts, tok, continuous=True, max_batch_rows=3, **sp)
    assert got == ref
    assert [[s.text for s in o.samples] for o in outs] == [[s.text for s in o.samples] for o in ref_outs]
    assert "stop" in {s[1] for o in ref for s in o} and len({len(s[0]) for o in ref for s in o}) > 2


def test_prompts_near_the_context_limit_refilling():
    model = _model("AMAM", "mamba2", max_seq_len=32)
    prompts = [list(range(1, 5)), list(range(1, 29)), list(range(3, 27)), list(range(2, 8))]
    sp = dict(n=2, seed=1, max_new_tokens=10)
    with pytest.warns(UserWarning):
        ref, _ = _run(model, prompts, **sp)
    with pytest.warns(UserWarning):
        got, _ = _run(model, prompts, continuous=True, max_batch_rows=3, **sp)
    assert got == ref
    assert any(s[2] for o in ref for s in o)


def test_timing_counts_the_whole_call():
    model = _model("AMAM", "mamba2")
    _, outs = _run(model, PROMPTS, n=2, seed=0, max_new_tokens=5, continuous=True, max_batch_rows=4)
    t = outs[0].timing
    assert t["batch_prompts"] == len(PROMPTS) and t["batch_rows"] == 2 * len(PROMPTS)
    assert t["new_tokens"] == sum(len(s.token_ids) for o in outs for s in o.samples)
    assert t["prefill_s"] > 0 and t["decode_s"] > 0


def test_slotted_cache_refuses_prefill_and_loads_rows():
    model = _model("AAAA", "mamba2")
    slots = model.allocate_cache(2, 16).to_slots()
    with pytest.raises(ValueError, match="one token per row"):
        model(torch.tensor([[1, 2]]).expand(2, 2), cache=slots)
    plain = model.allocate_cache(1, 3)
    with torch.no_grad():
        model(torch.tensor([[4, 5, 6]]), cache=plain)
        slots.load_rows([1], plain, [0])
    assert isinstance(slots, InferenceCache) and slots.row_len.tolist() == [0, 3] and slots.length == 3
    assert slots.key_mask[1, :3].all() and not slots.key_mask[1, 3:].any()


def test_timestamps_wait_for_the_device(monkeypatch):
    from thinkfast.inference import engine

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    engine._clock(torch.device("cuda"))
    engine._clock(torch.device("cpu"))
    assert len(calls) == 1


def test_timing_says_how_it_was_decoded():
    model = _model("MMMM", "mamba2")
    _, ref = _run(model, PROMPTS[:2], n=2, max_new_tokens=3)
    _, cb = _run(model, PROMPTS[:2], n=2, max_new_tokens=3, continuous=True, max_batch_rows=3)
    assert (ref[0].timing["rows_at_once"], ref[0].timing["continuous"]) == (4, False)
    assert (cb[0].timing["rows_at_once"], cb[0].timing["continuous"]) == (3, True)
