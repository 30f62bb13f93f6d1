"""Training data for every stage: rows -> formatted examples -> blocks, a held-out split, and a
batch order that is a pure function of (seed, step).

Because the order is a function of the step, the "data position" a checkpoint records is just
the number of samples consumed, and a resumed run reads exactly the batches the uninterrupted
run would have read, whatever the number of processes.

Small data is read, tokenised and blocked in memory. ``data.train: store:DIR`` instead reads a
token store written once by ``thinkfast tokenize`` (``store.py``): the held-out split and the
blocks are the same as in memory, but each batch is cut from the memory-mapped files when the
trainer asks for it, for any ``seq_len``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

import numpy as np

from .formatting import Formatted, Formatter
from .jsonl import DataError, read_rows
from .packing import TokenBlocks, pack, pad_each
from .store import STORE_PREFIX, Examples, StoreBlocks, TokenStore, tokenizer_identity


@dataclass
class DataConfig:
    train: Optional[str] = None
    """A JSONL file, ``hf:NAME[:CONFIG]`` for a Hugging Face dataset (needs ``datasets``), or
    ``store:DIR`` for a token store written by ``thinkfast tokenize``."""
    eval: Optional[str] = None
    """Held-out rows for the eval loss (a file, ``hf:`` or ``store:``); default: ``eval_fraction``
    of ``train``, split off by seed."""
    eval_fraction: float = 0.05
    split: str = "train"
    """Split of an ``hf:`` train set."""
    eval_split: str = "test"
    format: str = "auto"
    """auto | tokens | token_pair | chat | prompt_response | prompt_completion | question_answer | text"""
    prompt_template: Optional[str] = None
    """``str.format`` template over a row's fields, e.g. "Question: {question}\\nAnswer:"."""
    response_template: Optional[str] = None
    chat_template: str = "auto"
    """auto (use the tokenizer's chat template when it has one) | always | never"""
    loss_on: str = "response"
    """response (SFT: loss on response tokens only) | all (pretraining)"""
    seq_len: int = 256
    pack: bool = True
    add_bos: bool = True
    add_eos: bool = True
    max_examples: Optional[int] = None
    seed: int = 0
    """Seed of the held-out split."""

    def __post_init__(self) -> None:
        from ..config import ConfigError

        if self.loss_on not in ("response", "all"):
            raise ConfigError(f"data.loss_on must be 'response' or 'all', got {self.loss_on!r}")
        if self.chat_template not in ("auto", "always", "never"):
            raise ConfigError(f"data.chat_template must be auto, always or never, got {self.chat_template!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be >= 2, got {self.seq_len}")


@dataclass
class DataBundle:
    train: TokenBlocks | StoreBlocks
    eval: Optional[TokenBlocks | StoreBlocks]
    stats: dict[str, Any] = field(default_factory=dict)


def held_out_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """(K,) int64, sorted: the held-out rows of n, ``K = round(fraction * n)`` (at least 1 when
    fraction > 0 and n >= 2), chosen by a seeded permutation."""
    k = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return np.sort(perm[:k].numpy())


