"""The Math-Shepherd PRM: rollout labels on toy policies whose step values are known, step
splitting, the per-step head against a brute-force reading, persistence, training, the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

from thinkfast.eval import prm as P
from thinkfast.eval import rewards as R
from thinkfast.eval.tasks.base import Example, Verdict
from thinkfast.runtime import UserError

from .conftest import make_model, make_tokenizer

# --- step splitting ------------------------------------------------------------------------------


def test_step_spans_by_line_blank_and_sentence():
    text = " step one : 1 + 2 = 3 .\nso 3 .  \n\n\n  the answer is 3"
    assert R.split_steps(text, "line") == ["step one : 1 + 2 = 3 .", "so 3 .", "the answer is 3"]
    assert R.split_steps(text, "blank") == ["step one : 1 + 2 = 3 .\nso 3 .", "the answer is 3"]
    assert R.split_steps("A 3.5 b. C! D?E\nF", "sentence") == ["A 3.5 b.", "C!", "D?E", "F"]
    for how in R.STEP_SPLITS:  # a span is exactly the stripped text of its step
        for (a, b), s in zip(R.step_spans(text, how), R.split_steps(text, how)):
            assert text[a:b] == s == s.strip() and s
    assert R.split_steps(" \n \n", "line") == []
    assert R.split_steps(text) == R.split_steps(text, "blank")  # the default is unchanged
    with pytest.raises(ValueError, match="step split"):
        R.step_spans(text, "word")


def test_step_prefixes_end_at_each_step_but_the_last():
    text = " a = 1\nb = 2\n#### 2"
    assert P.step_prefixes(text, "line") == [" a = 1", " a = 1\nb = 2"]
    assert P.step_prefixes(" #### 2", "line") == []


# --- labelling on toy policies -------------------------------------------------------------------


def _rows(n_steps: int, copies: int = 1, correct: bool = True) -> list[dict]:
    completion = "\n".join(f"line {j}" for j in range(n_steps))
    return [{"problem_id": f"p{c}", "question": f"q{c}", "completion": completion, "correct": correct}
            for c in range(copies)]


def _step_of(prefix: str) -> int:
    return prefix.count("\n")  # the prefix ends at step j when it holds j line breaks


def test_mc_labels_equal_a_known_success_rate_exactly():
    """A policy whose n rollouts from step j hold exactly p_j * n successes: the soft label is
    p_j, the hard label whether p_j > 0; the last step's label is the sample's grade."""
    p = [0.25, 0.0, 0.75, 1.0]
    n = 8

    def policy(requests, k):
        return [[i < round(p[_step_of(pre)] * k) for i in range(k)] for _, pre in requests]

    for correct in (True, False):
        (lab,) = P.label_rows(_rows(5, correct=correct), policy, n, "line")
        assert lab["soft"] == p + [float(correct)]
        assert lab["hard"] == [1.0, 0.0, 1.0, 1.0, float(correct)]


def test_mc_soft_label_converges_to_the_step_value():
    """Bernoulli(p_j) rollouts: the estimate is within 4 standard errors of p_j, and the hard
    label of a step with p_j = 0.3 and 16 rollouts is 1 about 1 - 0.7^16 of the time."""
    p = [0.1, 0.5, 0.9]
    rng = random.Random(0)

    def policy(requests, k):
        return [[rng.random() < p[_step_of(pre)] for _ in range(k)] for _, pre in requests]

    n = 20000
    (lab,) = P.label_rows(_rows(4), policy, n, "line")
    for got, want in zip(lab["soft"][:-1], p):
        assert abs(got - want) < 4 * (want * (1 - want) / n) ** 0.5
    p = [0.3]
    hard = [P.label_rows(_rows(2), policy, 16, "line")[0]["hard"][0] for _ in range(2000)]
    want = 1 - 0.7 ** 16
    assert abs(sum(hard) / len(hard) - want) < 4 * (want * (1 - want) / len(hard)) ** 0.5


def _chain(values: list[int]) -> str:
    return "\n".join(f"x = {v}" for v in values) + f"\n#### {values[-1]}"


def test_a_wrong_step_makes_every_continuation_wrong():
    """A deterministic policy that continues a chain x_{j+1} = x_j + 1 from the prefix's last
    value (at any temperature): every step from the first wrong one on has label 0, every step
    before it label 1, soft and hard alike."""
    gold_chain = [3, 4, 5, 6]

    def policy(requests, k):
        out = []
        for r, pre in requests:
            last = int(pre.strip().split("\n")[-1].split("=")[1])
            steps_done = _step_of(pre) + 1
            answer = last + (len(gold_chain) - steps_done)
            out.append([answer == gold_chain[-1]] * k)
        return out

    for wrong_at in range(len(gold_chain)):
        values = list(gold_chain)
        values[wrong_at] += 7
        for j in range(wrong_at + 1, len(values)):
            values[j] = values[j - 1] + 1  # later steps compute right from the wrong value
        row = {"problem_id": "p", "question": "q", "completion": _chain(values), "correct": False}
        (lab,) = P.label_rows([row], policy, 3, "line")
        want = [1.0] * wrong_at + [0.0] * (len(gold_chain) + 1 - wrong_at)
        assert lab["soft"] == want and lab["hard"] == want
    ok = {"problem_id": "p", "question": "q", "completion": _chain(gold_chain), "correct": True}
    assert P.label_rows([ok], policy, 3, "line")[0]["soft"] == [1.0] * 5


def test_identical_prefixes_share_their_rollouts():
    calls = []

    def policy(requests, k):
        calls.append(len(requests))
        return [[True] * k for _ in requests]

    rows = _rows(3, copies=1) * 4  # four samples of one problem, the same chain
    rows += [{**rows[0], "completion": "line 0\nother 1\nline 2"}]
    labs = P.label_rows(rows, policy, 2, "line")
    assert len(labs) == 5
    assert calls == [3]  # "line 0", "line 0\nline 1", "line 0\nother 1"


def test_labelling_rejects_bad_input():
    with pytest.raises(UserError, match="correct"):
        P.label_rows([{"question": "q", "completion": "a\nb"}], lambda r, k: [], 2)
    with pytest.raises(ValueError, match="rollouts"):
        P.label_rows(_rows(2), lambda r, k: [[True]], 0)
    with pytest.raises(ValueError, match="returned"):
        P.label_rows(_rows(3), lambda r, k: [[True]], 1)
    with pytest.raises(ValueError, match="no rollouts"):
        P.mc_step_labels([[]], True)


class _CountTask:
    """A stub task: a completion is right when its last line reads '#### 1'."""

    stop = ("\n\n",)

    def prompt(self, ex, style="fewshot", tokenizer=None):
        return f"question {ex.question} ?"

    def extract(self, completion):
        tail = completion.strip().split("\n")[-1]
        return tail[4:].strip() if tail.startswith("####") else None

    def judge(self, pred, ex):
        return Verdict(pred == ex.answer)


def test_engine_rollouts_return_n_grades_per_prefix():
    model, tok = make_model(seed=2), make_tokenizer(chat=False)
    ex = Example(id="p", question="1", gold="#### 1", answer="1")
    fn = P.engine_rollout_fn(model, tok, _CountTask(), {"p": ex}, temperature=1.0, max_new_tokens=6, batch_rows=4)
    reqs = [({"problem_id": "p"}, " step one"), ({"problem_id": "p"}, " step one\n#### 1"),
            ({"problem_id": "p"}, " step one\n#### 2")]
    grades = fn(reqs, 3)
    assert [len(g) for g in grades] == [3, 3, 3]
    # a prefix that already holds the answer line stays right or wrong unless the model writes
    # another '####' line, which six tokens of "#"-free text rarely do: at least one is kept
    assert all(isinstance(x, bool) for g in grades for x in g)
    with pytest.raises(UserError, match="no problem"):
        fn([({"problem_id": "missing"}, "x")], 1)


# --- the step reward model -----------------------------------------------------------------------

QUESTION = "question 1 + 2 ?"
CHAINS = ["step one : 1 + 2 = 3 .\nso the answer is 3\n# 3",
          "step one : 1 - 2 = 3 .\n# 9",
          "step two . 5 + 5 = 1 0\nstep one : 1 + 2\nso 3\n# 3"]


def _prm(seed: int = 0, chat: bool = False, aggregate: str = "min", path=None) -> P.StepRewardModel:
    model, tok = make_model(seed=seed), make_tokenizer(chat=chat)
    prm = P.StepRewardModel(model, tok, "line", aggregate, max_len=256, backbone_path=path)
    torch.manual_seed(seed + 100)
    torch.nn.init.normal_(prm.head.weight, std=0.5)  # a head that tells positions apart
    return prm


@pytest.mark.parametrize("chat", [False, True])
def test_step_positions_match_encoding_each_prefix(chat):
    prm = _prm(chat=chat)
    for c in CHAINS:
        ids, pos = prm.encode(QUESTION, c)
        text, base, special = prm._dialogue(QUESTION, c)
        spans = R.step_spans(c, "line")
        assert pos == P._step_positions_reference(prm.tokenizer, text, base, spans, special)
        assert len(pos) == len(spans)
        # the token at each position ends the step's text
        for p, (_, end) in zip(pos, spans):
            assert prm.tokenizer.decode(ids[:p + 1]).replace(" ", "").endswith(c[:end].split("\n")[-1].replace(" ", ""))


def _brute_force_step_scores(prm: P.StepRewardModel, question: str, completion: str) -> list[float]:
    """One unpadded forward per chain; the head read at each step's last token, one at a time."""
    ids, pos = prm.encode(question, completion)
    with torch.no_grad():
        out = prm.backbone(torch.tensor([ids]), output_hidden_states=True)
        h = prm.backbone.norm(out.hidden_states[-1])[0]  # (T, D)
        return [torch.sigmoid(prm.head(h[p])).item() for p in pos]


