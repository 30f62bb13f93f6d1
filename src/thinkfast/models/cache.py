"""Inference state behind one interface.

Attention layers keep a pre-allocated KV cache; Mamba layers keep their conv window and SSM
state, whose size does not grow with the context. ``InferenceCache`` holds one state per layer
plus what the model needs across layers (the key padding mask, each row's next position).
Every state supports ``select(index)``: reorder / repeat / drop batch rows, which is how one
prefill is copied n ways and how finished rows are dropped.

Two layouts. A plain cache shares one ``length`` over its rows (left padding lines the prompts
up), which is how a batch is prefilled. A *slotted* cache (``InferenceCache.to_slots``) gives
each row its own used length ``row_len`` and takes one token per row per step: a row can be
emptied and refilled with another sequence's state (``load_rows``, copying the rows of a
prefilled plain cache) while the others go on decoding, which is what continuous batching needs.

Glossary: B batch, G kv heads, S max cached length, hd head dim, Cd conv channels, K conv kernel,
H SSM heads, P head dim, N state size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch


class AttentionState:
    """k, v (B, G, S_max, hd), filled up to ``length``."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0
        self.write_pos: Optional[torch.Tensor] = None
        """(B,) long: in a slotted cache, where each row's next token goes (set every step)."""
        self.write_rows: Optional[torch.Tensor] = None
        """(B,) long, arange(B) with ``write_pos``: made once per step, not once per layer."""
        self.prompt: Optional[tuple["PromptTable", int]] = None
        """With shared prompts: (the cache's PromptTable, this layer's index in it); ``k``/``v``
        then hold only each row's own tokens (the suffix after its prompt)."""

    def prompt_kv(self):
        """Shared prompts: (k, v (Q, G, Lp, hd), mask (Q, Lp) bool or None (no padding), flat (B,)
        long, n) over the table's first Q = ``PromptTable.active`` entries, see ``PromptTable``."""
        table, li = self.prompt
        L, Q = table.length, table.active
        mask = table.mask[:Q, :L] if table.padded else None
        return table.k[li][:Q, :, :L], table.v[li][:Q, :, :L], mask, table.flat, table.n

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, G, T, hd) -> the cached k, v (B, G, S, hd) to attend over, these included."""
        if self.write_pos is not None:  # slotted: one token per row, each at its own position
            rows = self.write_rows if self.write_rows is not None else torch.arange(k.shape[0], device=k.device)
            self.k[rows, :, self.write_pos] = k[:, :, 0]
            self.v[rows, :, self.write_pos] = v[:, :, 0]
            return self.k[:, :, :self.length], self.v[:, :, :self.length]
        T = k.shape[2]
        end = self.length + T
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def select(self, index: torch.Tensor) -> None:
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)

    def load_rows(self, dst: torch.Tensor, src: "AttentionState", src_rows: torch.Tensor) -> None:
        """Rows ``dst`` (M,) take rows ``src_rows`` (M,) of ``src``'s first ``src.length`` positions."""
        L = src.length
        self.k[dst, :, :L] = src.k[src_rows, :, :L]
        self.v[dst, :, :L] = src.v[src_rows, :, :L]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class MambaState:
    """conv (B, K-1, Cd) last conv inputs, oldest first (channels last, so a decode step reads
    and shifts whole contiguous (B, Cd) slices); ssm (B, H, P, N) fp32. ``seen``: any token
    processed."""

    def __init__(self, batch: int, conv_dim: int, kernel: int, n_heads: int, head_dim: int,
                 d_state: int, dtype, device):
        self.conv = torch.zeros(batch, kernel - 1, conv_dim, dtype=dtype, device=device)
        self.ssm = torch.zeros(batch, n_heads, head_dim, d_state, dtype=torch.float32, device=device)
        self.seen = False

    def select(self, index: torch.Tensor) -> None:
        self.conv = self.conv.index_select(0, index)
        self.ssm = self.ssm.index_select(0, index)

    def load_rows(self, dst: torch.Tensor, src: "MambaState", src_rows: torch.Tensor) -> None:
        """Rows ``dst`` (M,) take the conv window and SSM state of ``src``'s rows ``src_rows`` (M,)."""
        self.conv[dst] = src.conv[src_rows]
        self.ssm[dst] = src.ssm[src_rows]
        self.seen = self.seen or src.seen

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * 4


LayerState = Union[AttentionState, MambaState]


