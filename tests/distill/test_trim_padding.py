"""Cutting right-padded rows to their real length (``train.trim_padding``): the batch is really
shorter, and training on it gives the losses and weights of the full rows, to float rounding,
for every objective that may be cut; the matrix stage, whose loss counts padded rows, is never cut."""

from __future__ import annotations

import json
import random

import pytest
import torch
from distill_helpers import VOCAB, tiny_teacher

from thinkfast.convert.from_attention import student_from_teacher
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.data.packing import IGNORE, trim_right_padding
from thinkfast.distill.config import LossConfig, TrainConfig
from thinkfast.distill.stages import HiddenObjective, KDObjective, LMObjective, MatrixObjective
from thinkfast.distill.trainer import Trainer

SEQ = 32


def padded_data(path, n=40, seed=0):
    """Rows of 6-17 tokens (a prompt [1, a], a response counting up), so a batch of 4 is mostly
    shorter than SEQ and its longest row varies."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a = rng.randrange(4, VOCAB - 4)
            resp = [(a + k) % (VOCAB - 4) + 4 for k in range(rng.randrange(4, 16))]
            f.write(json.dumps({"prompt_ids": [1, a], "response_ids": resp}) + "\n")
    return path


def batch(lengths, T=SEQ):
    B = len(lengths)
    valid = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        valid[i, :n] = True
    ids = torch.where(valid, torch.arange(T).expand(B, T) + 3, torch.zeros(B, T, dtype=torch.long))
    labels = torch.where(valid, ids, torch.full_like(ids, IGNORE))
    return {"input_ids": ids, "labels": labels, "valid": valid, "note": torch.tensor(7)}


def test_trim_cuts_to_the_longest_row_rounded_up():
    b = batch([5, 11, 3])
    got = trim_right_padding(b, 4)
    assert got["input_ids"].shape == got["labels"].shape == got["valid"].shape == (3, 12)
    assert torch.equal(got["input_ids"], b["input_ids"][:, :12])
    assert got["valid"].sum() == b["valid"].sum()  # nothing real is cut
    assert torch.equal(got["note"], b["note"])  # not a (B, T) entry: kept as it is
    assert trim_right_padding(b, 1)["input_ids"].shape[1] == 11


def test_trim_keeps_full_and_packed_rows():
    full = batch([SEQ, 4])
    assert trim_right_padding(full, 16) is full
    assert trim_right_padding(batch([30]), 16)["input_ids"].shape[1] == SEQ  # rounded up, capped at T
    with pytest.raises(ValueError):
        trim_right_padding(full, 0)


def make_objective(kind, teacher_seed=0):
    teacher = tiny_teacher(teacher_seed)
    if kind == "lm":
        return LMObjective(tiny_teacher(1), None)
    keep, mixer = (0.0, "discrete") if kind in ("kd-llamba", "hidden", "matrix") else ([0], "mamba2")
    s = student_from_teacher(teacher, keep, mixer, seed=0)
    for m in s.modules():  # chunks of 8: the cut lengths (8, 12, 16) are and are not multiples of it
        if hasattr(m, "chunk_size") and hasattr(m, "conv1d"):
            m.chunk_size = 8
    if kind == "hidden":
        return HiddenObjective(s, teacher)
    if kind == "matrix":
        return MatrixObjective(s, teacher)
    return KDObjective(s, teacher, LossConfig(kind="forward" if kind == "kd-llamba" else "reverse"), kind=mixer)


def train(tmp_path, kind, data, trim, steps=4):
    obj = make_objective(kind)
    seen = []
    obj.register_forward_pre_hook(lambda mod, args: seen.append(args[0]["input_ids"].shape[1]))
    bundle = load_data(DataConfig(train=str(data), seq_len=SEQ, pack=False, eval_fraction=0.1, loss_on="response"))
    tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, progress=False, log_every=1, save_every=0,
                     schedule="constant", trim_padding=trim)
    result = Trainer(obj, bundle, tc, tmp_path / f"{kind}-{trim}").fit()
    return [h["loss"] for h in result["history"] if "loss" in h], obj.student.state_dict(), seen


@pytest.mark.parametrize("kind", ["kd-llamba", "kd-hybrid", "lm", "hidden"])
def test_cut_batches_train_like_full_rows(tmp_path, kind):
    data = padded_data(tmp_path / "rows.jsonl")
    ref, ref_sd, ref_seen = train(tmp_path, kind, data, trim=0)
    got, got_sd, seen = train(tmp_path, kind, data, trim=4)
    assert set(ref_seen) == {SEQ}
    assert max(seen) < SEQ and all(n % 4 == 0 for n in seen)  # the steps really ran on shorter rows
    assert len(got) == len(ref) == 4
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    for k in ref_sd:
        torch.testing.assert_close(got_sd[k], ref_sd[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_matrix_stage_is_never_cut(tmp_path):
    data = padded_data(tmp_path / "rows.jsonl")
    _, _, seen = train(tmp_path, "matrix", data, trim=4, steps=2)
    assert seen and set(seen) == {SEQ}
