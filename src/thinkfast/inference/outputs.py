"""What every sampler returns: the engine's output types and its per-call timing.

``thinkfast.inference.engine`` and every backend of ``thinkfast.inference.backends`` return one
``GenerationOutput`` per prompt, built by ``batch_outputs``. This module needs no torch, so the
backends and ``eval.sampling`` import it without loading a model stack.

Names: a sampler counts what it is given, prompts, so its timing says ``batch_prompts`` (prompts
in the call) and ``batch_rows`` (sequences decoded by the call, ``batch_prompts * n``).
``eval.sampling`` gives one prompt per problem and records ``batch_prompts`` in its rows as
``batch_problems`` (see ``eval.sampling.ROW_TIMING_KEYS``), the name of ``--batch-problems``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

TIMING_KEYS = ("prefill_s", "decode_s", "batch_prompts", "batch_rows", "new_tokens", "prompt_tokens")
"""The keys of ``GenerationOutput.timing``, all for the whole call the prompt was in.

What the seconds include, for thinkfast's engine (``inference.engine``). Every timestamp is taken
after a device sync (``torch.cuda.synchronize`` on CUDA), so a figure is work done, not queued.

* ``prefill_s``: allocating the prompts' cache and the left-padded forward pass over the
  prompts, up to their last-position logits. With continuous batching, the sum over every
  prefill of the call (prompts are prefilled when their first sample gets a slot).
* ``decode_s``: everything after that until the last token: the decode forward passes, the
  sampler (filtering, noise, argmax), log-probabilities, EOS and stop-string checks, copying
  prompt state to the rows (n ways, or into freed slots), dropping finished rows, and the host
  bookkeeping between steps. With continuous batching: the call's wall time from allocating the
  slots to the last token, less ``prefill_s``.
* Neither includes tokenising the prompts or decoding the samples' text.

``batch_rows`` is the rows (sequences) the call produced, ``batch_prompts * n``; with continuous
batching it can exceed the rows decoded at once (``rows_at_once``, one of ``TIMING_DETAIL_KEYS``).
``eval.budget`` divides these figures over the call's problems and rows (seconds per problem =
prefill_s / batch_prompts + k * decode_s / batch_rows), which means the same thing on both paths:
the call's cost per problem and per sample. Other backends fill the same keys from their own
clocks (see ``inference.backends``).
"""

TIMING_DETAIL_KEYS = ("rows_at_once", "continuous")
"""Keys the engine adds to ``GenerationOutput.timing`` beside ``TIMING_KEYS`` (not copied into
samples rows): the most rows it decoded at once, and whether it refilled freed rows."""


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    """Generated ids, including the EOS or stop-completing token when there is one."""
    logprobs: Optional[list[float]]
    """The model's log-probability of each generated token (temperature 1, unfiltered); None
    when a backend does not report them."""
    finish_reason: str
    """'eos', 'stop' or 'length'."""
    hit_context_limit: bool = False
    """Ended by the model's context, before ``max_new_tokens`` (finish_reason is 'length')."""


@dataclass
class GenerationOutput:
    prompt_ids: list[int]
    samples: list[Sample]
    timing: dict[str, Any] = field(default_factory=dict)
    """The call this prompt was in: the keys of ``TIMING_KEYS``."""


def cut_by_context(finish_reason: str, n_tokens: int, room: int, max_new_tokens: int) -> bool:
    """Whether a sample of ``n_tokens`` was ended by the context: it ran out of ``room`` (the new
    tokens the context left it), and that room was less than ``max_new_tokens``."""
    return finish_reason == "length" and n_tokens == room < max_new_tokens


def batch_outputs(prompts: Sequence[Sequence[int]], samples: Sequence[list[Sample]], n: int,
                  prefill_s: float, decode_s: float, **detail: Any) -> list[GenerationOutput]:
    """One output per prompt (``samples[i]`` are prompt i's), each with the call's timing
    (``TIMING_KEYS``, plus ``detail``: any of ``TIMING_DETAIL_KEYS``)."""
    unknown = set(detail) - set(TIMING_DETAIL_KEYS)
    if unknown:
        raise ValueError(f"unknown timing keys {sorted(unknown)}")
    timing = dict(prefill_s=float(prefill_s), decode_s=float(decode_s), batch_prompts=len(prompts),
                  batch_rows=len(prompts) * n, new_tokens=sum(len(s.token_ids) for ss in samples for s in ss),
                  prompt_tokens=sum(len(p) for p in prompts), **detail)
    return [GenerationOutput(list(p), list(ss), dict(timing)) for p, ss in zip(prompts, samples)]
