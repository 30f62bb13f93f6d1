"""`thinkfast sample --backend hf|vllm`: transformers generate() on an exported student, and the
vLLM code path with a fake ``vllm`` module (no GPU, no vLLM install needed)."""

from __future__ import annotations

import json
import sys
import time
import types
from types import SimpleNamespace

import pytest
import torch

from thinkfast.eval.io import read_jsonl
from thinkfast.eval.sampling import SampleSettings
from thinkfast.runtime import UserError

from .conftest import make_model, make_tokenizer


# --- a fake vllm -----------------------------------------------------------------------------------


class FakeLLM:
    """Records what thinkfast asks of vLLM; completions are deterministic functions of the
    request (prompt, seed, sample index), like a seeded vLLM. A request without a seed draws from
    the engine's one stream (its ``seed`` argument, then each such request in order)."""

    instances: list["FakeLLM"] = []

    def __init__(self, with_metrics=True, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple[list, list]] = []
        self.with_metrics = with_metrics
        self.draws = 0
        FakeLLM.instances.append(self)

    def generate(self, inputs, params, use_tqdm=True):
        self.calls.append((inputs, params))
        time.sleep(0.12)  # longer than the reported times to first token below
        outs = []
        for inp, sp in zip(inputs, params):
            p = inp["prompt_token_ids"]
            comps = []
            seed = getattr(sp, "seed", None)
            if seed is None:
                seed, self.draws = self.kwargs.get("seed", 0) * 1000 + self.draws, self.draws + 1
            for j in range(sp.n):
                k = sp.max_tokens if sp.max_tokens == 1 else min(3, sp.max_tokens)
                toks = [(seed + j + t) % 7 + 10 for t in range(k)]
                kind = (p[0] + j) % 3  # a mix of endings: EOS, a stop string, the length limit
                finish, stop_reason = [("stop", None), ("stop", "Question:"), ("length", None)][kind]
                comps.append(SimpleNamespace(
                    index=j, text=f"seed{seed} s{j}", token_ids=toks, finish_reason=finish,
                    stop_reason=stop_reason,
                    logprobs=[{t: SimpleNamespace(logprob=-0.5), 99: SimpleNamespace(logprob=-3.0)} for t in toks]))
            metrics = (SimpleNamespace(arrival_time=100.0, first_token_time=100.0 + 0.01 * len(p))
                       if self.with_metrics else None)
            outs.append(SimpleNamespace(prompt_token_ids=p, outputs=list(reversed(comps)), metrics=metrics))
        return outs


def fake_vllm_module(**llm_kwargs) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    mod.LLM = lambda **kw: FakeLLM(**llm_kwargs, **kw)
    return mod


SETTINGS = SampleSettings(task="gsm8k", model="m", n=3, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=8,
                          seed=5, backend="vllm")


def test_vllm_generate_fn_maps_settings_outputs_and_timings(monkeypatch):
    from thinkfast.inference.backends import derive_seed, vllm_generate_fn

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    llm = FakeLLM()
    gen = vllm_generate_fn(llm, None, SETTINGS, stop=["Question:", ""], context_len=12)
    prompts = [[1, 2, 3], [2] * 6, [3] * 9]
    outs = gen(prompts, 5)
    (inputs, params), = llm.calls  # one call: metrics gave the prefill time, no probe needed
    assert inputs == [{"prompt_token_ids": p} for p in prompts]
    sp = params[0]
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.logprobs, sp.stop) == (3, 0.7, 0.9, -1, 0, ["Question:"])
    assert [q.max_tokens for q in params] == [8, 6, 3]  # capped by the 12-token context
    assert [q.seed for q in params] == [derive_seed(5, p) for p in prompts]
    assert len({q.seed for q in params}) == 3 and derive_seed(5, prompts[0]) != derive_seed(6, prompts[0])
    # outputs: in sample-index order, EOS vs stop string vs length told apart, logprobs of the chosen tokens
    o = outs[0]
    assert [s.text for s in o.samples] == [f"seed{params[0].seed} s{j}" for j in range(3)]
    assert [s.finish_reason for s in o.samples] == ["stop", "length", "eos"]  # prompt starts with 1
    assert o.samples[0].logprobs == [-0.5] * 3 and len(o.samples[0].token_ids) == 3
    t = o.timing
    assert t["prefill_s"] == pytest.approx(0.09, abs=1e-6)  # the slowest request's time to first token
    assert t["decode_s"] >= 0 and (t["batch_prompts"], t["batch_rows"]) == (3, 9)
    assert t["new_tokens"] == 27 and t["prompt_tokens"] == 18