class PromptTable:
    """One copy of each prompt's KV cache, read by all the slotted rows sampling from it.

    Per attention layer k, v (Q, G, Lmax, hd): Q entries, each a prefilled prompt's positions
    (left padding included, ``mask`` (Q, Lmax) False there). Row b of the slotted cache reads
    entry e and is sample j of it: ``pos[b] = e * n + j`` (-1: the row reads no prompt, it is
    finished). ``flat`` (B,) is ``pos`` with -1 replaced by Q * n, a spare position, so that a
    step's queries can be laid out (Q * n + 1, ...) with each entry's rows together, Q =
    ``active``: one past the highest entry in use (a new prompt takes the lowest free entry, so
    attention runs over no more entries than prompts are being sampled).
    """

    def __init__(self, n_layers_attn: int, n: int, entries: int, max_len: int, n_kv_heads: int, head_dim: int,
                 batch: int, dtype, device):
        self.n, self.length = n, 0
        shape = (entries, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers_attn)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers_attn)]
        self.mask = torch.zeros(entries, max_len, dtype=torch.bool, device=device)
        self.pos = torch.full((batch,), -1, dtype=torch.long, device=device)
        self.flat = self.pos.clone()
        self.free = list(range(entries))
        self.in_use: set[int] = set()
        self.padded = False
        """Some entry in use has a left-padded position (attention then needs ``mask``)."""

    @property
    def active(self) -> int:
        return max(self.in_use) + 1 if self.in_use else 0

    @property
    def entries(self) -> int:
        return self.mask.shape[0]

    def grow(self) -> None:
        """Double the entries (a reallocation; existing entries keep their index)."""
        Q = self.entries
        self.k = [torch.cat([t, torch.zeros_like(t)]) for t in self.k]
        self.v = [torch.cat([t, torch.zeros_like(t)]) for t in self.v]
        self.mask = torch.cat([self.mask, torch.zeros_like(self.mask)])
        self.free += list(range(Q, 2 * Q))

    def load(self, src: "InferenceCache", src_row: int) -> int:
        """Copy row ``src_row`` of the plain (prefill) cache ``src`` into a free entry; its index."""
        if not self.free:
            self.grow()
        e = min(self.free)
        self.free.remove(e)
        self.in_use.add(e)
        L = src.length
        if L > self.mask.shape[1]:
            raise ValueError(f"a {L}-position prompt does not fit the table's {self.mask.shape[1]}")
        attn = [st for st in src.layers if isinstance(st, AttentionState)]
        for li, st in enumerate(attn):
            self.k[li][e, :, :L] = st.k[src_row, :, :L]
            self.v[li][e, :, :L] = st.v[src_row, :, :L]
        self.mask[e] = False
        self.mask[e, :L] = src.key_mask[src_row, :L]
        if L < self.length or not bool(self.mask[e, :L].all()):
            self.padded = True  # (a shorter prompt than one before is masked past its end)
        elif L > self.length and self.in_use - {e}:
            self.padded = True  # entries in use before are shorter than the new length
        self.length = max(self.length, L)
        return e

    def release(self, e: int) -> None:
        """Entry ``e`` is read by no row any more."""
        self.mask[e] = False
        self.free.append(e)
        self.in_use.discard(e)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


