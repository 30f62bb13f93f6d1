"""A process reward model trained without human labels, the Math-Shepherd way (Wang et al.,
2024, "Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human Annotations").

Labelling: for each step of a sample (a line on the synthetic task, a paragraph or a sentence
elsewhere: ``rewards.step_spans``), the policy continues the solution from the prefix that ends
at that step ``n`` times; the step's soft label is the share of those rollouts that reach the
right answer (Math-Shepherd's "soft estimation", SE) and its hard label whether any does ("hard
estimation", HE). The last step's label is the sample's own grade. ``mc_step_labels`` and
``label_rows`` are pure given a rollout function; ``engine_rollout_fn`` is the one over
thinkfast's sampling engine.

Model: ``StepRewardModel``, a linear head on the backbone's final (normed) hidden state at each
step's last token, trained with binary cross-entropy on the soft (or hard) labels, frozen
backbone or fine-tuned as the ORM is (``rewards.OutcomeRewardModel``). A chain scores as the
minimum or the last of its step scores. Saved as ``prm.json`` + ``head.safetensors`` (+
``backbone/`` when fine-tuned).

``rewards.ProcessRewardModel`` stays the path for transformers-loadable PRMs (RLHFlow's).

Glossary: B batch, T tokens, D hidden size, S steps.
"""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..inference.padding import left_pad
from ..runtime import UserError
from .reward_base import (STEP_SPLITS, aggregate_steps, encode_dialogue, has_chat_template, hidden_size, is_thinkfast,
                          load_backbone, pad_id, read_head_dir, save_head_dir, step_spans)

PRM_FORMAT = "thinkfast-prm"
PRM_AGGREGATIONS = ("min", "last")

RolloutFn = Callable[[Sequence[tuple[dict, str]], int], list[list[bool]]]
"""(requests, n) -> per request, the grades of ``n`` continuations; a request is (row, prefix
text), the prefix being the row's completion up to the end of one step."""


# --- labelling (Math-Shepherd) -------------------------------------------------------------------


def mc_step_labels(outcomes: Sequence[Sequence[bool]], final_correct: bool) -> tuple[list[float], list[float]]:
    """(soft, hard) labels of a chain of ``len(outcomes) + 1`` steps.

    outcomes[j]: the grades of the rollouts continued from the prefix ending at step j, for every
    step but the last; the last step's label is ``final_correct`` (the sample's own grade).
    soft[j] = the share of correct rollouts (an unbiased estimate of the probability that the
    policy reaches the right answer from there); hard[j] = 1.0 when any rollout is correct.
    """
    for j, o in enumerate(outcomes):
        if len(o) == 0:
            raise ValueError(f"step {j} has no rollouts")
    soft = [sum(bool(x) for x in o) / len(o) for o in outcomes] + [float(bool(final_correct))]
    hard = [float(any(bool(x) for x in o)) for o in outcomes] + [float(bool(final_correct))]
    return soft, hard


def step_prefixes(completion: str, split: str = "line") -> list[str]:
    """The prefixes rollouts start from: the completion up to the end of each step but the last."""
    spans = step_spans(completion, split)
    return [completion[:end] for _, end in spans[:-1]]


def label_rows(rows: Sequence[dict[str, Any]], rollout: RolloutFn, n_rollouts: int, split: str = "line",
               ) -> list[dict[str, Any]]:
    """Math-Shepherd labels for graded samples (rows: question, completion, correct).

    Returns one dict per row with at least one step: {"question", "completion", "problem_id",
    "correct", "soft", "hard"} (one label per step of ``step_spans(completion, split)``). One
    call of ``rollout`` takes every distinct prefix of every row: samples of one problem that
    agree up to a step share that step's rollouts (the same estimate, paid once).
    """
    if n_rollouts < 1:
        raise ValueError("n_rollouts must be >= 1")
    requests: list[tuple[dict, str]] = []
    where: dict[tuple[Any, str, str], int] = {}  # (problem, prefix) -> its request
    owners: list[tuple[int, int]] = []  # (row, request) of every step but the last
    for i, r in enumerate(rows):
        if "correct" not in r:
            raise UserError(f"row {i} has no 'correct' grade (grade the samples first)")
        for prefix in step_prefixes(r["completion"], split):
            key = (r.get("problem_id"), r["question"], prefix)
            if key not in where:
                where[key] = len(requests)
                requests.append((r, prefix))
            owners.append((i, where[key]))
    grades = rollout(requests, n_rollouts) if requests else []
    if len(grades) != len(requests):
        raise ValueError(f"the rollout function returned {len(grades)} results for {len(requests)} prefixes")
    per_row: dict[int, list[list[bool]]] = {}
    for i, q in owners:
        per_row.setdefault(i, []).append(list(grades[q]))
    out = []
    for i, r in enumerate(rows):
        n_steps = len(step_spans(r["completion"], split))
        if n_steps == 0:
            continue
        soft, hard = mc_step_labels(per_row.get(i, []), bool(r["correct"]))
        assert len(soft) == n_steps
        out.append({"question": r["question"], "completion": r["completion"], "problem_id": r.get("problem_id"),
                    "correct": bool(r["correct"]), "soft": soft, "hard": hard})
    return out