def test_vllm_without_metrics_times_the_prefill_with_a_one_token_call(monkeypatch):
    from thinkfast.inference.backends import vllm_generate_fn

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    llm = FakeLLM(with_metrics=False)
    out = vllm_generate_fn(llm, None, SETTINGS, stop=[])([[1, 2]], 0)[0]
    assert len(llm.calls) == 2
    probe = llm.calls[1][1][0]
    assert (probe.n, probe.max_tokens, probe.temperature) == (1, 1, 0.0)
    assert out.timing["prefill_s"] > 0 and out.timing["decode_s"] >= 0
    assert len(out.samples) == 3 and out.samples[0].token_ids != [] and llm.calls[0][1][0].stop is None


def test_vllm_greedy_asks_for_one_sequence_and_repeats_it(monkeypatch):
    from thinkfast.inference.backends import vllm_generate_fn

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    llm = FakeLLM()
    greedy = SampleSettings(**{**SETTINGS.to_dict(), "temperature": 0.0})
    out = vllm_generate_fn(llm, None, greedy, stop=[])([[4, 5]], 0)[0]
    sp = llm.calls[0][1][0]
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k) == (1, 0.0, 1.0, -1)
    assert len(out.samples) == 3 and len({tuple(s.token_ids) for s in out.samples}) == 1
    assert out.timing["batch_rows"] == 3  # rows written, so the budget counts the call once


def test_vllm_prompt_without_room_is_a_value_error_so_only_that_problem_fails(monkeypatch):
    from thinkfast.inference.backends import vllm_generate_fn

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    gen = vllm_generate_fn(FakeLLM(), None, SETTINGS, stop=[], context_len=4)
    with pytest.raises(ValueError, match="no room"):
        gen([[1, 2, 3, 4]], 0)


def _exported_student(tmp_path, chat=True):
    """A tiny hybrid student saved by thinkfast and exported; returns (thinkfast dir, export dir)."""
    from thinkfast.checkpoint import save_model
    from thinkfast.convert.export import export_model

    model, tok = make_model(), make_tokenizer(chat=chat)
    save_model(model, tmp_path / "student", tokenizer=tok)
    export_model(model, tmp_path / "served", tokenizer=tok, tokenizer_dir=tmp_path / "student")
    return tmp_path / "student", tmp_path / "served"


def _gsm8k(tmp_path, k=3):
    data = tmp_path / "gsm8k_test.jsonl"
    data.write_text("".join(json.dumps({"question": f"question {i} + 1 ?", "answer": f"so\n#### {i + 1}"}) + "\n"
                            for i in range(k)))
    return data