def test_min_and_last_match_brute_force_under_padding():
    prm = _prm(seed=1)
    want = [_brute_force_step_scores(prm, QUESTION, c) for c in CHAINS]
    got = prm.step_scores_batch([QUESTION] * 3, CHAINS, batch_size=3)  # chains of unequal lengths
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-5)
    assert len(set(round(x, 5) for x in got[0])) > 1
    assert prm.score([QUESTION] * 3, CHAINS) == pytest.approx([min(w) for w in want], abs=1e-5)
    prm.aggregate = "last"
    assert prm.score([QUESTION] * 3, CHAINS) == pytest.approx([w[-1] for w in want], abs=1e-5)
    assert prm.step_scores_batch([QUESTION], ["  \n "]) == [[]]
    assert prm.score([QUESTION], ["  \n "]) == [0.0]


def test_bad_settings_are_refused():
    model, tok = make_model(), make_tokenizer(chat=False)
    with pytest.raises(UserError, match="split"):
        P.StepRewardModel(model, tok, "word")
    with pytest.raises(UserError, match="aggregation"):
        P.StepRewardModel(model, tok, "line", "mean")
    with pytest.raises(ValueError, match="label"):
        P.TrainPRMConfig(label="medium")


def test_save_load_round_trip_gives_the_same_scores(tmp_path):
    from thinkfast.checkpoint import save_model

    tok = make_tokenizer(chat=False)
    save_model(make_model(seed=4), tmp_path / "tiny", tokenizer=tok)
    backbone, tok2 = R.load_backbone(str(tmp_path / "tiny"))
    prm = P.StepRewardModel(backbone, tok2, "line", "last", max_len=256, backbone_path=str(tmp_path / "tiny"))
    torch.nn.init.normal_(prm.head.weight, std=0.5)
    want = prm.step_scores_batch([QUESTION] * 3, CHAINS)
    for save_backbone in (False, True):
        prm.save(tmp_path / "prm", save_backbone=save_backbone)
        meta = json.loads((tmp_path / "prm" / "prm.json").read_text())
        assert meta["format"] == P.PRM_FORMAT and meta["split"] == "line" and meta["aggregate"] == "last"
        after = P.StepRewardModel.load(tmp_path / "prm")
        for g, w in zip(after.step_scores_batch([QUESTION] * 3, CHAINS), want):
            assert g == pytest.approx(w, abs=1e-6)
        assert after.aggregate == "last"
        assert P.StepRewardModel.load(tmp_path / "prm", aggregate="min").score([QUESTION], [CHAINS[0]]) == \
            pytest.approx([min(want[0])], abs=1e-6)
    scorer = R.load_scorer(str(tmp_path / "prm"), aggregate="min", device="cpu")
    assert isinstance(scorer, P.StepRewardModel)
    with pytest.raises(UserError, match="min or last"):
        R.load_scorer(str(tmp_path / "prm"), aggregate="prod", device="cpu")
    with pytest.raises(UserError, match="not a thinkfast process reward model"):
        P.StepRewardModel.load(tmp_path)


