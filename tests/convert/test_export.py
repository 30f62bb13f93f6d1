"""thinkfast export: transformers loads each export offline with thinkfast's logits, and the
exports import back to the same model.

Random tiny configs in fp32. Every parameter that could be mis-mapped (norm weights, conv biases,
D, dt_bias, attention biases) is perturbed away from its initial value so a wrong mapping shows.
"""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from transformers import AutoModelForCausalLM  # noqa: E402

from thinkfast.config import ModelConfig  # noqa: E402
from thinkfast.convert.export import ExportError, export_model, import_exported  # noqa: E402
from thinkfast.convert.granite import import_hf_hybrid  # noqa: E402
from thinkfast.convert.llamba import import_llamba  # noqa: E402
from thinkfast.models.lm import LanguageModel  # noqa: E402
from thinkfast.runtime import UserError  # noqa: E402

V = 61
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16)

CASES = {
    # x and B at key/value width 2, repeated to 4 heads; untied head; llama3 RoPE; chunks crossed
    "hybrid-gqa-llama3": dict(layer_pattern="MAM", n_heads=4, n_kv_heads=2, tie_embeddings=False,
                              rope_scaling=LLAMA3, rope_theta=50000.0),
    # no repetition (G == H), tied embeddings, attention biases, attention first
    "hybrid-mha-tied-bias": dict(layer_pattern="AMMA", n_heads=4, n_kv_heads=4, tie_embeddings=True,
                                 attention_bias=True),
    # pure Mamba-2, one x/B group for 4 heads (MQA-like repetition)
    "mamba2-g1": dict(layer_pattern="MMM", n_heads=4, n_kv_heads=1, tie_embeddings=False),
    # SSM sizes that differ from attention's: 8 heads of 8 -> d_inner = 2 * d_model (expand 2), G = 2
    "hybrid-expand2": dict(layer_pattern="AM", n_heads=4, n_kv_heads=2, tie_embeddings=True,
                           mamba=dict(n_heads=8, n_kv_heads=2, head_dim=8, d_state=6, chunk_size=8)),
}


