"""Layer-importance scores, and the choice of the attention layers a hybrid keeps.

MambaInLlama keeps attention evenly spaced. Apriel-H1 (ServiceNow) ranks layers by leaving each
out; "Distilling to Hybrid Attention Models via KL-Guided Layer Selection" restores one softmax
layer at a time into an all-linear student and ranks by the distillation KL. Each method here is
one number per teacher layer, higher = keep it as attention:

    uniform    1 on the layers distill's even spacing keeps for this k, 0 elsewhere (the baseline)
    loo        KL(teacher || model) on held-out text, where the model is the teacher with exactly
               layer i replaced by its attention-initialised Mamba mixer; no training
    kl-guided  -KL(teacher || student) on held-out text after a short end-to-end distillation of a
               student that is all Mamba except layer i (the teacher's attention); equal steps and
               tokens for every i. The runs are independent ``run_recipe`` runs, one directory each,
               so they resume, and under torchrun rank r takes candidates r, r+W, ...

Layers that are already Mamba in the teacher get no score (None) and are never chosen.
``choose_layers`` takes the top k greedily; ``layers.json`` (``layers_document``) is what
``student.keep`` of a distillation recipe accepts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import load_model, save_model
from ..config import atomic_write_text, to_dict
from ..convert.from_attention import KeepSpec, load_layers_json, evenly_spaced, student_from_teacher
from ..data.dataset import DataConfig
from ..data.packing import TokenBlocks
from ..distill.metrics import compare_to_teacher
from ..models.lm import LanguageModel
from ..runtime import UserError


@dataclass
class LayerScores:
    """One score per layer (None: not a candidate) and per-layer measurements behind it."""

    method: str
    scores: list[Optional[float]]
    details: dict[str, list[Optional[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "scores": self.scores, "details": self.details}


def candidates(teacher: LanguageModel) -> list[int]:
    """The layers that can stay attention: the teacher's own attention layers."""
    return [i for i, c in enumerate(teacher.config.layer_pattern) if c == "A"]


def keep_count(keep: KeepSpec, n_layers: int) -> int:
    """--keep as a number of layers: an integer K in [1, n_layers] or a fraction in (0, 1)."""
    if isinstance(keep, str):
        s = keep.strip()
        try:
            keep = int(s) if s.lstrip("-").isdigit() else float(s)
        except ValueError:
            raise UserError(f"--keep {s!r} is neither a number of layers nor a fraction") from None
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise UserError(f"--keep must be a number of layers or a fraction, not {keep!r}")
    if isinstance(keep, int):
        if not 1 <= keep <= n_layers:
            raise UserError(f"cannot keep {keep} attention layers: the teacher has {n_layers} layers")
        return keep
    if not 0.0 < keep < 1.0:
        raise UserError(f"keep fraction {keep} is outside (0, 1); give a number of layers for all or none")
    k = round(keep * n_layers)
    if k < 1:
        raise UserError(f"keep fraction {keep} of {n_layers} layers rounds to no layer at all")
    return k


# --- scores --------------------------------------------------------------------------------------
def uniform_scores(teacher: LanguageModel, k: int) -> LayerScores:
    """1 on ``evenly_spaced(n_layers, k)`` (what distill's fraction keeps), 0 elsewhere."""
    n = teacher.config.n_layers
    kept, ok = set(evenly_spaced(n, k)), set(candidates(teacher))
    return LayerScores("uniform", [(1.0 if i in kept else 0.0) if i in ok else None for i in range(n)])


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="layer", dynamic_ncols=True)


