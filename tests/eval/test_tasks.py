"""The GSM8K and MATH-500 plug-ins: loading, prompts, the registry."""

from __future__ import annotations

import json
import sys

import pytest

from thinkfast.eval.tasks.base import TASKS, Example, Graded, Task, Verdict, get_task, task_by_name
from thinkfast.runtime import UserError

from .conftest import data_file, make_tokenizer


def test_load_gsm8k_local():
    path = data_file("gsm8k_test.jsonl")
    examples = get_task("gsm8k").load(path=str(path))
    assert len(examples) == 1319
    ex = examples[0]
    assert ex.id == "test/0" and ex.gold.endswith("#### 18") and ex.answer == "18"
    # a directory holding gsm8k_{split}.jsonl works too, and limit cuts
    assert [e.id for e in get_task("gsm8k").load(path=str(path.parent), limit=2)] == ["test/0", "test/1"]


def test_load_math500_local():
    examples = get_task("math500").load(path=str(data_file("math500_test.jsonl")))
    assert len(examples) == 500
    ex = examples[0]
    assert ex.id == "test/precalculus/807.json"
    assert ex.answer == ex.gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert ex.meta["level"] == 2 and "\\boxed" in ex.meta["solution"]


def test_gold_answers():
    assert get_task("gsm8k").gold_answer("work\n#### 1,200") == "1200"
    m = get_task("math500")
    assert m.gold_answer("\\frac{1}{2}") == "\\frac{1}{2}"
    assert m.gold_answer("so $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"  # a MATH-style solution


def test_missing_fields_are_user_errors(tmp_path):
    bad = tmp_path / "g.jsonl"
    bad.write_text(json.dumps({"problem": "x"}) + "\n")
    with pytest.raises(UserError, match="row 1.*missing field"):
        get_task("gsm8k").load(path=str(bad))


def test_fewshot_prompts_and_stops():
    ex = Example(id="0", question="What is 2 + 3?", gold="#### 5", answer="5")
    g = get_task("gsm8k")
    p = g.prompt(ex, style="fewshot")
    assert p.count("Question:") == 9 and p.endswith("Question: What is 2 + 3?\nAnswer:")
    assert "The answer is 6." in p
    assert any(s in "\n\nQuestion: next" for s in g.stop)
    m = get_task("math500").prompt(ex, style="fewshot")
    assert m.count("Problem:") == 5 and m.endswith("Solution:") and "final answer is $24$" in m


def test_chat_prompt_uses_the_template():
    ex = Example(id="0", question="What is 2 + 3?", gold="#### 5", answer="5")
    p = get_task("math500").prompt(ex, style="chat", tokenizer=make_tokenizer())
    assert p.startswith("<|user|> What is 2 + 3?") and "\\boxed{}" in p and p.endswith("<|assistant|> ")
    with pytest.raises(UserError, match="chat template"):
        get_task("gsm8k").prompt(ex, style="chat", tokenizer=make_tokenizer(chat=False))
    with pytest.raises(UserError, match="prompt style"):
        get_task("gsm8k").prompt(ex, style="zeroshot")


def test_registry_tolerates_a_missing_task_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "thinkfast.eval.tasks.synthetic", None)  # import fails
    assert get_task("gsm8k").name == "gsm8k"
    with pytest.raises(KeyError):
        get_task("no-such-task")
    with pytest.raises(UserError, match="unknown task"):
        task_by_name("no-such-task")


def test_default_task_methods():
    class Exact(Task):
        name = "exact-test"

        def extract(self, completion):
            return completion.strip() or None

        def judge(self, pred, example):
            return Verdict(pred == example.answer)

    t = Exact()
    assert t.gold_answer(" 7 ") == "7"
    graded = t.grade_many([(" 7 ", Example("0", "", "7", "7")), ("8", Example("1", "", "7", "7"))])
    assert graded == [Graded("7", Verdict(True)), Graded("8", Verdict(False))]
    assert t.same_answer("a", "a") and not t.same_answer("a", "b")
    assert "exact-test" not in TASKS  # not registered unless decorated


def test_extract_ignores_text_after_a_stop_string():
    g = get_task("gsm8k")
    assert g.extract("3 + 4 = 7. The answer is 7.\n\nQuestion: Tom has 2 ... The answer is 2.") == "7"