def held_out_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, eval indices) of n rows (``held_out_indices``), both lists in file order."""
    held = held_out_indices(n, fraction, seed).tolist()
    keep = set(held)
    return [i for i in range(n) if i not in keep], held


def _check_vocab(examples: list[Formatted], wheres: list[str], vocab_size: Optional[int]) -> None:
    if vocab_size is None:
        return
    for ex, where in zip(examples, wheres):
        top = max(ex.prompt + ex.response, default=-1)
        if top >= vocab_size:
            raise DataError(f"{where}: token id {top} is outside the model's vocabulary ({vocab_size})")


def _blocks(examples: list[Formatted], cfg: DataConfig, pad_id: int) -> tuple[TokenBlocks, int]:
    if cfg.pack:
        return pack(examples, cfg.seq_len, pad_id, cfg.loss_on), 0
    return pad_each(examples, cfg.seq_len, pad_id, cfg.loss_on)


def _formatter(cfg: DataConfig, tokenizer: Any) -> Formatter:
    return Formatter(tokenizer, cfg.format, cfg.prompt_template, cfg.response_template, cfg.chat_template,
                     cfg.add_bos, cfg.add_eos)


def load_data(cfg: DataConfig, tokenizer: Any = None, vocab_size: Optional[int] = None) -> DataBundle:
    """Read, format, split and block the data of ``cfg``. Every row is checked before training
    (a token store was checked when it was written: here only its manifest is)."""
    if not cfg.train:
        raise DataError("data.train is not set: pass data.train=FILE.jsonl (or hf:NAME, or store:DIR)")
    if cfg.train.startswith(STORE_PREFIX):
        return load_store_data(cfg, tokenizer, vocab_size)
    fmt = _formatter(cfg, tokenizer)
    rows = read_rows(cfg.train, cfg.split, cfg.max_examples)
    if not rows:
        raise DataError(f"{cfg.train} has no rows")
    if cfg.eval and cfg.eval.startswith(STORE_PREFIX):
        eval_rows = []
    elif cfg.eval:
        eval_rows = read_rows(cfg.eval, cfg.eval_split, None)
    else:
        tr, ev = held_out_split(len(rows), cfg.eval_fraction, cfg.seed)
        rows, eval_rows = [rows[i] for i in tr], [rows[i] for i in ev]
    train_ex, eval_ex = fmt(rows), fmt(eval_rows)
    _check_vocab(train_ex, [w for w, _ in rows], vocab_size)
    _check_vocab(eval_ex, [w for w, _ in eval_rows], vocab_size)
    pad_id = _pad_id(tokenizer)
    train, truncated = _blocks(train_ex, cfg, pad_id)
    if len(train) == 0 or train.n_loss_tokens == 0:
        raise DataError(f"{cfg.train}: no training tokens carry a loss (empty responses?)")
    if cfg.eval and cfg.eval.startswith(STORE_PREFIX):
        evalb, n_eval, ev_trunc = _store_eval(cfg, tokenizer, vocab_size, pad_id)
    else:
        evalb, ev_trunc = _blocks(eval_ex, cfg, pad_id) if eval_ex else (None, 0)
        n_eval = len(eval_ex)
    stats = {
        "train_examples": len(train_ex), "eval_examples": n_eval,
        "train_blocks": len(train), "eval_blocks": len(evalb) if evalb is not None else 0,
        "train_tokens": int(train.valid.sum()), "train_loss_tokens": train.n_loss_tokens,
        "truncated_examples": truncated + ev_trunc,
    }
    return DataBundle(train, evalb, stats)


# --- token stores ----------------------------------------------------------------------------------
def open_store(spec: str, cfg: DataConfig, tokenizer: Any, vocab_size: Optional[int]) -> TokenStore:
    """The store of ``spec`` (``store:DIR``), checked against the recipe: the same tokenizer, no
    format setting given in ``cfg`` that the store was not written with, ids within the vocabulary."""
    store = TokenStore(spec[len(STORE_PREFIX):])
    m, where = store.manifest, store.dir / "manifest.json"
    have = m.get("tokenizer")
    want = tokenizer_identity(tokenizer)
    if have is not None and want is not None and have.get("sha256") != want["sha256"]:
        raise DataError(f"{where}: the store was tokenised with {have.get('path') or have.get('class')} "
                        f"(vocabulary sha256 {have.get('sha256', '?')[:12]}), not this recipe's tokenizer; "
                        f"run thinkfast tokenize again with it")
    defaults, written = DataConfig(), m.get("format", {})
    for key in ("format", "prompt_template", "response_template", "chat_template", "add_bos", "add_eos"):
        value = getattr(cfg, key)
        if value != getattr(defaults, key) and key in written and value != written[key]:
            raise DataError(f"{where}: data.{key} is {value!r} but the store was tokenised with "
                            f"{written[key]!r}; run thinkfast tokenize again, or drop data.{key}")
    if vocab_size is not None and store.max_token_id >= vocab_size:
        raise DataError(f"{where}: token id {store.max_token_id} is outside the model's vocabulary ({vocab_size})")
    return store


def _pad_id(tokenizer: Any) -> int:
    return getattr(tokenizer, "pad_token_id", None) or 0


def _store_eval(cfg: DataConfig, tokenizer: Any, vocab_size: Optional[int],
                pad_id: int) -> tuple[Optional[StoreBlocks], int, int]:
    """(blocks, examples, truncated examples) of a ``store:`` eval set: all of its examples."""
    store = open_store(cfg.eval, cfg, tokenizer, vocab_size)
    ex = Examples(store.n_examples, np.zeros(0, np.int64))
    blocks = StoreBlocks(store, ex, cfg.seq_len, pad_id, cfg.loss_on, cfg.pack)
    return (blocks if len(blocks) else None), len(ex), blocks.counts()["truncated"]


def load_store_data(cfg: DataConfig, tokenizer: Any = None, vocab_size: Optional[int] = None) -> DataBundle:
    """``load_data`` for ``data.train: store:DIR``: the same split, blocks and stats as the
    in-memory path gives for the rows the store was written from, but nothing is read until a
    batch is. An ``eval`` that is a file or ``hf:`` set is read in memory as usual."""
    store = open_store(cfg.train, cfg, tokenizer, vocab_size)
    n = store.n_examples if cfg.max_examples is None else min(store.n_examples, cfg.max_examples)
    pad_id = _pad_id(tokenizer)
    no_eval = np.zeros(0, np.int64)
    held = no_eval if cfg.eval else held_out_indices(n, cfg.eval_fraction, cfg.seed)
    train = StoreBlocks(store, Examples(n, held, "rest"), cfg.seq_len, pad_id, cfg.loss_on, cfg.pack)
    counts = train.counts()
    if len(train) == 0 or counts["loss_tokens"] == 0:
        raise DataError(f"{cfg.train}: no training tokens carry a loss (empty responses?)")
    if cfg.eval and cfg.eval.startswith(STORE_PREFIX):
        evalb, n_eval, ev_trunc = _store_eval(cfg, tokenizer, vocab_size, pad_id)
    elif cfg.eval:
        eval_rows = read_rows(cfg.eval, cfg.eval_split, None)
        eval_ex = _formatter(cfg, tokenizer)(eval_rows)
        _check_vocab(eval_ex, [w for w, _ in eval_rows], vocab_size)
        evalb, ev_trunc = _blocks(eval_ex, cfg, pad_id) if eval_ex else (None, 0)
        n_eval = len(eval_ex)
    else:
        ev = StoreBlocks(store, Examples(n, held, "held"), cfg.seq_len, pad_id, cfg.loss_on, cfg.pack)
        evalb, n_eval, ev_trunc = (ev if len(held) else None), len(held), ev.counts()["truncated"]
    stats = {
        "train_examples": len(train.examples), "eval_examples": n_eval,
        "train_blocks": len(train), "eval_blocks": len(evalb) if evalb is not None else 0,
        "train_tokens": counts["tokens"], "train_loss_tokens": counts["loss_tokens"],
        "truncated_examples": counts["truncated"] + ev_trunc,
    }
    return DataBundle(train, evalb, stats)


class BatchSchedule:
    """The blocks of every optimizer step: epoch e is a permutation seeded by (seed, e), and
    step s takes global samples [s*G, (s+1)*G) of the endless sequence of epochs.

    Rank r of W gets the contiguous slice [r*G/W, (r+1)*G/W) of its step's samples, cut into
    micro-batches; so W processes with A accumulation steps see the same global batch as one
    process with W*A.
    """

    def __init__(self, n_blocks: int, global_batch: int, seed: int):
        if n_blocks < 1:
            raise DataError("no training blocks")
        self.n, self.G, self.seed = n_blocks, global_batch, seed
        self._perm: dict[int, torch.Tensor] = {}  # epoch -> (n,) int64 permutation (8 bytes a block)

    def _epoch(self, e: int) -> torch.Tensor:
        if e not in self._perm:
            if len(self._perm) >= 2:  # a step spans at most two epochs when G <= n
                self._perm.pop(min(self._perm))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            self._perm[e] = torch.randperm(self.n, generator=g)
        return self._perm[e]

    def global_indices(self, step: int) -> list[int]:
        start = step * self.G
        out: list[int] = []
        k = start
        while k < start + self.G:  # one slice per epoch the step touches
            e, i = divmod(k, self.n)
            take = min(self.n - i, start + self.G - k)
            out += self._epoch(e)[i:i + take].tolist()
            k += take
        return out

    def micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[list[int]]:
        idx = self.global_indices(step)
        per_rank = self.G // world
        mine = idx[rank * per_rank:(rank + 1) * per_rank]
        return [mine[i:i + micro] for i in range(0, per_rank, micro)]

    def epoch_of(self, step: int) -> float:
        return step * self.G / self.n
