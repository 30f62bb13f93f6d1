"""The synthetic task: determinism, disjoint splits, correct answers and worked columns, knobs,
JSONL files and the task plug-in."""

import re

import pytest

from thinkfast.data import synthetic as syn
from thinkfast.eval.tasks.base import TASKS
from thinkfast.eval.tasks.synthetic import SyntheticTask
from thinkfast.runtime import UserError

CFG = syn.SyntheticConfig()


def _recompute(steps):
    """Independent recomputation of every quantity from the structured form."""
    vals = []
    for i, s in enumerate(steps):
        if i == 0:
            assert s.op == "set" and s.ref is None
            vals.append(s.operand)
            continue
        base = vals[s.ref]
        vals.append({"add": base + s.operand, "sub": base - s.operand, "mul": base * s.operand}[s.op])
    return vals


def _lsb(text):
    return int("".join(reversed(text.split())))


def _check_cot(p: syn.Problem, width: int):
    """Parse the chain of thought and check every restatement, bound value and worked column."""
    vals = _recompute(p.steps)
    lines = p.solution.split("\n")
    assert lines[-1] == f"#### {vals[-1]}"
    msb = lines[-2].startswith("answer = ")
    if msb:  # the answer's digits, most significant first, at the fixed width
        assert lines[-2] == "answer = " + " ".join(str(vals[-1]).zfill(width))
    lines = lines[:-2] if msb else lines[:-1]
    assert len(lines) == len(p.steps)
    d = r"((?:\d ){%d}\d)" % (width - 1)
    if p.naming == "names":
        sentences = re.findall(r"[A-Z][a-z]+,? [^.?\n]*\.", p.question)
    else:
        sentences = re.findall(r"Box [a-z]+ has [^.?]*\.", p.question)
        assert p.question.endswith(f"How many {p.item} are in box {p.steps[-1].name}?")
    assert len(sentences) == len(p.steps)
    phrase = {"add": "more {item}than", "sub": "fewer {item}than", "mul": "times as many {item}as"}
    for i, (sent, s) in enumerate(zip(sentences, p.steps)):  # the question states the structured form
        assert str(s.operand) in sent.split()
        if s.ref is None:
            continue
        if p.naming == "names":
            ref = p.steps[s.ref].name
        else:
            ref = f"box {p.steps[s.ref].name}"
        assert sent.endswith(phrase[s.op].format(item=p.item + " ") + f" {ref}.")
    for i, (line, s) in enumerate(zip(lines, p.steps)):
        head, rest = line.split(". ", 1)
        rest = " " + rest
        if p.naming == "names":
            assert head + "." == sentences[i]  # the sentence is restated verbatim
        else:  # restated without the item, naming the quantity read
            expect = f"Box {syn.NUMBER_WORDS[i]} has {s.operand}"
            if s.op != "set":
                expect += " " + phrase[s.op].format(item="") + f" box {p.steps[s.ref].name}"
            assert head == expect
        if s.op == "set":
            m = re.fullmatch(rf" {s.name} = {d}", rest)
            assert m and _lsb(m.group(1)) == vals[0]
            continue
        ref = p.steps[s.ref].name
        m = re.fullmatch(rf" {ref} = {d} (plus|minus|times) (\d|{d}) : (.*) \. {s.name} = {d}", rest)
        assert m, line
        a, word, b, cols, r = m.group(1), m.group(2), m.group(3), m.group(5), m.group(6)
        assert _lsb(a) == vals[s.ref]
        assert word == {"add": "plus", "sub": "minus", "mul": "times"}[s.op]
        assert (int(b) if s.op == "mul" else _lsb(b)) == s.operand
        assert _lsb(r) == vals[i]
        carry = 0
        cols = cols.split(" , ")
        assert len(cols) == width
        for j, col in enumerate(cols):
            x, o1, y, o2, c, eq, co, dig = col.split()
            x, y, c, co, dig = int(x), int(y), int(c), int(co), int(dig)
            assert c == carry and eq == "="
            assert x == int(a.split()[j])
            if s.op == "add":
                assert (o1, o2) == ("+", "+") and x + y + c == 10 * co + dig
            elif s.op == "sub":
                assert (o1, o2) == ("-", "-") and x - y - c == dig - 10 * co
            else:
                assert (o1, o2) == ("*", "+") and y == s.operand and x * y + c == 10 * co + dig
            assert dig == int(r.split()[j])
            carry = co
        assert carry == 0


def test_deterministic_by_seed_and_prefix_stable():
    a = syn.generate(CFG, "test", 30, seed=3)
    b = syn.generate(CFG, "test", 30, seed=3)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.solution for p in a] == [p.solution for p in b]
    assert [p.question for p in syn.generate(CFG, "test", 10, seed=3)] == [p.question for p in a[:10]]
    c = syn.generate(CFG, "test", 30, seed=4)
    assert [p.question for p in a] != [p.question for p in c]


def test_global_rng_untouched():
    import random

    random.seed(123)
    before = random.random()
    random.seed(123)
    syn.generate(CFG, "train", 5)
    assert random.random() == before