def _separable_data() -> list[dict]:
    """Steps ending in '+' are good (label 1), steps ending in '-' bad (label 0)."""
    rng = random.Random(0)
    data = []
    for i in range(24):
        steps = [rng.choice(["+", "-"]) for _ in range(rng.randint(1, 4))]
        data.append({"question": f"question {i % 10} ?", "completion": "\n".join(f"step {s}" for s in steps),
                     "soft": [1.0 if s == "+" else 0.0 for s in steps],
                     "hard": [1.0 if s == "+" else 0.0 for s in steps]})
    return data


@pytest.mark.parametrize("train_backbone", [False, True])
def test_training_lowers_the_loss_on_a_separable_toy(train_backbone):
    prm = P.StepRewardModel(make_model(seed=5), make_tokenizer(chat=False), "line", max_len=256)
    data = _separable_data()
    cfg = P.TrainPRMConfig(epochs=30 if not train_backbone else 8, lr=0.05 if not train_backbone else 3e-3,
                           batch_size=8, train_backbone=train_backbone)
    losses = P.train_prm(prm, data, cfg)
    assert losses[0] == pytest.approx(0.6931, abs=0.05)  # the zero head starts at 0.5 everywhere
    assert losses[-1] < 0.5 * losses[0]
    good, bad = prm.step_scores_batch(["question 1 ?"] * 2, ["step +", "step -"])
    assert good[0] > 0.5 > bad[0]


