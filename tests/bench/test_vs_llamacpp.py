"""benchmarks/vs_llamacpp.py without llama.cpp: the GGUF conversion of a tiny thinkfast Llama read
back with the gguf package, the rotary permutation, the llama-batched-bench output parser on
output captured from a real build, and the message when llama.cpp is missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gguf  # in the test extras
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _load():
    spec = importlib.util.spec_from_file_location("vs_llamacpp", ROOT / "benchmarks" / "vs_llamacpp.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


vs = _load()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untied thinkfast Llama (GQA: 4 query heads, 2 KV heads), its HF export and its GGUFs."""
    from thinkfast.config import ModelConfig
    from thinkfast.convert.export import export_model
    from thinkfast.models.lm import LanguageModel

    work = tmp_path_factory.mktemp("vs_llamacpp")
    cfg = ModelConfig.from_name("tiny", tie_embeddings=False)
    torch.manual_seed(0)
    model = LanguageModel(cfg).eval()
    hf = export_model(model, work / "hf", dtype=torch.float32).out_dir
    files = {t: vs.hf_to_gguf(hf, work / f"m-{t}.gguf", t) for t in ("f32", "q8_0")}
    return model, files


def _tensors(path: Path) -> dict[str, "gguf.ReaderTensor"]:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def _expected(model) -> dict[str, np.ndarray]:
    """GGUF name -> thinkfast weight (q/k in thinkfast's own row order), (out, in) as numpy."""
    from thinkfast.convert.llama import key_map

    sd = model.state_dict()
    return {vs.gguf_name(hf): sd[ours].float().numpy() for ours, hf in key_map(model.config).items()}


def test_f32_gguf_holds_the_thinkfast_weights(tiny):
    model, files = tiny
    cfg = model.config
    got, want = _tensors(files["f32"]), _expected(model)
    assert set(got) == set(want) and "output.weight" in got  # untied: the LM head has its own tensor
    for name, w in want.items():
        t = got[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == list(reversed(w.shape))  # GGML lists dims innermost first
        data = np.asarray(t.data).reshape(w.shape)
        if name.endswith("attn_q.weight"):
            data = vs.unpermute(data, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            data = vs.unpermute(data, cfg.n_kv_heads)
        np.testing.assert_array_equal(data, w, err_msg=name)


def test_gguf_metadata_describes_the_model(tiny):
    model, files = tiny
    cfg = model.config
    fields = gguf.GGUFReader(str(files["f32"])).fields

    def scalar(key):
        f = fields[key]
        return f.parts[f.data[0]][0]

    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert scalar("llama.block_count") == cfg.n_layers
    assert scalar("llama.embedding_length") == cfg.d_model
    assert scalar("llama.feed_forward_length") == cfg.d_ff
    assert scalar("llama.attention.head_count") == cfg.n_heads
    assert scalar("llama.attention.head_count_kv") == cfg.n_kv_heads
    assert scalar("llama.rope.dimension_count") == cfg.head_dim
    assert scalar("llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert len(fields["tokenizer.ggml.tokens"].data) == cfg.vocab_size


def test_q8_0_gguf_is_within_a_rounding_step_of_the_weights(tiny):
    model, files = tiny
    got, want = _tensors(files["q8_0"]), _expected(model)
    cfg = model.config
    for name, w in want.items():
        t = got[name]
        if w.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32  # norms stay in float
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if name.endswith("attn_q.weight"):
            data = vs.unpermute(data, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            data = vs.unpermute(data, cfg.n_kv_heads)
        blocks = np.abs(w).reshape(w.shape[0], -1, 32).max(-1, keepdims=True)  # Q8_0: one scale per 32
        step = np.repeat(blocks / 127, 32, axis=-1).reshape(w.shape)
        # half a step, plus the float16 rounding of the block's scale (2^-11 of it, times up to 127)
        assert np.all(np.abs(data - w) <= step * (0.5 + 127 * 2**-11)), name


def test_rotary_permute_interleaves_each_heads_halves():
    heads, hd, d = 3, 8, 5
    w = np.arange(heads * hd * d, dtype=np.float32).reshape(heads * hd, d)
    p = vs.rotary_permute(w, heads)
    for h in range(heads):
        for i in range(hd // 2):  # GGML pairs (2i, 2i+1) are HF's (i, i + hd/2)
            np.testing.assert_array_equal(p[h * hd + 2 * i], w[h * hd + i])
            np.testing.assert_array_equal(p[h * hd + 2 * i + 1], w[h * hd + i + hd // 2])
    np.testing.assert_array_equal(vs.unpermute(p, heads), w)


@pytest.mark.parametrize("name, batches", [("batched_bench_md.txt", [1, 4]), ("batched_bench_jsonl.txt", [1])])
def test_parse_batched_bench_output(name, batches):
    rows = vs.parse_batched_bench((FIXTURES / name).read_text())
    assert [(r["pp"], r["tg"], r["pl"]) for r in rows] == [(16, 8, b) for b in batches]
    for r in rows:  # S_TG is batch * tg / T_TG; T_TG is printed to the millisecond
        assert abs(r["pl"] * r["tg"] / r["speed_tg"] - r["t_tg"]) <= 0.0005 + 1e-6


def test_missing_llamacpp_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    assert vs.main(["--model", "tiny"]) == 2
    assert "cmake" in capsys.readouterr().err
    assert vs.main(["--model", "tiny", "--llamacpp-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "llama-batched-bench" in err


def test_bad_gguf_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="out_type"):
        vs.hf_to_gguf(tmp_path, tmp_path / "x.gguf", "q4_k")