def test_train_test_disjoint_and_distinct():
    train = syn.generate(CFG, "train", 400)
    test = syn.generate(CFG, "test", 400)
    tq, sq = {p.question for p in train}, {p.question for p in test}
    assert len(tq) == 400 and len(sq) == 400
    assert not tq & sq
    assert all(syn.split_of(q, CFG) == "test" for q in sq)
    assert all(syn.split_of(q, CFG) == "train" for q in tq)


def test_answers_and_chain_of_thought_are_correct():
    for p in syn.generate(CFG, "train", 60, seed=1):
        vals = _recompute(p.steps)
        assert p.answer == vals[-1] == p.steps[-1].value
        assert [s.value for s in p.steps] == vals
        assert all(0 <= v < 10 ** CFG.width for v in vals)
        assert p.solution.endswith(f"#### {p.answer}")
        assert syn.parse_answer(p.solution) == p.answer
        assert [s.name for s in p.steps] == list(syn.NUMBER_WORDS[:len(p.steps)])
        _check_cot(p, CFG.width)


def test_columns_text_examples():
    assert syn.columns_text("add", 347, 128, 4) == \
        "7 + 8 + 0 = 1 5 , 4 + 2 + 1 = 0 7 , 3 + 1 + 0 = 0 4 , 0 + 0 + 0 = 0 0"
    assert syn.columns_text("sub", 1425, 56, 4) == \
        "5 - 6 - 0 = 1 9 , 2 - 5 - 1 = 1 6 , 4 - 0 - 1 = 0 3 , 1 - 0 - 0 = 0 1"
    assert syn.columns_text("mul", 475, 3, 4) == \
        "5 * 3 + 0 = 1 5 , 7 * 3 + 1 = 2 2 , 4 * 3 + 2 = 1 4 , 0 * 3 + 1 = 0 1"
    with pytest.raises(ValueError):
        syn.columns_text("add", 9999, 1, 4)


def test_difficulty_knobs():
    short = syn.generate(syn.SyntheticConfig(min_steps=2, max_steps=2), "train", 30)
    long = syn.generate(syn.SyntheticConfig(min_steps=6, max_steps=6), "train", 30)
    assert {p.n_steps for p in short} == {2} and {p.n_steps for p in long} == {6}
    assert min(len(p.solution) for p in long) > max(len(p.solution) for p in short)
    mix = syn.generate(syn.SyntheticConfig(min_steps=2, max_steps=4, step_weights=[0, 0, 1]), "train", 20)
    assert {p.n_steps for p in mix} == {4}
    spread = syn.generate(syn.SyntheticConfig(min_steps=1, max_steps=6), "train", 200)
    assert {p.n_steps for p in spread} == set(range(1, 7))
    adds = syn.generate(syn.SyntheticConfig(ops=["add", "sub"]), "train", 30)
    assert {s.op for p in adds for s in p.steps[1:]} <= {"add", "sub"}
    w3 = syn.SyntheticConfig(width=3, start_range=[10, 99], operand_range=[10, 99])
    for p in syn.generate(w3, "train", 20):
        assert all(v < 1000 for v in _recompute(p.steps))
        _check_cot(p, 3)
    # back-references to quantities other than the previous one
    back = syn.generate(syn.SyntheticConfig(min_steps=4, max_steps=4, backref_prob=1.0), "train", 20)
    assert all(s.ref < i - 1 for p in back for i, s in enumerate(p.steps) if i >= 2)
    for p in back:
        _check_cot(p, 4)
    chain = syn.generate(CFG, "train", 20)
    assert all(s.ref == i - 1 for p in chain for i, s in enumerate(p.steps) if i >= 1)
    people = syn.generate(syn.SyntheticConfig(naming="names"), "train", 30)
    for p in people:
        assert p.question.endswith(f"How many {p.item} does {p.steps[-1].name} have?")
        assert len({s.name for s in p.steps}) == len(p.steps) and p.steps[0].name in syn.NAMES
        _check_cot(p, 4)
    no_msb = syn.generate(syn.SyntheticConfig(msb_line=False), "train", 5)
    for p in no_msb:
        assert "answer =" not in p.solution
        _check_cot(p, 4)
    assert all("\nanswer = " in p.solution for p in chain)
    plain = syn.generate(syn.SyntheticConfig(naming="names", markers=False), "train", 5)
    assert not any(m + "," in p.question for p in plain for m in syn.MARKERS)


def test_tokenizer_texts_ignore_the_step_mix():
    """A config with step_weights (a train-only mix) yields the same tokenizer texts as without."""
    weighted = syn.SyntheticConfig(min_steps=2, max_steps=5, step_weights=[1, 1, 0.5, 2])
    assert syn.tokenizer_texts(weighted) == syn.tokenizer_texts(syn.SyntheticConfig(min_steps=2, max_steps=5))


