"""The chunked KD / CE loss (hidden states + LM heads, no (B, T, V) logits) against the reference
losses on full logits: same loss, same gradients, same training step."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from distill_helpers import tiny_teacher

from thinkfast.convert.from_attention import student_from_teacher
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.chunked_loss import chunked_cross_entropy, chunked_distillation_loss, head_inputs
from thinkfast.distill.config import LossConfig, TrainConfig
from thinkfast.distill.losses import IGNORE, cross_entropy, distillation_loss
from thinkfast.distill.stages import KDObjective, LMObjective
from thinkfast.distill.trainer import Trainer

B, T, D, DT, V = 2, 9, 16, 24, 50
TIGHT = dict(rtol=1e-5, atol=1e-6)


def _inputs(seed=0, ignored=5, dtype=torch.float32, bias=False):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, D, generator=g, dtype=dtype).requires_grad_(True)
    ws = (torch.randn(V, D, generator=g, dtype=dtype) * 0.5).requires_grad_(True)
    ht = torch.randn(B, T, DT, generator=g, dtype=dtype)
    wt = torch.randn(V, DT, generator=g, dtype=dtype) * 0.5
    labels = torch.randint(0, V, (B, T), generator=g)
    flat = labels.view(-1)
    flat[torch.randperm(B * T, generator=g)[:ignored]] = IGNORE
    bs = (torch.randn(V, generator=g, dtype=dtype) * 0.3).requires_grad_(True) if bias else None
    bt = torch.randn(V, generator=g, dtype=dtype) * 0.3 if bias else None
    return hs, ws, bs, ht, wt, bt, labels


def _grads(loss, params, retain=False):
    return torch.autograd.grad(loss, params, retain_graph=retain)


def _reference(hs, ws, bs, ht, wt, bt, labels, mask=None, **kw):
    return distillation_loss(F.linear(hs, ws, bs), F.linear(ht, wt, bt), labels, mask, **kw)


@pytest.mark.parametrize("kind", ["forward", "reverse"])
@pytest.mark.parametrize("temperature,ce_weight", [(1.0, 0.0), (2.5, 0.0), (1.0, 0.7), (0.6, 0.3)])
@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 1000])  # N = 13: 5 and 4 do not divide it
def test_loss_and_gradients_equal_the_reference(kind, temperature, ce_weight, chunk):
    hs, ws, _, ht, wt, _, labels = _inputs()
    kw = dict(kind=kind, temperature=temperature, kl_weight=0.8, ce_weight=ce_weight)
    ref = _reference(hs, ws, None, ht, wt, None, labels, **kw)
    got = chunked_distillation_loss(hs, ws, ht, wt, labels, chunk_size=chunk, **kw)
    for r, c in zip(ref, got):  # total, kl, ce
        torch.testing.assert_close(c, r, **TIGHT)
    assert got[1] > 0 and (got[2] > 0) == bool(ce_weight)
    for r, c in zip(_grads(ref[0], (hs, ws)), _grads(got[0], (hs, ws))):
        torch.testing.assert_close(c, r, **TIGHT)


@pytest.mark.parametrize("kind", ["forward", "reverse"])
def test_the_separate_outputs_have_their_own_gradients(kind):
    """Backward weights KL and CE by their own upstream gradients (here: kl alone, ce alone)."""
    hs, ws, _, ht, wt, _, labels = _inputs(seed=1)
    kw = dict(kind=kind, temperature=1.7, ce_weight=0.5)
    ref = _reference(hs, ws, None, ht, wt, None, labels, **kw)
    got = chunked_distillation_loss(hs, ws, ht, wt, labels, chunk_size=3, **kw)
    for i in (1, 2):
        for r, c in zip(_grads(ref[i], (hs, ws), True), _grads(got[i], (hs, ws), True)):
            torch.testing.assert_close(c, r, **TIGHT)


def test_bias_mask_and_no_labels():
    hs, ws, bs, ht, wt, bt, labels = _inputs(seed=2, bias=True)
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(3)) > 0.3
    for lab, kw in ((labels, dict(ce_weight=0.4)), (None, {})):
        ref = _reference(hs, ws, bs, ht, wt, bt, lab, mask, kind="reverse", temperature=1.5, **kw)
        got = chunked_distillation_loss(hs, ws, ht, wt, lab, mask, kind="reverse", temperature=1.5, chunk_size=4,
                                        student_bias=bs, teacher_bias=bt, **kw)
        torch.testing.assert_close(got[0], ref[0], **TIGHT)
        for r, c in zip(_grads(ref[0], (hs, ws, bs)), _grads(got[0], (hs, ws, bs))):
            torch.testing.assert_close(c, r, **TIGHT)


def test_no_counted_position_gives_zero_and_zero_gradients():
    hs, ws, _, ht, wt, _, labels = _inputs(ignored=B * T)
    for kind in ("forward", "reverse"):
        ref = _reference(hs, ws, None, ht, wt, None, labels, kind=kind, ce_weight=1.0)
        got = chunked_distillation_loss(hs, ws, ht, wt, labels, kind=kind, ce_weight=1.0, chunk_size=4)
        for r, c in zip(ref, got):
            assert c.item() == 0.0 and r.item() == 0.0
        gh, gw = _grads(got[0], (hs, ws))
        assert not gh.any() and not gw.any()
    ce = chunked_cross_entropy(hs, ws, labels, chunk_size=3)
    assert ce.item() == 0.0 and not _grads(ce, (ws,))[0].any()


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_cross_entropy_equals_the_reference(chunk):
    hs, ws, bs, _, _, _, labels = _inputs(seed=4, bias=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :3] = False
    ref = cross_entropy(F.linear(hs, ws, bs), labels, mask)
    got = chunked_cross_entropy(hs, ws, labels, mask, bs, chunk_size=chunk)
    torch.testing.assert_close(got, ref, **TIGHT)
    for r, c in zip(_grads(ref, (hs, ws, bs)), _grads(got, (hs, ws, bs))):
        torch.testing.assert_close(c, r, **TIGHT)


@pytest.mark.parametrize("kind", ["forward", "reverse"])
def test_gradcheck_in_float64(kind):
    """Finite differences, independent of the reference's autograd."""
    hs, ws, bs, ht, wt, bt, labels = _inputs(seed=5, dtype=torch.float64, bias=True)

    def f(h, w, b):
        total, _, _ = chunked_distillation_loss(h, w, ht, wt, labels, kind=kind, temperature=1.3,
                                                ce_weight=0.4, chunk_size=4, student_bias=b, teacher_bias=bt)
        return total

    assert torch.autograd.gradcheck(f, (hs, ws, bs), eps=1e-6, atol=1e-6)