def make_model(seed=0, **over) -> LanguageModel:
    kw = dict(vocab_size=V, d_model=32, n_layers=len(over.get("layer_pattern", "AM")), n_heads=4, n_kv_heads=2,
              d_ff=48, max_seq_len=128, init_std=0.2, mamba=dict(d_state=8, chunk_size=8))
    kw.update(over)
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig(**kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("norm", "conv1d.bias", ".D", "dt_bias", "z_bias", "proj.bias")):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def ids(T=21, B=2, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_load(path):
    hf, info = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, dtype=torch.float32,
                                                    output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return hf.eval()


def logits(model, x):
    with torch.no_grad():
        if isinstance(model, LanguageModel):
            return model(x).logits
        # use_cache=False: transformers 5.23 cannot build a cache for an all-Mamba GraniteMoeHybrid
        # (get_seq_length looks for an attention layer), see test_pure_mamba2_generate_in_transformers
        return model(x, use_cache=False).logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each case exported once: {case: (model, out_dir)}."""
    out = {}
    for case, over in CASES.items():
        m = make_model(**over)
        d = tmp_path_factory.mktemp(case) / "export"
        res = export_model(m, d)
        assert res.architecture == "GraniteMoeHybridForCausalLM" and res.served_by_vllm
        out[case] = (m, d)
    return out


# --- Mamba-2 students -> GraniteMoeHybrid -----------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_granite_export_loads_in_transformers_with_equal_logits(case, exported):
    model, d = exported[case]
    hf = hf_load(d)
    assert type(hf).__name__ == "GraniteMoeHybridForCausalLM"
    x = ids()
    torch.testing.assert_close(logits(hf, x), logits(model, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_granite_round_trip_gives_the_same_config_and_logits(case, exported):
    model, d = exported[case]
    back, tok = import_hf_hybrid(d)
    assert tok is None
    assert back.config.to_dict() == model.config.to_dict()  # incl. the folded-back x/B groups
    x = ids()
    torch.testing.assert_close(logits(back, x), logits(model, x), atol=0, rtol=0)


def test_granite_config_sets_the_neutral_values(exported):
    model, d = exported["hybrid-gqa-llama3"]
    meta = json.loads((d / "config.json").read_text())
    assert meta["layer_types"] == ["mamba", "attention", "mamba"]  # Granite 4.0's names (vLLM reads them)
    assert meta["num_local_experts"] == 0 and meta["shared_intermediate_size"] == 48
    assert (meta["embedding_multiplier"], meta["residual_multiplier"], meta["logits_scaling"]) == (1.0, 1.0, 1.0)
    assert meta["attention_multiplier"] == pytest.approx(8 ** -0.5)
    assert meta["mamba_n_groups"] == meta["mamba_n_heads"] == 4 and meta["mamba_expand"] == 1
    assert meta["rope_scaling"]["rope_type"] == "llama3" and meta["rope_parameters"]["rope_theta"] == 50000.0
    assert "time_step_limit" not in meta  # default (0, inf) = no clamp; infinity is not JSON
    # the GQA repetition: heads 0,1 read group 0 and heads 2,3 group 1, in in_proj and conv alike
    from safetensors.torch import load_file

    sd = load_file(str(d / "model.safetensors"))
    H, P, N = 4, 8, 8
    x_rows = sd["model.layers.0.mamba.in_proj.weight"][H * P: 2 * H * P].view(H, P, -1)
    assert torch.equal(x_rows[0], x_rows[1]) and torch.equal(x_rows[2], x_rows[3])
    assert not torch.equal(x_rows[1], x_rows[2])
    ours = model.layers[0].mixer.in_proj.weight[H * P: H * P + 2 * P].view(2, P, -1)
    assert torch.equal(x_rows[2], ours[1])
    b_conv = sd["model.layers.0.mamba.conv1d.weight"][H * P: H * P + H * N].view(H, N, -1)
    assert torch.equal(b_conv[2], b_conv[3]) and not torch.equal(b_conv[0], b_conv[2])


def test_granite_greedy_generate_matches_the_thinkfast_engine(exported):
    from thinkfast.inference.engine import SamplingParams, generate

    model, d = exported["hybrid-gqa-llama3"]
    hf = hf_load(d)
    prompt = ids(T=11, B=1, seed=3)
    with torch.no_grad():
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12,
                          min_new_tokens=12, pad_token_id=0, eos_token_id=None)[0, prompt.shape[1]:].tolist()
    ours = generate(model, [prompt[0].tolist()], SamplingParams(temperature=0.0, max_new_tokens=12,
                                                                eos_token_ids=()))[0].samples[0].token_ids
    assert ours == ref


def test_importer_reads_a_checkpoint_written_by_transformers(tmp_path):
    """import_hf_hybrid on a GraniteMoeHybrid made and saved by transformers itself (its own key
    names, its transformers-5 layer_types spelling), not by our exporter."""
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    torch.manual_seed(0)
    cfg = GraniteMoeHybridConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        layer_types=["mamba", "attention", "mamba"], position_embedding_type="rope", rope_theta=20000.0,
        attention_multiplier=8 ** -0.5, rms_norm_eps=1e-5, max_position_embeddings=128,
        num_local_experts=0, shared_intermediate_size=40, mamba_n_heads=4, mamba_n_groups=4, mamba_d_head=8,
        mamba_d_state=6, mamba_expand=1, mamba_chunk_size=8, tie_word_embeddings=False)
    hf = GraniteMoeHybridForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "g")
    model, _ = import_hf_hybrid(tmp_path / "g")
    assert model.config.layer_pattern == "MAM" and model.config.mamba.n_kv_heads == 4  # nothing repeated
    x = ids()
    torch.testing.assert_close(logits(model, x), logits(hf, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("change,match", [
    (dict(mamba_n_groups=1), "per head"),
    (dict(num_local_experts=4), "routed experts"),
    (dict(embedding_multiplier=12.0), "embedding_multiplier"),
    (dict(attention_multiplier=1.0), "attention_multiplier"),
])
def test_importer_refuses_granite_models_without_an_exact_equivalent(tmp_path, change, match):
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    base = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                layer_types=["mamba", "attention"], position_embedding_type="rope", attention_multiplier=8 ** -0.5,
                rms_norm_eps=1e-5, num_local_experts=0, num_experts_per_tok=2, shared_intermediate_size=40,
                intermediate_size=40, mamba_n_heads=4, mamba_n_groups=4, mamba_d_head=8, mamba_d_state=6,
                mamba_expand=1)
    GraniteMoeHybridForCausalLM(GraniteMoeHybridConfig(**{**base, **change})).save_pretrained(tmp_path / "g")
    with pytest.raises(UserError, match=match):
        import_hf_hybrid(tmp_path / "g")


# --- Transformers -> Llama -------------------------------------------------------------------------


def test_llama_export_loads_with_equal_logits_and_round_trips(tmp_path):
    from thinkfast.checkpoint import load_pretrained

    model = make_model(layer_pattern="AAA", n_heads=4, n_kv_heads=2, tie_embeddings=False, attention_bias=True,
                       mlp_bias=True, rope_scaling=LLAMA3)
    res = export_model(model, tmp_path / "llama")
    assert res.architecture == "LlamaForCausalLM"
    hf = hf_load(tmp_path / "llama")
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = ids()
    torch.testing.assert_close(logits(hf, x), logits(model, x), atol=2e-5, rtol=1e-4)
    back, _ = load_pretrained(tmp_path / "llama")
    same = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "norm_eps",
            "rope_theta", "rope_scaling", "max_seq_len", "tie_embeddings", "attention_bias", "mlp_bias",
            "layer_pattern")
    assert {k: back.config.to_dict()[k] for k in same} == {k: model.config.to_dict()[k] for k in same}
    torch.testing.assert_close(logits(back, x), logits(model, x), atol=0, rtol=0)


# --- discrete (Llamba) students -> the Llamba release format ---------------------------------------


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def llamba_reference_logits(path, x):
    """A from-scratch forward of the Llamba release (cartesia_pytorch.Llamba) on the exported
    files: its in_proj split [xBC, z, A_log], identity conv, x / softplus(A_log) fed with
    dt = softplus(A_log) and A = -1, D skip, y * silu(z + z_bias), block norms with eps 1e-5.
    Written from the release's equations with a plain sequential scan, not thinkfast's code."""
    from safetensors.torch import load_file

    meta = json.loads((path / "config.json").read_text())
    sd = load_file(str(path / "model.safetensors"))
    ssm, D = meta["ssm_cfg"], meta["d_model"]
    d_inner = ssm["expand"] * D
    H, N = ssm["n_v_heads"], ssm["d_state"]
    P = d_inner // H
    h = sd["backbone.embedding.weight"][x]  # (B, T, D)
    Bsz, T, _ = h.shape
    for i in range(meta["n_layer"]):
        g = lambda k: sd[f"backbone.layers.{i}.{k}"]  # noqa: E731
        u = _rms(h, g("input_layernorm.weight"), 1e-5)
        proj = u @ g("mixer.in_proj.weight").T
        if ssm["bias"]:  # the release's biased mixer: in_proj / out_proj biases and no z_bias
            proj = proj + g("mixer.in_proj.bias")
        xbc, z, a = torch.split(proj, [d_inner + 2 * H * N, d_inner, H], -1)
        K = g("mixer.conv1d.weight").shape[-1]
        xbc = F.conv1d(xbc.transpose(1, 2), g("mixer.conv1d.weight"), g("mixer.conv1d.bias"), padding=K - 1,
                       groups=xbc.shape[-1])[..., :T].transpose(1, 2)
        xs, Bm, Cm = torch.split(xbc, [d_inner, H * N, H * N], -1)
        xs, Bm, Cm = xs.view(Bsz, T, H, P), Bm.view(Bsz, T, H, N), Cm.view(Bsz, T, H, N)
        dt = F.softplus(a)  # (B, T, H)
        x_in = xs / dt[..., None]
        state = torch.zeros(Bsz, H, P, N)
        ys = []
        for t in range(T):
            state = state * torch.exp(-dt[:, t])[..., None, None] + (dt[:, t, :, None] * x_in[:, t])[..., None] \
                * Bm[:, t, :, None, :]
            ys.append((state * Cm[:, t, :, None, :]).sum(-1))
        y = torch.stack(ys, 1) + g("mixer.D")[:, None] * xs
        y = y.reshape(Bsz, T, d_inner) * F.silu(z + (0.0 if ssm["bias"] else g("mixer.z_bias")))
        h = h + y @ g("mixer.out_proj.weight").T + (g("mixer.out_proj.bias") if ssm["bias"] else 0.0)
        v = _rms(h, g("post_attention_layernorm.weight"), 1e-5)
        gate, up = v @ g("mlp.gate_proj.weight").T, v @ g("mlp.up_proj.weight").T
        h = h + (F.silu(gate) * up) @ g("mlp.down_proj.weight").T
    h = _rms(h, sd["backbone.final_layernorm.weight"], meta["norm_epsilon"])
    head = sd["backbone.embedding.weight"] if meta["tie_embeddings"] else sd["lm_head.weight"]
    return h @ head.T


@pytest.mark.parametrize("tie", [True, False])
def test_discrete_student_exports_to_the_llamba_format(tmp_path, tie):
    model = make_model(layer_pattern="MM", tie_embeddings=tie, n_heads=4,
                       mamba=dict(kind="discrete", d_state=6, chunk_size=8))
    res = export_model(model, tmp_path / "llamba")
    assert res.architecture == "LlambaLMHeadModel" and not res.served_by_vllm
    meta = json.loads((tmp_path / "llamba" / "config.json").read_text())
    assert meta["ssm_cfg"]["n_v_heads"] == meta["ssm_cfg"]["n_qk_heads"] == 4
    assert meta["ssm_cfg"]["activation"] == "identity" and meta["pad_vocab_size_multiple"] == 1  # 61 is odd
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "llamba" / "model.safetensors"))
    # the release's shapes: in_proj (2*d_inner + 2*H*N + H, d_model), conv over d_inner + 2*H*N channels
    assert sd["backbone.layers.0.mixer.in_proj.weight"].shape == (2 * 32 + 2 * 4 * 6 + 4, 32)
    assert sd["backbone.layers.0.mixer.conv1d.weight"].shape == (32 + 2 * 4 * 6, 1, 4)
    assert ("lm_head.weight" in sd) == (not tie)
    x = ids(T=13)
    torch.testing.assert_close(llamba_reference_logits(tmp_path / "llamba", x), logits(model, x),
                               atol=2e-5, rtol=1e-4)
    back, _ = import_llamba(tmp_path / "llamba")
    assert back.config.mamba.kind == "discrete"
    torch.testing.assert_close(logits(back, x), logits(model, x), atol=0, rtol=0)
    assert import_exported(tmp_path / "llamba") is not None


# --- refusals and the output directory -------------------------------------------------------------


def test_a_discrete_hybrid_is_refused_naming_the_kinds_that_have_a_target(tmp_path):
    model = make_model(layer_pattern="AM", mamba=dict(kind="discrete", d_state=6))
    with pytest.raises(ExportError, match="no exact export target") as e:
        export_model(model, tmp_path / "x")
    assert "GraniteMoeHybridForCausalLM" in str(e.value) and "LlamaForCausalLM" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_a_decay_bias_exports_as_the_releases_biased_mixer(tmp_path):
    model = make_model(layer_pattern="MM", n_heads=4, mamba=dict(kind="discrete", d_state=6, chunk_size=8,
                                                                decay_bias=[2, 32]))
    with torch.no_grad():  # trained-looking biases, so a dropped or misplaced one changes the logits
        for layer in model.layers:
            layer.mixer.z_bias.normal_(0, 0.5)
            layer.mixer.a_bias.add_(torch.randn(4))
    export_model(model, tmp_path / "llamba")
    meta = json.loads((tmp_path / "llamba" / "config.json").read_text())
    assert meta["ssm_cfg"]["bias"] is True
    x = ids(T=13)
    torch.testing.assert_close(llamba_reference_logits(tmp_path / "llamba", x), logits(model, x),
                               atol=2e-5, rtol=1e-4)
    back, _ = import_llamba(tmp_path / "llamba")
    assert back.config.mamba.decay_bias is not None
    torch.testing.assert_close(logits(back, x), logits(model, x), atol=0, rtol=0)


def test_a_biased_llamba_checkpoint_with_a_bias_thinkfast_lacks_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_model(layer_pattern="MM", n_heads=4, mamba=dict(kind="discrete", d_state=6, decay_bias=[2, 32]))
    export_model(model, tmp_path / "llamba")
    path = tmp_path / "llamba" / "model.safetensors"
    sd = load_file(str(path))
    sd["backbone.layers.1.mixer.out_proj.bias"] = torch.ones_like(sd["backbone.layers.1.mixer.out_proj.bias"])
    save_file(sd, str(path))
    with pytest.raises(UserError, match=r"layers \[1\] have a nonzero"):
        import_llamba(tmp_path / "llamba")


@pytest.mark.parametrize("over,match", [
    (dict(norm_eps=1e-6), "norm_eps"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(mamba=dict(n_heads=4, head_dim=6, d_state=6)), "integer multiple"),
])
def test_mamba2_students_without_an_exact_granite_equivalent_are_refused(tmp_path, over, match):
    with pytest.raises(ExportError, match=match):
        export_model(make_model(layer_pattern="AM", **over), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_non_empty_out_dir_needs_overwrite_and_is_replaced_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    model = make_model(layer_pattern="AM")
    with pytest.raises(ExportError, match="not empty"):
        export_model(model, out)
    assert (out / "stale.txt").exists() and not (out / "config.json").exists()
    export_model(model, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    (tmp_path / "empty").mkdir()
    export_model(model, tmp_path / "empty")  # an empty directory is fine


def _run_command(argv):
    from thinkfast.commands import export as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.run(p.parse_args(argv))


def test_export_command_on_a_saved_student_copies_the_tokenizer(tmp_path, capsys):
    from thinkfast.checkpoint import save_model
    from thinkfast.data.tokenizer import build_tokenizer

    tok = build_tokenizer(texts=["Question: what is 1 2 3 ? Answer: 4 5 6 .\n\n"])
    model = make_model(layer_pattern="MA", vocab_size=len(tok))
    save_model(model, tmp_path / "student", tokenizer=tok)
    out = tmp_path / "served"
    assert _run_command([str(tmp_path / "student"), str(out)]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[0])
    assert info["architecture"] == "GraniteMoeHybridForCausalLM" and info["served_by_vllm"]
    assert "tokenizer.json" in info["tokenizer_files"] and (out / "tokenizer.json").is_file()
    meta = json.loads((out / "config.json").read_text())
    assert meta["eos_token_id"] == tok.eos_token_id and meta["torch_dtype"] == "float32"
    with pytest.raises(ExportError, match="not empty"):
        _run_command([str(tmp_path / "student"), str(out)])
    with pytest.raises(ExportError, match="model directory itself"):
        _run_command([str(tmp_path / "student"), str(tmp_path / "student"), "--overwrite"])
    assert _run_command([str(tmp_path / "student"), str(out), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # the exported directory is served with its tokenizer: transformers reads both
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).eos_token_id == tok.eos_token_id
    # thinkfast.load_pretrained reads it back once the importer is hooked in (see the report)
    back, tok2 = import_exported(out)
    assert tok2 is not None and back.config.layer_pattern == "MA"
    rounded = copy.deepcopy(model)  # what a bf16 export keeps: the weights rounded to bf16
    with torch.no_grad():
        for prm in rounded.parameters():
            prm.copy_(prm.to(torch.bfloat16).float())
    x = torch.randint(0, len(tok), (1, 9))
    torch.testing.assert_close(logits(back, x), logits(rounded, x), atol=0, rtol=0)


def test_load_pretrained_reads_exported_hybrids(exported):
    """The round trip through ``thinkfast.load_pretrained`` itself."""
    from thinkfast import checkpoint

    model, d = exported["hybrid-gqa-llama3"]
    back, _ = checkpoint.load_pretrained(d)
    x = ids()
    torch.testing.assert_close(logits(back, x), logits(model, x), atol=0, rtol=0)


def test_cli_has_the_export_command(tmp_path):
    from thinkfast import cli

    assert "export" in cli.COMMANDS
    save = tmp_path / "s"
    from thinkfast.checkpoint import save_model

    save_model(make_model(layer_pattern="AA"), save)
    assert cli.main(["export", str(save), str(tmp_path / "o"), "--threads", "1"]) == 0
    assert cli.main(["export", str(save), str(tmp_path / "o")]) == 2  # non-empty: a UserError, exit 2
