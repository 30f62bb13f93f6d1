"""A token store: training data tokenised once, on disk, read through ``np.memmap``.

``thinkfast tokenize`` turns a source (JSONL, or ``hf:NAME`` streamed) into a directory that a
recipe names as ``data.train: store:DIR``. Every rank then maps the same files and reads only
the tokens of its own batches; packing into windows of any ``seq_len`` happens at read time,
so one store serves every stage of a recipe.

Layout of DIR (N examples, S tokens in all, shards of at most ``shard_tokens`` tokens; an
example never straddles two shards):

    manifest.json       kind, version, dtype, counts, source, format settings, tokenizer identity
    tokens-00000.bin    (S_0,) uint16 where the vocabulary fits in 16 bits, else uint32
    mask-00000.bin      (S_0,) uint8: 1 on a response token (a prompt token is 0)
    ...                 one tokens / mask pair per shard, the shards back to back form the stream
    offsets.bin         (N + 1,) int64: example e is stream[offsets[e] : offsets[e + 1]]
    loss_cum.bin        (N + 1,) int64: response tokens of examples 0..e-1 (for counts without
                        reading the mask)

The mask records which tokens are response, not where the loss goes: ``data.loss_on`` (response
| all) decides that at read time, exactly as it does for in-memory data, so one store serves
SFT and pretraining alike.

Writing goes into the sibling directory ``.DIR.tokenize-partial`` which is renamed to DIR once
the manifest is in it. An interrupted tokenize leaves only that partial directory; a rerun
removes it and starts again from the first row (restart, not resume). A directory holding
anything else than the files above is never deleted.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from ..config import atomic_write_text, install_directory
from .formatting import Formatted, Formatter
from .jsonl import DataError, iter_jsonl, open_hf
from .packing import IGNORE, TokenBlocks, windows_to_blocks

KIND = "thinkfast-token-store"
VERSION = 1
MANIFEST = "manifest.json"
STORE_PREFIX = "store:"
"""``data.train: store:DIR`` reads the token store in DIR."""
DEFAULT_SHARD_TOKENS = 1 << 30
"""Tokens per shard file (2 GiB of uint16)."""
_INDEX_FILES = ("offsets.bin", "loss_cum.bin")


def _is_layout_name(name: str) -> bool:
    """Whether ``name`` is a file the store writer creates (temporary files included)."""
    if name in (MANIFEST, *_INDEX_FILES) or (name.startswith(f".{MANIFEST}.") and name.endswith(".tmp")):
        return True
    stem, _, ext = name.partition(".")
    kind, _, number = stem.partition("-")
    return ext == "bin" and kind in ("tokens", "mask") and number.isdigit()


def _only_layout_files(path: Path) -> bool:
    return path.is_dir() and all(p.is_file() and _is_layout_name(p.name) for p in path.iterdir())


def token_dtype(vocab_size: Optional[int]) -> np.dtype:
    """uint16 when every id of a ``vocab_size`` vocabulary fits in 16 bits, else (or unknown) uint32."""
    return np.dtype(np.uint16 if vocab_size is not None and vocab_size <= 1 << 16 else np.uint32)


def tokenizer_identity(tokenizer: Any, path: Optional[str] = None) -> Optional[dict[str, Any]]:
    """What a store records of its tokenizer: a hash of the vocabulary and special ids, the size
    and where it came from. Two tokenizers with the same ``sha256`` give the same ids."""
    if tokenizer is None:
        return None
    specials = {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    blob = json.dumps([sorted(tokenizer.get_vocab().items()), specials], separators=(",", ":"))
    return {"sha256": hashlib.sha256(blob.encode()).hexdigest(), "vocab_size": len(tokenizer),
            "class": type(tokenizer).__name__, "path": path, **specials}


def _template_sha(tokenizer: Any) -> Optional[str]:
    template = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None


# --- writing ------------------------------------------------------------------------------------
def formatter_for(tokenizer: Any, format: str = "auto", prompt_template: Optional[str] = None,
                  response_template: Optional[str] = None, chat_template: str = "auto", add_bos: bool = True,
                  add_eos: bool = True) -> tuple[Formatter, dict[str, Any]]:
    """The ``Formatter`` of these ``data.*`` settings and the manifest's record of them (the keys
    a recipe's data section uses, which reading the store checks against)."""
    fmt = Formatter(tokenizer, format, prompt_template, response_template, chat_template, add_bos, add_eos)
    settings = {"format": format, "prompt_template": prompt_template, "response_template": response_template,
                "chat_template": chat_template, "add_bos": add_bos, "add_eos": add_eos,
                "chat_template_used": fmt.use_chat,
                "chat_template_sha256": _template_sha(tokenizer) if fmt.use_chat else None}
    return fmt, settings


