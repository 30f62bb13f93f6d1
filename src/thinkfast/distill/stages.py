"""What each stage optimises: one ``Objective`` module per stage, all driven by ``trainer.Trainer``.

An objective owns the student (a registered submodule: trained, wrapped by DDP/FSDP, saved) and
holds the teacher outside the module tree (frozen, never wrapped or saved). ``forward(batch)``
returns ``(loss, metrics)`` with ``loss`` the mean over the batch's units; ``units(batch)`` counts
those units (loss tokens, sequences) up front, so the trainer can weight micro-batches and
processes exactly. The trainer uses an objective only through ``StageObjective`` (below): how
the student is read from and written to a checkpoint, what trains, the loss and its FLOPs.

Stages:
  lm      cross-entropy on the labels (pretraining: every token; SFT: response tokens only)
  matrix  MOHAWK 1: each Mamba mixer, fed the teacher's normalised input of its layer, fits its
          materialised mixing matrix to the teacher's softmax attention matrix
  hidden  MOHAWK 2: each Mamba block, fed the teacher's input of its layer, fits the teacher's
          output of that layer
  kd      MOHAWK 3 / MambaInLlama: end-to-end KL on logits (+ optional CE and hidden MSE), with
          an optional stepwise hybrid schedule that converts more attention layers over time

Stages 1 and 2 never chain student layers: every layer sees teacher activations (computed on
the fly, no cache files), its loss depends on its own weights only, and the trainer clips each
layer's gradient separately, so the layers train independently while sharing one loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

import torch
import torch.nn as nn

from ..checkpoint import load_model, save_model
from ..convert.from_attention import ConversionError, attention_layers, student_from_teacher
from ..models.layers import Attention
from ..models.lm import LanguageModel
from ..runtime import UserError
from .chunked_loss import DEFAULT_CHUNK, chunked_cross_entropy, chunked_distillation_loss, has_head, head_inputs
from .losses import IGNORE, cross_entropy, distillation_loss, hidden_alignment_loss, hidden_mse, \
    matrix_orientation_loss
from .token_weights import long_context_weights, weights_summary

# Mixer parameters that shape the mixing matrix (stage 1 trains these and nothing else).
MATRIX_PARAMS = ("in_proj", "conv1d", "dt_bias", "A_log", "a_bias")


def check_compatible(student: LanguageModel, teacher: LanguageModel, need: tuple[str, ...]) -> None:
    """Refuse a teacher/student pair whose shapes disagree on ``need`` (ModelConfig fields)."""
    s, t = student.config, teacher.config
    diffs = [f"{k}: teacher {getattr(t, k)} vs student {getattr(s, k)}" for k in need if getattr(s, k) != getattr(t, k)]
    if diffs:
        raise UserError("teacher/student shape mismatch: " + "; ".join(diffs))


@runtime_checkable
class StageObjective(Protocol):
    """Everything ``trainer.Trainer`` asks of a stage: the student (what trains, how it is saved
    and read back) and the loss. ``Objective`` implements it for every stage; the trainer uses
    nothing else (no attribute probing)."""

    name: str
    student: nn.Module

    # the student's weights on disk
    def load_student(self, model_dir: str | Path) -> nn.Module:
        """The student saved in ``model_dir`` (a checkpoint's model/), not yet adopted."""

    def save_student(self, out_dir: str | Path, state_dict: dict[str, torch.Tensor], tokenizer: Any = None,
                     extra: Optional[dict[str, Any]] = None) -> Path:
        """Write the student with ``state_dict`` (a full, gathered one) as a model directory."""

    def adopt_student(self, student: nn.Module) -> None:
        """Train ``student`` from now on (a checkpoint of another layer pattern, see below)."""

    def architecture_may_change(self) -> bool:
        """Whether the student's layer pattern changes during the stage (a hybrid schedule), so a
        checkpoint of another pattern is still this stage's."""

    # what trains
    def trainable_parameters(self) -> list[nn.Parameter]: ...
    def clip_groups(self) -> list[list[nn.Parameter]]: ...
    def fsdp_units(self) -> list[nn.Module]: ...
    def checkpoint_units(self) -> list[nn.Module]:
        """Blocks whose activations may be recomputed in backward (train.activation_checkpointing)."""

    def on_step(self, step: int) -> bool: ...
    def hold_teacher(self, dtype: torch.dtype) -> None:
        """Keep the frozen teacher in ``dtype``."""

    # the loss
    trims_padding: bool
    """Whether the loss is the same on a batch cut to its real length (``train.trim_padding``):
    true when only real positions count."""

    def units(self, batch: dict[str, torch.Tensor]) -> int: ...
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
    def flops_per_token(self) -> float:
        """Model FLOPs of one training token (forward + backward), for MFU."""


class _GatheredStudent:
    """What ``save_model`` reads of a model (its config and state dict), for weights gathered
    from DDP/FSDP without building the model a second time. Private to ``save_student``."""

    def __init__(self, config: Any, state_dict: dict[str, torch.Tensor]):
        self.config, self._sd = config, state_dict

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._sd


def matmul_params(model: nn.Module) -> int:
    """Parameters of ``model`` that multiply activations: all but the input embedding table (a
    lookup). A tied LM head counts once more, since the output projection is a matmul."""
    n = sum(p.numel() for p in model.parameters())
    embed = getattr(model, "embed_tokens", None)
    if isinstance(embed, nn.Embedding):
        n -= embed.weight.numel()
        head = getattr(model, "lm_head", None)
        if isinstance(head, nn.Linear) and head.weight is embed.weight:
            n += head.weight.numel()
    return n


class Objective(nn.Module):
    """The base of every stage (implements ``StageObjective``)."""

    name = "objective"
    trims_padding = True  # every loss below counts real positions only, except the matrix stage's

    def __init__(self, student: LanguageModel, teacher: Optional[LanguageModel] = None, trainable: str = "all"):
        super().__init__()
        self.student = student
        self._teacher = [teacher]  # a list keeps it out of the module tree: not trained, wrapped or saved
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.trainable = trainable
        self.set_trainable()

    @property
    def teacher(self) -> LanguageModel:
        return self._teacher[0]

    # --- what trains ---------------------------------------------------------------------------
    def trainable_filter(self, name: str, layer: Optional[int]) -> bool:
        """Does parameter ``name`` (of the student; ``layer`` its block index or None) train?"""
        mamba = layer is not None and layer in self.student.mamba_layers
        mode = self.trainable
        if mode == "all":
            return True
        if mode == "mixers":
            return mamba and ".mixer." in name
        if mode == "mamba_layers":
            return mamba
        if mode == "no_mlp":
            return ".mlp." not in name
        raise UserError(f"trainable {mode!r} is not valid for objective {self.name}")

    def set_trainable(self) -> None:
        for name, p in self.student.named_parameters():
            parts = name.split(".")
            layer = int(parts[1]) if parts[0] == "layers" else None
            p.requires_grad_(self.trainable_filter(name, layer))
        if not any(p.requires_grad for p in self.student.parameters()):
            raise UserError(f"objective {self.name}: no parameter is trainable (trainable={self.trainable!r}, "
                            f"layer pattern {self.student.config.layer_pattern})")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def clip_groups(self) -> list[list[nn.Parameter]]:
        return [self.trainable_parameters()]

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.student.layers)

    def checkpoint_units(self) -> list[nn.Module]:
        return list(self.student.layers)

    # --- the student on disk -------------------------------------------------------------------
    def load_student(self, model_dir: str | Path) -> nn.Module:
        return load_model(model_dir)

    def save_student(self, out_dir, state_dict, tokenizer=None, extra=None) -> Path:
        return save_model(_GatheredStudent(self.student.config, state_dict), out_dir, tokenizer, extra)

    def adopt_student(self, student: nn.Module) -> None:
        self.student = student
        self.set_trainable()

    def architecture_may_change(self) -> bool:
        return False

    def hold_teacher(self, dtype: torch.dtype) -> None:
        if self.teacher is None:
            return
        have = next(self.teacher.parameters()).dtype
        if have == dtype:
            return
        if torch.finfo(dtype).bits > torch.finfo(have).bits:
            raise UserError(f"objective {self.name}: the teacher is held in {have} (an earlier stage's "
                            f"train.teacher_dtype) and casting it back to {dtype} would not restore its "
                            f"weights; give every stage the same train.teacher_dtype")
        self.teacher.to(dtype)

    def flops_per_token(self) -> float:
        """6 N (student forward + backward) + 2 N (teacher forward), N = ``matmul_params``;
        attention's T-dependent FLOPs are not counted."""
        n = 6 * matmul_params(self.student)
        return float(n + (2 * matmul_params(self.teacher) if self.teacher is not None else 0))

    def on_step(self, step: int) -> bool:
        """Called before each step; True when the student changed (the trainer then rebuilds)."""
        return False

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def forward(self, batch: dict[str, torch.Tensor]):
        raise NotImplementedError


