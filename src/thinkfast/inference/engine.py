"""The sampling engine: batched, left-padded, n samples per prompt from one prefill.

The reference path (``SamplingParams.continuous`` False, the default): one batch of prompts goes
through
  1. left padding to a common length and one prefill of the whole batch;
  2. the prefilled state copied n ways (``InferenceCache.select`` with repeat_interleave);
  3. a decode loop, one token per row per step, with rows that finished dropped from the
     batch once enough of them have (so a long straggler does not drag dead rows along).
The batch only shrinks: its last rows decode almost alone.

Continuous batching (``continuous=True``): ``max_batch_rows`` slots decode at once over all the
call's prompts; a finished row's slot goes to the next waiting sample, whose prompt's prefilled
state is copied in (a slotted ``InferenceCache``, each row at its own length). The samples are
the reference path's, token for token (tests/inference/test_continuous_batching.py).

Timings (``GenerationOutput.timing``, see ``inference.outputs.TIMING_KEYS`` for what each
includes) are taken after a device sync.

Randomness is counter-based: the noise for (sample, step, token) is a hash of the sample's key,
the step and the token id, and a sample's key is derived from ``seed + sample index`` and the
prompt's tokens. So a sample does not depend on which other prompts or samples share its batch:
sample j of a run with seed s equals the single sample of a run with seed s + j, and a prompt
sampled alone equals the same prompt in a left-padded batch. The reference sampler (the default)
is Gumbel-max on the tempered, top-k / top-p filtered logits, which draws exactly from that
distribution; ``sampler='cdf'`` draws from the same distribution by inverting its CDF with one
hashed uniform per row, over the top-k / nucleus candidates only (cheaper; other tokens for the
same seed; tests/inference/test_sampler.py checks its distribution).

The context: prompt plus new tokens never exceed the model's ``max_seq_len``. A prompt within
``max_new_tokens`` of it gets only the room that is left; its samples that run out of room end
with finish_reason 'length' and ``hit_context_limit`` set, and ``generate`` warns
(``ContextLimitWarning``), once per call. Such prompts are decoded apart from the others, grouped
by length, because a left-padded batch shares one length: one long prompt would otherwise cut
every prompt beside it short, and a sample would depend on its batch.

Glossary: P prompts in a batch, R = P * n rows, V vocab, Lp padded prompt length, S slots (rows
decoded at once with continuous batching).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from ..models.lm import LanguageModel
from .outputs import GenerationOutput, Sample, batch_outputs, cut_by_context
from .padding import left_pad
from .seeding import derive_seed

__all__ = ["ContextLimitWarning", "GenerationOutput", "NUCLEUS_CANDIDATES", "SAMPLERS", "Sample", "SamplingParams",
           "StopChecker", "default_eos", "derive_seed", "filter_logits", "finish_sample", "generate", "gumbel_noise",
           "left_pad", "sample_cdf", "sample_next", "uniform_noise"]

_MASK32 = 0xFFFFFFFF


SAMPLERS = ("gumbel", "cdf")
NUCLEUS_CANDIDATES = 256
"""The 'cdf' sampler's top-p candidates: the top this many tokens by value; a row whose nucleus
is larger tries 16 times as many, then falls back to a sort of its whole vocabulary."""


@dataclass
class SamplingParams:
    n: int = 1
    """Samples per prompt, all from one prefill."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 means no top-k filter."""
    max_new_tokens: int = 256
    stop: Sequence[str] = ()
    """Generation stops when the text ends with one of these; the text is cut before it."""
    seed: int = 0
    eos_token_ids: Optional[Sequence[int]] = None
    """Defaults to the tokenizer's eos token; empty means never stop on a token."""
    compact_fraction: float = 0.25
    """Drop finished rows from the batch once this fraction of it has finished (speed only). With
    ``continuous``, only once no sample is left waiting for a slot."""
    continuous: bool = False
    """Continuous batching: decode at most ``max_batch_rows`` rows at once, over all of the call's
    prompts, and give a finished row's slot to the next waiting sample (another sample of a
    prompt already prefilled, or the first of the next prompt, prefilled then). The samples are
    token for token those of the reference path (False: each batch of ``batch_size`` prompts
    prefilled, copied n ways and decoded until its last row ends); only the speed differs."""
    max_batch_rows: Optional[int] = None
    """Rows decoded at once with ``continuous``; default ``batch_size * n`` (``generate``'s
    ``batch_size``, itself all prompts by default), the reference path's rows per batch."""
    sampler: str = "gumbel"
    """'gumbel' (the reference): Gumbel-max with counter-hashed noise over the whole vocabulary.
    'cdf': inverse-CDF sampling with one counter-hashed uniform per row, over the top-k or
    nucleus candidates only (top-p from a top-k of ``NUCLEUS_CANDIDATES`` by value, the full sort
    only for rows whose nucleus is larger). Both draw exactly from the filtered distribution
    and neither depends on the batch, but they draw different tokens for the same seed."""
    shared_prompt: bool = False
    """With ``continuous``: the n samples of a prompt read one copy of its attention KV cache (a
    ``PromptTable`` entry) instead of n copies; each row keeps only its own tokens' KV. Same
    attention to float rounding (tests/inference/test_shared_prompt.py); Mamba state stays per row."""
    fast: bool = False
    """The inference fast path (``LanguageModel.forward(fast=True)``): fused norms, RoPE on q|k in
    one go, decode attention with fewer kernels, in-place residuals (with a model packed by
    ``LanguageModel.prepare_for_inference``, one q|k|v and one gate|up product per layer either
    way). Token for token the reference's samples (the same floats on CPU in fp32,
    tests/inference/test_fast_decode.py). Off by default: on CPU it measured no clear gain over
    the reference step (docs/performance.md, "The decode step")."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.max_new_tokens < 0:
            raise ValueError("top_k and max_new_tokens must be >= 0")
        if self.max_batch_rows is not None and self.max_batch_rows < 1:
            raise ValueError("max_batch_rows must be >= 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}")
        if self.shared_prompt and not self.continuous:
            raise ValueError("shared_prompt needs continuous=True")
        self.stop = tuple(self.stop)


class ContextLimitWarning(UserWarning):
    """Some prompts leave less than ``max_new_tokens`` of room in the model's context."""


