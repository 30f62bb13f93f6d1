"""Sampling backends for ``thinkfast sample``: our engine, transformers ``generate()``, vLLM.

Each backend gives ``thinkfast.eval.sampling`` the same thing: a ``GenerateFn``
(prompt token ids, seed) -> one output per prompt with ``.samples`` (text, token_ids, logprobs,
finish_reason in {'eos', 'stop', 'length'}, hit_context_limit: the model's context, not
max_new_tokens, ended a 'length' sample) and ``.timing`` (prefill_s, decode_s, batch_prompts,
batch_rows, new_tokens, prompt_tokens for the whole call), so the budget curves of
``thinkfast evaluate`` compare backends on one cost model.

All three return the engine's own ``GenerationOutput`` / ``Sample`` (``thinkfast.inference.outputs``),
built by ``outputs.batch_outputs``; seeds come from ``seeding.derive_seed`` and the hf backend pads
with ``padding.left_pad``, as the engine does.

* ``thinkfast``: ``thinkfast.inference.engine``; reads thinkfast directories and HF Llamas; with
  ``dtype="int8"``, int8 weight-only linears (``thinkfast.inference.quant``).
* ``hf``: transformers ``generate()``, a reference. Reads any transformers checkpoint without
  remote code (an export of ``thinkfast export``, a HF Llama). Same settings (greedy at
  temperature 0; top-k 0 = off; the tokenizer's EOS; stop strings checked per row with the
  engine's own checker). Randomness: the global torch
  RNG seeded, inside ``torch.random.fork_rng``, from (seed, the batch's prompts), so a run is
  reproducible at the same batching, but -- unlike our engine -- a problem's samples depend on
  which problems share its batch. Timing: prefill_s ends when the first logits processor call
  happens (the prompt forward is done), decode_s is the rest.
* ``vllm``: vLLM's offline ``LLM.generate`` with one ``SamplingParams(n, temperature, top_p,
  top_k, max_tokens, stop, logprobs=0)`` per prompt. vLLM is imported only when this backend is
  chosen; without it the error says how to install it. ``load_vllm`` sets prefix caching on (the
  n samples of a prompt, and prompts with a shared few-shot prefix, reuse its prefill), keeps the
  Mamba SSM state in float32 (``mamba_ssm_cache_dtype``, as our engine does; the conv state stays
  in the model dtype), never trusts remote code by default, and passes any other ``LLM``
  argument through (``thinkfast sample --vllm-arg KEY=VALUE``).
  Seeding (``settings.seeding``): "call" (the default of ``thinkfast sample``) gives requests no
  seed of their own, because vLLM samples a seeded request through a per-request generator, a
  slow path; the engine is seeded once, when ``LazyLLM`` builds it on the first call, from
  (seed, that call's prompts). Runs that make the same calls in the same order are then
  reproducible as far as vLLM is (same version, hardware and parallel layout; scheduling
  deterministic with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), but a problem's samples depend on
  the batching, the resume point and the shard. ``seeding=None`` seeds each request from (seed,
  its prompt tokens), so a problem's samples do not depend on those (up to vLLM's batch
  numerics). Timing: prefill_s is the batch's time to first token from vLLM's per-request
  metrics when it reports them, else it is measured by a 1-token greedy call on the same
  prompts just after (its result discarded; salted with ``cache_salt`` when prefix caching is on,
  so it neither reuses nor seeds the main call's cache); decode_s is the main call's time minus
  prefill_s. Logprobs are vLLM's (``raw_logprobs`` by default in the V1 engine: temperature 1,
  unfiltered, like our engine).

Greedy decoding (temperature 0) asks hf and vLLM for one sequence per prompt and repeats it n
times (all n greedy samples are the same sequence; both libraries refuse n > 1 greedy).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..runtime import UserError
from .outputs import GenerationOutput, Sample, batch_outputs, cut_by_context
from .seeding import derive_seed

__all__ = ["BACKENDS", "Backend", "FLOAT_DTYPES", "GenerateFn", "check_dtype", "LazyLLM", "VLLM_DEFAULTS", "derive_seed", "engine_generate_fn",
           "hf_generate_fn", "load_vllm", "open_backend", "vllm_generate_fn"]

BACKENDS = ("thinkfast", "hf", "vllm")

VLLM_MISSING = ("--backend vllm needs vLLM, which is not installed: pip install 'thinkfast[vllm]' "
                "(a CUDA GPU machine is required). --backend thinkfast and --backend hf work without it.")


# --- transformers generate() ---------------------------------------------------------------------


def _first_call_timer():
    """A logits processor that notes when it is first called, i.e. when the prefill is done."""
    import torch
    from transformers import LogitsProcessor

    class FirstCall(LogitsProcessor):
        def __init__(self):
            self.t: Optional[float] = None

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if self.t is None:
                self.t = time.perf_counter()
            return scores

    return FirstCall()


def _stop_string_criteria(stopper: Any, prompt_len: int):
    """Per-row stopping on our stop strings (the engine's rule: decode the tail, look for them).

    transformers' own ``stop_strings`` needs to map every vocab token to its string, which fails
    for some tokenizers (e.g. word-level ones), so the engine's checker is reused instead."""
    import torch
    from transformers import StoppingCriteria

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
            done = [stopper.hit(row[prompt_len:].tolist()) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopStrings()


GenerateFn = Callable[[list[list[int]], int], list[GenerationOutput]]


def hf_generate_fn(model: Any, tokenizer: Any, settings: Any, stop: Sequence[str],
                   eos_token_ids: Optional[Sequence[int]] = None) -> GenerateFn:
    """A ``GenerateFn`` over a transformers causal LM's ``generate()`` with ``settings``
    (a ``SampleSettings``: n, temperature, top_p, top_k, max_new_tokens)."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from .engine import StopChecker, default_eos, finish_sample
    from .padding import left_pad

    stopper = StopChecker(tuple(stop), tokenizer)
    eos = set(int(t) for t in (default_eos(tokenizer) if eos_token_ids is None else eos_token_ids))
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (min(eos) if eos else 0)
    ctx = getattr(model.config, "max_position_embeddings", None)
    greedy = settings.temperature == 0
    n = settings.n

    @torch.inference_mode()
    def gen(prompts: list[list[int]], seed: int) -> list[GenerationOutput]:
        device = model.device
        P, Lp = len(prompts), max(len(p) for p in prompts)
        if ctx is not None and Lp > ctx:
            raise ValueError(f"prompt of {Lp} tokens is longer than the model's context ({ctx})")
        max_new = settings.max_new_tokens if ctx is None else min(settings.max_new_tokens, ctx - Lp)
        ids, mask = left_pad(prompts, pad)
        timer = _first_call_timer()
        kw: dict[str, Any] = dict(
            max_new_tokens=max_new, min_new_tokens=0, pad_token_id=pad, eos_token_id=sorted(eos) or None,
            return_dict_in_generate=True, output_logits=True, logits_processor=LogitsProcessorList([timer]),
            num_return_sequences=1 if greedy else n, do_sample=not greedy, top_k=0 if greedy else settings.top_k,
            top_p=1.0 if greedy else settings.top_p, temperature=None if greedy else settings.temperature,
            repetition_penalty=1.0,
        )
        if stopper.stops:
            kw["stopping_criteria"] = StoppingCriteriaList([_stop_string_criteria(stopper, Lp)])
        devices = [device] if device.type == "cuda" else []
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(seed, prompts))
            try:
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw) \
                    if max_new > 0 else None
            except ValueError as e:
                if "get_seq_length" in str(e):  # transformers cannot cache an all-Mamba GraniteMoeHybrid
                    raise UserError(f"transformers' generate() fails on this model ({e}); use --backend "
                                    "thinkfast (or vllm) for students without attention layers") from None
                raise
        t2 = time.perf_counter()
        t1 = timer.t if timer.t is not None else t2
        rows = 1 if greedy else n
        if out is None:
            seqs, lps = [[] for _ in range(P * rows)], [[] for _ in range(P * rows)]
        else:
            new = out.sequences[:, Lp:]
            steps = torch.stack([lg.float() for lg in out.logits], 1)  # (R, L, V), raw model logits
            lp = torch.log_softmax(steps, -1).gather(-1, new[:, : steps.shape[1], None])[..., 0]
            seqs, lps = new.tolist(), lp.tolist()
        samples = []
        for i in range(P):
            ss = []
            for j in range(rows):
                toks, lpr = seqs[i * rows + j], lps[i * rows + j]
                length, reason = len(toks), "length"
                for t in range(len(toks)):  # the engine's rule: EOS first, then a stop string
                    if toks[t] in eos:
                        length, reason = t + 1, "eos"
                        break
                    if stopper.stops and stopper.hit(toks[: t + 1]):
                        length, reason = t + 1, "stop"
                        break
                # the batch shares one padded length, so the longest prompt sets every row's room
                ss.append(finish_sample(toks[:length], lpr[:length], reason, tokenizer, stopper, max_new,
                                        settings.max_new_tokens))
            samples.append(ss * n if greedy else ss)
        return batch_outputs(prompts, samples, n, t1 - t0, t2 - t1)

    return gen


def load_hf_model(path: str, device: str = "cpu", dtype: Optional[str] = None):
    """A transformers causal LM (no remote code), in eval mode on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    td = "auto" if dtype in (None, "auto") else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=td, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"transformers cannot load {path}: {e}") from None
    return model.to(device).eval()


# --- vLLM ------------------------------------------------------------------------------------------


def import_vllm():
    """The vllm module, or a UserError saying how to get it (never an ImportError)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError(VLLM_MISSING) from None
    return vllm


VLLM_DEFAULTS: dict[str, Any] = {
    "trust_remote_code": False,
    "enable_prefix_caching": True,
    "mamba_ssm_cache_dtype": "float32",
}
"""What ``load_vllm`` passes to ``vllm.LLM`` unless told otherwise: no remote code; prefix caching
on; the Mamba SSM state in float32, as thinkfast's engine keeps it (``models.cache``; vLLM's
"auto" would store it in the model dtype). The conv state follows the model dtype in both."""

_PROBE_SALT = "thinkfast-prefill-probe"


def vllm_engine_kwargs(path: str, dtype: Optional[str] = None, seed: Optional[int] = 0,
                       **engine_kwargs: Any) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments ``load_vllm`` uses: model, tokenizer, dtype and seed,
    ``VLLM_DEFAULTS``, then ``engine_kwargs`` (which win)."""
    kw: dict[str, Any] = dict(model=str(path), tokenizer=str(path), dtype=dtype or "auto",
                              seed=None if seed is None else int(seed))
    kw.update(VLLM_DEFAULTS)
    kw.update(engine_kwargs)
    return kw