@torch.no_grad()
def loo_scores(teacher: LanguageModel, blocks: TokenBlocks, kind: str = "mamba2", seed: int = 0,
               max_blocks: Optional[int] = None, batch_size: int = 8, progress: bool = False) -> LayerScores:
    """Leave one out: score i = KL(teacher || teacher with layer i converted), per counted token.

    A layer whose attention contributes nothing (W_O = 0) scores exactly 0: its Mamba mixer
    starts with out_proj = W_O = 0, so the converted model is the teacher.
    """
    teacher.eval()
    cand = candidates(teacher)
    n = teacher.config.n_layers
    kl: list[Optional[float]] = [None] * n
    agree: list[Optional[float]] = [None] * n
    bar = _bar(len(cand), "loo", progress)
    for i in cand:
        model = student_from_teacher(teacher, [j for j in cand if j != i], kind, seed).eval()
        m = compare_to_teacher(model, teacher, blocks, batch_size, max_blocks)
        kl[i], agree[i] = m["kl"], m["agreement"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(layer=i, kl=f"{m['kl']:.4g}")
    if bar is not None:
        bar.close()
    return LayerScores("loo", list(kl), {"kl": kl, "agreement": agree})


def restore_attention(base: LanguageModel, teacher: LanguageModel, layer: int) -> LanguageModel:
    """``base`` (a Mamba / hybrid student of ``teacher``) with ``layer`` turned back into the
    teacher's attention, every other weight kept."""
    pattern = list(base.config.layer_pattern)
    if teacher.config.layer_pattern[layer] != "A":
        raise UserError(f"layer {layer} is not attention in the teacher; it cannot be restored")
    pattern[layer] = "A"
    with torch.random.fork_rng(devices=[]):  # every weight is overwritten below
        model = LanguageModel(base.config.with_pattern("".join(pattern)))
    prefix = f"layers.{layer}.mixer."
    sd = {k: v for k, v in base.state_dict().items() if not k.startswith(prefix)}
    sd.update({k: v for k, v in teacher.state_dict().items() if k.startswith(prefix)})
    model.load_state_dict(sd, strict=True)
    return model


def assigned(cands: list[int], rank: int, world: int) -> list[int]:
    """The candidates rank ``rank`` of ``world`` trains: r, r+W, r+2W, ... of the list."""
    return cands[rank::world]


def kl_guided_recipe(teacher_dir: str, data: DataConfig, out_dir: Path, student: dict[str, Any],
                     train: dict[str, Any], loss: str, tokenizer: Optional[str] = None):
    """The short end-to-end distillation of one candidate (a one-stage kd recipe)."""
    from ..distill.config import build_config

    return build_config({
        "out_dir": str(out_dir), "teacher": str(teacher_dir), "tokenizer": tokenizer,
        "student": student, "data": to_dict(data),
        "train": {"progress": False, "save_every": 50, "eval_batches": 4, **train},
        "stages": [{"name": "kd", "objective": "kd", "loss": {"kind": loss}}],
    })


def kl_guided_scores(teacher_dir: str, data: DataConfig, work_dir: str | os.PathLike, kind: str = "mamba2",
                     seed: int = 0, train: Optional[dict[str, Any]] = None, loss: str = "reverse",
                     base: Optional[str] = None, tokenizer: Optional[str] = None,
                     eval_blocks: Optional[TokenBlocks] = None, max_blocks: Optional[int] = None,
                     device: str = "cpu", progress: bool = False) -> Optional[LayerScores]:
    """Restore one layer at a time, distil briefly, score by -KL on held-out text.

    work_dir/layer_XX/ is candidate XX's recipe directory (re-running resumes or skips it).
    base: None = the all-Mamba student is attention-initialised from the teacher; else a
    thinkfast model dir of an all-Mamba student (e.g. after MOHAWK stages 1-2 with
    ``thinkfast distill``) into which the teacher's attention layer is put back.
    train: TrainConfig settings (steps, batch_size, lr, ...), identical for every candidate.
    Under torchrun each rank trains its share; rank 0 returns the scores, the others None.
    """
    from ..data.dataset import load_data
    from ..distill import distributed as D
    from ..distill.recipe import run_recipe

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    dev = D.pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not torch.distributed.is_initialized():
        # Ranks finish at different times; the default 30 min rendezvous timeout is too short.
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=48))
    teacher = load_model(teacher_dir, device=dev).eval()
    base_model = load_model(base, device=dev) if base else None
    if base_model is not None and base_model.config.n_layers != teacher.config.n_layers:
        raise UserError(f"{base} has {base_model.config.n_layers} layers, the teacher {teacher.config.n_layers}")
    cand, work = candidates(teacher), Path(work_dir)
    train = {"seed": seed, **(train or {})}
    mine = assigned(cand, rank, world)
    bar = _bar(len(mine), "kl-guided", progress and rank == 0)
    for i in mine:
        out = work / f"layer_{i:02d}"
        if base_model is None:
            student = {"init": "teacher", "keep": [i], "kind": kind, "seed": seed}
        else:
            init = out / "init"
            if not (init / "model.safetensors").exists():
                save_model(restore_attention(base_model, teacher, i), init)
            student = {"init": str(init), "kind": kind, "seed": seed}
        cfg = kl_guided_recipe(teacher_dir, data, out, student, train, loss, tokenizer)
        run_recipe(cfg, env=D.DistEnv(device=dev))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(layer=i)
    if bar is not None:
        bar.close()
    if world > 1:
        torch.distributed.barrier()
        if rank != 0:
            return None
    if eval_blocks is None:
        from ..checkpoint import load_tokenizer

        tok = load_tokenizer(tokenizer or teacher_dir)
        eval_blocks = load_data(data, tok, teacher.config.vocab_size).eval
        if eval_blocks is None:
            raise UserError("kl-guided needs held-out text: set an eval fraction above 0 or an eval file")
    n = teacher.config.n_layers
    kl: list[Optional[float]] = [None] * n
    agree: list[Optional[float]] = [None] * n
    for i in cand:
        student = load_model(work / f"layer_{i:02d}" / "model", device=dev).eval()
        m = compare_to_teacher(student, teacher, eval_blocks, max_blocks=max_blocks)
        kl[i], agree[i] = m["kl"], m["agreement"]
    scores = [None if v is None else -v for v in kl]
    return LayerScores("kl-guided", scores, {"kl": kl, "agreement": agree})


