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

import json
import os
from pathlib import Path
from typing import Iterable, Optional

from ..runtime import UserError

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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
"""Files whose presence in a directory means a tokenizer was saved there."""


class TokenizerError(UserError):
    """A tokenizer directory that cannot be loaded: missing, incomplete or corrupt."""


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether directory ``path`` holds any tokenizer file at all."""
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    """Load a tokenizer saved with ``save_pretrained``, offline.

    Missing pieces are a ``TokenizerError`` that names them: transformers, given a directory
    without ``tokenizer.json``, tries to rebuild a fast tokenizer from slow-tokenizer files and
    fails with a message about sentencepiece or tiktoken that never mentions the missing file."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"{p} does not exist (expected a directory holding tokenizer.json)")
    if not p.is_dir():
        raise TokenizerError(f"{p} is a file: a tokenizer is a directory holding tokenizer.json")
    present = [f for f in TOKENIZER_FILES if (p / f).exists()]
    if "tokenizer.json" not in present and "tokenizer.model" not in present:
        raise TokenizerError(f"{p} has no tokenizer.json ("
                             + (f"only {', '.join(present)}" if present else "no tokenizer files")
                             + "): save the tokenizer there with tokenizer.save_pretrained, or copy "
                               "tokenizer.json from where the model came from")
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:  # the tokenizers library raises bare Exception for a corrupt tokenizer.json
        _raise_for_bad_json(p, present)
        if "tokenizer.json" not in present:  # a sentencepiece tokenizer.model that could not be converted
            raise TokenizerError(f"{p} has no tokenizer.json (its tokenizer.model could not be loaded: "
                                 f"{type(e).__name__}: {_first_line(e)}; pip install sentencepiece, or add "
                                 "tokenizer.json)") from None
        raise TokenizerError(f"cannot load the tokenizer in {p}: {type(e).__name__}: {_first_line(e)}") from None


def _raise_for_bad_json(directory: Path, present: list[str]) -> None:
    """After a failed load: name the tokenizer file that is not valid JSON, if one is not."""
    for name in present:
        if name.endswith(".json"):
            try:
                json.loads((directory / name).read_bytes())
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{directory / name}:{e.lineno}: not valid JSON ({e.msg})") from None
            except (OSError, UnicodeDecodeError) as e:
                raise TokenizerError(f"cannot read {directory / name}: {e}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]
