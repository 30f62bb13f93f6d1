"""Logits parity with transformers' LlamaForCausalLM, through the converter users run."""

import pytest
import torch

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from thinkfast.checkpoint import load_pretrained  # noqa: E402
from thinkfast.convert.llama import to_hf_state_dict  # noqa: E402

CASES = {
    "gqa-tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "mha-untied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "mqa-llama3-rope": dict(
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        rope_theta=500000.0,
    ),
    "head-dim-and-bias": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              attention_bias=True, mlp_bias=True),
}


def _hf_model(case: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      max_position_embeddings=128, rms_norm_eps=1e-5, **CASES[case])
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases: make them matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    hf = _hf_model(case)
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(tmp_path)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        out = model(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_left_padded_batch_matches_transformers(tmp_path):
    hf = _hf_model("gqa-tied")
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(tmp_path)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        out = model(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-4)


def test_export_state_dict_round_trips(tmp_path):
    hf = _hf_model("mha-untied")
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(tmp_path)
    sd = to_hf_state_dict(model)
    for k, v in sd.items():
        torch.testing.assert_close(v, hf.state_dict()[k])


def test_bad_checkpoint_names_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    from thinkfast.runtime import UserError

    hf = _hf_model("gqa-tied")
    hf.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    sd = load_file(f)
    sd.pop("model.layers.1.mlp.up_proj.weight")
    sd["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(UserError) as e:
        load_pretrained(tmp_path)
    assert "up_proj" in str(e.value) or "extra" in str(e.value)
