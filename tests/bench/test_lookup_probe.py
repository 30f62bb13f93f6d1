"""benchmarks/lookup_probe.py: the teacher-forced probe of the look-up of sentence k."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("lookup_probe", ROOT / "benchmarks" / "lookup_probe.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


lp = _load()


def _problems(n: int) -> list[dict]:
    from thinkfast.data import synthetic as syn
    from thinkfast.demo import demo_task_config

    meta = demo_task_config()
    return [p.to_record() for p in syn.generate(syn.SyntheticConfig.from_dict(meta["config"]), "test", n,
                                                 seed=meta["seed"])]


def test_every_restated_line_is_probed_once_and_the_shipped_teacher_looks_up():
    from thinkfast.demo.recipes import load_shipped_teacher

    rows = _problems(12)
    teacher, tok = load_shipped_teacher()
    probe = lp.lookup_probe(teacher.eval(), tok, rows)
    # one marker per chain line after the first: "Second" ... up to the problem's last sentence
    assert sum(v["total"] for v in probe.values()) == sum(len(r["steps"]) - 1 for r in rows)
    assert probe["Second"]["total"] == len(rows)
    for v in probe.values():
        assert v["right"] + v["other_sentence"] + v["nobody"] == v["total"]
    right = sum(v["right"] for v in probe.values()) / sum(v["total"] for v in probe.values())
    assert right >= 0.9  # the shipped teacher learned the look-up (100% on the demo's test problems)


def test_a_model_without_the_look_up_fails_it():
    from thinkfast.demo.recipes import load_shipped_teacher
    from thinkfast.models.lm import LanguageModel

    rows = _problems(8)
    teacher, tok = load_shipped_teacher()
    torch.manual_seed(0)
    blank = LanguageModel(teacher.config).eval()  # same shapes, untrained
    probe = lp.lookup_probe(blank, tok, rows)
    assert sum(v["right"] for v in probe.values()) <= 1
