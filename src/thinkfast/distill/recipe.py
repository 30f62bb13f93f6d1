"""A recipe end to end: load the teacher and data once, then run each stage in its own directory,
each stage starting from the previous stage's student.

    OUT/1-<stage>/ ... OUT/k-<stage>/   one trainer directory per stage (see trainer.py)
    OUT/model/                           the last stage's student
    OUT/result.json                      per-stage tokens, wall time and losses

Re-running the same command skips finished stages and resumes the interrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import load_model, load_tokenizer
from ..config import ConfigError, ModelConfig, atomic_directory, atomic_write_text, to_dict
from ..convert.from_attention import student_from_teacher
from ..data.dataset import DataBundle, DataConfig, load_data
from ..data.store import STORE_PREFIX, store_digest
from ..models.lm import LanguageModel
from ..runtime import UserError
from . import distributed as D
from .config import DistillConfig, StageConfig, StudentConfig, TrainConfig, resolve_train
from .stages import build_objective, describe
from .trainer import VOLATILE_TRAIN_KEYS, Trainer


def new_model(spec: Any, seed: int, vocab_size: Optional[int]) -> LanguageModel:
    """A freshly initialised model from a preset name or a ModelConfig mapping (``preset`` key
    allowed); vocab_size defaults to the tokenizer's. Seeded without touching the global RNG."""
    if spec is None:
        raise UserError("student.init=new needs student.model (a preset name or a ModelConfig mapping)")
    data = {"preset": spec} if isinstance(spec, str) else dict(spec)
    try:
        base = ModelConfig.from_name(data.pop("preset")).to_dict() if "preset" in data else {}
        base.update(data)
        if "vocab_size" not in data and vocab_size:
            base["vocab_size"] = vocab_size
        cfg = ModelConfig.from_dict(base)
    except ConfigError as e:
        raise UserError(f"student.model: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LanguageModel(cfg)


def initial_student(cfg: DistillConfig, teacher: Optional[LanguageModel], vocab_size: Optional[int]) -> LanguageModel:
    s = cfg.student
    if s.init == "teacher":
        if teacher is None:
            raise UserError("student.init=teacher needs teacher=PATH")
        return student_from_teacher(teacher, s.keep, s.kind, s.seed, s.mamba or None, s.mixer_init, s.conv_init)
    if s.init == "new":
        return new_model(s.model, s.seed, vocab_size)
    return load_model(s.init)


def _tokenizer(cfg: DistillConfig):
    for path in (cfg.tokenizer, cfg.teacher, None if cfg.student.init in ("teacher", "new") else cfg.student.init):
        if path:
            tok = load_tokenizer(path)
            if tok is not None or path == cfg.tokenizer:
                if tok is None:
                    raise UserError(f"no tokenizer found in {path}")
                return tok
    return None


def _non_default(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the entries equal to ``defaults`` (recursively), so that a setting added
    to the code later, at its default, does not make older runs look incompatible."""
    out = {}
    for k, v in values.items():
        d = defaults.get(k, _MISSING)
        if isinstance(v, dict) and isinstance(d, dict):
            v = _non_default(v, d)
            if not v:
                continue
        elif v == d:
            continue
        out[k] = v
    return out


_MISSING = object()


def _fingerprint(cfg: DistillConfig, i: int, seq_len: int) -> dict[str, Any]:
    """What stage ``i``'s checkpoints must agree with to be resumed: every setting that changes
    what the stage computes (stage i and the stages before it), written without defaults."""
    full = cfg.to_dict()

    def stage_fp(k: int) -> dict[str, Any]:
        st = dict(full["stages"][k])
        st.pop("train")
        tc = {key: v for key, v in resolve_train(cfg, k).__dict__.items()
              if key not in VOLATILE_TRAIN_KEYS or (k < i and key == "steps")}
        return {**_non_default(st, to_dict(StageConfig())), "train": _non_default(tc, to_dict(TrainConfig()))}

    fp = {"teacher": cfg.teacher, "tokenizer": cfg.tokenizer,
          "student": _non_default(full["student"], to_dict(StudentConfig())),
          "data": _non_default(dict(full["data"], seq_len=seq_len), to_dict(DataConfig())),
          "earlier_stages": [stage_fp(k) for k in range(i)], "stage": stage_fp(i)}
    stores = {key: store_digest(src) for key, src in (("train", cfg.data.train), ("eval", cfg.data.eval))
              if isinstance(src, str) and src.startswith(STORE_PREFIX)}
    if stores:  # a store rewritten in place under the same name is other data
        fp["stores"] = stores
    return fp


def run_recipe(cfg: DistillConfig, env: Optional[D.DistEnv] = None) -> dict[str, Any]:
    """Run every stage of ``cfg``; returns {"stages": [result, ...], "model_dir": ...}."""
    env = env or D.init_distributed(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.out_dir)
    teacher = load_model(cfg.teacher, device=env.device) if cfg.teacher else None
    tokenizer = _tokenizer(cfg)
    bundles: dict[int, DataBundle] = {}
    results, prev = [], None
    for i, stage in enumerate(cfg.stages):
        tc = resolve_train(cfg, i)
        seq_len = stage.seq_len or cfg.data.seq_len
        student = initial_student(cfg, teacher, len(tokenizer) if tokenizer is not None else None) \
            if prev is None else load_model(prev)
        if seq_len not in bundles:
            dcfg = type(cfg.data)(**{**cfg.data.__dict__, "seq_len": seq_len})
            bundles[seq_len] = load_data(dcfg, tokenizer, student.config.vocab_size)
        if seq_len > student.config.max_seq_len:
            raise UserError(f"stage {stage.name}: seq_len {seq_len} exceeds the model's context "
                            f"{student.config.max_seq_len}")
        objective = build_objective(stage, student, teacher, cfg.student.kind, cfg.student.seed)
        run_config = {"recipe": cfg.to_dict(), "stage_index": i, "stage": stage.name, "train": tc.__dict__,
                      "objective": describe(objective), "data_stats": bundles[seq_len].stats}
        trainer = Trainer(objective, bundles[seq_len], tc, out / f"{i + 1}-{stage.name}", env, run_config,
                          _fingerprint(cfg, i, seq_len), tokenizer, name=stage.name)
        result = trainer.fit()
        results.append(result)
        if result.get("interrupted"):
            return {"stages": results, "interrupted": True}
        prev = out / f"{i + 1}-{stage.name}" / "model"
    summary = {"stages": [{k: v for k, v in r.items() if k not in ("history", "fingerprint")} for r in results],
               "model_dir": str(out / "model")}
    if env.is_main:
        with atomic_directory(out / "model") as tmp:  # the last stage's model, replaced whole
            shutil.copytree(prev, tmp, dirs_exist_ok=True)
        atomic_write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
    D.barrier(env)
    summary["results"] = results
    return summary
