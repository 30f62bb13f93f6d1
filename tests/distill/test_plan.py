"""``distill.plan`` against numbers worked out by hand for a tiny config, and ``--plan`` end to end."""

from __future__ import annotations

import json

import pytest
import yaml

from thinkfast.checkpoint import save_model
from thinkfast.cli import main
from thinkfast.config import ConfigError, ModelConfig
from thinkfast.convert.from_attention import student_config
from thinkfast.distill.config import build_config
from thinkfast.distill.plan import (block_activations, block_params, model_params, plan_recipe, shapes_from_mapping,
                                    trainable_params)
from thinkfast.models.lm import LanguageModel

# D 8, 2 layers, 2 heads of 4 (1 KV head), F 16, V 32, tied embeddings.
TEACHER = ModelConfig(vocab_size=32, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=16, max_seq_len=64)
TEACHER_PARAMS = 32 * 8 + 8 + 2 * (192 + 384 + 16)  # embedding, final norm, 2 x (attention, MLP, norms) = 1448
# The 50% Mamba-2 hybrid "MA": mixer in_proj 8 x (z 8 + x 4 + B 4 + C 8 + dt 2) = 208, conv 16 x 4 + 16 = 80,
# dt_bias, A_log, D 2 each, gated norm 8, out_proj 64 -> 366; the block 366 + 384 + 16 = 766.
STUDENT_PARAMS = 32 * 8 + 8 + 766 + 592  # 1622


def _recipe(**train):
    return build_config({
        "teacher": "no/such/teacher", "student": {"init": "teacher", "keep": 0.5, "kind": "mamba2",
                                                  "mamba": {"chunk_size": 8}},
        "data": {"train": "d.jsonl", "seq_len": 16},
        "train": {"batch_size": 4, "micro_batch_size": 1, "steps": 10, **train},
        "stages": [{"name": "hidden", "objective": "hidden"}, {"name": "kd", "objective": "kd"},
                   {"name": "matrix", "objective": "matrix", "seq_len": 8}],
    })


def test_parameters_by_hand_and_against_the_model():
    s = student_config(TEACHER, "MA", "mamba2", {"chunk_size": 8})
    assert block_params(TEACHER, "A") == {"mixer": 192, "mlp": 384, "norms": 16, "matrix": 0}
    assert block_params(s, "M") == {"mixer": 366, "mlp": 384, "norms": 16, "matrix": 208 + 80 + 2 + 2}
    assert model_params(TEACHER) == TEACHER_PARAMS == 1448
    assert model_params(s) == STUDENT_PARAMS == 1622
    assert trainable_params(s, "kd", "auto") == 1622
    assert trainable_params(s, "hidden", "auto") == 366  # the Mamba mixer only
    assert trainable_params(s, "matrix", "auto") == 292
    assert trainable_params(s, "kd", "mamba_layers") == 766
    # The formulas agree with real models of other shapes.
    big = ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, d_ff=96)
    for cfg in (s, student_config(big, "MA", "mamba2"), student_config(big, "MM", "discrete"),
                student_config(big, "MM", "discrete", {"decay_bias": [1.0, 64.0]}),
                ModelConfig.from_name("tiny", tie_embeddings=False, attention_bias=True, mlp_bias=True)):
        assert model_params(cfg) == LanguageModel(cfg).num_parameters()


