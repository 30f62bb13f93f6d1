"""Layer-importance scores: loo, kl-guided, uniform, and the greedy choice."""

from __future__ import annotations

import json

import pytest
import torch
from select_helpers import data_config, make_teacher

from thinkfast.checkpoint import save_model
from thinkfast.convert.from_attention import evenly_spaced, student_from_teacher
from thinkfast.runtime import UserError
from thinkfast.select.layers import (assigned, choose_layers, keep_count, kl_guided_scores, loo_scores,
                                     restore_attention, uniform_scores)


def test_loo_of_a_layer_with_zero_attention_output_is_zero(eval_blocks):
    # W_O = 0: the attention adds nothing, and its Mamba replacement starts with out_proj = W_O = 0,
    # so the leave-one-out model is the teacher exactly.
    teacher = make_teacher(zero_o_proj=(2,))
    res = loo_scores(teacher, eval_blocks, kind="mamba2")
    assert res.scores[2] == 0.0
    assert res.details["agreement"][2] == 1.0
    assert all(res.scores[i] > 1e-4 for i in (0, 1, 3))
    chosen, _ = choose_layers(res.scores, 3)
    assert 2 not in chosen


def test_loo_zero_layer_also_zero_for_discrete(eval_blocks):
    res = loo_scores(make_teacher(zero_o_proj=(0,)), eval_blocks, kind="discrete")
    assert res.scores[0] == 0.0 and res.scores[1] > 0


def test_loo_deterministic_by_seed(eval_blocks):
    teacher = make_teacher()
    a = loo_scores(teacher, eval_blocks, seed=3).scores
    b = loo_scores(teacher, eval_blocks, seed=3).scores
    c = loo_scores(teacher, eval_blocks, seed=4).scores
    assert a == b
    assert a != c  # the rows attention has no counterpart for (z, dt) are drawn from the seed


def test_loo_skips_layers_already_mamba(eval_blocks):
    hybrid = student_from_teacher(make_teacher(), [0, 1, 3], "mamba2")  # layer 2 is Mamba
    res = loo_scores(hybrid, eval_blocks)
    assert res.scores[2] is None and all(res.scores[i] is not None for i in (0, 1, 3))
    assert 2 not in choose_layers(res.scores, 3)[0]
    with pytest.raises(UserError, match="only 3 of 4"):
        choose_layers(res.scores, 4)


def test_uniform_is_distills_even_spacing():
    teacher = make_teacher()
    for k in (1, 2, 4):
        chosen, _ = choose_layers(uniform_scores(teacher, k).scores, k)
        assert chosen == evenly_spaced(4, k)
    assert choose_layers(uniform_scores(teacher, 2).scores, 2)[0] == [1, 3]


def test_choose_top_k_notes_adjacent_layers_and_ties():
    chosen, notes = choose_layers([0.1, 0.9, 0.8, 0.3], 2)
    assert chosen == [1, 2]
    assert len(notes) == 1 and "1 and 2 are adjacent" in notes[0]
    chosen, notes = choose_layers([0.9, 0.1, 0.8, 0.3], 2)
    assert chosen == [0, 2] and notes == []
    chosen, notes = choose_layers([0.5, 0.2, 0.5, 0.5], 2)
    assert chosen == [0, 2] and any("tie" in n for n in notes)


@pytest.mark.parametrize("keep,k", [("1", 1), ("4", 4), ("0.25", 1), ("0.5", 2), (0.75, 3), (2, 2)])
def test_keep_count(keep, k):
    assert keep_count(keep, 4) == k


@pytest.mark.parametrize("keep,msg", [("5", "has 4 layers"), ("0", "has 4 layers"), ("1.0", r"outside \(0, 1\)"),
                                      ("0.0", r"outside \(0, 1\)"), ("1.5", r"outside \(0, 1\)"),
                                      ("-0.5", r"outside \(0, 1\)"), ("0.1", "rounds to no layer"),
                                      ("half", "neither")])
def test_keep_count_refuses(keep, msg):
    with pytest.raises(UserError, match=msg):
        keep_count(keep, 4)


def test_restore_attention_puts_the_teachers_layer_back():
    teacher = make_teacher()
    base = student_from_teacher(teacher, 0.0, "mamba2", seed=1)
    model = restore_attention(base, teacher, 2)
    assert model.config.layer_pattern == "MMAM"
    sd, tsd, bsd = model.state_dict(), teacher.state_dict(), base.state_dict()
    for k, v in sd.items():
        ref = tsd[k] if k.startswith("layers.2.mixer.") else bsd[k]
        assert torch.equal(v, ref), k


def test_ranks_split_the_candidates():
    cands = [0, 1, 2, 3, 4]
    assert assigned(cands, 0, 2) == [0, 2, 4] and assigned(cands, 1, 2) == [1, 3]
    assert sorted(sum((assigned(cands, r, 3) for r in range(3)), [])) == cands


TRAIN = {"steps": 3, "batch_size": 4, "lr": 3e-3, "schedule": "constant", "threads": 1}


def test_kl_guided_deterministic_and_resumable(tmp_path, token_data):
    teacher_dir = save_model(make_teacher(), tmp_path / "teacher")
    data = data_config(token_data)
    a = kl_guided_scores(str(teacher_dir), data, tmp_path / "a", seed=0, train=TRAIN)
    b = kl_guided_scores(str(teacher_dir), data, tmp_path / "b", seed=0, train=TRAIN)
    assert a.scores == b.scores
    assert all(s < 0 for s in a.scores) and len(set(a.scores)) == 4
    assert a.scores == [-v for v in a.details["kl"]]
    # Every candidate ran the same steps and tokens, in its own directory.
    results = [json.loads((tmp_path / "a" / f"layer_{i:02d}" / "result.json").read_text()) for i in range(4)]
    assert {r["stages"][0]["steps"] for r in results} == {3}
    assert len({r["stages"][0]["tokens"] for r in results}) == 1
    # A second call finds the runs done and gives the same scores.
    mtime = (tmp_path / "a" / "layer_00" / "1-kd" / "result.json").stat().st_mtime
    again = kl_guided_scores(str(teacher_dir), data, tmp_path / "a", seed=0, train=TRAIN)
    assert again.scores == a.scores
    assert (tmp_path / "a" / "layer_00" / "1-kd" / "result.json").stat().st_mtime == mtime


def test_kl_guided_from_a_base_student(tmp_path, token_data):
    teacher = make_teacher()
    teacher_dir = save_model(teacher, tmp_path / "teacher")
    base_dir = save_model(student_from_teacher(teacher, 0.0, "mamba2", seed=5), tmp_path / "base")
    res = kl_guided_scores(str(teacher_dir), data_config(token_data), tmp_path / "w", train=TRAIN,
                           base=str(base_dir))
    assert all(s is not None for s in res.scores)
    init = json.loads((tmp_path / "w" / "layer_01" / "init" / "config.json").read_text())
    assert init["model"]["layer_pattern"] == "MAMM"
