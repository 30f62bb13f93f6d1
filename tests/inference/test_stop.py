"""The engine's stop-string filter: ``may_complete`` never skips a row that ``hit`` would stop.

Checked on three kinds of tokenizer built in-process: thinkfast's word-level one, a byte-level
BPE (tokens that are part of a UTF-8 character) and a Metaspace BPE (a token decoded alone loses
its leading space)."""

from __future__ import annotations

import random

import pytest
import torch

from thinkfast.config import ModelConfig
from thinkfast.inference import engine
from thinkfast.inference.engine import SamplingParams, generate
from thinkfast.models.lm import LanguageModel

TEXTS = ["Question: Pam has 53 coins.\nAnswer: d3 + d5 = d8 , Kim = 8\n\n#### 8",
         "héllo wörld ça va? naïve café 日本語 テキスト → ok!\n"] * 20
STOPS = ("\n\n", "####", " ok", "é!", "語 ", "va?", "日本語")


def _word_level():
    from thinkfast.data.tokenizer import build_tokenizer

    return build_tokenizer(texts=TEXTS)


def _bpe(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bytelevel":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=262, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    else:
        tk = Tokenizer(models.BPE(unk_token="<unk>"))
        tk.pre_tokenizer, tk.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False)
    tk.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk)


TOKENIZERS = {"word-level": _word_level, "bytelevel-bpe": lambda: _bpe("bytelevel"),
              "metaspace-bpe": lambda: _bpe("metaspace")}


def _sequences(tok, rng: random.Random, n: int):
    """Encoded text spliced with random tokens, so stops occur and tokens meet in odd places."""
    base = [tok.encode(t, add_special_tokens=False) for t in TEXTS[:2]]
    vocab = len(tok)
    for _ in range(n):
        seq = []
        while len(seq) < 40:
            if rng.random() < 0.6:
                b = rng.choice(base)
                i = rng.randrange(len(b))
                seq += b[i:i + rng.randrange(2, 12)]
            else:
                seq.append(rng.randrange(vocab))
        yield seq


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_may_complete_keeps_every_row_that_hit_would_stop(name):
    tok = TOKENIZERS[name]()
    rng = random.Random(0)
    # " ok" ends in a space (every token counts); "日本語" ends in a character BPE may split
    for stops in [STOPS[:1], STOPS[1:2], STOPS[2:3], STOPS[-1:], STOPS]:
        checker = engine.StopChecker(stops, tok)
        newly, checked = 0, 0
        for seq in _sequences(tok, rng, 100):
            for t in range(1, len(seq) + 1):
                if checker.hit(seq[:t]):  # the engine stops a row at its first hit
                    newly += 1
                    assert bool(checker.may_complete(torch.tensor(seq[t - 1:t]))[0]), (stops, seq[:t])
                    break
                checked += 1
        assert newly > 0  # the property was exercised
    # and the filter does skip rows: with "\n\n" alone only tokens holding a newline (or, in the
    # byte-level vocabulary, part of a character: half its 256 byte tokens) can end it
    only = engine.StopChecker(("\n\n",), tok)
    flags = only.may_complete(torch.arange(len(tok)))
    assert 0 < int(flags.sum()) < (0.6 if name == "bytelevel-bpe" else 0.5) * len(tok)


def test_engine_output_is_the_same_without_the_filter(monkeypatch):
    tok = _word_level()
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name("tiny", vocab_size=len(tok), layer_pattern="AMAM")).eval()
    with torch.no_grad():  # make the stop likely, so some rows stop early and some do not
        model.lm_head.weight[tok.convert_tokens_to_ids("\n\n")] += 0.2
    sp = SamplingParams(n=8, seed=0, temperature=1.0, max_new_tokens=30, stop=["\n\n", "####"], eos_token_ids=[])
    prompts = ["Question: Pam has", "Answer: d3 +"]
    fast = generate(model, prompts, sp, tokenizer=tok, add_special_tokens=False)
    monkeypatch.setattr(engine.StopChecker, "may_complete", lambda self, t: torch.ones_like(t, dtype=torch.bool))
    slow = generate(model, prompts, sp, tokenizer=tok, add_special_tokens=False)
    got = [(s.token_ids, s.text, s.finish_reason) for o in fast for s in o.samples]
    assert got == [(s.token_ids, s.text, s.finish_reason) for o in slow for s in o.samples]
    assert {r for _, _, r in got} == {"stop", "length"}