def test_block_activations_by_hand():
    s = student_config(TEACHER, "MA", "mamba2", {"chunk_size": 8})
    bt = 1 * 16  # micro-batch 1, 16 tokens, fp32 everywhere
    a = block_activations(s, "A", 1, 16, 4, 4)
    assert a.norms == 2 * bt * 8 * (4 + 2 * 4)  # per norm: fp32 input, normalised, weighted output
    assert a.mixer == bt * (5 * 8 + 4 * 4) * 4 + bt * 2 * 4  # q/k stages, v, SDPA out, o_proj in; lse
    assert a.mlp == bt * 4 * 16 * 4
    m = block_activations(s, "M", 1, 16, 4, 4)
    # in_proj out 26, conv in+out 32, repeated x 8 and B 8, x*dt 8, output path 40 -> 122 per token;
    # the scan: 4 HN 32 + 3 H l 48 + 3 HP 24 = 104 per token (16 tokens are two whole chunks of 8).
    assert m.mixer == bt * 122 * 4 + bt * 104 * 4
    # 10 tokens are padded to 16 by the scan: its part does not shrink.
    assert block_activations(s, "M", 1, 10, 4, 4).mixer == 10 * 122 * 4 + 16 * 104 * 4


def test_stage_memory_single_ddp_fsdp():
    cfg = _recipe()
    plan = plan_recipe(cfg, TEACHER, devices=1)
    hidden, kd, matrix = plan.stages
    assert (kd.student_params, kd.teacher_params, kd.trainable_params) == (1622, 1448, 1622)
    assert (kd.micro_batch, kd.accumulation, kd.tokens_per_step, kd.tokens) == (1, 4, 64, 640)
    m = kd.memory
    assert (m.weights, m.teacher, m.gradients, m.optimizer, m.step_temporary) == (
        4 * 1622, 4 * 1448, 4 * 1622, 8 * 1622, 4 * 1622)
    top = 16 * 8 * (3 * 4 + 4)  # the final norm
    block_a, block_m = 10880, 3072 + 16 * 122 * 4 + 16 * 104 * 4 + 4096
    assert m.activations_full == block_a + block_m + top
    assert m.activations_checkpointed == 2 * 16 * 8 * 4 + block_m + top  # block inputs + one Block
    assert m.activations == m.activations_full  # the recipe does not checkpoint
    # chunked loss: gathered student and teacher hidden states, 4 fp32 (16, 32) chunks, grad of the hidden
    assert m.loss_buffers == 16 * 8 * (4 + 4) + 4 * 16 * 32 * 4 + 16 * 8 * 4
    # accumulation > 1: the gradients are alive during every forward/backward
    assert m.peak_forward_backward == m.weights + m.teacher + m.optimizer + m.activations + m.loss_buffers \
        + m.gradients
    assert m.peak_step == m.weights + m.teacher + m.gradients + m.optimizer + m.step_temporary
    # the end of backward, every gradient present and the tied embedding's two parts summed, is lower here
    assert m.peak_forward_backward > m.weights + m.teacher + m.optimizer + m.gradients + 4 * 32 * 8
    assert hidden.trainable_params == 366 and matrix.seq_len == 8 and matrix.tokens_per_step == 32
    # matrix: one (student) Mamba layer x 2 heads x 4 fp32 (8, 8) tensors, 6 more for the layer in
    # flight, + 3 teacher hidden states
    assert matrix.memory.activations == (4 + 6) * 2 * 8 * 8 * 4 + 3 * 8 * 8 * 4
    # full logits at the KL's peak: 5 student (B, T, V) tensors (logits + 4 fp32), 3 teacher ones
    assert m.loss_buffers_full_logits == 16 * 32 * (4 + 4 * 4) + 16 * 32 * (4 + 4 * 2)

    ckpt = plan_recipe(_recipe(activation_checkpointing=True), TEACHER).stages[1].memory
    assert ckpt.activations == ckpt.activations_checkpointed < ckpt.activations_full

    fsdp = plan_recipe(_recipe(distributed="fsdp", micro_batch_size=2), TEACHER, devices=2).stages[1]
    assert (fsdp.micro_batch, fsdp.accumulation) == (2, 1)
    f = fsdp.memory
    assert f.weights == 4 * 1622 // 2 + 4 * ((32 * 8 + 8) + 2 * 766)  # shard + gathered root and two blocks
    assert (f.gradients, f.optimizer) == (4 * 1622 // 2, 8 * 1622 // 2)
    assert f.teacher == 4 * 1448  # replicated
    # no accumulation: only the LM head's gradient is counted during backward
    assert f.peak_forward_backward == f.weights + f.teacher + f.optimizer + f.activations + f.loss_buffers \
        + 4 * 32 * 8
    ddp = plan_recipe(_recipe(distributed="ddp", micro_batch_size=2), TEACHER, devices=2).stages[1].memory
    assert ddp.weights == 4 * 1622 and ddp.gradients == 2 * 4 * 1622  # replica + DDP buckets


def test_bf16_halves_the_teacher_and_adds_autocast_casts():
    m = plan_recipe(_recipe(bf16=True), TEACHER).stages[1].memory
    assert m.teacher == 2 * 1448  # auto: bf16 on an accelerator
    assert m.weights == 4 * 1622 + 2 * 1622  # fp32 master + the bf16 casts kept for backward
    cpu = plan_recipe(_recipe(bf16=True), TEACHER, accelerator=False).stages[1].memory
    # on a CPU AdamW steps one tensor at a time: a sqrt and a quotient of the largest (the embedding)
    assert cpu.teacher == 4 * 1448 and cpu.step_temporary == 2 * 4 * 32 * 8


def test_shapes_from_config_files():
    hf = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
          "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 32, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 64, "tie_word_embeddings": True, "rope_theta": 10000.0}
    assert model_params(shapes_from_mapping(hf)) == 1448
    assert model_params(shapes_from_mapping({"format": "thinkfast", "model": TEACHER.to_dict()})) == 1448
    with pytest.raises(ConfigError, match="unknown config key"):
        shapes_from_mapping({"d_model": 8, "n_layerz": 2})


def test_plan_command(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    data = {"teacher": str(tmp_path / "teacher"), "student": {"keep": 0.5, "kind": "mamba2"},
            "data": {"train": "d.jsonl", "seq_len": 16},
            "train": {"batch_size": 4, "steps": 3, "distributed": "fsdp"}, "stages": [{"name": "kd"}]}
    path.write_text(yaml.safe_dump(data))
    assert main(["distill", "--plan", str(path)]) == 2  # no teacher directory and no --teacher-config
    assert "--teacher-config" in capsys.readouterr().err
    tc = tmp_path / "t.json"
    tc.write_text(json.dumps(TEACHER.to_dict()))
    assert main(["distill", "--plan", str(path), "--teacher-config", str(tc), "--devices", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "fsdp" and out["stages"][0]["student_params"] == 1622
    save_model(LanguageModel(TEACHER), tmp_path / "teacher")  # now the teacher's config.json is read
    assert main(["distill", "--plan", str(path), "--devices", "2"]) == 0
    text = capsys.readouterr().out
    assert "stage kd (kd), pattern MA" in text and "teacher/config.json" in text and "peak" in text
    assert main(["distill", "--plan", str(path), "train.stepz=1"]) == 2  # strict, like a run
    assert "unknown config key" in capsys.readouterr().err


def test_end_of_backward_and_cpu_step_with_a_tied_embedding():
    cfg = build_config({"student": {"init": "new", "model": TEACHER.to_dict()}, "data": {"train": "d.jsonl",
                        "seq_len": 4}, "train": {"batch_size": 1}, "stages": [{"name": "sft", "objective": "lm"}]})
    m = plan_recipe(cfg, None, accelerator=False).stages[0].memory
    assert m.teacher == 0 and m.gradients == 4 * 1448
    # at the end of backward the embedding's and the head's (V, D) gradients are summed: one more copy
    assert m.peak_forward_backward >= m.weights + m.optimizer + m.gradients + 4 * 32 * 8
    assert m.step_temporary == 2 * 4 * 32 * 8
    hidden = plan_recipe(_recipe(), TEACHER, accelerator=False).stages[0].memory
    assert hidden.step_temporary == 2 * 4 * 208  # mixers only: the largest is the in_proj (8 x 26)