@dataclass
class InferenceCache:
    layers: list[LayerState]
    key_mask: torch.Tensor
    """(B, S_max) bool: which cached positions are real tokens (False = left padding)."""
    next_pos: torch.Tensor
    """(B,) long: RoPE position of each row's next token (= real tokens seen so far)."""
    length: int = 0
    """Positions used so far, pads included (same for every row)."""
    padded: bool = False
    """Some cached position is padding: decode steps need an attention mask."""
    row_len: Optional[torch.Tensor] = None
    """(B,) long, slotted caches only (None for a plain one): positions each row has used."""
    host_len: Optional[torch.Tensor] = None
    """``row_len`` on the CPU, so that ``length`` (their max) needs no device sync."""
    prompts: Optional[PromptTable] = None
    """Slotted caches with shared prompts (``share_prompts``): the prompts' one KV copy."""

    @property
    def slotted(self) -> bool:
        return self.row_len is not None

    def to_slots(self) -> "InferenceCache":
        """Make an empty plain cache slotted: every row empty (length 0). In place; returns self."""
        if self.length:
            raise ValueError("to_slots needs an empty cache")
        B = self.batch_size
        self.row_len = torch.zeros(B, dtype=torch.long, device=self.key_mask.device)
        self.host_len = torch.zeros(B, dtype=torch.long)
        self.padded = True
        return self

    def share_prompts(self, n: int, max_prompt_len: int, entries: int) -> "InferenceCache":
        """Shared prompt state for an empty slotted cache: attention rows will keep only their own
        tokens, and read their prompt's KV from one ``PromptTable`` entry (``set_prompt``); Mamba
        states stay per row. In place; returns self."""
        if not self.slotted or self.length:
            raise ValueError("share_prompts needs an empty slotted cache")
        attn = [st for st in self.layers if isinstance(st, AttentionState)]
        if attn:
            G, hd = attn[0].k.shape[1], attn[0].k.shape[3]
            self.prompts = PromptTable(len(attn), n, max(1, entries), max_prompt_len, G, hd, self.batch_size,
                                       attn[0].k.dtype, attn[0].k.device)
            for li, st in enumerate(attn):
                st.prompt = (self.prompts, li)
        return self

    def load_rows_shared(self, dst: Sequence[int], src: "InferenceCache", src_rows: Sequence[int],
                         entries: Sequence[int], samples: Sequence[int]) -> None:
        """Slotted rows ``dst`` start sampling from rows ``src_rows`` of the prefill cache ``src``,
        whose KV is already in prompt-table ``entries`` (``PromptTable.load``), as sample
        ``samples`` of each: Mamba states and positions copied, the rows' own tokens emptied."""
        if self.prompts is None and any(isinstance(st, AttentionState) for st in self.layers):
            raise ValueError("load_rows_shared needs share_prompts first")
        dev = self.key_mask.device
        d = torch.as_tensor(list(dst), dtype=torch.long, device=dev)
        r = torch.as_tensor(list(src_rows), dtype=torch.long, device=src.key_mask.device)
        for mine, theirs in zip(self.layers, src.layers):
            if isinstance(mine, MambaState):
                mine.load_rows(d, theirs, r)
        self.key_mask[d] = False
        self.next_pos[d] = src.next_pos[r].to(dev)
        self.row_len[d] = 0
        self.host_len[d.cpu()] = 0
        self.length = min(self.capacity, int(self.host_len.max()))
        if self.prompts is not None:
            self.prompts.pos[d] = torch.as_tensor([e * self.prompts.n + j for e, j in zip(entries, samples)],
                                                  dtype=torch.long, device=dev)

    def clear_prompt(self, rows: Sequence[int]) -> None:
        """Rows ``rows`` have finished: they read no prompt entry any more (one may be reused)."""
        if self.prompts is not None and len(rows):
            self.prompts.pos[torch.as_tensor(list(rows), dtype=torch.long, device=self.key_mask.device)] = -1

    def load_rows(self, dst: Sequence[int], src: "InferenceCache", src_rows: Sequence[int]) -> None:
        """Slotted rows ``dst`` take over rows ``src_rows`` of the plain cache ``src`` (a prefill):
        its ``src.length`` positions, left padding included (masked as in ``src``), its positions
        and its Mamba states. The rest of each ``dst`` row is masked out."""
        if not self.slotted or src.slotted:
            raise ValueError("load_rows copies a plain cache's rows into a slotted cache")
        if src.length > self.capacity:
            raise ValueError(f"{src.length} positions do not fit slots of {self.capacity}")
        dev = self.key_mask.device
        d = torch.as_tensor(list(dst), dtype=torch.long, device=dev)
        r = torch.as_tensor(list(src_rows), dtype=torch.long, device=src.key_mask.device)
        for mine, theirs in zip(self.layers, src.layers):
            mine.load_rows(d, theirs, r)
        L = src.length
        self.key_mask[d] = False
        self.key_mask[d, :L] = src.key_mask[r, :L].to(dev)
        self.next_pos[d] = src.next_pos[r].to(dev)
        self.row_len[d] = L
        self.host_len[d.cpu()] = L
        self.length = min(self.capacity, int(self.host_len.max()))

    def advance_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Book one new token per row of a slotted cache: (RoPE positions (B, 1), attention mask
        (B, 1, 1, S) bool over the S positions now in use). A row at capacity (an emptied slot
        still stepping) rewrites its last position."""
        B = self.batch_size
        pos = self.row_len.clamp(max=self.capacity - 1)
        rows = torch.arange(B, device=pos.device)
        self.key_mask[rows, pos] = True
        self.row_len = pos + 1
        self.host_len = (self.host_len + 1).clamp(max=self.capacity)
        self.length = int(self.host_len.max()) if B else 0
        for st in self.layers:
            if isinstance(st, AttentionState):
                st.write_pos, st.write_rows, st.length = pos, rows, self.length
        if self.prompts is not None:
            t = self.prompts
            t.flat = torch.where(t.pos < 0, t.active * t.n, t.pos)
        rope = self.next_pos[:, None]
        self.next_pos = self.next_pos + 1
        return rope, self.key_mask[:, None, None, :self.length]

    @property
    def capacity(self) -> int:
        return self.key_mask.shape[1]

    @property
    def batch_size(self) -> int:
        return self.key_mask.shape[0]

    def select(self, index: torch.Tensor) -> "InferenceCache":
        """Keep rows ``index`` (B',) in that order: repeat_interleave for n samples, a subset to
        drop finished rows. In place; returns self."""
        index = index.to(self.key_mask.device)
        for st in self.layers:
            st.select(index)
        self.key_mask = self.key_mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        if self.prompts is not None:
            self.prompts.pos = self.prompts.pos.index_select(0, index)
        if self.slotted:
            self.row_len = self.row_len.index_select(0, index)
            self.host_len = self.host_len.index_select(0, index.cpu())
            self.length = int(self.host_len.max()) if len(self.host_len) else 0
        return self

    def nbytes(self) -> int:
        """Bytes of state: every layer's, and the shared prompts' table when there is one."""
        return sum(st.nbytes() for st in self.layers) + (self.prompts.nbytes() if self.prompts is not None else 0)
