"""Shared fixtures for the evaluation tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# GSM8K / MATH-500 in their original release format, in the repository's sibling shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_file(name: str) -> Path:
    """A file of ``SHARED_DATA``. Without it the test is skipped on a user's machine, but fails
    under CI (``CI=true``), where the data is always beside the checkout: a CI run never passes
    by skipping what it was meant to check."""
    path = SHARED_DATA / name
    if not path.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} is missing (CI runs with ../shared/data beside the checkout)")
        pytest.skip(f"{path} not available")
    return path


# --- a tiny model and tokenizer, built in-test (no downloads) -----------------------------------------

WORDS = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "+", "-", "=",
         "step", "one", "two", "so", "the", "answer", "is", "question", ".", ":", "?", "#"]
WORDS += [str(d) for d in range(10)]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def make_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation(), pre_tokenizers.Digits(True)])
    tok.add_special_tokens(["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(seed: int = 0, pattern: str = "AM"):
    import torch

    from thinkfast.config import ModelConfig
    from thinkfast.models.lm import LanguageModel

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=len(WORDS), d_model=32, n_layers=len(pattern), n_heads=2, n_kv_heads=1,
                      d_ff=64, max_seq_len=256, layer_pattern=pattern, init_std=0.5)
    return LanguageModel(cfg).eval()


def _per_call_fields() -> set[str]:
    from thinkfast.eval.sampling import ROW_TIMING_KEYS

    return set(ROW_TIMING_KEYS.values()) | {"hardware"}


PER_CALL = _per_call_fields()
"""Sample-row fields that describe the engine call and the machine, not the sample."""


def save_tiny_gsm8k(tmp: Path, rows: list[dict]) -> tuple[Path, Path]:
    """A tiny model directory (``tmp/tiny``, with the chat tokenizer) and a GSM8K-format JSONL of
    ``rows`` (``tmp/gsm8k_test.jsonl``) for tests that run ``thinkfast sample`` end to end."""
    import json

    from thinkfast.checkpoint import save_model

    save_model(make_model(), tmp / "tiny", tokenizer=make_tokenizer(chat=True))
    data = tmp / "gsm8k_test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp / "tiny", data
