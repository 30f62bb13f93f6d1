"""Long-context token weights (``distill.token_weights``): the short context is a truncation,
the weights are min(exp(LSD), cap) checked by brute force, the weighted losses equal their
reference, and on the demo's task the teacher's weights fall on the look-up tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from distill_helpers import VOCAB, tiny_teacher

from thinkfast.distill.chunked_loss import chunked_cross_entropy, chunked_distillation_loss, head_inputs
from thinkfast.distill.config import ConfigError, LossConfig
from thinkfast.distill.losses import IGNORE, cross_entropy, distillation_loss
from thinkfast.distill.stages import KDObjective, LMObjective
from thinkfast.distill.token_weights import long_context_weights, short_context_hidden
from thinkfast.runtime import UserError

TIGHT = dict(rtol=1e-5, atol=1e-5)


def _ids(B=2, T=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = IGNORE
    labels[:, :4] = IGNORE  # a prompt
    return ids, labels


def _start(t: int, window: int) -> int:
    """Where position t's short context starts: block t // window minus one, or 0 in block 0."""
    return max(0, (t // window - 1) * window)


@pytest.mark.parametrize("pattern", ["AA", "MA", "MM"])
@pytest.mark.parametrize("window", [1, 4, 7, 30])
def test_short_context_is_a_truncation(pattern, window):
    """Position t reads tokens start(t)..t and nothing before: the same as a forward pass over
    exactly that slice (attention and Mamba layers alike)."""
    model = tiny_teacher(layer_pattern=pattern)
    ids, _ = _ids()
    short = short_context_hidden(model, ids, window)
    assert short.shape == (2, ids.shape[1], model.config.d_model)
    for t in range(ids.shape[1]):
        a = _start(t, window)
        _, h = head_inputs(model, ids[:, a:t + 1])
        torch.testing.assert_close(short[:, t], h[:, -1], **TIGHT)
        lo, hi = (t + 1, t + 1) if t < window else (window + 1, 2 * window)
        assert lo <= t + 1 - a <= hi


@torch.no_grad()
def test_weights_equal_brute_force():
    model = tiny_teacher(layer_pattern="AA")
    ids, labels = _ids(seed=1)
    window, cap = 5, 3.0
    w = long_context_weights(model, ids, labels, window, cap)
    full = F.log_softmax(model(ids).logits.float(), -1)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if labels[b, t] == IGNORE:
                assert w[b, t] == 1.0
                continue
            y = int(labels[b, t])
            a = _start(t, window)
            short = F.log_softmax(model(ids[b:b + 1, a:t + 1]).logits[0, -1].float(), -1)
            want = min(float(torch.exp(full[b, t, y] - short[y])), cap) if t >= window else 1.0
            assert abs(float(w[b, t]) - want) < 1e-4 * max(1.0, want), (b, t)
    assert (w <= cap).all() and (w != 1.0).any()


def _heads(seed=2):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(2, 9, 16, generator=g).requires_grad_(True)
    ws = (torch.randn(50, 16, generator=g) * 0.5).requires_grad_(True)
    ht, wt = torch.randn(2, 9, 24, generator=g), torch.randn(50, 24, generator=g) * 0.5
    labels = torch.randint(0, 50, (2, 9), generator=g)
    labels[0, :3] = IGNORE
    weights = torch.rand(2, 9, generator=g) * 4
    return hs, ws, ht, wt, labels, weights


@pytest.mark.parametrize("kind", ["forward", "reverse"])
@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_weighted_chunked_loss_equals_the_weighted_reference(kind, chunk):
    hs, ws, ht, wt, labels, weights = _heads()
    kw = dict(kind=kind, temperature=1.4, kl_weight=0.9, ce_weight=0.3)
    ref = distillation_loss(F.linear(hs, ws), F.linear(ht, wt), labels, None, weights=weights, **kw)
    got = chunked_distillation_loss(hs, ws, ht, wt, labels, chunk_size=chunk, weights=weights, **kw)
    for r, c in zip(ref, got):
        torch.testing.assert_close(c, r, **TIGHT)
    for r, c in zip(torch.autograd.grad(ref[0], (hs, ws)), torch.autograd.grad(got[0], (hs, ws))):
        torch.testing.assert_close(c, r, **TIGHT)
    ref_ce = cross_entropy(F.linear(hs, ws), labels, None, weights)
    got_ce = chunked_cross_entropy(hs, ws, labels, chunk_size=chunk, weights=weights)
    torch.testing.assert_close(got_ce, ref_ce, **TIGHT)
    for r, c in zip(torch.autograd.grad(ref_ce, (hs, ws)), torch.autograd.grad(got_ce, (hs, ws))):
        torch.testing.assert_close(c, r, **TIGHT)


def test_weighted_mean_is_the_sum_of_weight_times_loss_over_the_count():
    hs, ws, ht, wt, labels, weights = _heads(seed=3)
    logits = F.linear(hs, ws)
    m = labels != IGNORE
    per = F.cross_entropy(logits.flatten(0, 1), labels.clamp(min=0).flatten(), reduction="none").view(labels.shape)
    want = (per * weights)[m].sum() / m.sum()
    torch.testing.assert_close(cross_entropy(logits, labels, None, weights), want, **TIGHT)
    ones = torch.ones_like(weights)
    torch.testing.assert_close(chunked_cross_entropy(hs, ws, labels, chunk_size=4, weights=ones),
                               cross_entropy(logits, labels), **TIGHT)
    # a heavier position pulls harder: its share of the gradient grows with its weight
    heavy = ones.clone()
    b, t = m.nonzero()[0].tolist()
    heavy[b, t] = 10.0
    g1, = torch.autograd.grad(chunked_cross_entropy(hs, ws, labels, chunk_size=4, weights=ones), hs)
    g10, = torch.autograd.grad(chunked_cross_entropy(hs, ws, labels, chunk_size=4, weights=heavy), hs)
    torch.testing.assert_close(g10[b, t], 10 * g1[b, t], **TIGHT)


def test_gradcheck_weighted_in_float64():
    hs, ws, ht, wt, labels, weights = _heads(seed=4)
    hs = hs.detach().double().requires_grad_(True)
    ws = ws.detach().double().requires_grad_(True)
    ht, wt = ht.double(), wt.double()

    def f(h, w):
        return chunked_distillation_loss(h, w, ht, wt, labels, kind="reverse", ce_weight=0.5, chunk_size=4,
                                         weights=weights.double())[0]

    assert torch.autograd.gradcheck(f, (hs, ws), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [0, 1024])
def test_kd_and_lm_objectives_use_the_teachers_weights(chunk):
    teacher = tiny_teacher(layer_pattern="AA")
    student = tiny_teacher(seed=1, layer_pattern="AA")
    ids, labels = _ids(seed=5)
    batch = {"input_ids": ids, "labels": labels, "valid": torch.ones_like(ids, dtype=torch.bool)}
    w = long_context_weights(teacher, ids, labels, 4, 6.0)
    with torch.no_grad():
        want_kd = distillation_loss(student(ids).logits, teacher(ids).logits, labels, weights=w)[0]
        want_lm = cross_entropy(student(ids).logits, labels, None, w)
    kd = KDObjective(student, teacher, LossConfig(chunk_size=chunk, long_window=4, long_cap=6.0))
    loss, metrics = kd(batch)
    torch.testing.assert_close(loss.detach(), want_kd, **TIGHT)
    m = labels != IGNORE
    torch.testing.assert_close(metrics["long_w"], w[m].mean(), **TIGHT)
    torch.testing.assert_close(metrics["long_at_cap"], (w[m] >= 6.0 * (1 - 1e-6)).float().mean(), **TIGHT)
    lm = LMObjective(student, teacher, chunk_size=chunk, long_window=4, long_cap=6.0)
    loss, _ = lm(batch)
    torch.testing.assert_close(loss.detach(), want_lm, **TIGHT)
    with torch.no_grad():  # off: the plain mean, and the LM objective holds no teacher
        plain = LMObjective(student, teacher, chunk_size=chunk)
        assert plain.teacher is None
        torch.testing.assert_close(plain(batch)[0], cross_entropy(student(ids).logits, labels), **TIGHT)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="long_window"):
        LossConfig(long_window=-1)
    with pytest.raises(ConfigError, match="long_cap"):
        LossConfig(long_cap=0.0)
    with pytest.raises(UserError, match="needs a teacher"):
        LMObjective(tiny_teacher(), None, long_window=8)


def test_on_the_demo_task_the_teacher_weights_the_look_up_tokens():
    """The shipped teacher, 30 test problems in the demo's layout: the name after each chain
    marker ("Third" ...) can only be read from the question, and the weights find it."""
    from thinkfast.data import synthetic as syn
    from thinkfast.demo import demo_task, demo_task_config
    from thinkfast.demo.config import TASK_FORMAT
    from thinkfast.demo.recipes import load_shipped_teacher

    teacher, tok = load_shipped_teacher()
    meta = demo_task_config()
    problems = syn.generate(demo_task(meta).config, "test", 30, seed=meta["seed"])
    marks = {tok(w, add_special_tokens=False)["input_ids"][-1] for w in ("Second", "Third", "Fourth", "Fifth")}
    names, others = [], []
    for p in problems:
        q = tok(TASK_FORMAT["prompt_template"].format(question=p.question), add_special_tokens=False)["input_ids"]
        a = tok(TASK_FORMAT["response_template"].format(answer=p.solution), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([q + a])
        labels = torch.full_like(ids, IGNORE)
        labels[0, len(q) - 1:-1] = ids[0, len(q):]
        w = long_context_weights(teacher, ids, labels, 32, 10.0)[0]
        for t in range(len(q) - 1, ids.shape[1] - 1):
            (names if int(ids[0, t]) in marks else others).append(float(w[t]))
    names, others = torch.tensor(names), torch.tensor(others)
    assert len(names) >= 60
    assert (names > 2).float().mean() >= 0.8  # measured: 91% on 40 problems
    assert (others > 2).float().mean() <= 0.3  # measured: 14%
    assert names.mean() >= 3 * others.mean()  # measured: 9.2 against 2.2
