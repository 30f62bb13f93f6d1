"""Adaptive sampling by rounds: the same samples as a fixed run, stops where the rule says, resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from thinkfast.eval.adaptive import AdaptiveRule, beta_should_stop, esc_should_stop
from thinkfast.eval.adaptive_sampling import run_adaptive_sampling
from thinkfast.eval.io import read_jsonl
from thinkfast.eval.sampling import SampleSettings, run_sampling
from thinkfast.eval.tasks.base import Example
from thinkfast.runtime import UserError

from .conftest import make_model, make_tokenizer, save_tiny_gsm8k


class FirstWordTask:
    """The answer is a completion's first word ('-' or nothing: no answer)."""

    name = "toy"

    @staticmethod
    def extract(completion):
        words = completion.split()
        return None if not words or words[0] == "-" else words[0]

    @staticmethod
    def same_answer(a, b):
        return a == b


class ParityTask(FirstWordTask):
    """The answer is the parity of a completion's length: two answers, so votes settle often."""

    @staticmethod
    def extract(completion):
        return str(len(completion) % 2)


SAMPLE_FIELDS = ("task", "model", "problem_id", "sample_index", "question", "gold", "answer", "completion",
                 "num_tokens", "finish_reason", "hit_context_limit")


def test_adaptive_samples_are_the_same_index_samples_of_a_fixed_run(tmp_path):
    from thinkfast.inference.backends import engine_generate_fn

    model, tok = make_model(), make_tokenizer()
    examples = [Example(id=f"q{i}", question=f"question {i}", gold="1", answer="1") for i in range(5)]
    prompts = [tok(f"question {i} : step {i} one two", add_special_tokens=True)["input_ids"] for i in range(5)]
    settings = SampleSettings(task="toy", model="tiny", n=6, temperature=1.0, max_new_tokens=5, seed=3)
    rule = AdaptiveRule("esc", window=2, max_n=6)
    run_sampling(examples, prompts, engine_generate_fn(model, tok, settings, stop=[]), tmp_path / "fixed.jsonl",
                 settings, batch_problems=2)
    rep = run_adaptive_sampling(examples, prompts, lambda s: engine_generate_fn(model, tok, s, stop=[]),
                                tmp_path / "adaptive.jsonl", settings, rule, ParityTask(), batch_problems=2)
    fixed = {(r["problem_id"], r["sample_index"]): r for r in read_jsonl(tmp_path / "fixed.jsonl")}
    rows = read_jsonl(tmp_path / "adaptive.jsonl")
    for r in rows:
        f = fixed[(r["problem_id"], r["sample_index"])]
        assert {k: r[k] for k in SAMPLE_FIELDS} == {k: f[k] for k in SAMPLE_FIELDS}
        assert r["logprob_sum"] == pytest.approx(f["logprob_sum"], abs=1e-4)
        assert r["round"] == r["sample_index"] // 2
        assert r["settings"] == {**settings.to_dict(), "adaptive": rule.to_dict()}
    drawn = {ex.id: sum(r["problem_id"] == ex.id for r in rows) for ex in examples}
    # and each problem stopped where the rule stops on the fixed run's answers
    for ex in examples:
        answers = [ParityTask.extract(fixed[(ex.id, j)]["completion"]) for j in range(6)]
        assert drawn[ex.id] == rule.stop_after(answers)
    assert rep.samples == len(rows) and rep.closed_by_rule + rep.closed_at_max_n == 5
    assert min(drawn.values()) < 6  # the check above saw the rule stop a problem early


class ScriptedGenerate:
    """Sample j of problem p answers ``script[p][j]``, whatever the batching; records every call."""

    def __init__(self, script, fail_after_calls=None):
        self.script, self.fail_after_calls = script, fail_after_calls
        self.calls: list[tuple[list[int], int, int]] = []  # (problem numbers, first sample, n)

    def make(self, settings):
        def gen(prompts, seed):
            if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
                raise KeyboardInterrupt  # a crash between engine calls
            self.calls.append(([p[0] for p in prompts], seed - 10, settings.n))
            return [SimpleNamespace(
                samples=[SimpleNamespace(text=f"{self.script[p[0]][seed - 10 + j]} sample {seed - 10 + j}",
                                         token_ids=[1], logprobs=[-0.5], finish_reason="stop")
                         for j in range(settings.n)],
                timing={"prefill_s": 0.1, "decode_s": 0.5, "batch_prompts": len(prompts),
                        "batch_rows": len(prompts) * settings.n, "new_tokens": len(prompts) * settings.n})
                for p in prompts]
        return gen


