"""What `thinkfast sample --backend vllm` asks of vLLM, checked against a fake ``vllm`` module that
records ``LLM(...)`` and ``SamplingParams(...)`` (vLLM itself needs a GPU)."""

from __future__ import annotations

import argparse
import json
import sys
import types
from types import SimpleNamespace

import pytest

from thinkfast.cli import main
from thinkfast.commands.args import key_value
from thinkfast.eval.io import read_jsonl
from thinkfast.inference.backends import VLLM_DEFAULTS, derive_seed


class FakeLLM:
    """Completions are a function of the request's seed, or, for a request without one, of the
    engine's seed and how many such requests came before (one random stream per engine)."""

    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.draws = kwargs, [], 0
        FakeLLM.instances.append(self)

    def generate(self, inputs, params, use_tqdm=True):
        self.calls.append((inputs, params))
        outs = []
        for inp, sp in zip(inputs, params):
            seed = getattr(sp, "seed", None)
            if seed is None:
                seed, self.draws = self.kwargs["seed"] * 1000 + self.draws, self.draws + 1
            comps = [SimpleNamespace(index=j, text=f"r{seed}.{j}", finish_reason="length", stop_reason=None,
                                     token_ids=[10 + (seed + j) % 7] * min(2, sp.max_tokens), logprobs=None)
                     for j in range(sp.n)]
            outs.append(SimpleNamespace(prompt_token_ids=inp["prompt_token_ids"], outputs=comps, metrics=None))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    mod.LLM = lambda **kw: FakeLLM(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    FakeLLM.instances.clear()
    return mod


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny hybrid student exported for vLLM, and a 4-problem GSM8K file."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from thinkfast.checkpoint import save_model
    from thinkfast.config import ModelConfig
    from thinkfast.convert.export import export_model
    from thinkfast.models.lm import LanguageModel

    words = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "question", "+", "?", "so",
             "#"] + [str(d) for d in range(10)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                  pre_tokenizers.Digits(True)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")  # short prompts
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=len(words), d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                      d_ff=64, max_seq_len=256, layer_pattern="AM")).eval()
    tmp = tmp_path_factory.mktemp("vllm")
    save_model(model, tmp / "student", tokenizer=tok)
    export_model(model, tmp / "served", tokenizer=tok, tokenizer_dir=tmp / "student")
    data = tmp / "gsm8k_test.jsonl"
    data.write_text("".join(json.dumps({"question": f"question {i} + 1 ?", "answer": f"so\n#### {i + 1}"}) + "\n"
                            for i in range(4)))
    return tmp, ["sample", "--backend", "vllm", "--model", str(tmp / "served"), "--task", "gsm8k", "--n", "2",
                 "--data", str(data), "--max-new-tokens", "8", "--seed", "3", "--threads", "1"]


def test_key_value_reads_values_by_what_they_look_like():
    assert key_value("max-num-seqs=512") == ("max_num_seqs", 512)
    assert key_value("gpu_memory_utilization=0.85") == ("gpu_memory_utilization", 0.85)
    assert key_value("enforce_eager=True") == ("enforce_eager", True)
    assert key_value("enable_prefix_caching=false") == ("enable_prefix_caching", False)
    assert key_value("quantization=none") == ("quantization", None)
    assert key_value('compilation_config={"level": 0, "cudagraph_capture_sizes": [1, 2]}') == \
        ("compilation_config", {"level": 0, "cudagraph_capture_sizes": [1, 2]})
    assert key_value("kv_cache_dtype=fp8") == ("kv_cache_dtype", "fp8")
    assert key_value('tokenizer_mode="1"') == ("tokenizer_mode", "1")  # quoted: JSON, kept a string
    for bad in ("no_equals", "=3", "2x=1", 'cfg={"a": }'):
        with pytest.raises(argparse.ArgumentTypeError):
            key_value(bad)