def engine_rollout_fn(model: nn.Module, tokenizer: Any, task: Any, examples: dict[str, Any], temperature: float,
                      max_new_tokens: int, seed: int = 0, prompt_style: str = "fewshot", add_bos: bool = False,
                      batch_rows: int = 256) -> RolloutFn:
    """Rollouts over thinkfast's engine: each request's prompt is ``task.prompt(example)`` followed
    by the prefix (``add_bos``: with the tokenizer's BOS), sampled ``n`` times at ``temperature``
    with the task's stop strings, about ``batch_rows`` rows per engine call; a rollout is graded
    on prefix + continuation with ``task.extract`` and ``task.judge``. ``examples`` maps a row's
    ``problem_id`` to its task Example."""
    import warnings

    from ..inference.engine import ContextLimitWarning, SamplingParams, generate

    ctx = int(model.config.max_seq_len)

    def run(requests: Sequence[tuple[dict, str]], n: int) -> list[list[bool]]:
        exs, ids = [], []
        for r, prefix in requests:
            ex = examples.get(r.get("problem_id"))
            if ex is None:
                raise UserError(f"no problem for sample {r.get('problem_id')!r}")
            exs.append(ex)
            text = task.prompt(ex, style=prompt_style, tokenizer=tokenizer) + prefix
            ids.append(list(tokenizer(text, add_special_tokens=add_bos)["input_ids"]))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        per_call = max(1, batch_rows // n)
        grades: list[Optional[list[bool]]] = [None] * len(ids)
        for s in range(0, len(order), per_call):
            chunk = order[s:s + per_call]
            room = min(max_new_tokens, ctx - max(len(ids[i]) for i in chunk))
            if room < 1:
                raise UserError("a rollout prefix fills the model's context")
            params = SamplingParams(n=n, temperature=temperature, max_new_tokens=room, stop=tuple(task.stop),
                                    seed=seed + s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ContextLimitWarning)
                outs = generate(model, [ids[i] for i in chunk], params, tokenizer=tokenizer)
            for i, o in zip(chunk, outs):
                prefix = requests[i][1]
                grades[i] = [bool(task.judge(task.extract(prefix + smp.text), exs[i]).correct) for smp in o.samples]
        return grades  # type: ignore[return-value]

    return run


# --- the step reward model -----------------------------------------------------------------------


def _step_positions_reference(tokenizer: Any, text: str, base: int, spans: Sequence[tuple[int, int]],
                              add_special: bool) -> list[int]:
    """Index of each step's last token, by encoding every prefix (the slow, obvious way)."""
    return [len(tokenizer(text[:base + end], add_special_tokens=add_special)["input_ids"]) - 1 for _, end in spans]


class StepRewardModel(nn.Module):
    """Backbone + linear head on the final (normed) hidden state at each step's last token."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, split: str = "line", aggregate: str = "min",
                 max_len: int = 2048, backbone_path: Optional[str] = None):
        super().__init__()
        if split not in STEP_SPLITS:
            raise UserError(f"step split must be one of {STEP_SPLITS}, got {split!r}")
        if aggregate not in PRM_AGGREGATIONS:
            raise UserError(f"aggregation must be one of {PRM_AGGREGATIONS}, got {aggregate!r}")
        self.backbone, self.tokenizer = backbone, tokenizer
        self.split, self.aggregate, self.backbone_path = split, aggregate, backbone_path
        cfg = backbone.config
        context = getattr(cfg, "max_seq_len", None) or getattr(cfg, "max_position_embeddings", None)
        self.max_len = min(max_len, int(context)) if context else max_len
        self.head = nn.Linear(hidden_size(backbone), 1)
        nn.init.zeros_(self.head.weight)  # every step starts at 0.5
        nn.init.zeros_(self.head.bias)

    # --- layout: the ORM's dialogue, with the position of each step's last token ----------------
    def _dialogue(self, question: str, completion: str) -> tuple[str, int, bool]:
        """(text, where the completion starts in it, whether the tokenizer adds special tokens)."""
        msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": completion}]
        if has_chat_template(self.tokenizer):
            text, special = self.tokenizer.apply_chat_template(msgs, tokenize=False), False
        else:
            text, special = "\n\n".join(m["content"] for m in msgs), True
        base = text.rfind(completion)
        if base < 0:
            raise ValueError("the chat template changed the completion's text")
        return text, base, special

    def encode(self, question: str, completion: str) -> tuple[list[int], list[int]]:
        """(token ids, the index of each step's last token). Over ``max_len`` the start is cut
        and steps whose last token falls in the cut part are dropped."""
        spans = step_spans(completion, self.split)
        text, base, special = self._dialogue(question, completion)
        try:
            enc = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
            ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
            # a special token has offsets (0, 0); it never holds a step's text
            starts = [s if e > s else -1 for s, e in offsets]
            pos = [bisect.bisect_left(_Monotone(starts), base + end) - 1 for _, end in spans]
        except (NotImplementedError, TypeError, KeyError):  # a slow tokenizer: no offsets
            ids = list(encode_dialogue(self.tokenizer, [{"role": "user", "content": question},
                                                        {"role": "assistant", "content": completion}]))
            pos = _step_positions_reference(self.tokenizer, text, base, spans, special)
        cut = max(0, len(ids) - self.max_len)
        return ids[cut:], [p - cut for p in pos if p - cut >= 0]

    def step_features(self, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]) -> torch.Tensor:
        """Hidden states at the step positions of a batch: (sum of steps, D), row-major."""
        dev = next(self.head.parameters()).device
        ids, mask = left_pad(seqs, pad_id(self.tokenizer))
        ids, mask = ids.to(dev), mask.to(dev)
        if is_thinkfast(self.backbone):
            out = self.backbone(ids, mask, output_hidden_states=True)
            h = self.backbone.norm(out.hidden_states[-1])  # (B, T, D); hidden_states[-1] is pre-norm
        else:
            pos_ids = (mask.cumsum(1) - 1).clamp(min=0)
            h = self.backbone(input_ids=ids, attention_mask=mask, position_ids=pos_ids,
                              output_hidden_states=True).hidden_states[-1]  # (B, T, D)
        T = ids.shape[1]
        b = torch.tensor([i for i, p in enumerate(positions) for _ in p], dtype=torch.long, device=dev)
        t = torch.tensor([T - len(s) + q for s, p in zip(seqs, positions) for q in p], dtype=torch.long, device=dev)
        return h[b, t].float()  # (sum S, D)

    @torch.no_grad()
    def step_scores_batch(self, questions: Sequence[str], completions: Sequence[str],
                          batch_size: int = 8) -> list[list[float]]:
        """Per (question, completion): sigmoid(head) at each step (an empty list: no step)."""
        self.eval()
        out: list[list[float]] = []
        for i in range(0, len(questions), batch_size):
            enc = [self.encode(q, c) for q, c in zip(questions[i:i + batch_size], completions[i:i + batch_size])]
            keep = [k for k, (_, p) in enumerate(enc) if p]
            scores: dict[int, list[float]] = {}
            if keep:
                probs = torch.sigmoid(self.head(self.step_features([enc[k][0] for k in keep],
                                                                   [enc[k][1] for k in keep])).squeeze(-1)).tolist()
                at = 0
                for k in keep:
                    scores[k] = probs[at:at + len(enc[k][1])]
                    at += len(enc[k][1])
            out += [scores.get(k, []) for k in range(len(enc))]
        return out

    def step_scores(self, question: str, completion: str) -> list[float]:
        return self.step_scores_batch([question], [completion])[0]

    def score(self, questions: Sequence[str], completions: Sequence[str], batch_size: int = 8) -> list[float]:
        return [aggregate_steps(s, self.aggregate) for s in self.step_scores_batch(questions, completions, batch_size)]

    # --- persistence ---------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike, save_backbone: bool) -> Path:
        """Write the PRM directory atomically (built beside it, then renamed into place)."""
        meta = {"format": PRM_FORMAT, "max_len": self.max_len, "hidden_size": self.head.in_features,
                "split": self.split, "aggregate": self.aggregate}
        return save_head_dir(out_dir, "prm.json", meta, self.head, self.backbone, self.tokenizer,
                             self.backbone_path, save_backbone)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", aggregate: Optional[str] = None) -> "StepRewardModel":
        """``aggregate`` (min, last) overrides the saved one."""
        meta, backbone, tok, bb_path, head = read_head_dir(path, "prm.json", PRM_FORMAT,
                                                          "a thinkfast process reward model", "PRM", device)
        prm = cls(backbone, tok, meta["split"], aggregate or meta["aggregate"], meta["max_len"], backbone_path=bb_path)
        prm.head.load_state_dict(head)
        return prm.to(device).eval()


class _Monotone:
    """A list view for bisect that treats special tokens (start -1) as at the front: token starts
    never decrease otherwise."""

    def __init__(self, starts: list[int]):
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> int:
        return self.starts[i] if self.starts[i] >= 0 else -1


# --- training ------------------------------------------------------------------------------------


@dataclass
class TrainPRMConfig:
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 32
    """Chains per batch (a fine-tuned backbone); with a frozen backbone, 8x as many steps."""
    seed: int = 0
    train_backbone: bool = False
    """Fine-tune the backbone too (slow); by default only the head learns, on frozen features."""
    label: str = "soft"
    """Train on Math-Shepherd's soft estimate (share of correct rollouts) or hard one (any correct)."""

    def __post_init__(self) -> None:
        if self.label not in ("soft", "hard"):
            raise ValueError(f"label must be soft or hard, got {self.label!r}")


def train_prm(prm: StepRewardModel, data: Sequence[dict[str, Any]], cfg: TrainPRMConfig,
              log: Callable[[str], None] = lambda s: None) -> list[float]:
    """Binary cross-entropy of every step's score against its label (``label_rows`` output: dicts
    with question, completion and ``cfg.label``); returns the mean loss per epoch (per step)."""
    torch.manual_seed(cfg.seed)
    seqs, poss, labels = [], [], []
    for d in data:
        ids, pos = prm.encode(d["question"], d["completion"])
        ys = d[cfg.label]
        if len(ys) != len(step_spans(d["completion"], prm.split)):
            raise ValueError(f"{len(ys)} labels for {len(step_spans(d['completion'], prm.split))} steps")
        ys = ys[len(ys) - len(pos):]  # steps cut off by max_len lose their labels
        if pos:
            seqs.append(ids)
            poss.append(pos)
            labels.append(torch.tensor([float(y) for y in ys]))
    if not seqs:
        raise UserError("no labelled steps to train the PRM on")
    prm.backbone.requires_grad_(cfg.train_backbone)
    params = prm.parameters() if cfg.train_backbone else prm.head.parameters()
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    if not cfg.train_backbone:  # one forward pass, then epochs over the steps' features
        with torch.no_grad():
            prm.backbone.eval()
            feats = torch.cat([prm.step_features(seqs[i:i + cfg.batch_size], poss[i:i + cfg.batch_size])
                               for i in range(0, len(seqs), cfg.batch_size)])  # (N steps, D)
        y = torch.cat(labels)  # (N steps,)
        step_batch = cfg.batch_size * 8
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(y), generator=gen)
            total = 0.0
            for i in range(0, len(order), step_batch):
                idx = order[i:i + step_batch]
                loss = nn.functional.binary_cross_entropy_with_logits(prm.head(feats[idx]).squeeze(-1), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            losses.append(total / len(y))
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.4f}")
        prm.eval()
        return losses
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(seqs), generator=gen).tolist()
        total, count = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            prm.train()
            logits = prm.head(prm.step_features([seqs[j] for j in idx], [poss[j] for j in idx])).squeeze(-1)
            y = torch.cat([labels[j] for j in idx]).to(logits.device)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            count += len(y)
        losses.append(total / count)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.4f}")
    prm.eval()
    return losses


