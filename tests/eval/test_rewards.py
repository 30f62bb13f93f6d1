"""Reward models on a tiny random thinkfast model and a tokenizer built in-test."""

from __future__ import annotations

import json

import pytest
import torch

from thinkfast.eval import rewards as R
from thinkfast.runtime import UserError

from .conftest import CHAT_TEMPLATE, make_model, make_tokenizer

QUESTION = "question 1 + 2 ?"
SOLUTION = "step one : 1 + 2 = 3 .\n\nstep two : so the answer is 3 .\n\n  \n\nthe answer is 3"


def test_split_steps_on_blank_lines():
    assert R.split_steps(SOLUTION) == ["step one : 1 + 2 = 3 .", "step two : so the answer is 3 .",
                                      "the answer is 3"]
    assert R.split_steps(" \n\n ") == []


def test_aggregate_steps():
    s = [0.9, 0.5, 0.8]
    assert R.aggregate_steps(s, "last") == 0.8
    assert R.aggregate_steps(s, "min") == 0.5
    assert R.aggregate_steps(s, "mean") == pytest.approx(2.2 / 3)
    assert R.aggregate_steps(s, "prod") == pytest.approx(0.36)
    assert R.aggregate_steps([], "min") == 0.0
    with pytest.raises(ValueError):
        R.aggregate_steps(s, "max")


def _reference_step_scores(model, tok, question, completion):
    """The RLHFlow loop, literally: per step, the conversation so far ending in an assistant "+",
    one forward, P(+)/(P(+)+P(-)) from the logits just before that "+"."""
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    steps = R.split_steps(completion)
    conv, out = [], []
    for i, step in enumerate(steps):
        conv += [{"role": "user", "content": f"{question} {step}" if i == 0 else step},
                 {"role": "assistant", "content": "+"}]
        ids = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
        pos = len(ids) - 1 - ids[::-1].index(plus)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, pos - 1]
        out.append(torch.softmax(logits[[plus, minus]], -1)[0].item())
    return out


@pytest.mark.parametrize("template", ["prefix-stable", "not-prefix-stable"])
def test_prm_step_scores_match_the_reference_loop(template):
    model, tok = make_model(seed=1), make_tokenizer()
    if template == "not-prefix-stable":
        # a template whose tail depends on the whole conversation: the one-pass path must notice
        tok.chat_template = CHAT_TEMPLATE + "{{ messages | length }}"
    prm = R.ProcessRewardModel(model, tok, aggregate="min")
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    got = prm.step_scores(QUESTION, SOLUTION)
    hook.remove()
    want = _reference_step_scores(model, tok, QUESTION, SOLUTION)
    assert len(got) == 3
    # one forward for all steps when the template allows it, else the per-step loop
    assert len(calls) == (1 if template == "prefix-stable" else 3)
    assert got == pytest.approx(want, abs=1e-5)
    assert all(0.0 < s < 1.0 for s in got)
    assert len(set(round(s, 6) for s in got)) > 1  # a random model does not score every step alike
    assert prm.score([QUESTION], [SOLUTION]) == [pytest.approx(min(want), abs=1e-5)]


def test_prm_needs_single_token_labels_and_a_template():
    tok = make_tokenizer(chat=False)
    with pytest.raises(UserError, match="chat template"):
        R.ProcessRewardModel(make_model(), tok)