def load_vllm(path: str, dtype: Optional[str] = None, seed: int = 0, **engine_kwargs: Any):
    """``vllm.LLM`` for a transformers checkpoint directory (``vllm_engine_kwargs``)."""
    return import_vllm().LLM(**vllm_engine_kwargs(path, dtype, seed, **engine_kwargs))


class LazyLLM:
    """A ``vllm.LLM`` built on the first ``get(prompts, seed)``, seeded from (seed, those prompts)
    unless ``kwargs`` name a seed. A run's first unfinished problems differ between shards and
    between a run and its resumption, so each gets its own random stream rather than replaying
    the first one's; and nothing is loaded when a resumed run finds nothing left to do."""

    def __init__(self, kwargs: dict[str, Any], fixed_seed: bool = False):
        self.kwargs = dict(kwargs)
        self.fixed_seed = fixed_seed
        self.prefix_caching = bool(self.kwargs.get("enable_prefix_caching"))
        self.llm: Any = None

    def get(self, prompts: Sequence[Sequence[int]], seed: int) -> Any:
        if self.llm is None:
            kw = dict(self.kwargs)
            if not self.fixed_seed:
                kw["seed"] = derive_seed(seed, [list(p) for p in prompts])
            self.llm = import_vllm().LLM(**kw)
        return self.llm