class LMObjective(Objective):
    """Cross-entropy on the labels; the data decides which tokens count (all or response only).

    chunk_size > 0: the loss from the LM head's input, chunk by chunk (``chunked_loss``), never the
    (B, T, V) logits; 0: the reference on full logits. long_window > 0: each position's loss times
    its long-context weight (``token_weights``), which the teacher scores."""

    name = "lm"

    def __init__(self, student, teacher=None, trainable="all", chunk_size: int = DEFAULT_CHUNK,
                 long_window: int = 0, long_cap: float = 5.0):
        if chunk_size < 0:
            raise UserError(f"loss.chunk_size must be >= 0, got {chunk_size}")
        if long_window and teacher is None:
            raise UserError("loss.long_window needs a teacher to score the tokens (teacher=PATH)")
        self.chunk_size, self.long_window, self.long_cap = chunk_size, long_window, long_cap
        super().__init__(student, teacher if long_window else None, trainable)

    def flops_per_token(self) -> float:
        """6 N of the student; with long_window, 2 N_teacher for each of its 3 token-passes."""
        n = 6 * matmul_params(self.student)
        return float(n + (6 * matmul_params(self.teacher) if self.teacher is not None else 0))

    def forward(self, batch):
        ids, labels = batch["input_ids"], batch["labels"]
        w = metrics = None
        if self.long_window:
            w = long_context_weights(self.teacher, ids, labels, self.long_window, self.long_cap,
                                     chunk_size=self.chunk_size or DEFAULT_CHUNK)
            metrics = weights_summary(w, labels, self.long_cap)
        if self.chunk_size and has_head(self.student):
            _, h = head_inputs(self.student, ids)  # (B, T, D)
            head = self.student.lm_head
            loss = chunked_cross_entropy(h, head.weight, labels, None, head.bias, self.chunk_size, w)
            return loss, metrics or {}
        logits = self.student(ids).logits  # (B, T, V)
        loss = cross_entropy(logits, labels, None, w)
        return loss, metrics or {}