def test_tied_embedding_gradient_accumulates():
    """The head weight is the input embedding: its gradient is the sum of both uses."""
    g = torch.Generator().manual_seed(6)
    emb = torch.nn.Embedding(V, D)
    ids = torch.randint(0, V, (B, T), generator=g)
    proj = torch.randn(D, D, generator=g) * 0.3
    ht = torch.randn(B, T, DT, generator=g)
    wt = torch.randn(V, DT, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 2:5] = IGNORE

    def loss(chunk):
        h = torch.tanh(emb(ids) @ proj)  # (B, T, D): a "model" on top of the embedding
        if chunk:
            return chunked_distillation_loss(h, emb.weight, ht, wt, labels, temperature=2.0, ce_weight=0.5,
                                             chunk_size=chunk)[0]
        return distillation_loss(F.linear(h, emb.weight), F.linear(ht, wt), labels, temperature=2.0,
                                 ce_weight=0.5)[0]

    ref = _grads(loss(0), (emb.weight,))[0]
    got = _grads(loss(3), (emb.weight,))[0]
    torch.testing.assert_close(got, ref, **TIGHT)
    # Both paths into the weight count: the head-only gradient differs from the total.
    h = torch.tanh(emb(ids) @ proj).detach()
    head_only = _grads(chunked_distillation_loss(h, emb.weight, ht, wt, labels, temperature=2.0, ce_weight=0.5,
                                                 chunk_size=3)[0], (emb.weight,))[0]
    assert not torch.allclose(head_only, got)