def test_vllm_arguments_reach_llm_and_requests_carry_no_seed(served, fake_vllm, tmp_path):
    _, base = served
    out = tmp_path / "v.jsonl"
    argv = base + ["--out", str(out), "--batch-problems", "2", "--tensor-parallel-size", "2",
                   "--data-parallel-size", "1", "--gpu-memory-utilization", "0.8", "--max-model-len", "40",
                   "--vllm-arg", "enforce_eager=true", "--vllm-arg", 'compilation_config={"level": 0}',
                   "--vllm-arg", "max-num-seqs=64"]
    assert main(argv) == 0
    llm, = FakeLLM.instances
    kw = llm.kwargs
    assert {k: kw[k] for k in ("tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization",
                               "max_model_len", "enforce_eager", "compilation_config", "max_num_seqs")} == \
        {"tensor_parallel_size": 2, "data_parallel_size": 1, "gpu_memory_utilization": 0.8, "max_model_len": 40,
         "enforce_eager": True, "compilation_config": {"level": 0}, "max_num_seqs": 64}
    assert kw["enable_prefix_caching"] is True and kw["mamba_ssm_cache_dtype"] == "float32"
    assert kw["trust_remote_code"] is False and kw["model"] == kw["tokenizer"] == str(served[0] / "served")
    (inputs, params), *_ = llm.calls
    assert all(not hasattr(sp, "seed") for sp in params)  # one engine seed, no per-request generator
    assert kw["seed"] == derive_seed(3, [i["prompt_token_ids"] for i in inputs])
    # --max-model-len caps the room each request gets, as vLLM would refuse more
    assert all(sp.max_tokens == min(8, 40 - len(i["prompt_token_ids"])) for i, sp in zip(inputs, params))
    # no per-request metrics: the 1-token prefill probe is salted so it neither hits nor seeds the cache
    probe_inputs, probe = llm.calls[1]
    assert all(i["cache_salt"] for i in probe_inputs) and probe[0].max_tokens == 1
    rows = read_jsonl(out)
    assert rows[0]["settings"]["seeding"] == "call" and len(rows) == 8


def test_the_same_run_twice_gives_the_same_rows_and_resume_keeps_the_rule(served, fake_vllm, tmp_path):
    _, base = served
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(base + ["--out", str(a)]) == 0 and main(base + ["--out", str(b)]) == 0
    strip = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in read_jsonl(a)]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_s")} for r in read_jsonl(b)]
    assert len({r["completion"] for r in read_jsonl(a)}) > 2
    # per-request seeds are another sampling rule: the file is not resumed with them
    assert main(base + ["--out", str(a), "--vllm-seed-per-request"]) == 2


def test_seed_per_request_seeds_each_prompt_as_our_engine_does(served, fake_vllm, tmp_path):
    _, base = served
    out = tmp_path / "r.jsonl"
    assert main(base + ["--out", str(out), "--vllm-seed-per-request", "--batch-problems", "4"]) == 0
    (inputs, params), *_ = FakeLLM.instances[0].calls
    assert [sp.seed for sp in params] == [derive_seed(3, i["prompt_token_ids"]) for i in inputs]
    assert "seeding" not in read_jsonl(out)[0]["settings"]  # the rule of files written before seeding existed


@pytest.mark.parametrize("extra, message", [
    (["--vllm-arg", "max_model_len=64", "--max-model-len", "32"], "already set by --max-model-len"),
    (["--vllm-arg", "seed=1", "--vllm-arg", "seed=2"], "already set by --vllm-arg seed"),
    (["--vllm-arg", "model=/elsewhere"], "come from --model"),
    (["--backend", "thinkfast", "--vllm-arg", "enforce_eager=true"], "apply to --backend vllm only"),
])
def test_conflicting_or_misplaced_vllm_arguments_are_refused(served, fake_vllm, tmp_path, capsys, extra, message):
    _, base = served
    assert main(base + ["--out", str(tmp_path / "x.jsonl"), *extra]) == 2
    assert message in capsys.readouterr().err and not FakeLLM.instances


def test_an_explicit_seed_and_defaults_can_be_overridden(served, fake_vllm, tmp_path):
    _, base = served
    assert main(base + ["--out", str(tmp_path / "o.jsonl"), "--vllm-arg", "seed=11",
                        "--vllm-arg", "enable_prefix_caching=false", "--vllm-arg", "mamba_ssm_cache_dtype=auto"]) == 0
    kw = FakeLLM.instances[0].kwargs
    assert (kw["seed"], kw["enable_prefix_caching"], kw["mamba_ssm_cache_dtype"]) == (11, False, "auto")
    probe_inputs, _ = FakeLLM.instances[0].calls[1]
    assert "cache_salt" not in probe_inputs[0]  # no prefix cache, no salt
    assert set(VLLM_DEFAULTS) == {"trust_remote_code", "enable_prefix_caching", "mamba_ssm_cache_dtype"}


def test_under_torchrun_each_rank_sees_only_its_gpus(served, fake_vllm, tmp_path, monkeypatch):
    import os

    _, base = served
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "t.jsonl"
    assert main(base + ["--out", str(out), "--tensor-parallel-size", "2"]) == 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    rows = read_jsonl(tmp_path / "t.shard-1-of-2.jsonl")
    assert [r["problem_id"] for r in rows][::2] == ["test/1", "test/3"]
