"""Reward models behind one interface: ``score(questions, completions) -> list[float]``.

- ``OutcomeRewardModel`` (ORM; Cobbe et al., 2021): a backbone (a thinkfast ``LanguageModel``,
  or any Hugging Face model that returns hidden states) plus a linear head read at the last real
  token; reward = sigmoid(head). Saved as ``orm.json`` + ``head.safetensors`` (+ ``backbone/``
  when the backbone was fine-tuned); never pickle.
- ``ProcessRewardModel`` (PRM) in the RLHFlow style (Xiong et al., 2024, RLHFlow/RLHF-Reward-
  Modeling, math-rm): the solution is split into steps on blank lines and laid out as a chat,
  each step a user turn answered by an assistant "+"; a step's score is P(+) / (P(+) + P(-)) at
  that assistant turn. Step scores aggregate by last, min, mean or product (Lightman et al.,
  2023 use product and min).

Glossary: B batch, T tokens, D hidden size.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..inference.padding import left_pad
from ..runtime import UserError
# AGGREGATIONS, STEP_SPLITS, Scorer, split_steps and step_spans are re-exported: they were defined here.
from .reward_base import (AGGREGATIONS, STEP_SPLITS, Scorer, aggregate_steps, encode_dialogue,  # noqa: F401
                          has_chat_template, hidden_size, is_thinkfast, load_backbone, pad_id, read_head_dir,
                          save_head_dir, split_steps, step_spans)

ORM_FORMAT = "thinkfast-orm"


# --- outcome reward model ------------------------------------------------------------------------


class OutcomeRewardModel(nn.Module):
    """Backbone + linear head on the last real token's final (normed) hidden state."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, max_len: int = 2048,
                 backbone_path: Optional[str] = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        cfg = backbone.config
        context = getattr(cfg, "max_seq_len", None) or getattr(cfg, "max_position_embeddings", None)
        self.max_len = min(max_len, int(context)) if context else max_len
        self.backbone_path = backbone_path
        self.head = nn.Linear(hidden_size(backbone), 1)
        nn.init.zeros_(self.head.weight)  # start at reward 0.5 for every input
        nn.init.zeros_(self.head.bias)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) left-padded ids and mask -> (B, D) final hidden state of the last token."""
        if is_thinkfast(self.backbone):
            out = self.backbone(input_ids, attention_mask, output_hidden_states=True)
            h = self.backbone.norm(out.hidden_states[-1][:, -1])  # hidden_states[-1] is pre-norm
        else:
            # HF: positions must skip the left padding; hidden_states[-1] is already normed.
            pos = (attention_mask.cumsum(1) - 1).clamp(min=0)
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                                output_hidden_states=True)
            h = out.hidden_states[-1][:, -1]
        return h.float()  # (B, D)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Reward logits (B,)."""
        return self.head(self.features(input_ids, attention_mask)).squeeze(-1)

    def encode(self, question: str, completion: str) -> list[int]:
        ids = encode_dialogue(self.tokenizer, [{"role": "user", "content": question},
                                               {"role": "assistant", "content": completion}])
        return ids[-self.max_len:]  # keep the end: the final answer is what is judged

    @torch.no_grad()
    def score(self, questions: Sequence[str], completions: Sequence[str], batch_size: int = 8) -> list[float]:
        self.eval()
        out: list[float] = []
        dev = next(self.head.parameters()).device
        for i in range(0, len(questions), batch_size):
            seqs = [self.encode(q, c) for q, c in zip(questions[i:i + batch_size], completions[i:i + batch_size])]
            ids, mask = left_pad(seqs, pad_id(self.tokenizer))
            out += torch.sigmoid(self(ids.to(dev), mask.to(dev))).tolist()
        return out

    # --- persistence ---------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike, save_backbone: bool) -> Path:
        """Write the ORM directory atomically (built beside it, then renamed into place)."""
        meta = {"format": ORM_FORMAT, "max_len": self.max_len, "hidden_size": self.head.in_features}
        return save_head_dir(out_dir, "orm.json", meta, self.head, self.backbone, self.tokenizer,
                             self.backbone_path, save_backbone)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "OutcomeRewardModel":
        meta, backbone, tok, bb_path, head = read_head_dir(path, "orm.json", ORM_FORMAT, "an outcome reward model",
                                                          "ORM", device)
        orm = cls(backbone, tok, meta["max_len"], backbone_path=bb_path)
        orm.head.load_state_dict(head)
        return orm.to(device).eval()