def test_sample_command_with_backend_vllm(tmp_path, monkeypatch, capsys):
    from thinkfast.cli import main
    from thinkfast.inference.backends import derive_seed

    student, served = _exported_student(tmp_path)
    data = _gsm8k(tmp_path)
    FakeLLM.instances.clear()
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    out = tmp_path / "v.jsonl"

    def argv(model, out):
        return ["sample", "--backend", "vllm", "--model", str(model), "--task", "gsm8k", "--n", "2", "--out",
                str(out), "--data", str(data), "--batch-problems", "2", "--max-new-tokens", "4", "--seed", "3",
                "--threads", "1"]

    assert main(argv(served, out)) == 0
    llm, = FakeLLM.instances
    assert llm.kwargs["model"] == str(served) and llm.kwargs["enable_prefix_caching"] is True
    assert llm.kwargs["trust_remote_code"] is False and llm.kwargs["mamba_ssm_cache_dtype"] == "float32"
    first = llm.calls[0][0]  # seeded once per engine, from (seed, the first call's prompts)
    assert llm.kwargs["seed"] == derive_seed(3, [i["prompt_token_ids"] for i in first])
    assert all(not hasattr(sp, "seed") for _, params in llm.calls for sp in params)  # no per-request seeds
    rows = read_jsonl(out)
    assert len(rows) == 6 and rows[0]["settings"]["backend"] == "vllm" and rows[0]["settings"]["seeding"] == "call"
    assert all(r["prefill_s"] is not None and r["decode_s"] is not None for r in rows)
    assert (rows[0]["batch_problems"], rows[0]["batch_rows"]) == (2, 4) and rows[0]["num_tokens"] == 3
    assert main(argv(served, out)) == 0 and len(read_jsonl(out)) == 6  # resumed: nothing added
    assert len(FakeLLM.instances) == 1  # and no engine loaded for nothing
    # a thinkfast directory is not a vLLM checkpoint: the error says how to export it
    assert main(argv(student, tmp_path / "w.jsonl")) == 2
    assert "thinkfast export" in capsys.readouterr().err


def test_missing_vllm_is_a_clear_message_not_an_import_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    from thinkfast.cli import main
    from thinkfast.inference import backends

    with pytest.raises(UserError, match=r"pip install 'thinkfast\[vllm\]'"):
        backends.import_vllm()
    _, served = _exported_student(tmp_path)
    argv = ["sample", "--backend", "vllm", "--model", str(served), "--task", "gsm8k", "--n", "1",
            "--out", str(tmp_path / "x.jsonl"), "--data", str(_gsm8k(tmp_path)), "--threads", "1"]
    assert main(argv) == 2
    assert "thinkfast[vllm]" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


# --- transformers generate() -----------------------------------------------------------------------


def test_hf_backend_greedy_matches_our_engine_on_a_left_padded_batch(tmp_path):
    from thinkfast.inference.backends import hf_generate_fn, load_hf_model
    from thinkfast.inference.engine import SamplingParams, generate

    _, served = _exported_student(tmp_path)
    model, tok = make_model(), make_tokenizer()
    hf = load_hf_model(str(served), "cpu", "float32")
    greedy = SampleSettings(task="t", model="m", n=2, temperature=0.0, max_new_tokens=10, backend="hf")
    prompts = [[4, 17, 11, 7, 12, 9], [2, 14, 15, 16, 20, 30, 7, 12, 9, 21, 5]]  # different lengths
    outs = hf_generate_fn(hf, tok, greedy, stop=[])(prompts, 0)
    ref = generate(model, prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=10), tokenizer=tok)
    for o, r in zip(outs, ref):
        assert len(o.samples) == 2 and o.samples[0].token_ids == o.samples[1].token_ids
        assert o.samples[0].token_ids == r.samples[0].token_ids
        assert o.samples[0].finish_reason == r.samples[0].finish_reason
        torch.testing.assert_close(torch.tensor(o.samples[0].logprobs), torch.tensor(r.samples[0].logprobs),
                                   atol=1e-4, rtol=1e-4)
    assert outs[0].timing["prefill_s"] > 0 and outs[0].timing["decode_s"] > 0
    assert (outs[0].timing["batch_prompts"], outs[0].timing["batch_rows"]) == (2, 4)