class _LayerwiseObjective(Objective):
    """Shared by MOHAWK stages 1 and 2: the Mamba layers of the student, teacher activations."""

    def __init__(self, student, teacher, trainable="auto"):
        if teacher is None:
            raise UserError(f"objective {self.name} needs a teacher")
        check_compatible(student, teacher, ("vocab_size", "d_model", "n_layers"))
        self.layers = [i for i, c in enumerate(student.config.layer_pattern) if c == "M"]
        if not self.layers:
            raise UserError(f"objective {self.name}: the student has no Mamba layers to train "
                            f"(pattern {student.config.layer_pattern})")
        not_attn = [i for i in self.layers if not isinstance(teacher.layers[i].mixer, Attention)]
        if not_attn:
            raise UserError(f"objective {self.name}: teacher layers {not_attn} are not attention")
        super().__init__(student, teacher, "mixers" if trainable == "auto" else trainable)

    def clip_groups(self):
        groups = [[p for p in self.student.layers[i].parameters() if p.requires_grad] for i in self.layers]
        return [g for g in groups if g]

    def units(self, batch):
        return int(batch["input_ids"].shape[0])

    def _teacher_pass(self, ids: torch.Tensor):
        with torch.no_grad():
            out = self.teacher(ids, output_hidden_states=True)
        return out.hidden_states