def test_orm_reads_the_last_real_token_under_left_padding(tmp_path):
    model, tok = make_model(seed=2), make_tokenizer()
    orm = R.OutcomeRewardModel(model, tok, max_len=64, backbone_path=str(tmp_path))
    torch.nn.init.normal_(orm.head.weight)
    short, long = orm.encode("question 1", "2"), orm.encode("question 1 + 2 + 3", "step one : 6")
    ids, mask = R.left_pad([short, long], R.pad_id(tok))
    with torch.no_grad():
        batch = orm(ids, mask)
        alone = orm(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
    assert batch[0].item() == pytest.approx(alone.item(), abs=1e-4)
    assert batch[0].item() != pytest.approx(batch[1].item(), abs=1e-4)


def test_balanced_examples_are_balanced_and_seeded():
    rows = [{"question": "q", "completion": str(i), "correct": i % 4 == 0} for i in range(20)]
    a = R.balanced_examples(rows, seed=0)
    assert sum(y for *_, y in a) == len(a) // 2 == 5
    assert a == R.balanced_examples(rows, seed=0) and a != R.balanced_examples(rows, seed=1)
    with pytest.raises(UserError, match="correct and incorrect"):
        R.balanced_examples(rows[1:4], seed=0)


def test_train_rm_and_score_cli(tmp_path):
    from thinkfast.checkpoint import save_model
    from thinkfast.cli import main
    from thinkfast.eval.io import read_jsonl

    model_dir = tmp_path / "tiny"
    save_model(make_model(seed=3), model_dir, tokenizer=make_tokenizer())
    # correct samples answer 3, wrong ones 5: the features differ only through that token
    rows = [{"question": "question 1 + 2 ?", "completion": f"step one\n\nthe answer is {3 if i % 3 else 5}",
             "correct": bool(i % 3)} for i in range(24)]
    samples = tmp_path / "graded.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    orm_dir = tmp_path / "orm"
    assert main(["train-rm", str(samples), "--backbone", str(model_dir), "--out", str(orm_dir),
                 "--epochs", "20", "--lr", "0.05", "--threads", "1"]) == 0
    assert {p.name for p in orm_dir.iterdir()} == {"orm.json", "head.safetensors"}

    assert main(["score", str(samples), "--rm", str(orm_dir), "--out", str(tmp_path / "orm.jsonl")]) == 0
    scored = read_jsonl(tmp_path / "orm.jsonl")
    right = [r["reward"] for r in scored if r["correct"]]
    wrong = [r["reward"] for r in scored if not r["correct"]]
    assert min(right) > max(wrong)  # the head learnt the separable signal

    assert main(["score", str(samples), "--rm", str(model_dir), "--kind", "prm", "--aggregate", "last",
                 "--out", str(tmp_path / "prm.jsonl")]) == 0
    prm_rows = read_jsonl(tmp_path / "prm.jsonl")
    assert all(len(r["reward_steps"]) == 2 and r["reward"] == r["reward_steps"][-1] for r in prm_rows)


def test_orm_save_load_round_trip(tmp_path):
    from thinkfast.checkpoint import save_model

    model_dir = tmp_path / "tiny"
    tok = make_tokenizer()
    save_model(make_model(seed=4), model_dir, tokenizer=tok)
    backbone, tok2 = R.load_backbone(str(model_dir))
    orm = R.OutcomeRewardModel(backbone, tok2, max_len=32, backbone_path=str(model_dir))
    torch.nn.init.normal_(orm.head.weight)
    before = orm.score(["question 1"], ["the answer is 2"])
    orm.save(tmp_path / "orm", save_backbone=False)
    orm.save(tmp_path / "orm", save_backbone=True)  # overwriting an existing directory
    after = R.OutcomeRewardModel.load(tmp_path / "orm").score(["question 1"], ["the answer is 2"])
    assert after == pytest.approx(before, abs=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".orm")]  # no temp dirs left


def test_orm_on_a_hugging_face_backbone_is_padding_invariant():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = make_tokenizer()
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=128)).eval()
    orm = R.OutcomeRewardModel(hf, tok, max_len=64, backbone_path="unused")
    torch.nn.init.normal_(orm.head.weight)
    short, long = orm.encode("question 1", "2"), orm.encode("question 1 + 2 + 3", "step one : 6")
    ids, mask = R.left_pad([short, long], R.pad_id(tok))
    with torch.no_grad():
        batch = orm(ids, mask)  # reward logits: positions must skip the padding
        alone = orm(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
    assert batch[0].item() == pytest.approx(alone.item(), rel=1e-4)
    assert batch[0].item() != pytest.approx(batch[1].item(), rel=1e-3)


def test_prm_rows_over_the_context_are_reported_not_raised():
    prm = R.ProcessRewardModel(make_model(seed=5), make_tokenizer(), aggregate="mean")
    rows = [{"question": QUESTION, "completion": SOLUTION},
            {"question": QUESTION, "completion": "step one " * 200}]  # 400 tokens > 256 context
    out, failed = R.score_rows(prm, rows)
    assert failed == 1
    assert len(out[0]["reward_steps"]) == 3 and out[0]["reward_error"] is None
    assert out[1]["reward"] == 0.0 and "context" in out[1]["reward_error"]
