"""``thinkfast compress``: score channels, build the projected student, train it with the one
training loop (``distill.trainer.Trainer``), merge it into a plain smaller model.

    OUT/projected/   the trainer's directory; its checkpoints and model/ hold the projections and
                     norms, tagged "thinkfast-projected" (resumable; ``CompressObjective.load_student``
                     reads them back; ``checkpoint.load_model`` refuses them: they need the teacher)
    OUT/model/       the merged student: an ordinary thinkfast model directory (d_model = d_s)
    OUT/result.json  steps, tokens, wall time, losses, the selected channels and their importance
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (PROJECTED_FORMAT, CheckpointError, load_model, load_tokenizer, read_config, save_model,
                          save_state)
from ..config import atomic_write_text, to_dict
from ..data.dataset import load_data
from ..distill import distributed as D
from ..distill.losses import distillation_loss, hidden_mse
from ..distill.stages import Objective
from ..distill.trainer import VOLATILE_TRAIN_KEYS, Trainer
from ..runtime import UserError
from .config import CompressConfig, CompressLoss
from .init import channel_importance, check_width
from .projected import ProjectedLM, check_teacher


class CompressObjective(Objective):
    """KL(T) on logits + CE on labels + MSE of every block's output, teacher frozen."""

    name = "compress"

    def __init__(self, student: ProjectedLM, teacher, loss: CompressLoss):
        self.loss_cfg = loss
        super().__init__(student, teacher, "all")

    def trainable_filter(self, name, layer):
        return True  # the student holds projections and norms only; the teacher is outside it

    def load_student(self, model_dir: str | Path) -> ProjectedLM:
        """A checkpoint's projections as a ProjectedLM over this objective's teacher (trainer resume)."""
        from safetensors.torch import load_file

        cfg, _ = read_config(model_dir)  # tagged PROJECTED_FORMAT, or FORMAT when written before the tag
        s = self.student
        if cfg.to_dict() != s.config.to_dict():
            raise CheckpointError(f"{model_dir} holds a student of another shape (d_model {cfg.d_model})")
        sd = load_file(str(Path(model_dir) / "model.safetensors"))
        fresh = ProjectedLM(self.teacher, cfg.d_model, "gaussian", allow_full=True)
        try:
            fresh.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{model_dir} does not hold projections of this teacher: {e}") from None
        return fresh

    def save_student(self, out_dir, state_dict, tokenizer=None, extra=None) -> Path:
        """The projections and norms, tagged ``PROJECTED_FORMAT``: not a model without the teacher."""
        return save_state(self.student.config, state_dict, out_dir, tokenizer, extra, tag=PROJECTED_FORMAT)

    def forward(self, batch):
        ids, labels, valid = batch["input_ids"], batch["labels"], batch["valid"]
        c = self.loss_cfg
        want_h = c.hidden_weight > 0
        with torch.no_grad():
            t = self.teacher(ids, output_hidden_states=want_h)
        s = self.student(ids, output_hidden_states=want_h)
        loss, kl, ce = distillation_loss(s.logits, t.logits, labels, None, "forward", c.temperature,
                                         c.kl_weight, c.ce_weight)
        metrics = {"kl": kl.detach(), "ce": ce.detach()}
        if want_h:
            p = self.student.embed.detach()  # (D, d): the teacher's states in the student's coordinates
            mse = torch.stack([hidden_mse(sh, th @ p, valid)
                               for sh, th in zip(s.hidden_states[1:], t.hidden_states[1:])]).mean()
            loss = loss + c.hidden_weight * mse
            metrics["hidden_mse"] = mse.detach()
        return loss, metrics


def calibration_batches(blocks, n: int, micro: int = 8) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` blocks (fewer when there are fewer) in micro-batches."""
    idx = list(range(min(n, len(blocks))))
    return [blocks.batch(idx[i:i + micro]) for i in range(0, len(idx), micro)]


def _fingerprint(cfg: CompressConfig) -> dict[str, Any]:
    full = cfg.to_dict()
    full["train"] = {k: v for k, v in full["train"].items() if k not in VOLATILE_TRAIN_KEYS or k == "steps"}
    full.pop("out_dir")
    return full


def run_compress(cfg: CompressConfig) -> dict[str, Any]:
    if not cfg.teacher:
        raise UserError("compress needs teacher=PATH (a thinkfast model directory)")
    env = D.init_distributed(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    teacher = load_model(cfg.teacher, device=env.device)
    check_teacher(teacher)
    check_width(cfg.d_s, teacher.config.d_model)
    tok_dir = cfg.tokenizer or cfg.teacher
    tokenizer = load_tokenizer(tok_dir)  # None: token-id rows only (load_data says so otherwise)
    if tokenizer is None and cfg.tokenizer:
        raise UserError(f"no tokenizer found in {cfg.tokenizer}")
    data = load_data(cfg.data, tokenizer, teacher.config.vocab_size)
    importance = channels = None
    if cfg.init == "red":
        batches = [{k: v.to(env.device) for k, v in b.items()}
                   for b in calibration_batches(data.train, cfg.calibration_sequences)]
        importance = channel_importance(teacher, batches)
    student = ProjectedLM(teacher, cfg.d_s, cfg.init, importance, cfg.seed)
    if cfg.init == "red":
        channels = student.channels.tolist()
    objective = CompressObjective(student, teacher, cfg.loss)
    out = Path(cfg.out_dir)
    run_config = {"recipe": cfg.to_dict(), "data_stats": data.stats,
                  "trainable_params": sum(p.numel() for p in student.parameters())}
    trainer = Trainer(objective, data, cfg.train, out / "projected", env, run_config, _fingerprint(cfg),
                      tokenizer, name="compress")
    result = trainer.fit()
    if result.get("interrupted"):
        return {"interrupted": True, "steps": result["steps"]}
    summary = {k: v for k, v in result.items() if k not in ("history", "fingerprint", "model_dir")}
    summary.update(model_dir=str(out / "model"), d_s=cfg.d_s, teacher_d_model=teacher.config.d_model,
                   init=cfg.init, channels=channels,
                   importance=importance.tolist() if importance is not None else None)
    if env.is_main:
        trained = objective.load_student(out / "projected" / "model")  # also right when fit() found it done
        save_model(trained.merge(), out / "model", tokenizer,
                   extra={"trained_by": "thinkfast compress", "init": cfg.init, "teacher": cfg.teacher,
                          "compress": to_dict(cfg.loss) | {"d_s": cfg.d_s}})
        atomic_write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
    D.barrier(env)
    return summary