class MatrixObjective(_LayerwiseObjective):
    """MOHAWK stage 1 (matrix orientation)."""

    name = "matrix"
    trims_padding = False  # the Frobenius norm runs over whole (T, T) matrices, padded rows included

    def __init__(self, student, teacher, trainable="auto"):
        if trainable not in ("auto", "mixers"):
            raise UserError("objective matrix trains the mixers' matrix parameters only (trainable: auto)")
        super().__init__(student, teacher, "mixers")
        for i in self.layers:
            tm, sm = teacher.layers[i].mixer, student.layers[i].mixer
            if sm.H != tm.n_heads:
                raise UserError(f"layer {i}: the student mixer has {sm.H} heads but the teacher's attention "
                                f"has {tm.n_heads}; matrix orientation compares them head by head -- "
                                f"set mamba.n_heads to {tm.n_heads}")

    def trainable_filter(self, name, layer):
        return (layer is not None and layer in self.layers and ".mixer." in name
                and name.split(".mixer.")[1].split(".")[0] in MATRIX_PARAMS)

    def fsdp_units(self):
        return []  # mixing_matrix is not a forward(): FSDP hooks must not shard below the root

    def checkpoint_units(self):
        return []  # the student's blocks never run forward here

    def flops_per_token(self):
        # the teacher's full forward, and each trained mixer's input projection (forward + backward)
        return float(2 * matmul_params(self.teacher)
                     + 6 * sum(self.student.layers[i].mixer.in_proj.weight.numel() for i in self.layers))

    def forward(self, batch):
        ids = batch["input_ids"]
        hidden = self._teacher_pass(ids)
        ctx = self.teacher.context(ids)
        losses = []
        for i in self.layers:
            blk = self.teacher.layers[i]
            with torch.no_grad():
                u = blk.input_norm(hidden[i])  # (B, T, D): the teacher's mixer input
                target = blk.mixer.attention_matrix(u, ctx)  # (B, H, T, T)
            m = self.student.layers[i].mixer.mixing_matrix(u)  # (B, H, T, T)
            losses.append(matrix_orientation_loss(m, target))
        per_layer = torch.stack(losses)
        return per_layer.mean(), {f"layer{i}": l.detach() for i, l in zip(self.layers, per_layer)}


class HiddenObjective(_LayerwiseObjective):
    """MOHAWK stage 2 (hidden-state alignment) of each Mamba block's output."""

    name = "hidden"

    def fsdp_units(self):
        return [self.student.layers[i] for i in self.layers]

    def checkpoint_units(self):
        return [self.student.layers[i] for i in self.layers]

    def flops_per_token(self):
        # the teacher's full forward, and each trained block (forward + backward)
        return float(2 * matmul_params(self.teacher)
                     + 6 * sum(matmul_params(self.student.layers[i]) for i in self.layers))

    def units(self, batch):
        return int(batch["valid"].sum())

    def forward(self, batch):
        ids = batch["input_ids"]
        hidden = self._teacher_pass(ids)
        ctx = self.student.context(ids)
        losses = []
        for i in self.layers:
            y = self.student.layers[i](hidden[i], ctx)  # (B, T, D) from the teacher's input
            losses.append(hidden_alignment_loss(y, hidden[i + 1], batch["valid"]))
        per_layer = torch.stack(losses)
        return per_layer.mean(), {f"layer{i}": l.detach() for i, l in zip(self.layers, per_layer)}


