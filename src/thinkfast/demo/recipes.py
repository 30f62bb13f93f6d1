"""The demo's models: the shipped teacher (or the recipe that retrains it), the two students'
distillation recipes (the configs `thinkfast distill` runs), and the hybrid's attention layers
(what `thinkfast select-layers --method loo` computes). Why each recipe is what it is:
docs/demo-study.md, docs/llamba-decay-bias.md and docs/layer-selection.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import atomic_directory
from ..runtime import UserError
from .config import SHIPPED_TEACHER, TASK_FORMAT, TEACHER_RECIPE, DemoConfig, teacher_train_problems

# --- the teacher --------------------------------------------------------------------------------

def shipped_teacher_task() -> dict[str, Any]:
    """The synthetic-task config stored beside the shipped teacher."""
    cfg = SHIPPED_TEACHER / "config.json"
    try:
        meta = json.loads(cfg.read_text())
        return meta["demo_task"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise UserError(f"the shipped demo teacher at {SHIPPED_TEACHER} is missing or corrupt ({e}); "
                        f"run `thinkfast demo --retrain-teacher` to train it again") from None


def shipped_teacher_digest() -> Optional[str]:
    """SHA-256 of the shipped teacher's weights (None when missing: the teacher stage says so)."""
    import hashlib

    try:
        return hashlib.sha256((SHIPPED_TEACHER / "model.safetensors").read_bytes()).hexdigest()
    except OSError:
        return None


def load_shipped_teacher():
    from ..checkpoint import load_model, load_tokenizer

    try:
        return load_model(SHIPPED_TEACHER), load_tokenizer(SHIPPED_TEACHER)
    except UserError as e:
        raise UserError(f"the shipped demo teacher is missing or corrupt: {e}; "
                        f"run `thinkfast demo --retrain-teacher` to train it again") from None


def teacher_recipe(out_dir: Path, tokenizer_dir: Path, train_path: Path):
    """The DistillConfig that trains the demo teacher: the YAML `thinkfast distill` runs."""
    from ..distill.config import load_config

    return load_config(TEACHER_RECIPE, [f"out_dir={out_dir}", f"tokenizer={tokenizer_dir}",
                                        f"data.train={train_path}"])

def teacher_stage(out: Path, cfg: DemoConfig, task_meta: dict[str, Any], syn_cfg: Any, train_path: Path,
                  retrain: bool) -> dict[str, Any]:
    """OUT/teacher/model: a copy of the shipped teacher, or with ``retrain`` one trained by
    ``teacher_recipe`` (on its own problem mix when the task has ``teacher_train`` fields, with a
    tokenizer built for the task in OUT/tokenizer)."""
    from ..data import synthetic as syn

    dest = out / "teacher" / "model"
    if retrain:
        from ..data.tokenizer import build_tokenizer
        from ..distill.recipe import run_recipe

        tok = build_tokenizer(texts=syn.tokenizer_texts(syn_cfg))
        tok.save_pretrained(str(out / "tokenizer"))
        teacher_train = train_path
        if task_meta.get("teacher_train"):
            teacher_train = out / "data" / "teacher_train.jsonl"
            syn.write_jsonl(teacher_train_problems(task_meta, cfg.n_train), teacher_train)
        summary = run_recipe(teacher_recipe(out / "teacher", out / "tokenizer", teacher_train))
        return {"source": "retrained", "stages": summary["stages"]}
    load_shipped_teacher()  # a clear error when missing or corrupt
    with atomic_directory(dest) as tmp:
        shutil.copytree(SHIPPED_TEACHER, tmp, dirs_exist_ok=True)
    return {"source": str(SHIPPED_TEACHER)}