# --- the choice ----------------------------------------------------------------------------------
def choose_layers(scores: list[Optional[float]], k: int) -> tuple[list[int], list[str]]:
    """The k best-scoring layers (ties: the lower index), sorted, and notes on the choice.

    Greedy: each layer was scored alone (the others as in its method), so two adjacent layers may
    be partly redundant; chosen neighbours are pointed out rather than silently accepted.
    """
    ranked = sorted((i for i, s in enumerate(scores) if s is not None and not math.isnan(s)),
                    key=lambda i: (-scores[i], i))
    if k > len(ranked):
        raise UserError(f"cannot keep {k} attention layers: only {len(ranked)} of {len(scores)} layers "
                        f"are attention in the teacher")
    chosen = sorted(ranked[:k])
    notes = [f"layers {a} and {b} are adjacent: each was scored alone, so keeping both may buy less than "
             f"their two scores suggest" for a, b in zip(chosen, chosen[1:]) if b == a + 1]
    if k < len(ranked) and scores[ranked[k - 1]] == scores[ranked[k]]:
        notes.append(f"layers {ranked[k - 1]} and {ranked[k]} tie at score {scores[ranked[k]]:.6g}; "
                     f"the lower index was kept")
    return chosen, notes


def layers_document(n_layers: int, chosen: list[int], result: LayerScores, notes: list[str],
                    **info: Any) -> dict[str, Any]:
    """What ``layers.json`` holds: the depth, the layers (read by ``student.keep``), the scores."""
    pattern = "".join("A" if i in chosen else "M" for i in range(n_layers))
    return {"n_layers": n_layers, "layers": list(chosen), "pattern": pattern, **result.to_dict(),
            "notes": notes, **info}


def write_layers_json(path: str | os.PathLike, doc: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def read_layers_json(path: str | os.PathLike, n_layers: int) -> list[int]:
    """The layers of a ``layers.json``; refused when it was made for another depth."""
    return load_layers_json(Path(path), n_layers)


METHODS = ("uniform", "loo", "kl-guided")
