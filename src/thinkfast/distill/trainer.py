"""One training loop for every stage: pretraining, SFT, MOHAWK 1-2-3 and KD.

It owns AdamW with a warmup-stable-decay or cosine schedule, gradient accumulation and
clipping, bf16 mixed precision, activation checkpointing, DDP/FSDP2, checkpoints, metrics and the
progress bar; the stage's objective (``stages.StageObjective``) says what the loss is and how the
student is saved.

A stage's directory:
    checkpoints/step_00000100/   model/ (a thinkfast model dir + run_config.yaml),
                                 state/ (model + optimizer, sharded: torch.distributed.checkpoint),
                                 trainer_state.json, rng_rank{r}.pt, run_config.yaml
    latest                       the name of the newest complete checkpoint
    metrics.jsonl                one JSON object per logged step / evaluation
    model/                       the final student (thinkfast model dir) + run_config.yaml
    result.json                  tokens, wall time, losses: written last, marks the stage done

Checkpoints are written to a temporary directory and renamed, then ``latest`` is replaced
atomically, so a kill at any moment leaves the previous checkpoint intact. state/ is written by
every rank, each its own shards, and read back by any number of ranks (DCP reshards; no rank reads
the whole optimizer). model/ is the full student in safetensors, gathered on rank 0. RNG state goes
through ``torch.save`` and comes back with ``torch.load(weights_only=True)``. Checkpoints of the
earlier single-file format (optimizer.pt, a full optimizer state dict) are still resumed.
A resumed run restores weights, optimizer, RNG and the data position (= the step: the batch
order is a function of it) and continues where it stopped (bit for bit on the same ranks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import CheckpointError, read_config
from ..config import atomic_write_text
from ..data.dataset import BatchSchedule, DataBundle
from ..data.packing import TokenBlocks, trim_right_padding
from .. import runtime
from ..runtime import UserError
from . import distributed as D
from .config import TrainConfig
from .metrics import TrainClock, peak_tflops, throughput
from .schedule import lr_factor, param_groups
from .stages import StageObjective

VOLATILE_TRAIN_KEYS = ("steps", "micro_batch_size", "log_every", "eval_every", "eval_batches", "save_every",
                       "keep_checkpoints", "progress", "tensorboard", "wandb", "wandb_project", "distributed",
                       "device", "threads", "stop_after", "activation_checkpointing", "peak_tflops",
                       "trim_padding")
"""Train settings that may change between a run and its resumption (they do not change what the
next step computes, except ``steps``, which moves the end of the schedule; activation
checkpointing recomputes the same values, and cutting padding leaves the losses as they are
to float rounding)."""

CHECKPOINT_FORMAT = 2
"""trainer_state.json "format": 2 = sharded state/ (DCP); absent = optimizer.pt (read only)."""
_STEP_DIR = re.compile(r"step_\d{8}")
log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """The loss or gradient became NaN/inf; a checkpoint of the last good state was written."""


def wandb_run_id(out_dir: str | os.PathLike, stage: str, suffix: str) -> str:
    """The W&B run id of one stage directory: unique per absolute directory and stage (two runs
    in different directories never share a run), stable across resumptions (``suffix`` is drawn
    once and stored in the directory)."""
    key = f"{Path(out_dir).resolve()}\0{stage}\0{suffix}".encode()
    slug = re.sub(r"[^A-Za-z0-9_-]", "-", stage)[:32]
    return f"{slug}-{hashlib.sha256(key).hexdigest()[:16]}"


def _check_safetensors(path: Path) -> None:
    """Refuse a missing or cut-short safetensors file (its header and size), reading no tensor."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {e}") from None


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _rng_state() -> dict[str, Any]:
    import numpy as np

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype("int64")),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), state["python_gauss"]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype("uint32"), state["numpy_pos"], has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete") from None
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{path} is corrupt or not a thinkfast checkpoint file: {e}") from None


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k, "<unset>"), new.get(k, "<unset>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: checkpoint {old!r} vs now {new!r}"]