def _prepare(out: Path, overwrite: bool) -> Path:
    """Check that ``out`` may be written and return a fresh partial directory beside it."""
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out} is a file, not a token store directory")
        if any(out.iterdir()):
            if not (out / MANIFEST).is_file() or not _only_layout_files(out):
                raise DataError(f"{out} exists and is not a token store thinkfast wrote; refusing to "
                                f"overwrite it (choose another --out)")
            try:
                read_manifest(out)
            except DataError:
                raise DataError(f"{out} holds a manifest.json that is not a thinkfast token store's; "
                                f"refusing to overwrite it (choose another --out)") from None
            if not overwrite:
                raise DataError(f"{out} already holds a token store; pass --overwrite to replace it")
    partial = out.parent / f".{out.name}.tokenize-partial"
    if partial.exists():
        if not _only_layout_files(partial):
            raise DataError(f"{partial} holds files thinkfast did not write; move it aside and rerun")
        shutil.rmtree(partial)  # left by an interrupted run: start again
    partial.mkdir(parents=True)
    return partial


class TokenStoreWriter:
    """Writes the store ``out``: the files grow in the partial directory beside it, and
    ``finish`` adds the manifest and renames the whole into place.

    ``append`` takes a batch: tokens (S,) and mask (S,) of the examples back to back and their
    lengths (B,). ``out`` must be absent, empty, or (with ``overwrite``) a store thinkfast wrote.
    """

    def __init__(self, out: str | os.PathLike, dtype: np.dtype, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 overwrite: bool = False):
        self.dtype, self.shard_tokens = np.dtype(dtype), int(shard_tokens)
        if self.dtype not in (np.uint16, np.uint32):
            raise ValueError(f"token dtype must be uint16 or uint32, got {self.dtype}")
        self.out = Path(out)
        self.dir = _prepare(self.out, overwrite)
        self.top = np.iinfo(self.dtype).max
        self.shards: list[dict[str, Any]] = []
        self._files: Optional[tuple[Any, Any]] = None
        self._index = [open(self.dir / name, "wb") for name in _INDEX_FILES]
        self.n_examples, self.n_tokens, self.n_loss, self.max_id = 0, 0, 0, -1
        self._write_index(np.zeros(1, np.int64), np.zeros(1, np.int64))

    def _write_index(self, offsets: np.ndarray, loss_cum: np.ndarray) -> None:
        self._index[0].write(offsets.astype(np.int64).tobytes())
        self._index[1].write(loss_cum.astype(np.int64).tobytes())

    def _new_shard(self) -> None:
        self._close_shard()
        i = len(self.shards)
        names = {"tokens": f"tokens-{i:05d}.bin", "mask": f"mask-{i:05d}.bin"}
        self.shards.append({**names, "n_tokens": 0})
        self._files = (open(self.dir / names["tokens"], "wb"), open(self.dir / names["mask"], "wb"))

    def _close_shard(self) -> None:
        if self._files is not None:
            for f in self._files:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            self._files = None

    def append(self, tokens: np.ndarray, mask: np.ndarray, lengths: np.ndarray,
               wheres: Optional[list[str]] = None) -> None:
        """Add B examples: ``tokens`` (S,) ints, ``mask`` (S,) bool/0-1 (1 = response token),
        ``lengths`` (B,) summing to S. An id that the dtype cannot hold is a DataError naming
        its example's ``wheres`` entry."""
        tokens, mask = np.asarray(tokens), np.asarray(mask)
        lengths = np.asarray(lengths, dtype=np.int64)
        if tokens.shape != mask.shape or tokens.ndim != 1 or int(lengths.sum()) != tokens.size:
            raise ValueError("tokens and mask must be (S,) arrays and lengths must sum to S")
        if tokens.size:
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi > self.top:
                bad = int(np.flatnonzero((tokens < 0) | (tokens > self.top))[0])
                e = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
                where = wheres[e] if wheres else f"example {self.n_examples + e}"
                raise DataError(f"{where}: token id {int(tokens[bad])} does not fit the store's {self.dtype} "
                                f"(give the tokenizer, or --vocab-size, so that the store uses uint32)")
            self.max_id = max(self.max_id, hi)
        ends = np.cumsum(lengths)
        i, tok = 0, 0
        while i < len(lengths):
            used = self.shards[-1]["n_tokens"] if self._files is not None else None
            if used is None or (used > 0 and used + lengths[i] > self.shard_tokens):
                if tok == tokens.size:  # only empty examples are left: they need no shard
                    break
                self._new_shard()
                used = 0
            # as many whole examples as fit (at least one: a longer one gets a shard of its own)
            fit = max(1, int(np.searchsorted(ends[i:] - tok, self.shard_tokens - used, side="right")))
            stop = int(ends[i + fit - 1])
            self._files[0].write(tokens[tok:stop].astype(self.dtype).tobytes())
            self._files[1].write(mask[tok:stop].astype(np.uint8).tobytes())
            self.shards[-1]["n_tokens"] += stop - tok
            i, tok = i + fit, stop
        cum_mask = np.r_[0, np.cumsum(mask, dtype=np.int64)]
        per_ex_loss = cum_mask[ends] - cum_mask[ends - lengths]  # (B,) response tokens of each example
        self._write_index(self.n_tokens + ends, self.n_loss + np.cumsum(per_ex_loss))
        self.n_examples += len(lengths)
        self.n_tokens += int(tokens.size)
        self.n_loss += int(per_ex_loss.sum())

    def append_examples(self, examples: list[Formatted], wheres: Optional[list[str]] = None) -> None:
        """``append`` for formatted examples: the prompt's mask is 0, the response's 1."""
        ids: list[int] = []
        sides = []  # (2B,) prompt length, response length, ... : the runs of 0s and 1s of the mask
        for ex in examples:
            ids += ex.prompt
            ids += ex.response
            sides += (len(ex.prompt), len(ex.response))
        sides_arr = np.array(sides, np.int64)
        mask = np.repeat(np.tile(np.array([0, 1], np.uint8), len(examples)), sides_arr)
        lengths = sides_arr[0::2] + sides_arr[1::2]
        self.append(np.array(ids, np.int64), mask, lengths, wheres)

    def _close(self) -> None:
        self._close_shard()
        for f in self._index:
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def abort(self, remove: bool = True) -> None:
        """Stop writing; the partial directory is deleted, or (``remove=False``) left for the
        next run to delete."""
        self._close()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def finish(self, info: dict[str, Any]) -> dict[str, Any]:
        """Close the files, write the manifest (counts, shards and ``info``: source, format
        settings, tokenizer identity) and rename the store into place; returns the manifest."""
        self._close()
        if self.n_examples == 0:
            shutil.rmtree(self.dir)
            raise DataError(f"{info.get('source') or self.out} has no rows")
        manifest = {"kind": KIND, "version": VERSION, "dtype": self.dtype.name, "n_examples": self.n_examples,
                    "n_tokens": self.n_tokens, "n_response_tokens": self.n_loss, "max_token_id": self.max_id,
                    "shards": self.shards, "store_id": uuid.uuid4().hex, **info}
        atomic_write_text(self.dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        # the temporary file behind atomic_write_text is private (0600): readable like the shards instead
        os.chmod(self.dir / MANIFEST, stat.S_IMODE((self.dir / _INDEX_FILES[0]).stat().st_mode))
        install_directory(self.dir, self.out)  # an existing store moved aside, then removed
        return manifest


def store_digest(source: str) -> str:
    """SHA-256 of the manifest of the store ``store:DIR`` names. Each write gets a fresh
    ``store_id``, so a store rewritten in place (same name, maybe other data) digests differently:
    a training run records it and refuses to resume on another store."""
    directory = source[len(STORE_PREFIX):] if source.startswith(STORE_PREFIX) else source
    read_manifest(directory)  # a clear error when it is not a store
    return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()


def write_store(rows: Iterable[tuple[str, dict[str, Any]]], out: str | os.PathLike, formatter: Formatter, *,
                dtype: np.dtype, info: dict[str, Any], shard_tokens: int = DEFAULT_SHARD_TOKENS,
                batch_rows: int = 1024, overwrite: bool = False,
                on_progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Format and tokenise ``rows`` ((where, row) pairs, consumed once, in order) into the store
    ``out``; returns its manifest. ``info`` (source, format settings, tokenizer identity) goes
    into the manifest as it is. ``on_progress(rows, tokens)`` is called after each batch."""
    writer = TokenStoreWriter(out, dtype, shard_tokens, overwrite)
    batch: list[tuple[str, dict[str, Any]]] = []

    def flush() -> None:
        writer.append_examples(formatter(batch), [w for w, _ in batch])
        batch.clear()
        if on_progress is not None:
            on_progress(writer.n_examples, writer.n_tokens)

    try:
        for item in rows:
            batch.append(item)
            if len(batch) >= batch_rows:
                flush()
        if batch:
            flush()
    except BaseException as e:  # a bad row removes the partial store; an interruption leaves it
        writer.abort(remove=isinstance(e, DataError))
        raise
    return writer.finish(info)


def stream_rows(source: str, split: str = "train", limit: Optional[int] = None,
                load_dataset: Optional[Callable[..., Iterable[dict[str, Any]]]] = None
                ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) pairs of a JSONL file or an ``hf:NAME[:CONFIG]`` dataset, one at a time (an
    ``hf:`` dataset is opened with ``streaming=True``: never materialised). ``load_dataset``
    replaces ``datasets.load_dataset`` (the same call signature)."""
    if source.startswith("hf:"):
        rows = _hf_stream(source, split, load_dataset)
    else:
        rows = ((f"{source}:{lineno}", row) for lineno, row in iter_jsonl(source))
    for i, item in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield item


def _hf_stream(spec: str, split: str, load_dataset: Optional[Callable[..., Iterable[dict[str, Any]]]]):
    ds = open_hf(spec, split, streaming=True, load_dataset=load_dataset)
    for i, row in enumerate(ds):
        if not isinstance(row, dict):
            raise DataError(f"{spec}[{split}][{i}]: expected a row of named fields, got {type(row).__name__}")
        yield f"{spec}[{split}][{i}]", dict(row)


# --- reading ------------------------------------------------------------------------------------
def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the store in ``directory``; a DataError naming the file when it is not one."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise DataError(f"{directory} is not a directory (a token store is one; write it with thinkfast tokenize)")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {directory} is not a token store (write one with thinkfast "
                        f"tokenize)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable or not JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise DataError(f"{path} is not the manifest of a thinkfast token store")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: store version {manifest.get('version')!r}; this thinkfast reads version "
                        f"{VERSION} (re-run thinkfast tokenize)")
    return manifest


MAP_BUDGET = 128 << 20
"""Bytes of store pages a reader keeps mapped before it unmaps them all (``release``)."""
_FAULT_MAP = 2 << 20  # the most one page fault maps: a whole PMD-sized (2 MiB) page-cache folio


class TokenStore:
    """A store opened for reading: every file mapped with ``np.memmap`` (nothing is read until a
    range is asked for). ``offsets`` (N+1,) int64 and ``loss_cum`` (N+1,) int64 are maps too.

    The pages a mapping has touched count in the process's resident set until they are unmapped,
    and a fault maps more than the page asked for (64 KiB around it, or the whole large folio the
    page cache holds it in: up to 2 MiB). So that a long run does not end up with the whole store
    resident, the reader drops its mapped pages (``madvise(MADV_DONTNEED)``: they stay in the page
    cache, a later read maps them again) once its reads could have mapped ``map_budget`` bytes,
    each read counted as its bytes plus 2 MiB at either end.
    """

    def __init__(self, directory: str | os.PathLike, map_budget: int = MAP_BUDGET):
        self.dir = Path(directory)
        self.map_budget, self._mapped = map_budget, 0
        m = self.manifest = read_manifest(self.dir)
        try:
            self.dtype = np.dtype(m["dtype"])
            self.n_examples, self.n_tokens = int(m["n_examples"]), int(m["n_tokens"])
            self.max_token_id = int(m["max_token_id"])
            shards = [(s["tokens"], s["mask"], int(s["n_tokens"])) for s in m["shards"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.dir / MANIFEST} is incomplete or malformed: {e!r}") from None
        self.offsets = self._map("offsets.bin", np.int64, self.n_examples + 1)
        self.loss_cum = self._map("loss_cum.bin", np.int64, self.n_examples + 1)
        self._tokens = [self._map(t, self.dtype, n) for t, _, n in shards]
        self._mask = [self._map(k, np.uint8, n) for _, k, n in shards]
        self._starts = np.cumsum([0] + [n for _, _, n in shards])  # (shards + 1,) stream position of each
        if self._starts[-1] != self.n_tokens or self.offsets[-1] != self.n_tokens:
            raise DataError(f"{self.dir}: the shards hold {self._starts[-1]} tokens and the offsets end at "
                            f"{self.offsets[-1]}, but the manifest says {self.n_tokens}")

    def _map(self, name: str, dtype: Any, count: int) -> np.ndarray:
        path = self.dir / name
        want = count * np.dtype(dtype).itemsize
        try:
            size = path.stat().st_size
        except OSError:
            raise DataError(f"{path} is missing: the token store is incomplete") from None
        if size != want:
            raise DataError(f"{path} holds {size} bytes, {want} expected: the token store is truncated or corrupt")
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,))

    def release(self) -> None:
        """Unmap every page the maps have touched (they stay valid: the next read maps them anew)."""
        dontneed = getattr(mmap, "MADV_DONTNEED", None)
        for arr in (self.offsets, self.loss_cum, *self._tokens, *self._mask):
            mapping = getattr(arr, "_mmap", None)  # np.memmap's mmap object (absent: nothing to do)
            if dontneed is not None and hasattr(mapping, "madvise"):
                mapping.madvise(dontneed)
        self._mapped = 0

    def _touched(self, nbytes: int) -> None:
        self._mapped += nbytes + 2 * _FAULT_MAP
        if self._mapped > self.map_budget:
            self.release()

    def read(self, start: int, stop: int, mask: bool = False) -> np.ndarray:
        """A copy of stream[start:stop] (tokens in the store's dtype), or of the mask (uint8)."""
        self._touched((stop - start) * (1 if mask else self.dtype.itemsize))
        maps, out = (self._mask if mask else self._tokens), []
        s = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop:
            lo = self._starts[s]
            hi = min(stop, self._starts[s + 1])
            out.append(maps[s][start - lo:hi - lo])
            start, s = hi, s + 1
        if not out:
            return np.zeros(0, np.uint8 if mask else self.dtype)
        return np.array(out[0]) if len(out) == 1 else np.concatenate(out)

    def span(self, e: int) -> tuple[int, int]:
        """(start, stop) of example e in the stream."""
        self._touched(16)
        return int(self.offsets[e]), int(self.offsets[e + 1])

    def mask_at(self, positions: np.ndarray) -> np.ndarray:
        """mask[positions] for (K,) int64 stream positions (each < n_tokens), as (K,) uint8."""
        positions = np.asarray(positions, np.int64)
        out = np.zeros(positions.shape, np.uint8)
        shard = np.searchsorted(self._starts, positions, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._mask[s][positions[sel] - self._starts[s]]
        return out


@dataclass
class Examples:
    """Which of a store's first ``n`` examples a split holds, in store order, without listing
    them: all but ``held`` (``keep="rest"``), or only ``held`` (``keep="held"``).
    ``held`` (K,) int64, sorted, each < n."""

    n: int
    held: np.ndarray
    keep: str = "rest"

    def __post_init__(self) -> None:
        self.held = np.asarray(self.held, np.int64)
        # held[m] - m: how many kept examples precede the m-th held one
        self._kept_before = self.held - np.arange(len(self.held))

    def __len__(self) -> int:
        return self.n - len(self.held) if self.keep == "rest" else len(self.held)

    def ids(self, i: np.ndarray) -> np.ndarray:
        """Store example index of the split's examples ``i`` (int64 array)."""
        i = np.asarray(i, np.int64)
        if self.keep == "held":
            return self.held[i]
        # the i-th kept example comes after every held one that has at most i kept ones before it
        return i + np.searchsorted(self._kept_before, i, side="right")

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """(first, stop) (R,) int64: the split as runs of consecutive store examples."""
        if self.keep == "held":
            return self.held, self.held + 1
        first = np.r_[0, self.held + 1]
        stop = np.r_[self.held, self.n]
        keep = stop > first
        return first[keep], stop[keep]


class StoreBlocks:
    """``TokenBlocks``' reading interface over a token store: ``len``, ``seq_len``,
    ``batch(index)`` and ``n_loss_tokens``, with the same blocks ``pack`` / ``pad_each`` cut from
    the same examples in memory. Only the requested blocks are read.

    Packed: the split's examples back to back are the stream, block i is its window
    [i*T, i*T+T+1) (padded past the end). Unpacked: block i is the split's example i, cut to T+1
    tokens and right-padded.
    """

    def __init__(self, store: TokenStore, examples: Examples, seq_len: int, pad_id: int = 0,
                 loss_on: str = "response", pack: bool = True):
        self.store, self.examples, self.T = store, examples, seq_len
        self.pad_id, self.loss_on, self.packed = pad_id, loss_on, pack
        if pack:
            first, stop = examples.runs()
            self.run_start = np.asarray(store.offsets[first], np.int64)  # (R,) stream position
            lengths = np.asarray(store.offsets[stop], np.int64) - self.run_start
            nonempty = lengths > 0
            self.run_first, self.run_stop = first[nonempty], stop[nonempty]
            self.run_start, lengths = self.run_start[nonempty], lengths[nonempty]
            self.run_vstart = np.cumsum(lengths) - lengths  # (R,) split-stream position of each run
            self.n_stream = int(lengths.sum())
            self.n_blocks = -(-(self.n_stream - 1) // seq_len) if self.n_stream >= 2 else 0
            store.release()  # the index pages just looked up
        else:
            self.n_blocks = len(examples)

    def __len__(self) -> int:
        return self.n_blocks

    @property
    def seq_len(self) -> int:
        return self.T

    def _span(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and mask of split-stream positions [a, b) (b <= n_stream)."""
        r = int(np.searchsorted(self.run_vstart, a, side="right")) - 1
        toks, masks = [], []
        while a < b:
            lo = self.run_start[r] + (a - self.run_vstart[r])
            run_end = self.run_vstart[r + 1] if r + 1 < len(self.run_vstart) else self.n_stream
            take = min(b, run_end) - a
            toks.append(self.store.read(lo, lo + take))
            masks.append(self.store.read(lo, lo + take, mask=True) if self.loss_on == "response" else None)
            a, r = a + take, r + 1
        ids = np.concatenate(toks)
        mask = np.concatenate(masks) if self.loss_on == "response" else np.ones(len(ids), np.uint8)
        return ids, mask

    def _window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(T+1,) tokens and mask of block i; positions past the data have length < T+1."""
        if self.packed:
            a = i * self.T
            return self._span(a, min(a + self.T + 1, self.n_stream))
        lo, hi = self.store.span(int(self.examples.ids(np.array([i]))[0]))
        hi = min(hi, lo + self.T + 1)
        ids = self.store.read(lo, hi)
        mask = self.store.read(lo, hi, mask=True) if self.loss_on == "response" else np.ones(hi - lo, np.uint8)
        return ids, mask

    def batch(self, index: list[int]) -> dict[str, torch.Tensor]:
        """input_ids, labels (B, T) long and valid (B, T) bool of blocks ``index``."""
        B, W = len(index), self.T + 1
        ids = np.full((B, W), self.pad_id, np.int64)
        mask = np.zeros((B, W), bool)
        real = np.zeros((B, W), bool)
        for row, i in enumerate(index):
            if not 0 <= i < self.n_blocks:
                raise IndexError(f"block {i} of {self.n_blocks}")
            t, m = self._window(int(i))
            ids[row, :len(t)] = t
            mask[row, :len(m)] = m.astype(bool)
            real[row, :len(t)] = True
        b = windows_to_blocks(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(real))
        return {"input_ids": b.input_ids, "labels": b.labels, "valid": b.valid}

    def to_blocks(self) -> TokenBlocks:
        """Every block in memory (for small stores and tests)."""
        b = self.batch(list(range(self.n_blocks)))
        return TokenBlocks(b["input_ids"], b["labels"], b["valid"])

    # --- counts, from the index (of the mask, only an example's first token, or a cut one's) ----
    def counts(self, chunk: int = 1 << 16) -> dict[str, int]:
        """tokens (real inputs), loss_tokens (labels that are not IGNORE) and truncated examples,
        equal to what the in-memory blocks of the same split would count."""
        s = self.store
        if self.packed:
            if self.n_stream < 2:
                return {"tokens": 0, "loss_tokens": 0, "truncated": 0}
            tokens = min(self.n_stream, self.n_blocks * self.T)
            if self.loss_on == "all":
                return {"tokens": tokens, "loss_tokens": self.n_stream - 1, "truncated": 0}
            resp = int((s.loss_cum[self.run_stop] - s.loss_cum[self.run_first]).sum())
            first = int(s.mask_at(self.run_start[:1])[0])  # the stream's first token is never a target
            s.release()
            return {"tokens": tokens, "loss_tokens": resp - first, "truncated": 0}
        tokens = loss = truncated = 0
        for c in range(0, len(self.examples), chunk):
            e = self.examples.ids(np.arange(c, min(c + chunk, len(self.examples))))
            start = np.asarray(s.offsets[e], np.int64)
            length = np.asarray(s.offsets[e + 1], np.int64) - start
            tokens += int(np.minimum(length, self.T).sum())
            cut = length > self.T + 1
            truncated += int(cut.sum())
            if self.loss_on == "all":
                loss += int(np.maximum(np.minimum(length, self.T + 1) - 1, 0).sum())
                continue
            whole = ~cut & (length > 0)
            resp = np.asarray(s.loss_cum[e + 1] - s.loss_cum[e], np.int64)
            loss += int((resp[whole] - s.mask_at(start[whole])).sum())
            for lo in start[cut]:  # a cut example: the mask of its first T+1 tokens
                loss += int(s.read(int(lo) + 1, int(lo) + self.T + 1, mask=True).sum())
        s.release()
        return {"tokens": tokens, "loss_tokens": loss, "truncated": truncated}

    @property
    def n_loss_tokens(self) -> int:
        return self.counts()["loss_tokens"]


__all__ = ["IGNORE", "KIND", "STORE_PREFIX", "store_digest", "Examples", "StoreBlocks", "TokenStore", "TokenStoreWriter",
           "formatter_for", "read_manifest", "stream_rows", "token_dtype", "tokenizer_identity", "write_store"]
