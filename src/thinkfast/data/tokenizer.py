"""A small word-level tokenizer for the synthetic task (and any other closed-vocabulary text).

Design:
  * spaces are kept, Metaspace style: the normaliser turns every " " into "▁", and a piece may
    start with one "▁" (the space before it). So "Ann has 347 apples." is the pieces
    ``Ann ▁has ▁3 4 7 ▁apples .``;
  * words are runs of ASCII letters; every digit is a piece of its own (with or without its
    leading space); every other character (punctuation, '#', '=', ...) is a piece of its own;
    a run of newlines is one piece ("\\n" and "\\n\\n" are distinct tokens, so the blank line that
    ends a few-shot answer is a single token); a space that precedes nothing joinable (a double
    space, a space before a newline) is a lone "▁" piece;
  * the decoder maps "▁" back to " " and concatenates, so ``decode(encode(x)) == x`` exactly for
    every text whose pieces are all in the vocabulary (no ``clean_up_tokenization_spaces``);
  * special tokens, ids fixed: <pad>=0, <bos>=1, <eos>=2, <unk>=3. Encoding with
    ``add_special_tokens=True`` (the default) prepends <bos>, like Llama's tokenizer;
  * the vocabulary is the specials followed by the sorted set of pieces: deterministic.

``build_tokenizer(texts=...)`` collects the pieces of the given texts; ``build_tokenizer(vocab=...)``
takes the pieces directly. Save with ``tok.save_pretrained(dir)`` and load offline with
``transformers.AutoTokenizer.from_pretrained(dir)`` (or ``load_tokenizer(dir)``).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

SPACE = "\u2581"  # "▁"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# Applied after " " -> "▁". Every character of the input falls in exactly one piece.
PIECE_PATTERN = (
    rf"{SPACE}?[A-Za-z]+"  # a word, with its leading space
    rf"|{SPACE}?[0-9]"  # one digit, with its leading space
    r"|\n+"  # a run of newlines
    rf"|{SPACE}?[^A-Za-z0-9{SPACE}\n]"  # one other character (punctuation, tab, ...)
    rf"|{SPACE}"  # a space that joins nothing
)


def _backend(vocab: dict[str, int]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return tok


_PIECER = None


def pieces(text: str) -> list[str]:
    """The pre-tokenised pieces of ``text`` (what the vocabulary must contain)."""
    global _PIECER
    if _PIECER is None:
        _PIECER = _backend({t: i for i, t in enumerate(SPECIAL_TOKENS)})
    norm = _PIECER.normalizer.normalize_str(text)
    return [p for p, _ in _PIECER.pre_tokenizer.pre_tokenize_str(norm)]


def build_tokenizer(texts: Optional[Iterable[str]] = None, vocab: Optional[Iterable[str]] = None,
                    model_max_length: int = 1024):
    """A ``transformers.PreTrainedTokenizerFast`` whose vocabulary is the special tokens plus
    every piece of ``texts`` and every entry of ``vocab`` (pieces, e.g. ``"▁has"``, ``"7"``).

    At least one of ``texts`` / ``vocab`` must be given. Token ids are deterministic: specials
    0..3, then the pieces in sorted order.
    """
    from transformers import PreTrainedTokenizerFast

    if texts is None and vocab is None:
        raise ValueError("build_tokenizer needs texts or vocab")
    if isinstance(texts, str) or isinstance(vocab, str):
        raise TypeError("texts / vocab must be iterables of strings, not a single string")
    found: set[str] = set()
    for t in texts or ():
        found.update(pieces(t))
    for p in vocab or ():
        if not isinstance(p, str) or not p:
            raise ValueError(f"bad vocabulary entry {p!r}")
        found.add(p)
    found -= set(SPECIAL_TOKENS)
    ordered = list(SPECIAL_TOKENS) + sorted(found)
    mapping = {t: i for i, t in enumerate(ordered)}
    backend = _backend(mapping)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="left",
    )


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer saved with ``save_pretrained`` (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