def _student_recipe(cfg: DemoConfig, out_dir: Path, teacher_dir: Path, train: Path, keep: float, kind: str,
                    stages: list[dict[str, Any]], mamba: Optional[dict[str, Any]] = None):
    from ..distill.config import build_config

    return build_config({
        "out_dir": str(out_dir), "teacher": str(teacher_dir),
        "student": {"init": "teacher", "keep": keep, "kind": kind, "seed": cfg.seed, "mamba": mamba or {}},
        "data": {"train": str(train), **TASK_FORMAT, "loss_on": "response", "seq_len": cfg.seq_len,
                 "eval_fraction": 0.02, "seed": cfg.seed},
        "train": {"batch_size": cfg.batch_size, "lr": cfg.lr, "schedule": "cosine", "warmup_steps": 10,
                  "clip_grad": 1.0, "eval_every": 0, "save_every": 100, "seed": cfg.seed,
                  "progress": True, "bf16": _bf16(cfg)},
        "stages": stages,
    })


def _bf16(cfg: DemoConfig) -> bool:
    if cfg.train_precision == "auto":
        raise ValueError("DemoConfig.train_precision is still 'auto': build recipes from cfg.resolved()")
    return cfg.train_precision == "bf16"


def llamba_recipe(cfg: DemoConfig, out_dir: Path, teacher_dir: Path, train: Path):
    m, h, k = cfg.mohawk_steps
    return _student_recipe(cfg, out_dir, teacher_dir, train, 0.0, "discrete", [
        {"name": "matrix", "objective": "matrix", "seq_len": min(64, cfg.seq_len), "train": {"steps": m}},
        {"name": "hidden", "objective": "hidden", "train": {"steps": h}},
        {"name": "kd", "objective": "kd", "loss": {"kind": "forward"},
         "train": {"steps": k, "lr": cfg.llamba_kd_lr}},
        {"name": "sft", "objective": "lm", "train": {"steps": cfg.llamba_sft_steps, "lr": cfg.lr / 3}},
    ], mamba={"conv_kernel": cfg.llamba_conv_kernel,
              **({"decay_bias": cfg.llamba_decay_bias} if cfg.llamba_decay_bias else {})})


def select_hybrid_layers(cfg: DemoConfig, teacher_dir: Path, train: Path, out_path: Path,
                         log: Callable[[str], None]) -> dict[str, Any]:
    """The hybrid's attention layers: the half of the teacher's layers whose leave-one-out KL is
    largest (``thinkfast select-layers --method loo``), measured on train rows; how it compares
    with kl-guided selection and even spacing: docs/layer-selection.md."""
    from ..checkpoint import load_model, load_tokenizer
    from ..data.dataset import DataConfig, load_data
    from ..select import layers as S

    teacher = load_model(teacher_dir).eval()
    data = DataConfig(train=str(train), **TASK_FORMAT, loss_on="response", seq_len=cfg.seq_len,
                      max_examples=cfg.select_rows, eval_fraction=0.5, seed=cfg.seed)
    bundle = load_data(data, load_tokenizer(teacher_dir), teacher.config.vocab_size)
    result = S.loo_scores(teacher, bundle.eval, "mamba2", cfg.seed)
    k = S.keep_count(cfg.hybrid_keep, teacher.config.n_layers)
    chosen, notes = S.choose_layers(result.scores, k)
    doc = S.layers_document(teacher.config.n_layers, chosen, result, notes, keep=cfg.hybrid_keep, method="loo")
    S.write_layers_json(out_path, doc)
    log(f"hybrid keeps attention layers {chosen} (leave-one-out KL "
        + ", ".join("-" if v is None else f"{v:.3g}" for v in result.scores) + ")")
    return doc


def hybrid_recipe(cfg: DemoConfig, out_dir: Path, teacher_dir: Path, train: Path, keep: Any = 0.5):
    return _student_recipe(cfg, out_dir, teacher_dir, train, keep, "mamba2", [
        {"name": "kd", "objective": "kd", "loss": {"kind": "reverse"}, "train": {"steps": cfg.hybrid_kd_steps}},
        {"name": "sft", "objective": "lm", "train": {"steps": cfg.hybrid_sft_steps, "lr": cfg.lr / 3}},
    ])



def distil(recipe) -> list[dict[str, Any]]:
    """One student's recipe; returns its stage summaries."""
    from ..distill.recipe import run_recipe

    return run_recipe(recipe)["stages"]

