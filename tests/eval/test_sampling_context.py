"""Samples cut by the model's context, not by max_new_tokens, say so in their rows, for every
backend, and `thinkfast sample` says it once per run."""

from __future__ import annotations

import sys
import warnings

from thinkfast.eval.io import read_jsonl
from thinkfast.eval.sampling import SampleSettings, run_sampling
from thinkfast.inference.backends import engine_generate_fn
from thinkfast.eval.tasks.base import Example
from thinkfast.inference.engine import ContextLimitWarning

from .conftest import make_model, make_tokenizer
from .test_sampling_backends import SETTINGS as VLLM_SETTINGS
from .test_sampling_backends import FakeLLM, _exported_student, fake_vllm_module

CTX = 256  # make_model's max_seq_len


def test_engine_rows_record_the_context_cut_and_the_run_logs_it_once(tmp_path):
    model, tok = make_model(), make_tokenizer()
    settings = SampleSettings(task="gsm8k", model="tiny", n=2, temperature=1.0, max_new_tokens=12, seed=3)
    examples = [Example(id=f"test/{i}", question="q", gold="#### 1", answer="1") for i in range(3)]
    prompts = [[2, 11, 12], [2] + [14] * (CTX - 6), [2] + [15] * (CTX - 9)]  # room: 12+, 5, 8 tokens
    logged: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLimitWarning)  # said by the run, not per engine call
        rep = run_sampling(examples, prompts, engine_generate_fn(model, tok, settings, stop=[]), tmp_path / "s.jsonl",
                           settings, batch_problems=3, context_len=CTX, log=logged.append)
    assert rep.context_limited == ["test/1", "test/2"]
    said = [s for s in logged if "context" in s]
    assert len(said) == 1 and "2 of 3 problems" in said[0] and "up to 7 fewer new tokens" in said[0]
    rows = {(r["problem_id"], r["sample_index"]): r for r in read_jsonl(tmp_path / "s.jsonl")}
    for pid, room in (("test/1", 5), ("test/2", 8)):
        for j in range(2):
            r = rows[(pid, j)]
            assert r["hit_context_limit"] == (r["finish_reason"] == "length") and r["num_tokens"] <= room
    assert any(r["hit_context_limit"] for r in rows.values())
    assert not any(r["hit_context_limit"] for (pid, _), r in rows.items() if pid == "test/0")


def test_vllm_samples_cut_by_the_context_are_marked(monkeypatch):
    from thinkfast.inference.backends import vllm_generate_fn

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    gen = vllm_generate_fn(FakeLLM(), None, VLLM_SETTINGS, stop=[], context_len=12)
    short, near = gen([[3, 1, 1], [3] * 9], 5)  # room 8 (asked) and 3 (the context's)
    # the fake ends sample 2 of a prompt starting with 3 by length, after min(3, room) tokens
    assert [s.finish_reason for s in near.samples] == ["eos", "stop", "length"]
    assert [s.hit_context_limit for s in near.samples] == [False, False, True]
    assert short.samples[2].finish_reason == "length" and not short.samples[2].hit_context_limit


def test_hf_samples_cut_by_the_context_are_marked(tmp_path):
    from thinkfast.inference.backends import hf_generate_fn, load_hf_model

    _, served = _exported_student(tmp_path)
    hf = load_hf_model(str(served), "cpu", "float32")
    settings = SampleSettings(task="t", model="m", n=2, temperature=0.0, max_new_tokens=10, backend="hf")
    gen = hf_generate_fn(hf, make_tokenizer(), settings, stop=[], eos_token_ids=[])
    (near,) = gen([[2] + [14] * (CTX - 5)], 0)
    (short,) = gen([[2, 14, 15]], 0)
    assert all(len(s.token_ids) == 4 and s.finish_reason == "length" and s.hit_context_limit for s in near.samples)
    assert all(len(s.token_ids) == 10 and not s.hit_context_limit for s in short.samples)