SCRIPT = [  # seven problems, max_n 7, answers per sample index ('-': no answer)
    list("aaaaaaa"), list("abaaaaa"), list("ab-bbbb"), list("abababa"),
    list("--aaaaa"), list("aabbbbb"), list("baaaaab"),
]


def _examples(count):
    return ([Example(id=f"p{i}", question=f"q{i}", gold="a", answer="a") for i in range(count)],
            [[i, 0, 0] for i in range(count)])


def brute_stop(answers, rule_fn, window, max_n):
    for m in range(1, max_n + 1):
        if m == max_n or (m % window == 0 and rule_fn(answers[:m])):
            return m


@pytest.mark.parametrize("rule", [AdaptiveRule("esc", window=2, max_n=7), AdaptiveRule("esc", window=3, max_n=7),
                                  AdaptiveRule("beta", window=1, max_n=7, threshold=0.8),
                                  AdaptiveRule("beta", window=2, max_n=7, threshold=0.9)],
                         ids=lambda r: f"{r.rule}-w{r.window}")
def test_problems_stop_at_the_round_the_rule_predicts(tmp_path, rule):
    examples, prompts = _examples(len(SCRIPT))
    settings = SampleSettings(task="toy", model="fake", n=7, seed=10)
    gen = ScriptedGenerate(SCRIPT)
    rep = run_adaptive_sampling(examples, prompts, gen.make, tmp_path / "a.jsonl", settings, rule,
                                FirstWordTask(), batch_problems=3)
    rows = read_jsonl(tmp_path / "a.jsonl")
    fn = (lambda a: esc_should_stop(a, rule.window)) if rule.rule == "esc" else \
        (lambda a: beta_should_stop(a, rule.threshold))
    expected = [brute_stop([None if x == "-" else x for x in s], fn, rule.window, 7) for s in SCRIPT]
    got = [sum(r["problem_id"] == f"p{i}" for r in rows) for i in range(len(SCRIPT))]
    assert got == expected
    for r in rows:
        assert r["completion"].split()[0] == SCRIPT[int(r["problem_id"][1:])][r["sample_index"]]
    # by rounds: each call holds at most 3 problems, all at the same sample, all still open then
    for problems, first, n in gen.calls:
        assert len(problems) <= 3 and n == min(rule.window, 7 - first)
        assert all(expected[p] > first for p in problems)
    for i, stop in enumerate(expected):  # every problem drew every round until its stop
        assert sorted(first for problems, first, _ in gen.calls if i in problems) == \
            list(range(0, stop, rule.window))
    assert rep.samples == sum(expected) and rep.closed_at_max_n == sum(e == 7 for e in expected)


def _key(rows):
    return sorted((r["problem_id"], r["sample_index"], r["round"], r["completion"]) for r in rows)


def test_resume_after_a_partial_file_gives_the_same_rows(tmp_path):
    examples, prompts = _examples(len(SCRIPT))
    settings = SampleSettings(task="toy", model="fake", n=7, seed=10)
    rule = AdaptiveRule("esc", window=2, max_n=7)
    run_adaptive_sampling(examples, prompts, ScriptedGenerate(SCRIPT).make, tmp_path / "whole.jsonl", settings,
                          rule, FirstWordTask(), batch_problems=2)
    whole = read_jsonl(tmp_path / "whole.jsonl")
    for calls in range(1, 8):
        out = tmp_path / f"cut{calls}.jsonl"
        with pytest.raises(KeyboardInterrupt):
            run_adaptive_sampling(examples, prompts, ScriptedGenerate(SCRIPT, fail_after_calls=calls).make, out,
                                  settings, rule, FirstWordTask(), batch_problems=2)
        text = out.read_text()
        out.write_text(text[: len(text) - 25])  # and a kill mid-write: the last window cut short
        rep = run_adaptive_sampling(examples, prompts, ScriptedGenerate(SCRIPT).make, out, settings, rule,
                                    FirstWordTask(), batch_problems=2)
        assert rep.dropped_rows >= 1
        assert _key(read_jsonl(out)) == _key(whole)
    # a finished file resumes to nothing
    gen = ScriptedGenerate(SCRIPT)
    rep = run_adaptive_sampling(examples, prompts, gen.make, tmp_path / "whole.jsonl", settings, rule,
                                FirstWordTask(), batch_problems=2)
    assert gen.calls == [] and rep.skipped == len(SCRIPT) and _key(read_jsonl(tmp_path / "whole.jsonl")) == _key(whole)