def _vllm_ttft(o: Any) -> Optional[float]:
    """Seconds from arrival to first token of one vLLM request, when its metrics say."""
    m = getattr(o, "metrics", None)
    if m is None:
        return None
    first, arrival = getattr(m, "first_token_time", None), getattr(m, "arrival_time", None)
    if first is not None and arrival is not None:
        return max(0.0, float(first) - float(arrival))
    lat = getattr(m, "first_token_latency", None)
    return float(lat) if lat is not None else None


def vllm_generate_fn(llm: Any, tokenizer: Any, settings: Any, stop: Sequence[str],
                     context_len: Optional[int] = None) -> GenerateFn:
    """A ``GenerateFn`` over ``llm.generate`` (an offline ``vllm.LLM``, or a ``LazyLLM``) with
    ``settings`` (a ``SampleSettings``; ``settings.seeding == "call"``: requests carry no seed)."""
    vllm = import_vllm()
    SamplingParams = vllm.SamplingParams
    greedy = settings.temperature == 0
    n = settings.n
    stops = [s for s in stop if s]
    per_request = getattr(settings, "seeding", None) != "call"

    def params_for(p: list[int], seed: int):
        max_tokens = settings.max_new_tokens
        if context_len is not None:
            if len(p) > context_len:
                raise ValueError(f"prompt of {len(p)} tokens is longer than the model's context ({context_len})")
            max_tokens = min(max_tokens, context_len - len(p))
        if max_tokens < 1:
            raise ValueError(f"prompt of {len(p)} tokens leaves no room for new tokens in the context")
        kw: dict[str, Any] = dict(n=1 if greedy else n, temperature=0.0 if greedy else settings.temperature,
                                  top_p=1.0 if greedy else settings.top_p,
                                  # top_k -1 = off in all versions
                                  top_k=-1 if greedy or not settings.top_k else settings.top_k,
                                  max_tokens=max_tokens, stop=stops or None, logprobs=0)
        if per_request:
            kw["seed"] = derive_seed(seed, p)
        return SamplingParams(**kw)

    def gen(prompts: list[list[int]], seed: int) -> list[GenerationOutput]:
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        params = [params_for(list(p), seed) for p in prompts]  # before loading: a bad prompt fails fast
        engine = llm.get(prompts, seed) if isinstance(llm, LazyLLM) else llm
        t0 = time.perf_counter()
        res = list(engine.generate(inputs, params, use_tqdm=False))
        t1 = time.perf_counter()
        if len(res) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(res)} outputs for {len(prompts)} prompts")
        ttfts = [_vllm_ttft(o) for o in res]
        if all(t is not None for t in ttfts):
            prefill = min(max(ttfts), t1 - t0)
            total = t1 - t0
        else:  # no per-request metrics: time a 1-token call on the same prompts (prefill + 1 step)
            salted = getattr(llm, "prefix_caching", False)
            probe_in = [{**i, "cache_salt": _PROBE_SALT} for i in inputs] if salted else inputs
            probe = [SamplingParams(n=1, temperature=0.0, max_tokens=1) for _ in prompts]
            tp = time.perf_counter()
            engine.generate(probe_in, probe, use_tqdm=False)
            prefill = time.perf_counter() - tp
            total = max(t1 - t0, prefill)
        samples = []
        for o, sp in zip(res, params):
            comps = sorted(o.outputs, key=lambda c: getattr(c, "index", 0))
            ss = []
            for c in comps:
                toks = [int(t) for t in c.token_ids]
                lps = None
                if getattr(c, "logprobs", None) is not None:
                    lps = [float(d[t].logprob) for t, d in zip(toks, c.logprobs)]
                if c.finish_reason == "length":
                    reason = "length"
                else:  # 'stop': a stop string (stop_reason is the string) or EOS / a stop token id
                    reason = "stop" if isinstance(getattr(c, "stop_reason", None), str) else "eos"
                cut = cut_by_context(reason, len(toks), sp.max_tokens, settings.max_new_tokens)
                ss.append(Sample(c.text, toks, lps, reason, hit_context_limit=cut))
            samples.append(ss * n if greedy else ss)
        return batch_outputs(prompts, samples, n, prefill, total - prefill)

    return gen