class Trainer:
    """Run ``objective`` on ``data`` for ``cfg.steps`` optimizer steps in ``out_dir``.

    run_config: the resolved config, saved beside every checkpoint. fingerprint: the part of it
    a checkpoint must agree with to be resumed (the rest, e.g. logging, may change).
    """

    def __init__(self, objective: StageObjective, data: DataBundle, cfg: TrainConfig, out_dir: str | os.PathLike,
                 env: Optional[D.DistEnv] = None, run_config: Optional[dict[str, Any]] = None,
                 fingerprint: Optional[dict[str, Any]] = None, tokenizer: Any = None, name: str = "train"):
        self.obj, self.data, self.cfg = objective, data, cfg
        self.out = Path(out_dir)
        self.env = env or D.DistEnv()
        self.run_config = run_config or {"train": cfg.__dict__}
        self.fingerprint = fingerprint if fingerprint is not None else self._default_fingerprint()
        self.tokenizer, self.name = tokenizer, name
        W = self.env.world_size
        self.micro = cfg.micro_batch_size or max(1, cfg.batch_size // W)
        if cfg.batch_size % (self.micro * W):
            raise UserError(f"train.batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
                            f"{self.micro} x {W} processes")
        self.accum = cfg.batch_size // (self.micro * W)
        self.batches = BatchSchedule(len(data.train), cfg.batch_size, cfg.seed)
        self.step, self.tokens, self.prev_wall = 0, 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.model: Any = None
        self._compiled: Any = None  # train.compile: torch.compile of self.model (training steps only)
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self._writers: list[Any] = []
        self._closers: list[Any] = []
        self.clock = TrainClock()
        self.flops_per_token = float(objective.flops_per_token())
        dev = self.env.device
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" and torch.cuda.is_available() else None
        self.peak_tflops = peak_tflops(name, cfg.bf16, cfg.peak_tflops)

    def _default_fingerprint(self) -> dict[str, Any]:
        return {k: v for k, v in self.cfg.__dict__.items() if k not in VOLATILE_TRAIN_KEYS}

    # --- set-up ------------------------------------------------------------------------------
    def teacher_dtype(self) -> torch.dtype:
        """train.teacher_dtype; auto = bf16 on an accelerator when train.bf16 is on, else fp32
        (on a CPU a bf16 teacher is slower, so only when asked)."""
        c = self.cfg
        if c.teacher_dtype == "auto":
            return torch.bfloat16 if c.bf16 and self.env.device.type != "cpu" else torch.float32
        return torch.bfloat16 if c.teacher_dtype == "bf16" else torch.float32

    def build(self) -> None:
        """(Re)wrap the objective and build a fresh optimizer over its trainable parameters."""
        if self.model is not None and self.env.enabled and self.cfg.distributed == "fsdp":
            # fully_shard cannot be re-applied to a root it already sharded.
            raise UserError("a hybrid_schedule conversion under FSDP is not supported; use "
                            "train.distributed=ddp, or one stage per step of the schedule")
        self.obj.to(self.env.device)
        self.obj.hold_teacher(self.teacher_dtype())
        if self.cfg.activation_checkpointing:
            D.checkpoint_activations(self.obj.checkpoint_units())
        self.model = D.wrap(self.obj, self.env, self.cfg.distributed, self.obj.fsdp_units(), bf16=self.cfg.bf16)
        # dynamic=None: a shape that changes between steps (the chunked losses' count of loss
        # positions) is made symbolic after its first recompile, not recompiled at every value.
        self._compiled = torch.compile(self.model, dynamic=None) if self.cfg.compile else None
        params = self.obj.trainable_parameters()  # after wrapping: FSDP2 replaced them by DTensors
        groups = param_groups(params, dict(self.obj.student.named_parameters()), self.cfg.weight_decay,
                              self.cfg.lr_scale)
        # Kept here, not read back from the groups: a resumed optimizer's groups are the saved ones.
        self._lr_scales = [g.pop("lr_scale") for g in groups]
        self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas), eps=self.cfg.eps)

    def _ckpt_dir(self, step: int) -> Path:
        return self.out / "checkpoints" / f"step_{step:08d}"

    def _latest(self) -> Optional[Path]:
        pointer = self.out / "latest"
        if not pointer.exists():
            return None
        path = self.out / "checkpoints" / pointer.read_text().strip()
        if not path.is_dir():
            raise CheckpointError(f"{pointer} names {path}, which does not exist; move {self.out} aside "
                                  f"or restore the checkpoint")
        return path

    def _load_resume(self, ckpt: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        """Read and validate everything a resume needs before anything is written: (trainer
        state, (student to adopt or None, full optimizer state of the old format or None), RNG).
        The sharded state/ is read later, into the built model (``_resume``)."""
        try:
            state = json.loads((ckpt / "trainer_state.json").read_text())
            step = int(state["step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{ckpt}/trainer_state.json is missing or corrupt: {e}") from None
        saved_fp = state.get("fingerprint")
        diffs = _diff(saved_fp, json.loads(json.dumps(self.fingerprint)))
        if diffs:
            raise CheckpointError(f"{ckpt} was written by an incompatible configuration; refusing to resume "
                                  f"(use another out_dir, or restore the settings): " + "; ".join(diffs))
        if step > self.cfg.steps:
            raise CheckpointError(f"{ckpt} is at step {step}, beyond train.steps={self.cfg.steps}")
        sharded = state.get("format") == CHECKPOINT_FORMAT
        cfg, _ = read_config(ckpt / "model")  # CheckpointError when missing or corrupt
        have, want = cfg.to_dict(), self.obj.student.config.to_dict()
        have_p, want_p = have.pop("layer_pattern"), want.pop("layer_pattern")
        diffs = _diff(have, want)
        if diffs or (have_p != want_p and not self.obj.architecture_may_change()):
            raise CheckpointError(f"{ckpt}/model does not fit the student: "
                                  + "; ".join(diffs or [f"layer_pattern {have_p} vs {want_p}"]))
        _check_safetensors(ckpt / "model" / "model.safetensors")
        # The old format's weights, or a student of another layer pattern (a stepwise hybrid
        # schedule had converted more layers), come from model/; else state/ has them.
        model = self.obj.load_student(ckpt / "model") if not sharded or have_p != want_p else None
        if sharded:
            if not (ckpt / "state" / ".metadata").is_file():
                raise CheckpointError(f"{ckpt}/state/.metadata is missing: the checkpoint is incomplete")
            optim = None
        else:
            optim = _torch_load(ckpt / "optimizer.pt")
        rng_path = ckpt / f"rng_rank{self.env.rank}.pt"
        rng = _torch_load(rng_path if rng_path.exists() else ckpt / "rng_rank0.pt")
        return state, (model, optim), rng

    def _resume(self, ckpt: Path) -> None:
        state, (model, optim), rng = self._load_resume(ckpt)
        if model is not None and model.config.layer_pattern != self.obj.student.config.layer_pattern:
            self.obj.adopt_student(model)
        elif model is not None:
            self.obj.student.load_state_dict(model.state_dict())
        self.build()
        if optim is None:
            try:
                D.load_sharded(self.model, self.optimizer, ckpt / "state")
            except Exception as e:  # DCP wraps every failure (missing files, shapes) in its own types
                raise CheckpointError(f"{ckpt}/state does not fit this model and optimizer, or is "
                                      f"corrupt: {str(e).strip()[:2000]}") from None
        else:
            try:
                D.load_optimizer_state(self.model, self.optimizer, optim)
            except (KeyError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"{ckpt}/optimizer.pt does not fit this model's parameters: {e}") from None
        _set_rng_state(rng)
        self.step, self.tokens = int(state["step"]), int(state.get("tokens", 0))
        self.prev_wall = float(state.get("wall_s", 0.0))
        self.history = [h for h in state.get("history", [])]
        if state.get("samples_consumed") != self.step * self.cfg.batch_size:
            raise CheckpointError(f"{ckpt}: data position {state.get('samples_consumed')} does not match "
                                  f"step {self.step} x batch {self.cfg.batch_size}")

    # --- checkpoints ---------------------------------------------------------------------------
    def _student_state(self) -> Optional[dict[str, torch.Tensor]]:
        """The student's full state dict on rank 0 (None elsewhere). Collective."""
        msd, _ = D.full_state_dicts(self.model, None)
        if not self.env.is_main:
            return None
        prefix = "student."
        return {k[len(prefix):]: v for k, v in msd.items() if k.startswith(prefix)}

    def save_checkpoint(self, wall_s: float) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory."""
        final = self._ckpt_dir(self.step)
        full = self._student_state()
        tmp = None
        if self.env.is_main:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        tmp = Path(D.broadcast_object(str(tmp), self.env))
        D.save_sharded(self.model, self.optimizer, tmp / "state")  # every rank its shards
        torch.save(_rng_state(), tmp / f"rng_rank{self.env.rank}.pt")
        D.barrier(self.env)
        if self.env.is_main:
            self.obj.save_student(tmp / "model", full, self.tokenizer,
                                  extra={"trained_by": f"thinkfast distill ({self.name})", "step": self.step})
            atomic_write_text(tmp / "model" / "run_config.yaml", _yaml(self.run_config))
            trainer_state = {"format": CHECKPOINT_FORMAT, "step": self.step,
                             "samples_consumed": self.step * self.cfg.batch_size,
                             "tokens": self.tokens, "wall_s": wall_s, "world_size": self.env.world_size,
                             "fingerprint": self.fingerprint, "history": self.history[-50:]}
            atomic_write_text(tmp / "trainer_state.json", json.dumps(trainer_state, indent=1) + "\n")
            atomic_write_text(tmp / "run_config.yaml", _yaml(self.run_config))
            if final.exists():  # same step saved before (e.g. NaN right after a save): keep the old one
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
            atomic_write_text(self.out / "latest", final.name + "\n")
            self._prune()
        D.barrier(self.env)
        return final

    def _prune(self) -> None:
        """Keep the newest ``keep_checkpoints``; only directories this trainer writes (named
        step_NNNNNNNN, holding a trainer_state.json) are counted or deleted."""
        keep = max(1, self.cfg.keep_checkpoints)
        done = sorted(p for p in (self.out / "checkpoints").glob("step_*")
                      if _STEP_DIR.fullmatch(p.name) and p.is_dir() and (p / "trainer_state.json").is_file())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    # --- metrics -----------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.env.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for w in self._writers:
            w(record)

    def _open_writers(self) -> None:
        if not self.env.is_main:
            return
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.tensorboard=true needs the tensorboard package") from None
            tb = SummaryWriter(str(self.out / "tensorboard"))
            self._writers.append(lambda r: [tb.add_scalar(k, v, r["step"]) for k, v in r.items()
                                            if isinstance(v, (int, float)) and k != "step"])
            self._closers.append(tb.close)
        if self.cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise UserError("train.wandb=true needs the wandb package") from None
            run = wandb.init(project=self.cfg.wandb_project, name=f"{self.out.parent.name}/{self.out.name}",
                             config=self.run_config, resume="allow", id=self._wandb_id())
            self._writers.append(lambda r: run.log({k: v for k, v in r.items() if v is not None}, step=r["step"]))
            self._closers.append(run.finish)

    def _wandb_id(self) -> str:
        """This stage directory's W&B run id (``wandb_run_id``); its random part is drawn on the
        first run and kept in ``wandb_id.json``, so a resumed run continues the same W&B run."""
        path = self.out / "wandb_id.json"
        try:
            suffix = json.loads(path.read_text())["suffix"]
        except (OSError, ValueError, KeyError, TypeError):
            suffix = secrets.token_hex(4)
        run_id = wandb_run_id(self.out, self.name, suffix)
        atomic_write_text(path, json.dumps({"suffix": suffix, "id": run_id}) + "\n")
        return run_id

    def _close_writers(self) -> None:
        closers, self._closers, self._writers = self._closers, [], []
        for close in closers:
            close()

    def _truncate_metrics(self) -> None:
        """Drop metric lines past the resumed step (written after the last checkpoint)."""
        path = self.out / "metrics.jsonl"
        if self.env.is_main and path.exists():
            kept = []
            for ln in path.read_text().splitlines():
                try:
                    if json.loads(ln)["step"] <= self.step:
                        kept.append(ln)
                except (ValueError, KeyError, TypeError):  # a line cut short by the kill
                    continue
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    # --- one step ----------------------------------------------------------------------------------
    def _autocast(self):
        if not self.cfg.bf16:
            return nullcontext()
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.env.device, non_blocking=True) for k, v in batch.items()}

    def _batch(self, blocks: TokenBlocks, index: list[int]) -> dict[str, torch.Tensor]:
        """Blocks ``index`` as a batch, cut to its real length (``train.trim_padding``) unless the
        objective's loss counts padded positions."""
        b = blocks.batch(index)
        if self.cfg.trim_padding and self.obj.trims_padding:
            b = trim_right_padding(b, self.cfg.trim_padding)
        return b

    def _forward_sums(self, blocks: TokenBlocks, micro: list[list[int]], train: bool):
        """Over micro-batches, backward when training, each micro-batch's loss weighted by its
        share of the global units: (sums, keys, units, tokens) with ``sums`` a device tensor
        [loss * units, metric * units for metric in keys], summed over processes. The losses stay
        on the device: no host sync per micro-batch."""
        # An empty slice (eval, uneven shards) still runs one forward -- FSDP ranks move in
        # lockstep -- on block 0 with weight 0.
        batches = [self._batch(blocks, ix or [0]) for ix in micro]
        units = [self.obj.units(b) if ix else 0 for b, ix in zip(batches, micro)]
        tokens = sum(int(b["valid"].sum()) for b, ix in zip(batches, micro) if ix)
        total_units, tokens = D.all_reduce_sum([sum(units), tokens], self.env)
        dev = self.env.device
        loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
        metric_sums: dict[str, torch.Tensor] = {}
        for j, (b, n) in enumerate(zip(batches, units)):
            b = self._to_device(b)
            sync = j == len(batches) - 1
            ctx = D.no_sync(self.model, sync) if train else torch.no_grad()
            with ctx, self._autocast():
                loss, metrics = self._train_forward(b) if train else self.model(b)
            if train:
                # DDP/FSDP average gradients over W processes; the factor W makes it a sum.
                (loss * (n / max(total_units, 1)) * self.env.world_size).backward()
            loss_sum = loss_sum + loss.detach().float() * n
            for k, v in metrics.items():
                v = torch.as_tensor(v, device=dev).detach().float()
                metric_sums[k] = metric_sums[k] + v * n if k in metric_sums else v * n
        keys = sorted(metric_sums)
        sums = torch.stack([loss_sum] + [metric_sums[k] for k in keys])
        sums = D.all_reduce_tensor(sums, self.env)
        return sums, keys, max(total_units, 1), int(tokens)

    def _train_forward(self, batch: dict[str, torch.Tensor]):
        """The objective's training forward: compiled under train.compile, else eager. A backend
        that fails to compile (inductor raises BackendCompilerFailed before anything of the step
        has run: no gradient is accumulated yet) is given up for the eager forward, with a warning."""
        if self._compiled is None:
            return self.model(batch)
        from torch._dynamo.exc import BackendCompilerFailed

        try:
            return self._compiled(batch)
        except BackendCompilerFailed as e:
            log.warning("%s: train.compile failed (%s); training on without compiling",
                        self.name, str(e).strip().splitlines()[0][:500])
            self._compiled = None
            return self.model(batch)

    def _forward_weighted(self, blocks: TokenBlocks, micro: list[list[int]], train: bool):
        """(mean loss, mean metrics, tokens) over the micro-batches (one host sync)."""
        sums, keys, denom, tokens = self._forward_sums(blocks, micro, train)
        values = sums.tolist()
        return values[0] / denom, {k: v / denom for k, v in zip(keys, values[1:])}, tokens

    def _clip(self) -> torch.Tensor:
        """Clip each clip group; the squared total gradient norm, on the device."""
        sq = torch.zeros((), dtype=torch.float32, device=self.env.device)
        for group in self.obj.clip_groups():  # per layer in stages 1-2: layers stay independent
            n = torch.nn.utils.clip_grad_norm_(group, self.cfg.clip_grad or float("inf"))
            n = n.full_tensor() if hasattr(n, "full_tensor") else n
            sq = sq + n.detach().float().to(sq.device) ** 2
        return sq

    def train_step(self) -> dict[str, Any]:
        c = self.cfg
        if self.obj.on_step(self.step):
            self.build()
        self.model.train()
        micro = self.batches.micro_batches(self.step, self.env.rank, self.env.world_size, self.micro)
        sums, keys, denom, tokens = self._forward_sums(self.data.train, micro, train=True)
        # One host sync per optimizer step (not per micro-batch): the loss, the metrics and the
        # gradient norm in one transfer, needed before the update for the non-finite guard.
        values = torch.cat([sums, self._clip().reshape(1)]).tolist()
        loss, gnorm = values[0] / denom, math.sqrt(values[-1])
        metrics = {k: v / denom for k, v in zip(keys, values[1:-1])}
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            self.optimizer.zero_grad(set_to_none=True)
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            path = self.save_checkpoint(self.prev_wall)
            raise NonFiniteLossError(
                f"{self.name}: the {what} is {loss if what == 'loss' else gnorm} at step {self.step + 1}; "
                f"the weights before that step are saved in {path}. Lower train.lr, check the data, or "
                f"set train.clip_grad")
        lr = c.lr * lr_factor(self.step, c.steps, c.schedule, c.warmup_steps, c.decay_fraction, c.min_lr_ratio)
        for g, scale in zip(self.optimizer.param_groups, self._lr_scales):
            g["lr"] = lr * scale
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        D.synchronize(self.env)  # the step's time includes its update (accelerators run async)
        self.step += 1
        self.tokens += tokens
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": gnorm, "tokens": self.tokens, **metrics}

    @torch.no_grad()
    def evaluate(self) -> Optional[float]:
        blocks = self.data.eval
        if blocks is None or len(blocks) == 0:
            return None
        self.model.eval()
        W, r = self.env.world_size, self.env.rank
        n = min(len(blocks), self.cfg.eval_batches * self.micro * W)
        mine = list(range(n))[r::W]
        iters = -(-(-(-n // W)) // self.micro)  # the same count on every rank (FSDP needs lockstep)
        micro = [mine[i * self.micro:(i + 1) * self.micro] for i in range(iters)]
        loss, _, _ = self._forward_weighted(blocks, micro, train=False)
        return loss

    # --- the loop ----------------------------------------------------------------------------------
    def _finished(self) -> Optional[dict[str, Any]]:
        path = self.out / "result.json"
        if not path.exists():
            return None
        result = json.loads(path.read_text())
        diffs = _diff(result.get("fingerprint"), json.loads(json.dumps(self.fingerprint)))
        if diffs:
            raise UserError(f"{self.out} holds a finished run of another configuration; refusing to overwrite it "
                            f"(choose another out_dir): " + "; ".join(diffs))
        return result if result.get("steps", 0) >= self.cfg.steps else None

    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (resuming from the latest checkpoint) and return the result."""
        done = self._finished()
        if done is not None:
            return done
        ckpt = self._latest()
        fp_path = self.out / "fingerprint.json"
        if fp_path.exists() and _diff(json.loads(fp_path.read_text()), json.loads(json.dumps(self.fingerprint))):
            raise UserError(f"{self.out} belongs to a run of another configuration; refusing to touch it "
                            f"(choose another out_dir): "
                            + "; ".join(_diff(json.loads(fp_path.read_text()), json.loads(json.dumps(self.fingerprint)))))
        if ckpt is not None:
            self._resume(ckpt)
        else:
            self.build()
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(fp_path, json.dumps(self.fingerprint, indent=1) + "\n")
            for stale in (self.out / "checkpoints").glob(".tmp-*"):  # left by a killed save
                shutil.rmtree(stale, ignore_errors=True)
            atomic_write_text(self.out / "run_config.yaml", _yaml(self.run_config))
        self._truncate_metrics()
        self._open_writers()
        try:
            return self._loop()
        finally:
            self._close_writers()  # each stage's W&B run ends with the stage

    def _progress(self):
        if not (self.cfg.progress and self.env.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.steps, initial=self.step, desc=self.name, unit="step", dynamic_ncols=True,
                    position=runtime.PROGRESS_POSITION)

    def _throughput(self) -> dict[str, Any]:
        """Time per step, tokens/s and MFU over the steps since the last logged record, counting
        training time only (``self.clock``: evaluation and checkpoints are outside it)."""
        seconds, steps, tokens = self.clock.window()
        out = throughput(tokens, seconds, steps, self.env.world_size, self.flops_per_token, self.peak_tflops)
        out["train_time_s"] = self.clock.total
        return out

    def _loop(self) -> dict[str, Any]:
        c = self.cfg
        bar, t0 = self._progress(), time.perf_counter()
        start_step, ran = self.step, 0
        eval_loss = None
        try:
            while self.step < c.steps:
                before = self.tokens
                with self.clock.train():
                    rec = self.train_step()
                self.clock.count(1, self.tokens - before)
                ran += 1
                last = self.step == c.steps
                if self.step % max(1, c.log_every) == 0 or last or (c.eval_every and self.step % c.eval_every == 0):
                    rec.update(self._throughput())
                rec["wall_s"] = self.prev_wall + time.perf_counter() - t0
                if c.eval_every and self.step % c.eval_every == 0 and not last:
                    rec["eval_loss"] = eval_loss = self.evaluate()
                if self.step % max(1, c.log_every) == 0 or last or "eval_loss" in rec:
                    self._log(rec)
                if bar is not None:
                    bar.update(1)
                    if "tokens_per_s_per_device" in rec:
                        post = {"loss": f"{rec['loss']:.4g}", "tok_s_dev": f"{rec['tokens_per_s_per_device']:.0f}"}
                        if rec["mfu"] is not None:
                            post["mfu"] = f"{rec['mfu']:.1%}"
                        bar.set_postfix(post)
                if c.save_every and self.step % c.save_every == 0 and not last:
                    self.save_checkpoint(rec["wall_s"])
                if c.stop_after is not None and ran >= c.stop_after and not last:
                    return {"interrupted": True, "steps": self.step, "history": self.history}
        except KeyboardInterrupt:
            if self.step > start_step:
                self.save_checkpoint(self.prev_wall + time.perf_counter() - t0)
            raise
        finally:
            if bar is not None:
                bar.close()
        wall = self.prev_wall + time.perf_counter() - t0
        eval_loss = self.evaluate()
        if eval_loss is not None:
            self._log({"step": self.step, "eval_loss": eval_loss})
        if self.step > 0 and not self._ckpt_dir(self.step).exists():
            self.save_checkpoint(wall)
        return self._finish(wall, eval_loss)

    def _finish(self, wall: float, eval_loss: Optional[float]) -> dict[str, Any]:
        train_recs = [h for h in self.history if "loss" in h]
        result = {
            "stage": self.name, "steps": self.step, "tokens": self.tokens, "wall_s": wall,
            "final_loss": train_recs[-1]["loss"] if train_recs else None,
            "eval_loss": eval_loss, "model_dir": str(self.out / "model"),
            "fingerprint": self.fingerprint,
        }
        if self.env.is_main:
            final = self._ckpt_dir(self.step) / "model"
            tmp = self.out / f".tmp-model-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(final, tmp)
            if (self.out / "model").exists():  # an earlier, shorter run of this same config
                shutil.rmtree(self.out / "model")
            os.replace(tmp, self.out / "model")
            atomic_write_text(self.out / "result.json", json.dumps(result, indent=2) + "\n")
        D.barrier(self.env)
        result["history"] = self.history
        return result
