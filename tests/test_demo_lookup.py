"""thinkfast.demo.lookup: the teacher-forced probe of the look-up of sentence k in the question."""

from __future__ import annotations

import torch

from thinkfast.demo.lookup import lookup_probe, lookup_probes, lookup_share, operand_share, question_names


def _problems(n: int) -> list[tuple[str, str, list[str]]]:
    from thinkfast.data import synthetic as syn
    from thinkfast.demo import demo_task_config

    meta = demo_task_config()
    probs = syn.generate(syn.SyntheticConfig.from_dict(meta["config"]), "test", n, seed=meta["seed"])
    return [(p.question, p.solution, [s.name for s in p.steps]) for p in probs]


def test_question_names_are_the_names_after_the_markers():
    for question, _, names in _problems(6):
        assert question_names(question) == names


def test_every_restated_line_is_probed_once_and_the_shipped_teacher_looks_up():
    from thinkfast.demo.recipes import load_shipped_teacher

    problems = _problems(12)
    teacher, tok = load_shipped_teacher()
    probe = lookup_probe(teacher.eval(), tok, [(q, a) for q, a, _ in problems])
    # one marker per chain line after the first: "Second" ... up to the problem's last sentence
    assert sum(v["total"] for v in probe.values()) == sum(len(names) - 1 for _, _, names in problems)
    assert probe["Second"]["total"] == len(problems)
    for v in probe.values():
        assert v["right"] + v["other_sentence"] + v["nobody"] == v["total"]
    assert lookup_share(probe) >= 0.9  # the shipped teacher learned the look-up (100% on the demo's test problems)


def test_a_model_without_the_look_up_fails_it():
    from thinkfast.demo.recipes import load_shipped_teacher
    from thinkfast.models.lm import LanguageModel

    teacher, tok = load_shipped_teacher()
    torch.manual_seed(0)
    blank = LanguageModel(teacher.config).eval()  # same shapes, untrained
    probe = lookup_probe(blank, tok, [(q, a) for q, a, _ in _problems(8)])
    assert lookup_share(probe, skip=()) <= 0.05


def test_lookup_share_skips_sentence_two_by_default():
    probe = {"Second": {"right": 10, "total": 10, "other_sentence": 0, "nobody": 0},
             "Third": {"right": 1, "total": 4, "other_sentence": 1, "nobody": 2}}
    assert lookup_share(probe) == 0.25
    assert lookup_share(probe, skip=()) == 11 / 14
    assert lookup_share({"Second": probe["Second"]}) is None


def test_the_operand_probe_reads_each_copied_numbers_digits_and_the_teacher_gets_them():
    """One cell per digit place; its totals are the digits of the operands that sentences 2 and
    on copy from the question (the generator's own), and the shipped teacher copies them."""
    from thinkfast.data import synthetic as syn
    from thinkfast.demo import demo_task_config
    from thinkfast.demo.recipes import load_shipped_teacher

    meta = demo_task_config()
    probs = syn.generate(syn.SyntheticConfig.from_dict(meta["config"]), "test", 12, seed=meta["seed"])
    teacher, tok = load_shipped_teacher()
    names, operands = lookup_probes(teacher.eval(), tok, [(p.question, p.solution) for p in probs])
    assert names == lookup_probe(teacher.eval(), tok, [(p.question, p.solution) for p in probs])
    want: dict[str, int] = {}
    for p in probs:
        for step in p.steps[1:]:
            for place in range(1, len(str(step.operand)) + 1):
                want[f"digit {place}"] = want.get(f"digit {place}", 0) + 1
    assert {k: v["total"] for k, v in operands.items()} == want
    assert want.get("digit 2", 0) > 0
    assert operand_share(operands) >= 0.9  # 100% on the demo's test problems


def test_a_model_without_the_look_up_gets_no_operand():
    from thinkfast.demo.recipes import load_shipped_teacher
    from thinkfast.models.lm import LanguageModel

    teacher, tok = load_shipped_teacher()
    torch.manual_seed(0)
    blank = LanguageModel(teacher.config).eval()
    _, operands = lookup_probes(blank, tok, [(q, a) for q, a, _ in _problems(8)])
    assert operand_share(operands, skip=()) <= 0.2


def test_operand_share_skips_the_first_digit_by_default():
    ops = {"digit 1": {"right": 9, "total": 10}, "digit 2": {"right": 2, "total": 8}}
    assert operand_share(ops) == 0.25
    assert operand_share(ops, skip=()) == 11 / 18
    assert operand_share({"digit 1": ops["digit 1"]}) is None