def test_training_checks_labels_against_steps():
    prm = P.StepRewardModel(make_model(), make_tokenizer(chat=False), "line", max_len=256)
    with pytest.raises(ValueError, match="labels for"):
        P.train_prm(prm, [{"question": "q", "completion": "a\nb", "soft": [1.0]}], P.TrainPRMConfig())


# --- the commands ----------------------------------------------------------------------------------


def test_train_prm_and_score_cli(tmp_path):
    from thinkfast.checkpoint import save_model
    from thinkfast.cli import main
    from thinkfast.eval.io import read_jsonl

    model_dir = tmp_path / "tiny"
    save_model(make_model(seed=3), model_dir, tokenizer=make_tokenizer(chat=False))
    rows = []
    for i, (c, ok) in enumerate([("step one : 1 + 2 = 3\n#### 3", True), ("step one : 1 - 2\n#### 9", False)] * 2):
        rows.append({"problem_id": f"synthetic-train-{i % 2}", "sample_index": i // 2, "question": "1 + 2 ?",
                     "gold": "#### 3", "answer": "3", "completion": c, "correct": ok})
    samples = tmp_path / "graded.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prm_dir = tmp_path / "prm"
    assert main(["train-prm", str(samples), "--policy", str(model_dir), "--task", "synthetic", "--out",
                 str(prm_dir), "--prompt-style", "plain", "--rollouts", "2", "--max-new-tokens", "4",
                 "--temperature", "1.0", "--epochs", "2"]) == 0
    assert (prm_dir / "prm.json").exists() and (prm_dir / "head.safetensors").exists()
    for agg in ("min", "last"):
        out = tmp_path / f"scored_{agg}.jsonl"
        assert main(["score", str(samples), "--rm", str(prm_dir), "--aggregate", agg, "--out", str(out)]) == 0
        scored = list(read_jsonl(out))
        for r in scored:
            steps = r["reward_steps"]
            assert len(steps) == 2 and r["reward"] == pytest.approx(min(steps) if agg == "min" else steps[-1])


def test_select_rows_keeps_the_first_problems_and_samples():
    rows = [{"problem_id": p, "sample_index": i} for p in ("a", "b", "c") for i in range(3)]
    rows += [{"problem_id": "a", "sample_index": 3}]
    got = P.select_rows(rows, 2, 2)
    assert [(r["problem_id"], r["sample_index"]) for r in got] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert P.select_rows(rows, None, None) == rows
    no_index = [{"problem_id": "a"}, {"problem_id": "a"}, {"problem_id": "b"}]
    assert P.select_rows(no_index, None, 1) == [no_index[0], no_index[2]]