def test_hf_backend_stop_strings_end_rows_like_our_engine(tmp_path):
    from thinkfast.inference.backends import hf_generate_fn, load_hf_model
    from thinkfast.inference.engine import SamplingParams, generate

    _, served = _exported_student(tmp_path)
    model, tok = make_model(), make_tokenizer()
    hf = load_hf_model(str(served), "cpu", "float32")
    prompts = [[4, 17, 11, 7, 12, 9], [2, 14, 15, 16, 20, 30, 7, 12, 9, 21, 5]]
    free = generate(model, prompts, SamplingParams(temperature=0.0, max_new_tokens=12, eos_token_ids=()), tokenizer=tok)
    # a stop string taken from the middle of the first prompt's own greedy continuation
    words = [tok.decode([t], skip_special_tokens=True) for t in free[0].samples[0].token_ids]
    stop = next(w for w in words[2:] if w.strip())
    greedy = SampleSettings(task="t", model="m", n=1, temperature=0.0, max_new_tokens=12, backend="hf")
    outs = hf_generate_fn(hf, tok, greedy, stop=[stop], eos_token_ids=[])(prompts, 0)
    ref = generate(model, prompts, SamplingParams(temperature=0.0, max_new_tokens=12, eos_token_ids=(), stop=[stop]),
                   tokenizer=tok)
    assert outs[0].samples[0].finish_reason == "stop" and stop not in outs[0].samples[0].text
    assert len(outs[0].samples[0].token_ids) < 12
    for o, r in zip(outs, ref):  # the other row runs on (or stops) exactly as the engine's does
        s, e = o.samples[0], r.samples[0]
        assert (s.token_ids, s.text, s.finish_reason) == (e.token_ids, e.text, e.finish_reason)


def test_hf_backend_sampling_is_seeded(tmp_path):
    from thinkfast.inference.backends import hf_generate_fn, load_hf_model

    _, served = _exported_student(tmp_path)
    hf, tok = load_hf_model(str(served), "cpu", "float32"), make_tokenizer()
    st = SampleSettings(task="t", model="m", n=4, temperature=1.0, top_k=20, max_new_tokens=6, backend="hf")
    gen = hf_generate_fn(hf, tok, st, stop=[])
    prompts = [[4, 17, 11, 7], [2, 14, 15]]
    before = torch.random.get_rng_state()
    a, b, c = gen(prompts, 1), gen(prompts, 1), gen(prompts, 2)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone
    toks = lambda outs: [s.token_ids for o in outs for s in o.samples]  # noqa: E731
    assert toks(a) == toks(b) and toks(a) != toks(c)
    assert len(set(map(tuple, toks(a)))) > 1  # n samples, not one repeated
    for s in a[0].samples:
        assert s.finish_reason in ("eos", "length") and all(lp <= 0 for lp in s.logprobs)
        assert len(s.logprobs) == len(s.token_ids) <= 6


def test_sample_command_with_backend_hf_and_no_mixing_with_other_backends(tmp_path):
    from thinkfast.cli import main

    student, served = _exported_student(tmp_path)
    data = _gsm8k(tmp_path)
    out = tmp_path / "h.jsonl"
    base = ["sample", "--model", str(served), "--task", "gsm8k", "--n", "2", "--data", str(data),
            "--max-new-tokens", "4", "--seed", "7", "--threads", "1", "--device", "cpu", "--out", str(out)]
    assert main(base + ["--backend", "hf", "--batch-problems", "3"]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 6 and rows[0]["settings"]["backend"] == "hf"
    assert rows[0]["decode_s"] > 0 and (rows[0]["batch_problems"], rows[0]["batch_rows"]) == (3, 6)
    assert rows[0]["settings"]["prompt_style"] == "chat"
    # the same file cannot be resumed by another backend (settings differ): exit 2, file intact
    assert main(["sample", "--model", str(student)] + base[3:] + ["--backend", "thinkfast"]) == 2
    assert len(read_jsonl(out)) == 6
    # and thinkfast-backend rows keep the settings they had before backends existed (no "backend" key)
    t_out = tmp_path / "t.jsonl"
    assert main(["sample", "--model", str(student)] + base[3:-1] + [str(t_out)]) == 0
    assert "backend" not in read_jsonl(t_out)[0]["settings"]
