"""int8 weight-only inference (thinkfast.inference.quant): the kernels against the dequantize
reference, the rounding bound, quantized models through the engine, and --dtype int8 on the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from thinkfast.cli import main
from thinkfast.config import MambaConfig, ModelConfig
from thinkfast.inference.engine import SamplingParams, generate
from thinkfast.inference.quant import (Int8Linear, dequantize, quantize_for_inference, quantize_per_channel,
                                       weight_dtype_name)
from thinkfast.models.lm import LanguageModel
from thinkfast.runtime import UserError


def _linear(n_in=96, n_out=40, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


def test_reference_kernel_is_dequantize_then_linear():
    lin = _linear()
    m = Int8Linear.from_linear(lin, kernel="reference")
    x = torch.randn(3, 7, 96)  # (B, T, K)
    want = nn.functional.linear(x, dequantize(m.qweight, m.scale), lin.bias)
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_int8pack_kernel_equals_the_reference_to_bf16_rounding(bias):
    """int8pack rounds activations and scales to bf16 and returns a bf16 product: with the same
    roundings applied to the reference's inputs, only the output's bf16 rounding is left."""
    lin = _linear(bias=bias)
    m = Int8Linear.from_linear(lin, kernel="int8pack")
    for rows in (1, 5, 64):
        x = torch.randn(rows, 96)
        got = m(x)
        ref = nn.functional.linear(x.bfloat16().float(), m.qweight.float() * m.scale.bfloat16().float()[:, None],
                                   None if lin.bias is None else lin.bias.detach())
        assert got.dtype == torch.float32 and got.shape == (rows, 40)
        torch.testing.assert_close(got, ref, rtol=2 ** -7, atol=2 ** -7 * float(ref.abs().max()))
        # and against the fp32 reference itself, to bf16 activation rounding
        torch.testing.assert_close(got, m.forward_reference(x), rtol=2 ** -6, atol=2 ** -6 * float(ref.abs().max()))


def test_dynamic_kernel_error_is_bounded_by_its_activation_rounding():
    """Per-row int8 activations are off by at most sx/2 each, so an output is off by at most
    sx/2 * sum_k |w_nk| from the weight-only reference (plus float rounding)."""
    lin = _linear()
    m = Int8Linear.from_linear(lin, kernel="dynamic")
    x = torch.randn(6, 96)
    sx = x.abs().amax(1) / 127  # (M,)
    bound = sx[:, None] / 2 * dequantize(m.qweight, m.scale).abs().sum(1)[None, :]  # (M, N)
    err = (m(x) - m.forward_reference(x)).abs()
    assert (err <= bound * 1.001 + 1e-5).all()
    assert err.max() > 0  # it is not the weight-only product


def test_quantization_error_per_channel_is_at_most_half_a_scale():
    torch.manual_seed(1)
    w = torch.randn(33, 50) * torch.logspace(-3, 1, 33)[:, None]  # channels of very different ranges
    w[5] = 0.0  # an all-zero channel
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (33,)
    assert int(q.abs().max()) == 127 and int(q[5].abs().max()) == 0
    err = (w - dequantize(q, s)).abs()  # (N, K)
    assert (err <= s[:, None] / 2 * (1 + 1e-6)).all()
    assert (q.abs().amax(1)[torch.arange(33) != 5] == 127).all()  # each row's largest weight is exact


def test_bad_weight_shapes_are_refused():
    with pytest.raises(ValueError, match="2-d"):
        quantize_per_channel(torch.randn(4))
    with pytest.raises(ValueError, match="kernel"):
        Int8Linear.from_linear(_linear(), kernel="fast")
    with pytest.raises(ValueError, match="inference dtype"):
        quantize_for_inference(nn.Linear(2, 2), "int4")


def test_any_linear_is_quantized_so_fused_projections_compose():
    """A fused q|k|v (or gate|up) is a plain nn.Linear of the summed width: it is swapped like any other."""

    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 3 * 16 + 8)
            self.inner = nn.Sequential(nn.Linear(16, 24), nn.SiLU(), nn.Linear(24, 16))

        def forward(self, x):
            return self.inner(self.qkv(x)[..., :16])

    ref = Fused()
    quant = quantize_for_inference(copy.deepcopy(ref), "int8", kernel="reference")
    assert not any(isinstance(m, nn.Linear) for m in quant.modules())
    assert isinstance(quant.qkv, Int8Linear) and quant.qkv.out_features == 56
    x = torch.randn(2, 16)
    torch.testing.assert_close(quant(x), ref(x), rtol=0.05, atol=0.02)


def _tiny(pattern: str, kind: str = "mamba2") -> LanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=len(pattern), n_heads=2, n_kv_heads=1, d_ff=64,
                      max_seq_len=128, layer_pattern=pattern, mamba=MambaConfig(kind=kind), init_std=0.1)
    return LanguageModel(cfg).eval()


@pytest.mark.parametrize("pattern,kind", [("AA", "mamba2"), ("MM", "discrete"), ("AM", "mamba2")],
                         ids=["llama", "llamba", "hybrid"])
def test_quantized_tiny_model_generates_through_the_engine(pattern, kind):
    ref = _tiny(pattern, kind)
    quant = quantize_for_inference(copy.deepcopy(ref), "int8")
    assert not any(isinstance(m, nn.Linear) for m in quant.modules())
    assert weight_dtype_name(quant) == "int8" and weight_dtype_name(ref) == "float32"
    ids = torch.randint(0, 64, (2, 12))
    with torch.inference_mode():
        a, b = ref(ids).logits, quant(ids).logits
    # per-channel int8 (and bf16 activations in the product) keep log-probabilities within a tenth
    d = (a.log_softmax(-1) - b.log_softmax(-1)).abs()
    assert d.max() < 0.1 and d.mean() < 0.02
    sp = SamplingParams(n=2, temperature=0.0, max_new_tokens=6, eos_token_ids=[])
    outs = generate(quant, [[1, 2, 3], [4, 5]], sp)
    assert [len(s.token_ids) for o in outs for s in o.samples] == [6] * 4
    # greedy decoding with the cache agrees with a full forward of the quantized model
    toks = outs[0].samples[0].token_ids
    with torch.inference_mode():
        full = quant(torch.tensor([[1, 2, 3] + toks[:-1]])).logits[0, 2:].argmax(-1).tolist()
    assert full == toks


def test_tied_lm_head_gets_its_own_int8_copy_or_stays_float():
    ref = _tiny("AA")
    assert ref.config.tie_embeddings
    q = quantize_for_inference(copy.deepcopy(ref), "int8")
    assert isinstance(q.lm_head, Int8Linear) and q.embed_tokens.weight.dtype == torch.float32
    kept = quantize_for_inference(copy.deepcopy(ref), "int8", lm_head=False)
    assert isinstance(kept.lm_head, nn.Linear) and kept.lm_head.weight is kept.embed_tokens.weight


def test_float_dtypes_cast_the_model():
    m = quantize_for_inference(_tiny("AA"), "bfloat16")
    assert weight_dtype_name(m) == "bfloat16"


# --- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_dir(tmp_path):
    from thinkfast.checkpoint import save_model
    from thinkfast.data.tokenizer import build_tokenizer

    tok = build_tokenizer(texts=["question : what is 1 2 3 ? answer 4 5 6 #### 7 8 9 0 .\n\n"])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64,
                      max_seq_len=1024, layer_pattern="AM", init_std=0.5)  # room for GSM8K's few-shot prompt
    save_model(LanguageModel(cfg).eval(), tmp_path / "tiny", tokenizer=tok)
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"what is {i} ?", "answer": f"#### {i}"}) + "\n"
                            for i in range(3)))
    return tmp_path / "tiny", data


def _sample_argv(model, data, out, *extra):
    return ["sample", "--model", str(model), "--task", "gsm8k", "--data", str(data), "--n", "2",
            "--max-new-tokens", "4", "--temperature", "1.0", "--prompt-style", "fewshot", "--out", str(out),
            *extra]


def test_sample_dtype_int8_records_it_and_refuses_to_resume_at_another(tiny_dir, tmp_path, capsys):
    model, data = tiny_dir
    out = tmp_path / "s.jsonl"
    assert main(_sample_argv(model, data, out, "--dtype", "int8")) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["settings"]["dtype"] == "int8" for r in rows)
    capsys.readouterr()
    assert main(_sample_argv(model, data, out)) == 2  # the file was made at int8
    assert "int8" in capsys.readouterr().err
    plain = tmp_path / "p.jsonl"
    assert main(_sample_argv(model, data, plain)) == 0
    assert all("dtype" not in json.loads(line)["settings"] for line in plain.read_text().splitlines())


def test_generate_dtype_int8(tiny_dir, capsys):
    model, _ = tiny_dir
    argv = ["generate", "--model", str(model), "--json", "--n", "2", "--max-new-tokens", "5",
            "--temperature", "0", "what is 1 ?"]
    assert main(argv + ["--dtype", "int8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["sample"] for r in rows] == [0, 1] and all(1 <= r["tokens"] <= 5 for r in rows)


def test_backends_without_int8_refuse_it_clearly(tiny_dir, tmp_path, capsys):
    from thinkfast.inference.backends import open_backend

    model, data = tiny_dir
    for backend in ("hf", "vllm"):
        with pytest.raises(UserError, match="thinkfast engine's"):
            open_backend(backend, str(model), dtype="int8")
    assert main(_sample_argv(model, data, tmp_path / "h.jsonl", "--backend", "hf", "--dtype", "int8")) == 2
    err = capsys.readouterr().err
    assert "--dtype int8" in err and "--backend hf takes float32, bfloat16, float16" in err
