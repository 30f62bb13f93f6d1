"""The foundation's commands through the real CLI: convert, generate, bench."""

import json

import pytest
import torch

from thinkfast.cli import main


@pytest.fixture
def hf_llama_dir(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from thinkfast.data.tokenizer import build_tokenizer

    tok = build_tokenizer(texts=["Question: what is 1 2 3 ? Answer: 4 5 6 .\n\n"])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    path = tmp_path / "hf"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_convert_then_generate(hf_llama_dir, tmp_path, capsys):
    out = tmp_path / "tf"
    assert main(["convert", str(hf_llama_dir), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["format"] == "thinkfast"
    assert main(["convert", str(hf_llama_dir), str(out)]) == 2  # non-empty OUT_DIR is refused
    assert "not empty" in capsys.readouterr().err
    assert main(["generate", "--model", str(out), "--json", "--n", "2", "--max-new-tokens", "5",
                 "Question: what is 1 2 3 ?"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["sample"] for r in rows] == [0, 1] and all(r["tokens"] <= 5 for r in rows)


def test_convert_refuses_a_non_llama(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["convert", str(tmp_path / "bad"), str(tmp_path / "o")]) == 2
    assert "error" in capsys.readouterr().err


def test_bench_writes_figures_and_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--batch", "2", "--prompt", "8", "--gen", "6",
                 "--kinds", "llama,mamba", "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    tps = {(r["engine"], r["kind"]): r.get("decode_tokens_per_s") for r in data["results"]}
    assert all(v and v > 0 for v in tps.values()), data["results"]
    assert {"llama_vs_hf_ratio", "mamba_vs_hf_ratio", "mamba_vs_llama_ratio"} <= set(data["ratios"])
    by = {(r["engine"], r["kind"]): r for r in data["results"]}
    assert all(r["matmul_floor_ms"] > 0 and r["decode_step_ms"] > 0 for r in by.values())
    for kind in ("llama", "mamba"):  # the ceiling: transformers' step over our matmul floor
        want = by[("hf", kind)]["decode_step_ms"] / by[("thinkfast", kind)]["matmul_floor_ms"]
        assert data["ratios"][f"{kind}_vs_hf_ratio_ceiling"] == pytest.approx(want)