def test_tied_language_model_grads_equal_the_reference():
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, 0.5, "discrete")
    assert student.lm_head.weight is student.embed_tokens.weight
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(7))
    labels = ids.roll(-1, 1)
    labels[:, :4] = IGNORE
    with torch.no_grad():
        t_logits = teacher(ids).logits
        _, th = head_inputs(teacher, ids)
    ref = distillation_loss(student(ids).logits, t_logits, labels, kind="reverse", temperature=2.0, ce_weight=0.3)[0]
    ref_g = _grads(ref, list(student.parameters()))
    _, sh = head_inputs(student, ids)
    got = chunked_distillation_loss(sh, student.lm_head.weight, th, teacher.lm_head.weight, labels, kind="reverse",
                                    temperature=2.0, ce_weight=0.3, chunk_size=7)[0]
    torch.testing.assert_close(got, ref, **TIGHT)
    for r, c in zip(ref_g, _grads(got, list(student.parameters()))):
        torch.testing.assert_close(c, r, **TIGHT)


@contextlib.contextmanager
def _saved_activations(weights):
    """Shapes of the tensors autograd saves in the block, except views of ``weights``."""
    ptrs = {w.untyped_storage().data_ptr() for w in weights}
    shapes: list[tuple[int, ...]] = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in ptrs:
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield shapes


def test_nothing_of_vocabulary_width_is_saved_for_backward():
    """The graph keeps the (N, D) hidden states and the weights, never (., V) logits."""
    hs, ws, _, ht, wt, _, labels = _inputs(seed=8)
    with _saved_activations((ws, wt)) as saved:
        got = chunked_distillation_loss(hs, ws, ht, wt, labels, ce_weight=0.5, chunk_size=4)[0]
    assert saved and not [s for s in saved if s[-1:] == (V,)], saved
    with _saved_activations((ws, wt)) as saved:
        _reference(hs, ws, None, ht, wt, None, labels, ce_weight=0.5)
    assert [s for s in saved if s[-1:] == (V,)]  # the reference does keep (B, T, V) tensors
    got.backward()


def test_bfloat16_autocast_is_close_to_the_reference():
    hs, ws, _, ht, wt, _, labels = _inputs(seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _reference(hs, ws, None, ht, wt, None, labels, temperature=2.0, ce_weight=0.5)
        got = chunked_distillation_loss(hs, ws, ht, wt, labels, temperature=2.0, ce_weight=0.5, chunk_size=4)
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], ref[0], rtol=2e-2, atol=1e-2)
    for r, c in zip(_grads(ref[0], (hs, ws)), _grads(got[0], (hs, ws))):
        assert c.dtype == r.dtype == torch.float32
        torch.testing.assert_close(c, r, rtol=5e-2, atol=2e-3)


def test_bad_arguments_are_refused():
    hs, ws, _, ht, wt, _, labels = _inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_distillation_loss(hs, ws, ht, wt, labels, chunk_size=0)
    with pytest.raises(ValueError, match="needs labels"):
        chunked_distillation_loss(hs, ws, ht, wt, None, ce_weight=1.0)
    with pytest.raises(ValueError, match="KL kind"):
        chunked_distillation_loss(hs, ws, ht, wt, labels, kind="jsd")
    with pytest.raises(ValueError, match="vocabularies differ"):
        chunked_distillation_loss(hs, ws, ht, wt[:-1], labels)