# --- one entry point for `thinkfast sample` --------------------------------------------------------


@dataclass
class Backend:
    name: str
    tokenizer: Any
    context_len: Optional[int]
    device: str
    """Where it runs, for ``eval.budget.hardware_string``."""
    make_generate_fn: Callable[[Any, Sequence[str]], Callable]
    """(settings, stop strings) -> GenerateFn."""


def _hf_context(path: str) -> Optional[int]:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"transformers cannot read the config of {path}: {e}") from None
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if n else None


def open_backend(name: str, model_path: str, device: Optional[str] = None, dtype: Optional[str] = None,
                 seed: int = 0, vllm_kwargs: Optional[dict[str, Any]] = None,
                 engine_options: Optional[dict[str, Any]] = None) -> Backend:
    """Load ``model_path`` for backend ``name`` (thinkfast, hf or vllm).

    ``engine_options`` (thinkfast only) are the engine's speed-only ``SamplingParams`` fields
    (``ENGINE_OPTIONS``: continuous batching, its slots, shared prompt state): they never change
    a sample.

    ``dtype``: float32 / bfloat16 / float16 for every backend; "int8" (thinkfast only) loads the
    model in float32, then makes every Linear int8 weight-only (``inference.quant``)."""
    from ..checkpoint import is_thinkfast_dir, load_tokenizer

    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    check_dtype(name, dtype)
    if name == "thinkfast":
        import torch

        from ..checkpoint import load_pretrained
        from .quant import inference_dtype, quantize_for_inference

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tok = load_pretrained(model_path, device=dev, dtype=inference_dtype(dtype))
        model.prepare_for_inference()  # q|k|v and gate|up packed once, for the fast decode step
        if dtype == "int8":
            quantize_for_inference(model, "int8")
        return Backend(name, tok, context_length(model), dev,
                       lambda settings, stop: engine_generate_fn(model, tok, settings, stop, engine_options))
    if engine_options:
        raise UserError(f"{', '.join(sorted(engine_options))}: options of the thinkfast engine, "
                        f"not of --backend {name}")
    if is_thinkfast_dir(model_path):
        raise UserError(f"{model_path} is a thinkfast model directory; --backend {name} reads transformers "
                        f"checkpoints: run `thinkfast export {model_path} OUT_DIR` and pass --model OUT_DIR")
    if name == "vllm":
        import_vllm()  # the clear message before any loading
    ctx = _hf_context(model_path)
    tok = load_tokenizer(model_path) if Path(model_path).is_dir() else None
    if tok is None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=False)
        except (OSError, ValueError, TypeError):
            tok = None
    if name == "hf":
        import torch

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_hf_model(model_path, dev, dtype)
        return Backend(name, tok, ctx, dev, lambda settings, stop: hf_generate_fn(model, tok, settings, stop))
    user_kw = dict(vllm_kwargs or {})
    if user_kw.get("max_model_len") is not None:  # vLLM refuses longer requests; our checks must agree
        ctx = int(user_kw["max_model_len"]) if ctx is None else min(ctx, int(user_kw["max_model_len"]))
    fixed_seed = "seed" in user_kw  # the user's engine seed is kept as given
    seed = user_kw.pop("seed") if fixed_seed else seed
    llm = LazyLLM(vllm_engine_kwargs(model_path, dtype=dtype, seed=seed, **user_kw), fixed_seed=fixed_seed)
    return Backend(name, tok, ctx, device or "cuda",
                   lambda settings, stop: vllm_generate_fn(llm, tok, settings, stop, context_len=ctx))


FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(backend: str, dtype: Optional[str]) -> None:
    """A UserError unless ``backend`` can load weights at ``dtype`` (None: the default)."""
    from .quant import INFERENCE_DTYPES

    allowed = INFERENCE_DTYPES if backend == "thinkfast" else FLOAT_DTYPES
    if dtype is None or dtype in allowed:
        return
    if dtype in INFERENCE_DTYPES:
        raise UserError(f"--dtype {dtype} (int8 weight-only linears) is the thinkfast engine's; --backend {backend} "
                        f"takes {', '.join(allowed)} (or run --backend thinkfast)")
    raise UserError(f"unknown --dtype {dtype!r}; choose from {', '.join(INFERENCE_DTYPES)}")


ENGINE_OPTIONS = ("continuous", "max_batch_rows", "shared_prompt", "fast")
"""``SamplingParams`` fields that change the engine's speed and memory, never its samples."""


def engine_generate_fn(model: Any, tokenizer: Any, settings: Any, stop: Sequence[str],
                       engine_options: Optional[dict[str, Any]] = None):
    """A ``GenerateFn`` of ``eval.sampling`` (``(prompts, seed) -> outputs``) over thinkfast's
    engine, with ``settings`` (an ``eval.sampling.SampleSettings``: n, temperature, top_p, top_k,
    max_new_tokens, sampler) and ``engine_options`` (``ENGINE_OPTIONS``)."""
    from .engine import ContextLimitWarning, SamplingParams, generate

    options = dict(engine_options or {})
    unknown = sorted(set(options) - set(ENGINE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown engine options {unknown}; choose from {ENGINE_OPTIONS}")

    def gen(prompts: list[list[int]], seed: int) -> list[GenerationOutput]:
        params = SamplingParams(n=settings.n, temperature=settings.temperature, top_p=settings.top_p,
                                top_k=settings.top_k, max_new_tokens=settings.max_new_tokens,
                                stop=tuple(stop), seed=seed, sampler=settings.sampler,
                                **options)  # EOS: the tokenizer's
        with warnings.catch_warnings():
            # run_sampling says it once per run, for every backend; the engine would say it per call
            warnings.simplefilter("ignore", ContextLimitWarning)
            return generate(model, prompts, params, tokenizer=tokenizer)

    return gen


def context_length(model: Any) -> Optional[int]:
    cfg = getattr(model, "config", None)
    for attr in ("max_seq_len", "max_position_embeddings"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    return None