# --- counter-based randomness ----------------------------------------------------------------

def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(keys: torch.Tensor, step: Union[int, torch.Tensor], vocab: int) -> torch.Tensor:
    """Standard Gumbel noise (R, V) that depends only on (key, step, token id). ``step``: one int
    for every row, or (R,) long, each row's own (its sample's token index)."""
    base = _fmix32((keys * 0x9E3779B1 + step * 0x7FEB352D) & _MASK32)[:, None]  # (R, 1)
    ids = torch.arange(vocab, device=keys.device, dtype=torch.int64)[None]  # (1, V)
    bits = _fmix32(_fmix32(base ^ ((ids * 0x27D4EB2F) & _MASK32)) + 0x165667B1 & _MASK32)
    u = (bits.double() + 0.5) / 2.0**32  # in (0, 1)
    return -torch.log(-torch.log(u)).float()


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Tempered logits with everything outside top-k / the top-p nucleus set to -inf. (R, V)."""
    z = logits.float() / temperature
    if top_k and top_k < z.shape[-1]:
        keep = torch.zeros_like(z, dtype=torch.bool).scatter(-1, torch.topk(z, top_k, dim=-1).indices, True)
        z = z.masked_fill(~keep, float("-inf"))  # exactly k tokens survive, ties included
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = sorted_z.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first is always kept)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def sample_next(logits: torch.Tensor, params: SamplingParams, keys: torch.Tensor,
                step: Union[int, torch.Tensor]) -> torch.Tensor:
    """logits (R, V), keys (R,), step int or (R,) -> token ids (R,), by ``params.sampler``."""
    if params.temperature == 0:
        return logits.argmax(-1)
    if params.sampler == "cdf":
        return sample_cdf(logits, params.temperature, params.top_k, params.top_p, keys, step)
    z = filter_logits(logits, params.temperature, params.top_k, params.top_p)
    return (z + gumbel_noise(keys, step, z.shape[-1])).argmax(-1)


def uniform_noise(keys: torch.Tensor, step: Union[int, torch.Tensor]) -> torch.Tensor:
    """One uniform in (0, 1) per row (R,) float64, a function of (key, step) only (a stream apart
    from ``gumbel_noise``'s)."""
    h = _fmix32((keys * 0x9E3779B1 + step * 0x7FEB352D) & _MASK32)
    h = _fmix32((h ^ 0x5BD1E995) * 0x2C1B3C6D & _MASK32)
    return (h.double() + 0.5) / 2.0**32


def _pick(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """p (R, C) unnormalised probabilities >= 0, u (R,) in (0, 1) -> (R,) the index where the
    cumulative mass first exceeds u * total: a draw from p / p.sum()."""
    cum = p.double().cumsum(-1)
    j = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True)[:, 0]
    return j.clamp(max=p.shape[-1] - 1)


def sample_cdf(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, keys: torch.Tensor,
               step: Union[int, torch.Tensor]) -> torch.Tensor:
    """Inverse-CDF sampling from the distribution ``filter_logits`` leaves: logits (R, V),
    keys (R,) -> token ids (R,). One uniform per row; probabilities computed only over the
    candidates: the top-k; for top-p alone the top ``NUCLEUS_CANDIDATES``, with the full
    normaliser (one logsumexp over V), and the reference's full sort for rows whose nucleus is
    not inside them; neither filter: the whole vocabulary in vocabulary order, no sort."""
    z = logits.float() / temperature
    R, V = z.shape
    u = uniform_noise(keys, step)
    k = top_k if top_k and top_k < V else 0
    if not k and top_p >= 1.0:
        return _pick(torch.softmax(z, -1), u)
    if k:
        vals, idx = torch.topk(z, k, dim=-1)  # (R, k), descending
        p = torch.softmax(vals, -1)
        if top_p < 1.0:
            p = p * ((p.cumsum(-1) - p) < top_p)
        return idx.gather(-1, _pick(p, u)[:, None])[:, 0]
    lse = torch.logsumexp(z, -1, keepdim=True)  # (R, 1): the full normaliser
    out = torch.empty(R, dtype=torch.long, device=z.device)
    rows = torch.arange(R, device=z.device)
    for c in (NUCLEUS_CANDIDATES, 16 * NUCLEUS_CANDIDATES):
        if c >= V:
            break
        vals, idx = torch.topk(z[rows], c, dim=-1)  # (r, c), descending
        p = torch.exp(vals - lse[rows])  # true probabilities
        cum = p.cumsum(-1)
        out[rows] = idx.gather(-1, _pick(p * ((cum - p) < top_p), u[rows])[:, None])[:, 0]
        rows = rows[cum[:, -1] < top_p]  # the nucleus reaches past the candidates: try wider
        if not len(rows):
            return out
    sz, order = torch.sort(z[rows], dim=-1, descending=True)  # the reference's full sort
    q = sz.softmax(-1)
    q = q * ((q.cumsum(-1) - q) < top_p)
    out[rows] = order.gather(-1, _pick(q, u[rows])[:, None])[:, 0]
    return out


# --- the engine ------------------------------------------------------------------------------

def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has finished the work queued so far (CUDA and MPS
    run asynchronously: without the sync a timestamp says when work was queued, not done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def _fast_kw(model, params: SamplingParams) -> dict[str, bool]:
    """The forward's ``fast`` argument for a LanguageModel; any other model (a stand-in with the
    same calls) gets the plain call."""
    return {"fast": params.fast} if isinstance(model, LanguageModel) else {}


def _encode(prompts, tokenizer, add_special_tokens: bool) -> list[list[int]]:
    out = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need a tokenizer")
            out.append(list(tokenizer.encode(p, add_special_tokens=add_special_tokens)))
        else:
            out.append([int(t) for t in p])
        if not out[-1]:
            raise ValueError("empty prompt")
    return out


def default_eos(tokenizer) -> tuple[int, ...]:
    """The tokenizer's EOS id, the stop token when ``eos_token_ids`` is not given."""
    if tokenizer is None or getattr(tokenizer, "eos_token_id", None) is None:
        return ()
    return (int(tokenizer.eos_token_id),)


class StopChecker:
    """Finds stop strings at the end of each row's text by decoding only a short tail.

    ``hit`` is the reference: decode the row's last ``window`` tokens and look for a stop. The
    engine calls it only for rows whose newest token ``may_complete`` a stop: a stop that was
    not in the tail before this token and is now must end inside this token's text, so that
    text holds the stop's last character. A token's text is its own decode, memoised; a token
    that decodes to nothing or to part of a character (U+FFFD), and every token when a stop
    ends in a space (tokenizers drop leading spaces when decoding a token alone), always counts.
    """

    def __init__(self, stops: Sequence[str], tokenizer):
        self.stops = tuple(s for s in stops if s)
        if self.stops and tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        self.tok = tokenizer
        # tokens of tail to decode: a token holds at least one UTF-8 byte (a byte-level BPE may
        # split one character over several tokens), so a stop spans at most its bytes' count
        self.window = max((len(s.encode("utf-8")) for s in self.stops), default=0) + 2
        self._last_chars = {s[-1] for s in self.stops}
        self._every_token = any(s[-1] == " " or "\ufffd" in s for s in self.stops)
        self._memo: dict[int, bool] = {}

    def hit(self, ids: list[int]) -> bool:
        if not self.stops:
            return False
        tail = self.tok.decode(ids[-self.window:], skip_special_tokens=True)
        return any(s in tail for s in self.stops)

    def _may_complete_one(self, token: int) -> bool:
        flag = self._memo.get(token)
        if flag is None:
            text = self.tok.decode([token], skip_special_tokens=True)
            flag = (self._every_token or not text or "\ufffd" in text
                    or any(c in text for c in self._last_chars))
            self._memo[token] = flag
        return flag

    def may_complete(self, tokens: torch.Tensor) -> torch.Tensor:
        """(L,) token ids -> (L,) bool: rows worth a ``hit`` check after appending these tokens."""
        flags = [self._may_complete_one(t) for t in tokens.tolist()]
        return torch.tensor(flags, dtype=torch.bool, device=tokens.device)

    def cut(self, text: str) -> str:
        cuts = [text.find(s) for s in self.stops if s in text]
        return text[: min(cuts)] if cuts else text


@torch.inference_mode()
def _generate_batch(model: LanguageModel, prompt_ids: list[list[int]], params: SamplingParams,
                    tokenizer, eos: set[int], stopper: StopChecker) -> list[GenerationOutput]:
    device = model.device
    P, n = len(prompt_ids), params.n
    Lp = max(len(p) for p in prompt_ids)
    max_new = min(params.max_new_tokens, model.config.max_seq_len - Lp)
    ids, mask = left_pad(prompt_ids, 0, mask_dtype=torch.bool)
    ids, mask = ids.to(device), mask.to(device)
    prompt_keys = [[derive_seed(params.seed + j, p, bits=32) for j in range(n)] for p in prompt_ids]

    t0 = _clock(device)
    cache = model.allocate_cache(P, Lp + max(max_new, 1))
    logits = model(ids, attention_mask=None if bool(mask.all()) else mask, cache=cache, logits_to_keep=1,
                   **_fast_kw(model, params)).logits[:, -1]
    t1 = _clock(device)

    R = P * n
    expand = torch.arange(P, device=device).repeat_interleave(n)
    cache.select(expand)
    logits = logits.index_select(0, expand)
    keys = torch.tensor([k for ks in prompt_keys for k in ks], dtype=torch.int64, device=device)
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    # Row r of the outputs is (prompt r // n, sample r % n); `live` maps batch rows to r.
    out_tok = torch.zeros(R, max(max_new, 1), dtype=torch.long, device=device)
    out_lp = torch.zeros(R, max(max_new, 1), dtype=torch.float32, device=device)
    length = torch.zeros(R, dtype=torch.long, device=device)
    reason = torch.zeros(R, dtype=torch.long, device=device)  # 0 length, 1 eos, 2 stop
    finished = torch.zeros(R, dtype=torch.bool, device=device)
    live = torch.arange(R, device=device)
    for step in range(max_new):
        tok = sample_next(logits, params, keys, step)  # (L,)
        lp = torch.log_softmax(logits.float(), -1).gather(-1, tok[:, None])[:, 0]
        active = ~finished[live]  # rows finished earlier but not yet dropped are ignored
        rows = live[active]
        out_tok[rows, step] = tok[active]
        out_lp[rows, step] = lp[active]
        length[rows] += 1
        hit_eos = torch.isin(tok, eos_ids) & active
        reason[live[hit_eos]] = 1
        finished[live[hit_eos]] = True
        if stopper.stops:
            for r in live[active & ~hit_eos & stopper.may_complete(tok)].tolist():
                if stopper.hit(out_tok[r, : int(length[r])].tolist()):
                    reason[r], finished[r] = 2, True
        n_open = int((~finished[live]).sum())
        if n_open == 0 or step == max_new - 1:
            break
        if len(live) - n_open >= max(1.0, params.compact_fraction * len(live)):
            keep = (~finished[live]).nonzero()[:, 0]
            cache.select(keep)
            keys, tok, live = keys[keep], tok[keep], live[keep]
        logits = model(tok[:, None], cache=cache, **_fast_kw(model, params)).logits[:, -1]
    t2 = _clock(device)

    lengths, reasons = length.tolist(), reason.tolist()
    toks, lps = out_tok.tolist(), out_lp.tolist()
    names = ("length", "eos", "stop")
    samples = [[finish_sample(toks[r][: lengths[r]], lps[r][: lengths[r]], names[reasons[r]], tokenizer, stopper,
                              max_new, params.max_new_tokens) for r in range(i * n, (i + 1) * n)]
               for i in range(P)]
    return batch_outputs(prompt_ids, samples, n, t1 - t0, t2 - t1, rows_at_once=R, continuous=False)


class _PromptPool:
    """Prefilled prompts whose samples still wait for a slot: each prompt's row in the plain cache
    of the prefill it was in, and its last-position logits (V,)."""

    def __init__(self, model: LanguageModel, prompt_ids: list[list[int]], params: SamplingParams):
        self.model, self.prompt_ids, self.kw = model, prompt_ids, _fast_kw(model, params)
        self.where: dict[int, tuple[Any, int]] = {}  # prompt -> (cache, row)
        self.logits: dict[int, torch.Tensor] = {}
        self.prefill_s = 0.0

    def prefill(self, prompts: list[int]) -> None:
        """One left-padded prefill of ``prompts`` (indices), timed into ``prefill_s``."""
        model, device = self.model, self.model.device
        t0 = _clock(device)
        ids, mask = left_pad([self.prompt_ids[i] for i in prompts], 0, mask_dtype=torch.bool)
        ids, mask = ids.to(device), mask.to(device)
        cache = model.allocate_cache(len(prompts), ids.shape[1])
        logits = model(ids, attention_mask=None if bool(mask.all()) else mask, cache=cache,
                       logits_to_keep=1, **self.kw).logits[:, -1]
        for b, i in enumerate(prompts):
            self.where[i], self.logits[i] = (cache, b), logits[b]
        self.prefill_s += _clock(device) - t0

    def release(self, i: int) -> None:
        """Prompt ``i`` has no sample left waiting (its cache goes with its last prompt)."""
        self.where.pop(i), self.logits.pop(i)


@torch.inference_mode()
def _generate_continuous(model: LanguageModel, prompt_ids: list[list[int]], params: SamplingParams,
                         tokenizer, eos: set[int], stopper: StopChecker, slots: int) -> list[GenerationOutput]:
    """Continuous batching over the P prompts of one context group: S = min(slots, P * n) rows
    decode at once in a slotted cache; the samples queue in order (prompt i's n samples, then
    prompt i + 1's); a row that finishes frees its slot, which the next waiting sample takes
    after the step, with its prompt's prefilled state copied in (``InferenceCache.load_rows``).
    A prompt is prefilled when its first sample is due, together with the next prompts needed
    to fill the free slots. Each sample keeps its own key and token index (the noise's step), so
    it draws the same tokens as on the reference path."""
    device = model.device
    P, n = len(prompt_ids), params.n
    Lmax = max(len(p) for p in prompt_ids)
    max_new = min(params.max_new_tokens, model.config.max_seq_len - Lmax)
    if max_new <= 0:  # nothing to decode: the reference path says so the same way
        return _generate_batch(model, prompt_ids, params, tokenizer, eos, stopper)
    R = P * n
    S = min(slots, R)
    t_start = _clock(device)
    shared = params.shared_prompt
    cache = model.allocate_cache(S, max_new if shared else Lmax + max_new).to_slots()
    if shared:
        cache.share_prompts(n, Lmax, entries=-(-S // n) + 1)
    entry: dict[int, int] = {}  # shared: prompt -> its PromptTable entry
    live = [0] * P  # rows of each prompt in the slots
    pool = _PromptPool(model, prompt_ids, params)
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    logits: Optional[torch.Tensor] = None  # (S, V)
    keys = torch.zeros(S, dtype=torch.int64, device=device)
    steps = torch.zeros(S, dtype=torch.long, device=device)  # tokens each slot's sample has so far
    buf_tok = torch.zeros(S, max_new, dtype=torch.long, device=device)
    buf_lp = torch.zeros(S, max_new, dtype=torch.float32, device=device)
    slot_row = [-1] * S  # the output row (prompt * n + sample) in each slot, -1: empty
    active = torch.zeros(S, dtype=torch.bool, device=device)
    results: list[Optional[tuple]] = [None] * R
    next_row = 0  # the first sample still waiting
    names = ("length", "eos", "stop")

    def refill(free: list[int]) -> None:
        nonlocal next_row, logits
        take = free[: R - next_row]
        if not take:
            return
        rows = list(range(next_row, next_row + len(take)))
        next_row += len(take)
        need = sorted({r // n for r in rows} - set(pool.where))
        if need:
            pool.prefill(need)
        # id(prefill cache) -> (the cache, slots, its rows, output rows)
        by_cache: dict[int, tuple[Any, list[int], list[int], list[int]]] = {}
        for s_, r in zip(take, rows):
            c, b = pool.where[r // n]
            by_cache.setdefault(id(c), (c, [], [], []))
            by_cache[id(c)][1].append(s_)
            by_cache[id(c)][2].append(b)
            by_cache[id(c)][3].append(r)
            i = r // n
            live[i] += 1
            if shared and i not in entry and cache.prompts is not None:
                entry[i] = cache.prompts.load(c, b)
        for c, dst, src, rs in by_cache.values():
            if shared:
                cache.load_rows_shared(dst, c, src, [entry.get(r // n, 0) for r in rs], [r % n for r in rs])
            else:
                cache.load_rows(dst, c, src)
        idx = torch.tensor(take, dtype=torch.long, device=device)
        new = torch.stack([pool.logits[r // n] for r in rows])  # (M, V)
        if logits is None:
            logits = new.new_zeros(S, new.shape[-1])  # every row is filled before it is read
        logits[idx] = new.to(logits.dtype)
        keys[idx] = torch.tensor([derive_seed(params.seed + r % n, prompt_ids[r // n], bits=32) for r in rows],
                                 dtype=torch.int64, device=device)
        steps[idx] = 0
        active[idx] = True
        for s_, r in zip(take, rows):
            slot_row[s_] = r
            if r % n == n - 1:  # the prompt's last sample has a slot: its prefill is no longer needed
                pool.release(r // n)

    refill(list(range(S)))
    while True:
        tok = sample_next(logits, params, keys, steps)  # (S,)
        lp = torch.log_softmax(logits.float(), -1).gather(-1, tok[:, None])[:, 0]
        at = steps.clamp(max=max_new - 1)[:, None]
        buf_tok.scatter_(1, at, tok[:, None])
        buf_lp.scatter_(1, at, lp[:, None])
        steps += active.long()
        hit_eos = torch.isin(tok, eos_ids) & active
        reason = hit_eos.long()  # 0 length, 1 eos, 2 stop
        if stopper.stops:
            for s_ in (active & ~hit_eos & stopper.may_complete(tok)).nonzero()[:, 0].tolist():
                if stopper.hit(buf_tok[s_, : int(steps[s_])].tolist()):
                    reason[s_] = 2
        done = active & ((reason > 0) | (steps >= max_new))
        ended = done.nonzero()[:, 0].tolist()
        if ended:
            e = torch.tensor(ended, dtype=torch.long, device=device)
            lens, why = steps[e].tolist(), reason[e].tolist()
            toks, lps = buf_tok[e].tolist(), buf_lp[e].tolist()
            for k, s_ in enumerate(ended):
                r = slot_row[s_]
                results[r] = (toks[k][: lens[k]], lps[k][: lens[k]], names[why[k]])
                slot_row[s_] = -1
                live[r // n] -= 1
                if live[r // n] == 0 and r // n in entry and next_row >= (r // n + 1) * n:
                    cache.prompts.release(entry.pop(r // n))  # no row reads it, none will
            cache.clear_prompt(ended)  # before a refill may reuse an entry
            active[e] = False
        n_open = sum(r >= 0 for r in slot_row)
        if n_open == 0 and next_row >= R:
            break
        if next_row >= R and len(slot_row) - n_open >= max(1.0, params.compact_fraction * len(slot_row)):
            keep = [k for k, r in enumerate(slot_row) if r >= 0]
            kt = torch.tensor(keep, dtype=torch.long, device=device)
            cache.select(kt)
            keys, steps, active, tok = keys[kt], steps[kt], active[kt], tok[kt]
            buf_tok, buf_lp = buf_tok[kt], buf_lp[kt]
            slot_row = [slot_row[k] for k in keep]
        if n_open:
            logits = model(tok[:, None], cache=cache, **_fast_kw(model, params)).logits[:, -1]
        if next_row < R:
            refill([k for k, r in enumerate(slot_row) if r < 0])
    t_end = _clock(device)

    samples = [[finish_sample(*results[r], tokenizer, stopper, max_new, params.max_new_tokens)
                for r in range(i * n, (i + 1) * n)] for i in range(P)]
    return batch_outputs(prompt_ids, samples, n, pool.prefill_s, t_end - t_start - pool.prefill_s,
                         rows_at_once=S, continuous=True)


def finish_sample(token_ids: list[int], logprobs: Optional[list[float]], finish_reason: str, tokenizer,
                  stopper: StopChecker, room: int, max_new_tokens: int) -> Sample:
    """The Sample of a row that ended with ``finish_reason`` after ``token_ids``: its text decoded
    (cut before the stop string when it stopped on one), ``hit_context_limit`` when it ran out of
    ``room`` and that was less than ``max_new_tokens``."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True) if tokenizer is not None else ""
    if finish_reason == "stop":
        text = stopper.cut(text)
    return Sample(text, token_ids, logprobs, finish_reason,
                  hit_context_limit=cut_by_context(finish_reason, len(token_ids), room, max_new_tokens))


def generate(
    model: LanguageModel,
    prompts: Sequence[Union[str, Sequence[int]]],
    params: Optional[SamplingParams] = None,
    tokenizer: Any = None,
    batch_size: Optional[int] = None,
    add_special_tokens: bool = True,
) -> list[GenerationOutput]:
    """Sample ``params.n`` completions for each prompt.

    prompts: texts (needs ``tokenizer``) or token-id lists. ``batch_size`` prompts are prefilled
    together (default: all); each batch decodes ``batch_size * n`` rows at once. With
    ``params.continuous`` the call instead decodes ``params.max_batch_rows`` rows at once
    (default ``batch_size * n``) over all its prompts, refilling finished rows, and every output
    carries the timing of that one call.
    Returns one GenerationOutput per prompt, in order.
    """
    params = params or SamplingParams()
    ids = _encode(prompts, tokenizer, add_special_tokens)
    eos = set(params.eos_token_ids) if params.eos_token_ids is not None else set(default_eos(tokenizer))
    stopper = StopChecker(params.stop, tokenizer)
    ctx = model.config.max_seq_len
    _check_context(ids, params.max_new_tokens, ctx)
    bs = batch_size or len(ids)
    was_training = model.training
    model.eval()
    try:
        outs: list[Optional[GenerationOutput]] = [None] * len(ids)
        if params.continuous:
            slots = params.max_batch_rows or bs * params.n
            for group in _context_groups(ids, range(len(ids)), params.max_new_tokens, ctx):
                for i, o in zip(group, _generate_continuous(model, [ids[i] for i in group], params, tokenizer,
                                                            eos, stopper, slots)):
                    outs[i] = o
            return outs
        for s in range(0, len(ids), bs):
            for group in _context_groups(ids, range(s, min(s + bs, len(ids))), params.max_new_tokens, ctx):
                for i, o in zip(group, _generate_batch(model, [ids[i] for i in group], params, tokenizer, eos,
                                                       stopper)):
                    outs[i] = o
        return outs
    finally:
        model.train(was_training)


def _check_context(ids: list[list[int]], max_new_tokens: int, ctx: int) -> None:
    """Refuse prompts with no room in the context; warn about those with less than asked."""
    for p in ids:
        if len(p) > ctx:
            raise ValueError(f"prompt of {len(p)} tokens is longer than the model's context ({ctx})")
        if len(p) == ctx and max_new_tokens > 0:
            raise ValueError(f"prompt of {len(p)} tokens fills the model's context ({ctx}): no room for new tokens")
    room = [ctx - len(p) for p in ids if len(p) + max_new_tokens > ctx]
    if room:
        warnings.warn(f"{len(room)} of {len(ids)} prompts leave less than max_new_tokens={max_new_tokens} in the "
                      f"model's {ctx}-token context: they get at most {min(room)}"
                      f"{'' if min(room) == max(room) else f' to {max(room)}'} new tokens, up to "
                      f"{max_new_tokens - min(room)} fewer than asked; their samples that run out of room "
                      "end with finish_reason 'length' and hit_context_limit set",
                      ContextLimitWarning, stacklevel=3)


def _context_groups(ids: list[list[int]], batch: range, max_new_tokens: int, ctx: int) -> list[list[int]]:
    """Indices of ``batch`` split so that no prompt's room is cut by a longer one beside it:
    the prompts with room for ``max_new_tokens`` together, each length of the rest apart."""
    fits = [i for i in batch if len(ids[i]) + max_new_tokens <= ctx]
    by_len: dict[int, list[int]] = {}
    for i in batch:
        if len(ids[i]) + max_new_tokens > ctx:
            by_len.setdefault(len(ids[i]), []).append(i)
    return ([fits] if fits else []) + [by_len[k] for k in sorted(by_len)]