# --- the objectives -------------------------------------------------------------------------------
def _one_step(tmp_path, objective, data, steps=2):
    bundle = load_data(DataConfig(train=str(data), seq_len=16, eval_fraction=0.1))
    # Adam's eps at 1e-4, not 1e-8: with a tiny eps, Adam's update of a weight whose gradient is
    # ~1e-8 is ~lr * sign(g), which turns rounding-level gradient differences into a visible step.
    tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, eps=1e-4, progress=False, log_every=1, save_every=0,
                     schedule="constant")
    torch.manual_seed(0)
    result = Trainer(objective, bundle, tc, tmp_path / objective.name).fit()
    return [h for h in result["history"] if "loss" in h], result


@pytest.mark.parametrize("kind,ce_weight,hidden_weight", [("forward", 0.0, 0.0), ("reverse", 0.2, 0.1)])
def test_kd_training_step_equals_the_reference_path(tmp_path, token_data, kind, ce_weight, hidden_weight):
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, 0.5, "discrete")
    runs = {}
    for chunk in (0, 5):
        cfg = LossConfig(kind=kind, temperature=2.0, ce_weight=ce_weight, hidden_weight=hidden_weight,
                         chunk_size=chunk)
        obj = KDObjective(copy.deepcopy(student), teacher, cfg)
        history, result = _one_step(tmp_path / f"c{chunk}", obj, token_data)
        runs[chunk] = (history, obj.student.state_dict(), result["eval_loss"])
    (h0, w0, e0), (h5, w5, e5) = runs[0], runs[5]
    for a, b in zip(h0, h5):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert e5 == pytest.approx(e0, rel=1e-5)
    changed = [k for k in w0 if not torch.equal(w0[k], student.state_dict()[k])]
    assert "embed_tokens.weight" in changed
    for k in w0:
        torch.testing.assert_close(w5[k], w0[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,ce_weight,hidden_weight", [("forward", 0.0, 0.0), ("reverse", 0.2, 0.1)])
def test_kd_objective_gradients_equal_the_reference_path(token_data, kind, ce_weight, hidden_weight):
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, 0.5, "discrete")
    batch = load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1)).train.batch([0, 1, 2, 3])
    out = {}
    for chunk in (0, 5):
        cfg = LossConfig(kind=kind, temperature=2.0, ce_weight=ce_weight, hidden_weight=hidden_weight,
                         chunk_size=chunk)
        obj = KDObjective(copy.deepcopy(student), teacher, cfg)
        loss, metrics = obj(batch)
        loss.backward()
        out[chunk] = loss, metrics, {k: p.grad for k, p in obj.student.named_parameters()}
    torch.testing.assert_close(out[5][0], out[0][0], **TIGHT)
    assert out[5][1].keys() == out[0][1].keys()
    for k in out[0][2]:
        torch.testing.assert_close(out[5][2][k], out[0][2][k], **TIGHT)


def test_lm_training_step_equals_the_reference_path(tmp_path, token_data):
    teacher = tiny_teacher()
    runs = {}
    for chunk in (0, 3):
        obj = LMObjective(copy.deepcopy(teacher).train().requires_grad_(True), chunk_size=chunk)
        history, _ = _one_step(tmp_path / f"c{chunk}", obj, token_data)
        runs[chunk] = (history, obj.student.state_dict())
    for a, b in zip(runs[0][0], runs[3][0]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for k, v in runs[0][1].items():
        torch.testing.assert_close(runs[3][1][k], v, rtol=1e-5, atol=1e-6)


def test_kd_objective_never_holds_full_logits(token_data):
    """With chunking, no activation saved for backward has V columns; without, some have."""
    teacher = tiny_teacher()
    bundle = load_data(DataConfig(train=str(token_data), seq_len=16, eval_fraction=0.1))
    batch = bundle.train.batch([0, 1, 2])
    for chunk, holds in ((4, False), (0, True)):
        obj = KDObjective(student_from_teacher(teacher, 0.5, "discrete"), teacher,
                          LossConfig(ce_weight=0.5, chunk_size=chunk))
        weights = list(obj.student.parameters()) + list(teacher.parameters())
        with _saved_activations(weights) as saved:
            loss, _ = obj(batch)
        assert any(s[-1:] == (48,) for s in saved) == holds, saved
        loss.backward()