class KDObjective(Objective):
    """End-to-end distillation on logits (MOHAWK 3 / MambaInLlama), optional stepwise hybrid schedule."""

    name = "kd"

    def __init__(self, student, teacher, loss_cfg, trainable="auto", schedule: Optional[list] = None,
                 kind: str = "mamba2", seed: int = 0):
        if teacher is None:
            raise UserError("objective kd needs a teacher")
        need = ("vocab_size",) + (("d_model", "n_layers") if loss_cfg.hidden_weight else ())
        check_compatible(student, teacher, need)
        if loss_cfg.chunk_size < 0:
            raise UserError(f"loss.chunk_size must be >= 0, got {loss_cfg.chunk_size}")
        self.loss_cfg, self.kind, self.seed = loss_cfg, kind, seed
        self.schedule = sorted(schedule or [], key=lambda e: e[0])
        super().__init__(student, teacher, "all" if trainable == "auto" else trainable)

    def architecture_may_change(self) -> bool:
        return bool(self.schedule)

    def on_step(self, step: int) -> bool:
        due = [keep for s, keep in self.schedule if s <= step]
        if not due:
            return False
        cfg = self.student.config
        target = set(attention_layers(cfg.n_layers, due[-1]))
        current = set(cfg.attention_layers)
        if target == current:
            return False
        if not target <= current:
            raise UserError(f"hybrid_schedule at step {step} keeps attention layers {sorted(target)}, "
                            f"but layers {sorted(target - current)} are already Mamba")
        try:
            new = student_from_teacher(self.student, sorted(target), self.kind, seed=self.seed + step)
        except ConversionError as e:
            raise UserError(f"hybrid_schedule at step {step}: {e}") from None
        self.student = new.to(next(self.student.parameters()).device)
        self.set_trainable()
        return True

    def flops_per_token(self) -> float:
        """The base's 6 N + 2 N_teacher; long-context weights add 2 N_teacher for the short pass's
        2 tokens per token."""
        extra = 4 * matmul_params(self.teacher) if self.loss_cfg.long_window else 0
        return super().flops_per_token() + float(extra)

    def forward(self, batch):
        ids, labels = batch["input_ids"], batch["labels"]
        c = self.loss_cfg
        want_h = c.hidden_weight > 0
        w, metrics = None, {}
        if c.chunk_size and has_head(self.student) and has_head(self.teacher):
            # The LM heads' inputs, not their (B, T, V) outputs: the loss projects chunk by chunk.
            with torch.no_grad():
                t, th = head_inputs(self.teacher, ids, output_hidden_states=want_h)
                if c.long_window:
                    w = long_context_weights(self.teacher, ids, labels, c.long_window, c.long_cap,
                                             full_hidden=th, chunk_size=c.chunk_size)
            s, sh = head_inputs(self.student, ids, output_hidden_states=want_h)
            sw, tw = self.student.lm_head, self.teacher.lm_head
            loss, kl, ce = chunked_distillation_loss(sh, sw.weight, th, tw.weight, labels, None, c.kind,
                                                     c.temperature, c.kl_weight, c.ce_weight, c.chunk_size,
                                                     sw.bias, tw.bias, w)
        else:
            with torch.no_grad():
                t = self.teacher(ids, output_hidden_states=want_h)
                if c.long_window:
                    w = long_context_weights(self.teacher, ids, labels, c.long_window, c.long_cap)
            s = self.student(ids, output_hidden_states=want_h)
            loss, kl, ce = distillation_loss(s.logits, t.logits, labels, None, c.kind, c.temperature,
                                             c.kl_weight, c.ce_weight, w)
        if w is not None:
            metrics.update(weights_summary(w, labels, c.long_cap))
        metrics["kl"] = kl.detach()
        if c.ce_weight:
            metrics["ce"] = ce.detach()
        if want_h:
            mse = torch.stack([hidden_mse(sh, th, batch["valid"])
                               for sh, th in zip(s.hidden_states[1:], t.hidden_states[1:])]).mean()
            loss = loss + c.hidden_weight * mse
            metrics["hidden_mse"] = mse.detach()
        return loss, metrics


def build_objective(stage, student: LanguageModel, teacher: Optional[LanguageModel], kind: str = "mamba2",
                    seed: int = 0) -> Objective:
    """The objective of a ``StageConfig`` (see ``distill.config``)."""
    if stage.objective == "lm":
        if stage.hybrid_schedule:
            raise UserError("hybrid_schedule with objective lm is not supported: it needs a teacher "
                            "to initialise from; use objective kd with ce_weight")
        return LMObjective(student, teacher, "all" if stage.trainable == "auto" else stage.trainable,
                           stage.loss.chunk_size, stage.loss.long_window, stage.loss.long_cap)
    if stage.objective == "matrix":
        return MatrixObjective(student, teacher, stage.trainable)
    if stage.objective == "hidden":
        return HiddenObjective(student, teacher, stage.trainable)
    return KDObjective(student, teacher, stage.loss, stage.trainable, stage.hybrid_schedule, kind, seed)


def describe(objective: Objective) -> dict[str, Any]:
    n_train = sum(p.numel() for p in objective.student.parameters() if p.requires_grad)
    return {"objective": objective.name, "pattern": objective.student.config.layer_pattern,
            "trainable_params": n_train, "params": objective.student.num_parameters()}