# --- training the ORM ----------------------------------------------------------------------------


@dataclass
class TrainRMConfig:
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    train_backbone: bool = False
    """Fine-tune the backbone too (slow); by default only the head learns, on frozen features."""
    max_per_class: Optional[int] = None
    """Cap on examples per class after balancing."""


def balanced_examples(rows: Sequence[dict[str, Any]], seed: int,
                      max_per_class: Optional[int] = None) -> list[tuple[str, str, int]]:
    """(question, completion, label) with as many correct as incorrect samples (seeded draw
    from the larger class), shuffled."""
    pos = [(r["question"], r["completion"], 1) for r in rows if r.get("correct")]
    neg = [(r["question"], r["completion"], 0) for r in rows if not r.get("correct")]
    if not pos or not neg:
        raise UserError(f"training an ORM needs correct and incorrect samples; got {len(pos)} correct "
                        f"and {len(neg)} incorrect")
    rng = random.Random(seed)
    m = min(len(pos), len(neg), max_per_class or math.inf)
    data = rng.sample(pos, int(m)) + rng.sample(neg, int(m))
    rng.shuffle(data)
    return data


def train_orm(orm: OutcomeRewardModel, data: Sequence[tuple[str, str, int]], cfg: TrainRMConfig,
              log: Callable[[str], None] = lambda s: None) -> list[float]:
    """Binary cross-entropy on (question, completion, label); returns the mean loss per epoch."""
    torch.manual_seed(cfg.seed)
    pad = pad_id(orm.tokenizer)
    seqs = [orm.encode(q, c) for q, c, _ in data]
    labels = torch.tensor([float(y) for _, _, y in data])
    orm.backbone.requires_grad_(cfg.train_backbone)
    params = orm.parameters() if cfg.train_backbone else orm.head.parameters()
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    feats = None
    if not cfg.train_backbone:  # frozen backbone: one forward pass, then epochs over features
        with torch.no_grad():
            orm.backbone.eval()
            feats = torch.cat([orm.features(*left_pad(seqs[i:i + cfg.batch_size], pad))
                               for i in range(0, len(seqs), cfg.batch_size)])  # (N, D)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(seqs), generator=gen).tolist()
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if feats is not None:
                logits = orm.head(feats[idx]).squeeze(-1)
            else:
                orm.train()
                logits = orm(*left_pad([seqs[j] for j in idx], pad))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(order))
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.4f}")
    orm.eval()
    return losses


# --- process reward model ------------------------------------------------------------------------


def prm_conversation(question: str, steps: Sequence[str], upto: Optional[int] = None) -> list[dict[str, str]]:
    """RLHFlow layout: user turns carry the steps (the first prefixed by the question), each
    followed by an assistant "+"; ``upto`` keeps the first ``upto`` steps."""
    msgs = []
    for i, step in enumerate(steps[:upto]):
        msgs.append({"role": "user", "content": f"{question} {step}" if i == 0 else step})
        msgs.append({"role": "assistant", "content": "+"})
    return msgs