def test_demo_layout_keys_each_line_by_its_first_token():
    """No comma after the marker and one sentence per line: a CoT line and its sentence start with
    the same tokens ("Third" "▁Vic"), so restating sentence k starts with a one-token look-up."""
    from thinkfast.data.tokenizer import pieces

    cfg = syn.SyntheticConfig(naming="names", marker_comma=False, sentence_sep="\n", max_steps=5)
    for p in syn.generate(cfg, "train", 30, seed=5):
        _check_cot(p, cfg.width)
        sentences = p.question.split("\n")
        assert len(sentences) == len(p.steps) + 1 and sentences[-1].startswith("How many")
        lines = p.solution.split("\n")
        for i, (sent, line) in enumerate(zip(sentences[:-1], lines)):
            assert sent.startswith(f"{syn.MARKERS[i]} {p.steps[i].name} has {p.steps[i].operand}")
            assert line.startswith(sent)
            if i:  # after a newline in both the question and the chain: the very same pieces
                assert pieces("\n" + line)[:4] == pieces("\n" + sent)[:4]
    with pytest.raises(syn.SyntheticError):
        syn.SyntheticConfig(sentence_sep="; ")


def test_bad_configs_are_refused():
    for bad in [dict(min_steps=0), dict(min_steps=4, max_steps=3), dict(max_steps=20), dict(ops=["div"]),
                dict(step_weights=[1, 2]), dict(mul_range=[2, 12]), dict(width=2, start_range=[10, 999]),
                dict(test_fraction=1.0), dict(naming="letters")]:
        with pytest.raises(syn.SyntheticError):
            syn.SyntheticConfig(**bad)
    with pytest.raises(ValueError):
        syn.SyntheticConfig.from_dict({"steps": 3})
    assert syn.SyntheticConfig.from_dict(CFG.to_dict()) == CFG


def test_jsonl_round_trip(tmp_path):
    paths = syn.write_splits(tmp_path, CFG, n_train=12, n_test=5, seed=2)
    train, test = syn.read_jsonl(paths["train"]), syn.read_jsonl(paths["test"])
    assert len(train) == 12 and len(test) == 5
    assert {"question", "answer"} <= set(test[0])
    probs = syn.generate(CFG, "test", 5, seed=2)
    assert [r["question"] for r in test] == [p.question for p in probs]
    for rec, p in zip(test, probs):
        assert rec["answer"] == p.solution and rec["answer"].endswith(f"#### {p.answer}")
        assert syn.problem_from_record(rec, CFG).answer == p.answer
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:1: a record needs 'question' and 'answer'"):
        syn.read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "bytes.jsonl").write_bytes(b'{"question": "q", "answer": "a"}\n{"question": "\xff"}\n')
    with pytest.raises(UserError, match=r"bytes\.jsonl:2: not UTF-8"):
        syn.read_jsonl(tmp_path / "bytes.jsonl")


@pytest.mark.parametrize("text,expected", [
    ("x = 1\n#### 42", 42), ("#### 1\n#### 2", 2), ("#### 1,234.", 1234), ("####  -7 ", -7),
    ("no answer", None), ("#### ", None), ("#### x", None), (None, None),
])
def test_parse_answer(text, expected):
    assert syn.parse_answer(text) == expected


def test_task_plugin(tmp_path):
    assert TASKS["synthetic"] is SyntheticTask
    task = SyntheticTask()
    test = task.load("test", limit=6)
    assert test == task.load("test", limit=6)
    assert len({e.id for e in test}) == 6
    for e in test:
        assert int(e.answer) == syn.parse_answer(e.gold)
        assert task.judge(task.extract(e.gold), e).correct
        assert task.judge(e.answer, e).correct
        assert not task.judge(str(int(e.answer) + 1), e).correct
        assert not task.judge(None, e).correct
        assert not task.judge("abc", e).correct
    assert task.extract("blah #### 17\n\nQuestion:") == "17"
    assert task.extract("I do not know") is None
    e = test[0]
    plain = task.prompt(e, "plain")
    assert plain == f"Question: {e.question}\nAnswer:"
    few = task.prompt(e, "fewshot")
    assert few.endswith(plain) and few.count("Question: ") == 2 and few.count("####") == 1
    shot = task.shots()[0]
    assert syn.split_of(shot.question, task.config) == "train" and shot.n_steps == task.shot_steps
    with pytest.raises(ValueError):
        task.prompt(e, "chat")
    zero = SyntheticTask(n_shots=0)  # no worked example: the few-shot prompt is the plain one
    assert zero.shots() == [] and zero.prompt(e, "fewshot") == plain
    # a completion stops at the blank line that ends a worked example
    assert "\n\n" in task.stop and "\n\n" not in e.gold
    # reading a JSONL file instead of generating
    syn.write_jsonl(syn.generate(task.config, "test", 4), tmp_path / "t.jsonl")
    loaded = task.load("test", path=str(tmp_path / "t.jsonl"), limit=3)
    assert [x.question for x in loaded] == [x.question for x in test[:3]]
    assert [x.answer for x in loaded] == [x.answer for x in test[:3]]
    assert len(task.load("train", limit=3)) == 3
    with pytest.raises(ValueError):
        task.load("validation")