def test_resume_with_other_rule_settings_or_a_broken_row_is_refused(tmp_path):
    examples, prompts = _examples(3)
    settings = SampleSettings(task="toy", model="fake", n=7, seed=10)
    out = tmp_path / "a.jsonl"
    run_adaptive_sampling(examples, prompts, ScriptedGenerate(SCRIPT).make, out, settings,
                          AdaptiveRule("esc", window=2, max_n=7), FirstWordTask())
    for other in (AdaptiveRule("esc", window=3, max_n=7), AdaptiveRule("beta", window=2, max_n=7)):
        with pytest.raises(UserError, match="other settings"):
            run_adaptive_sampling(examples, prompts, ScriptedGenerate(SCRIPT).make, out, settings, other,
                                  FirstWordTask())
    lines = out.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"sample_index": 1', '"sample_index": 5')
    out.write_text("".join(lines))
    with pytest.raises(UserError, match=r"a\.jsonl:1: problem 'p0' round 0 has sample indices \[0, 5\]"):
        run_adaptive_sampling(examples, prompts, ScriptedGenerate(SCRIPT).make, out, settings,
                              AdaptiveRule("esc", window=2, max_n=7), FirstWordTask())
    with pytest.raises(ValueError, match="max_n"):
        run_adaptive_sampling(examples, prompts, ScriptedGenerate(SCRIPT).make, tmp_path / "b.jsonl",
                              SampleSettings(task="toy", model="fake", n=6), AdaptiveRule("esc", max_n=7),
                              FirstWordTask())


# --- the command line ----------------------------------------------------------------------------

PER_CALL = {"prefill_s", "decode_s", "batch_problems", "batch_rows", "new_tokens", "prompt_tokens", "hardware",
            "settings", "round", "logprob_sum"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adaptive_cli")
    model, data = save_tiny_gsm8k(tmp, [{"question": f"question {i} ?", "answer": f"#### {i}"} for i in range(3)])
    argv = ["sample", "--model", str(model), "--task", "gsm8k", "--data", str(data), "--temperature", "1.0",
            "--max-new-tokens", "6", "--seed", "3", "--batch-problems", "2", "--threads", "1", "--device", "cpu"]
    return tmp, argv


def test_sample_adaptive_writes_the_fixed_runs_samples_by_rounds(tiny, capsys):
    from thinkfast.cli import main

    tmp, argv = tiny
    assert main(argv + ["--n", "4", "--out", str(tmp / "fixed.jsonl")]) == 0
    assert main(argv + ["--adaptive", "beta", "--window", "2", "--n", "4", "--threshold", "0.9",
                        "--out", str(tmp / "adaptive.jsonl")]) == 0
    assert '"closed_at_max_n"' in capsys.readouterr().err
    fixed = {(r["problem_id"], r["sample_index"]): r for r in read_jsonl(tmp / "fixed.jsonl")}
    rows = read_jsonl(tmp / "adaptive.jsonl")
    assert rows
    for r in rows:
        f = fixed[(r["problem_id"], r["sample_index"])]
        assert {k: v for k, v in r.items() if k not in PER_CALL} == {k: v for k, v in f.items() if k not in PER_CALL}
        assert r["settings"]["adaptive"] == {"rule": "beta", "window": 2, "max_n": 4, "threshold": 0.9}
        assert r["settings"]["n"] == 4 and r["round"] == r["sample_index"] // 2
    # resuming with another rule is refused, naming the file
    assert main(argv + ["--adaptive", "esc", "--window", "2", "--n", "4", "--out", str(tmp / "adaptive.jsonl")]) == 2
    assert "adaptive.jsonl:1: made with other settings" in capsys.readouterr().err


@pytest.mark.parametrize("extra, says", [
    (["--window", "2"], "--window apply to --adaptive"),
    (["--adaptive", "esc", "--threshold", "0.9"], "--threshold is the beta rule's"),
    (["--adaptive", "esc", "--backend", "hf"], "not --backend hf"),
])
def test_sample_adaptive_flags_out_of_place_are_refused(tiny, capsys, extra, says):
    from thinkfast.cli import main

    tmp, argv = tiny
    assert main(argv + ["--out", str(tmp / "never.jsonl")] + extra) == 2
    assert says in capsys.readouterr().err
    assert not (tmp / "never.jsonl").exists()


def test_a_threshold_out_of_range_is_a_usage_error(tiny, capsys):
    from thinkfast.cli import main

    tmp, argv = tiny
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp / "never.jsonl"), "--adaptive", "beta", "--threshold", "1.5"])
    assert e.value.code == 2 and "must be a number in [0.5, 1)" in capsys.readouterr().err