# --- the whole recipe, from graded samples -------------------------------------------------------


@dataclass
class PRMRecipe:
    """Labelling and training settings of ``train_prm_from_samples``."""

    problems: Optional[int] = 64
    """Label the samples of the first this many problems in the rows (None: all)."""
    samples_per_problem: Optional[int] = 4
    """... and of each, the samples with ``sample_index`` below this (None: all)."""
    rollouts: int = 4
    """Continuations per step (Math-Shepherd's N)."""
    temperature: float = 0.6
    """The rollouts' sampling temperature (the policy's own)."""
    max_new_tokens: int = 400
    split: str = "line"
    aggregate: str = "min"
    """The saved model's default chain score: min or last."""
    seed: int = 0
    prompt_style: str = "fewshot"
    add_bos: bool = False
    """Prompts with the tokenizer's BOS (the demo's models were trained without)."""
    batch_rows: int = 256
    """Rows per engine call of the rollouts."""
    train: TrainPRMConfig = field(default_factory=TrainPRMConfig)


def examples_from_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """problem_id -> task Example, rebuilt from the sample rows' question, gold and answer."""
    from .tasks.base import Example

    out = {}
    for i, r in enumerate(rows):
        pid = r.get("problem_id")
        if pid is None or not all(isinstance(r.get(k), str) for k in ("question", "gold", "answer")):
            raise UserError(f"sample {i} needs problem_id, question, gold and answer to be rolled out")
        out.setdefault(pid, Example(id=pid, question=r["question"], gold=r["gold"], answer=r["answer"]))
    return out


