"""The projected student: identity at full width, merge parity, channel selection, bad input."""

from __future__ import annotations

import pytest
import torch
from compress_helpers import VOCAB, batches, tiny_teacher

from thinkfast.checkpoint import load_model, save_model
from thinkfast.compress.init import channel_importance, check_width, select_channels
from thinkfast.compress.projected import ProjectedLM
from thinkfast.models.lm import LanguageModel
from thinkfast.runtime import UserError


def _ids(seed: int = 3, B: int = 2, T: int = 10) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tied,bias", [(True, False), (False, True)])
def test_red_at_full_width_reproduces_the_teacher(tied, bias):
    teacher = tiny_teacher(tie_embeddings=tied, attention_bias=bias, mlp_bias=bias)
    imp = channel_importance(teacher, batches())
    student = ProjectedLM(teacher, teacher.config.d_model, "red", imp, allow_full=True)
    ids = _ids()
    torch.testing.assert_close(student(ids).logits, teacher(ids).logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(student.merge()(ids).logits, teacher(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", ["red", "gaussian", "orthogonal"])
def test_merged_model_equals_projected_model(init, tmp_path):
    teacher = tiny_teacher(tie_embeddings=False, attention_bias=True)
    imp = channel_importance(teacher, batches()) if init == "red" else None
    student = ProjectedLM(teacher, 16, init, imp, seed=1)
    with torch.no_grad():  # move away from the init, as training would
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    merged = student.merge()
    assert isinstance(merged, LanguageModel) and merged.config.d_model == 16
    assert merged.config.head_dim == teacher.config.head_dim
    ids = _ids()
    want = student(ids).logits
    torch.testing.assert_close(merged(ids).logits, want, rtol=1e-5, atol=1e-5)
    # An ordinary model directory: it round-trips and decodes with the KV cache like any other.
    reloaded = load_model(save_model(merged, tmp_path / "m"))
    torch.testing.assert_close(reloaded(ids).logits, want, rtol=1e-5, atol=1e-5)
    cache = reloaded.allocate_cache(2, 10)
    steps = [reloaded(ids[:, t:t + 1], cache=cache).logits for t in range(10)]
    torch.testing.assert_close(torch.cat(steps, 1), want, rtol=1e-4, atol=1e-4)


def test_only_projections_and_norms_train_and_teacher_is_not_saved():
    teacher = tiny_teacher()
    student = ProjectedLM(teacher, 16, "gaussian")
    names = set(student.state_dict())
    assert "embed" in names and "layers.0.q" in names and "layers.1.down" in names
    assert "norm.weight" in names and "layers.0.input_norm.weight" in names
    assert not any("proj" in n or "embed_tokens" in n for n in names)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss = student(_ids()).logits.logsumexp(-1).mean()
    loss.backward()
    assert student.embed.grad is not None and student.layers[0].q.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])


def test_random_inits_are_seeded():
    teacher = tiny_teacher()
    a, b = ProjectedLM(teacher, 16, "orthogonal", seed=5), ProjectedLM(teacher, 16, "orthogonal", seed=5)
    c = ProjectedLM(teacher, 16, "orthogonal", seed=6)
    assert torch.equal(a.layers[1].up, b.layers[1].up) and not torch.equal(a.layers[1].up, c.layers[1].up)
    torch.testing.assert_close(a.embed.T @ a.embed, torch.eye(16), rtol=0, atol=1e-5)  # orthonormal columns


def test_channel_importance_finds_a_dominant_channel_and_ignores_padding():
    teacher = tiny_teacher()
    with torch.no_grad():
        for n in [m for blk in teacher.layers for m in (blk.input_norm, blk.post_norm)] + [teacher.norm]:
            n.weight[7] = 40.0
    bs = batches()
    imp = channel_importance(teacher, bs)
    assert int(imp.argmax()) == 7
    assert 7 in select_channels(imp, 4).tolist()
    # Padding (valid = False) must not count: extra garbage columns leave the statistic unchanged.
    padded = [{"input_ids": torch.cat([b["input_ids"], torch.zeros_like(b["input_ids"][:, :4])], 1),
               "valid": torch.cat([b["valid"], torch.zeros_like(b["valid"][:, :4])], 1)} for b in bs]
    torch.testing.assert_close(channel_importance(teacher, padded), imp, rtol=1e-5, atol=1e-6)


def test_select_channels_is_sorted_top_k():
    assert select_channels(torch.tensor([0.1, 5.0, 0.3, 4.0, 2.0]), 3).tolist() == [1, 3, 4]


@pytest.mark.parametrize("d_s", [0, -3, 32, 40])
def test_bad_widths_are_clear_errors(d_s):
    with pytest.raises(UserError, match="d_s"):
        ProjectedLM(tiny_teacher(), d_s, "gaussian")
    with pytest.raises(UserError, match="d_s"):
        check_width(d_s, 32)


def test_too_small_calibration_set_is_a_clear_error():
    teacher = tiny_teacher()
    one = [{"input_ids": _ids(B=1), "valid": torch.ones(1, 10, dtype=torch.bool)}]
    with pytest.raises(UserError, match="calibration set has 1"):
        channel_importance(teacher, one)
    empty = [{"input_ids": _ids(B=3), "valid": torch.zeros(3, 10, dtype=torch.bool)}]
    with pytest.raises(UserError, match="calibration set has 0"):
        channel_importance(teacher, empty)


def test_red_needs_importance_and_an_attention_teacher():
    with pytest.raises(UserError, match="importance"):
        ProjectedLM(tiny_teacher(), 16, "red")
    with pytest.raises(UserError, match="all-attention"):
        ProjectedLM(tiny_teacher(layer_pattern="AM"), 16, "gaussian")


def _saved_projections(tmp_path, tag_as_before: bool = False):
    """A ProjectedLM's projections saved as ``thinkfast compress`` saves them (its checkpoints'
    model/), or, with ``tag_as_before``, with the plain "thinkfast" tag such directories had
    before projections got their own."""
    import json

    from thinkfast.compress.config import CompressLoss
    from thinkfast.compress.recipe import CompressObjective

    teacher = tiny_teacher()
    student = ProjectedLM(teacher, 16, "gaussian", seed=2)
    obj = CompressObjective(student, teacher, CompressLoss())
    out = obj.save_student(tmp_path / "projected", student.state_dict())
    if tag_as_before:
        meta = json.loads((out / "config.json").read_text())
        meta["format"] = "thinkfast"
        (out / "config.json").write_text(json.dumps(meta))
    return out, obj, student


@pytest.mark.parametrize("tag_as_before", [False, True])
def test_projections_are_refused_as_a_model_with_what_they_are(tmp_path, tag_as_before):
    """A directory of projections is not a model (it needs its teacher): load_model and
    load_pretrained say what it is and what to use instead, whether it carries its own tag or the
    plain one such directories had before; the compress objective still reads it back."""
    import json

    from thinkfast.checkpoint import PROJECTED_FORMAT, CheckpointError, is_thinkfast_dir, load_pretrained

    out, obj, student = _saved_projections(tmp_path, tag_as_before)
    tag = json.loads((out / "config.json").read_text())["format"]
    assert tag == ("thinkfast" if tag_as_before else PROJECTED_FORMAT)
    assert is_thinkfast_dir(out) == tag_as_before
    for load in (load_model, load_pretrained):
        with pytest.raises(CheckpointError) as e:
            load(out)
        msg = str(e.value)
        assert "projections of a width-compressed student" in msg and PROJECTED_FORMAT in msg
        assert "OUT/model" in msg and "thinkfast compress" in msg
    back = obj.load_student(out)  # resume reads either
    for k, v in student.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