class ProcessRewardModel:
    """Step scores P(+)/(P(+)+P(-)) from any causal LM whose tokenizer has a chat template."""

    def __init__(self, model: nn.Module, tokenizer: Any, aggregate: str = "min",
                 plus: str = "+", minus: str = "-"):
        if not has_chat_template(tokenizer):
            raise UserError("a process reward model needs a tokenizer with a chat template")
        aggregate_steps([], aggregate)  # validate early
        self.model, self.tokenizer, self.aggregate = model, tokenizer, aggregate
        self.plus_id, self.minus_id = self._token_id(plus), self._token_id(minus)

    def _token_id(self, s: str) -> int:
        ids = self.tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UserError(f"the PRM label {s!r} is not a single token for this tokenizer ({ids})")
        return int(ids[0])

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _label_positions(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Ids of the whole conversation and, per step, the position of its assistant "+"."""
        full = self._encode(prm_conversation(question, steps))
        positions = []
        for i in range(1, len(steps) + 1):
            prefix = self._encode(prm_conversation(question, steps, i))
            if full[:len(prefix)] != prefix:
                raise ValueError("chat template is not prefix-stable")  # caller falls back
            positions.append(max(j for j, t in enumerate(prefix) if t == self.plus_id))
        return full, positions

    @torch.no_grad()
    def _plus_probs(self, ids: list[int], positions: Sequence[int]) -> list[float]:
        """P(+)/(P(+)+P(-)) predicted just before each position (one forward pass)."""
        dev = next(self.model.parameters()).device
        logits = self.model(torch.tensor([ids], device=dev)).logits[0]  # (T, V)
        pair = logits[[p - 1 for p in positions]][:, [self.plus_id, self.minus_id]].float()  # (S, 2)
        return pair.softmax(-1)[:, 0].tolist()

    def step_scores(self, question: str, completion: str) -> list[float]:
        steps = split_steps(completion)
        if not steps:
            return []
        self.model.eval()
        try:
            ids, positions = self._label_positions(question, steps)
            return self._plus_probs(ids, positions)
        except ValueError as e:
            if "prefix-stable" not in str(e):
                raise
        # The RLHFlow reference loop: one forward per step on the conversation so far.
        out = []
        for i in range(1, len(steps) + 1):
            prefix = self._encode(prm_conversation(question, steps, i))
            out += self._plus_probs(prefix, [max(j for j, t in enumerate(prefix) if t == self.plus_id)])
        return out

    def score(self, questions: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [aggregate_steps(self.step_scores(q, c), self.aggregate) for q, c in zip(questions, completions)]


def load_scorer(path: str, kind: str = "auto", aggregate: str = "min", device: str = "auto",
                backbone_kind: str = "thinkfast") -> Scorer:
    """An ORM directory (has orm.json), a thinkfast PRM directory (has prm.json; ``thinkfast
    train-prm``, aggregated by ``aggregate``: min or last) or any causal LM used as an
    RLHFlow-style PRM, on ``device`` (auto: cuda when available, else cpu)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "auto":
        kind = "orm" if (Path(path) / "orm.json").exists() else \
            "thinkfast-prm" if (Path(path) / "prm.json").exists() else "prm"
    if kind == "orm":
        return OutcomeRewardModel.load(path, device)
    if kind == "thinkfast-prm":
        from .prm import PRM_AGGREGATIONS, StepRewardModel

        if aggregate not in PRM_AGGREGATIONS:
            raise UserError(f"a thinkfast PRM aggregates by {' or '.join(PRM_AGGREGATIONS)}, not {aggregate!r}")
        return StepRewardModel.load(path, device, aggregate)
    if kind == "prm":
        model, tok = load_backbone(path, backbone_kind, device)
        return ProcessRewardModel(model.eval(), tok, aggregate)
    raise UserError(f"unknown reward model kind {kind!r} (auto, orm, thinkfast-prm, prm)")


def score_rows(scorer: Scorer, rows: Sequence[dict[str, Any]], key: str = "reward", batch_size: int = 8,
               log: Callable[[str], None] = lambda s: None) -> tuple[list[dict[str, Any]], int]:
    """Copies of ``rows`` with ``key`` set (a PRM also sets ``{key}_steps``); and how many rows
    could not be scored (a PRM conversation over the model's context: reward 0, ``{key}_error``)."""
    out: list[dict[str, Any]] = []
    failed = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        if hasattr(scorer, "step_scores_batch"):  # a thinkfast PRM (eval.prm): one forward per batch
            steps_of = scorer.step_scores_batch([r["question"] for r in batch], [r["completion"] for r in batch],
                                                batch_size=batch_size)
            out += [{**r, key: aggregate_steps(st, scorer.aggregate), f"{key}_steps": st}
                    for r, st in zip(batch, steps_of)]
        elif isinstance(scorer, ProcessRewardModel):
            for r in batch:
                try:
                    steps, err = scorer.step_scores(r["question"], r["completion"]), None
                except ValueError as e:
                    steps, err = [], str(e)
                    failed += 1
                out.append({**r, key: aggregate_steps(steps, scorer.aggregate), f"{key}_steps": steps,
                            f"{key}_error": err})
        else:
            qs, cs = [r["question"] for r in batch], [r["completion"] for r in batch]
            # the ORM batches within score() too: let it take the whole batch at once
            scores = scorer.score(qs, cs, batch_size=batch_size) if isinstance(scorer, OutcomeRewardModel) \
                else scorer.score(qs, cs)
            out += [{**r, key: s} for r, s in zip(batch, scores)]
        log(f"{len(out)}/{len(rows)} scored")
    return out, failed