def select_rows(rows: Sequence[dict[str, Any]], problems: Optional[int],
                samples_per_problem: Optional[int]) -> list[dict[str, Any]]:
    """The rows of the first ``problems`` problems (in order of first appearance) whose
    ``sample_index`` (else their position among the problem's rows) is below ``samples_per_problem``."""
    seen: dict[Any, int] = {}
    out = []
    for r in rows:
        pid = r.get("problem_id")
        if pid not in seen:
            if problems is not None and len(seen) >= problems:
                continue
            seen[pid] = 0
        index = r.get("sample_index", seen[pid])
        seen[pid] += 1
        if samples_per_problem is None or index < samples_per_problem:
            out.append(r)
    return out


def train_prm_from_samples(policy_dir: str | os.PathLike, task: Any, rows: Sequence[dict[str, Any]],
                           out_dir: str | os.PathLike, recipe: Optional[PRMRecipe] = None,
                           examples: Optional[dict[str, Any]] = None,
                           log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Label graded samples of TRAIN problems by Monte-Carlo rollouts of the policy in
    ``policy_dir`` (a thinkfast model, also the PRM's backbone), train a ``StepRewardModel`` on
    the labels and save it to ``out_dir``. ``examples`` (problem_id -> Example; default: rebuilt
    from the rows) gives the rollouts their prompts. Returns a summary with the seconds spent."""
    recipe = recipe or PRMRecipe()
    rows = select_rows(rows, recipe.problems, recipe.samples_per_problem)
    model, tok = load_backbone(str(policy_dir), "thinkfast")
    examples = examples if examples is not None else examples_from_rows(rows)
    t0 = time.perf_counter()
    fn = engine_rollout_fn(model, tok, task, examples, recipe.temperature, recipe.max_new_tokens, recipe.seed,
                           recipe.prompt_style, recipe.add_bos, recipe.batch_rows)
    data = label_rows(rows, fn, recipe.rollouts, recipe.split)
    label_s = time.perf_counter() - t0
    n_steps = sum(len(d["soft"]) for d in data)
    log(f"PRM: {n_steps} steps of {len(data)} samples labelled by {recipe.rollouts} rollouts each "
        f"({label_s:.0f} s)")
    t0 = time.perf_counter()
    prm = StepRewardModel(model, tok, recipe.split, recipe.aggregate, max_len=int(model.config.max_seq_len),
                          backbone_path=str(policy_dir))
    losses = train_prm(prm, data, recipe.train, log)
    prm.save(out_dir, save_backbone=recipe.train.train_backbone)
    train_s = time.perf_counter() - t0
    log(f"PRM: loss {losses[0]:.3f} -> {losses[-1]:.3f} ({train_s:.0f} s)")
    return {"samples": len(data), "steps": n_steps, "rollouts": recipe.rollouts, "label_s": label_s,
            "train_s": train_s, "loss": losses, "recipe": asdict(recipe),
            "mean_soft_label": sum(sum(d["soft"]) for d in data) / max(n_steps, 1)}
