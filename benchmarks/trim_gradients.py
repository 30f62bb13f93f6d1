"""Do cut rows give a demo student the gradients of full rows? (``train.trim_padding``)

Loads a finished demo directory's teacher and one of its students, takes batches of the demo's
training rows (right-padded to ``seq_len`` 512, one problem per row), and computes the student's
KD loss and parameter gradients once on the full rows and once on the rows cut to their longest
real row (rounded up to 16 tokens, as the trainer does). Prints, per batch, the two lengths, the
two losses and the largest relative difference of any parameter's gradient (norm of the
difference over the norm of the full-row gradient)::

    OMP_NUM_THREADS=1 python benchmarks/trim_gradients.py DEMO_OUT --student llamba --batches 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from thinkfast.checkpoint import load_model, load_tokenizer
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.data.packing import trim_right_padding
from thinkfast.demo import DemoConfig
from thinkfast.demo.config import TASK_FORMAT
from thinkfast.distill.config import LossConfig
from thinkfast.distill.stages import KDObjective

STAGE_MODEL = {"llamba": "llamba/3-kd/model", "hybrid": "hybrid/1-kd/model"}
"""The KD stage's output of each student (the demo keeps every stage's model)."""


def gradients(obj: KDObjective, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    obj.zero_grad(set_to_none=True)
    loss, _ = obj(batch)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in obj.student.named_parameters() if p.grad is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("demo", type=Path, help="a finished demo directory")
    ap.add_argument("--student", choices=sorted(STAGE_MODEL), default="llamba")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--multiple", type=int, default=16, help="train.trim_padding")
    args = ap.parse_args()

    cfg = DemoConfig()
    teacher = load_model(args.demo / "teacher" / "model")
    student = load_model(args.demo / STAGE_MODEL[args.student])
    llamba = args.student == "llamba"
    obj = KDObjective(student, teacher, LossConfig(kind="forward" if llamba else "reverse"),
                      kind="discrete" if llamba else "mamba2")
    fmt = {k: v for k, v in TASK_FORMAT.items() if k in DataConfig.__dataclass_fields__}
    data = DataConfig(train=str(args.demo / "data" / "train.jsonl"), seq_len=cfg.seq_len, eval_fraction=0.02,
                      loss_on="response", **fmt)
    blocks = load_data(data, load_tokenizer(args.demo / "teacher" / "model")).train
    for i in range(args.batches):
        full = blocks.batch(list(range(i * cfg.batch_size, (i + 1) * cfg.batch_size)))
        cut = trim_right_padding(full, args.multiple)
        loss_full, g_full = gradients(obj, full)
        loss_cut, g_cut = gradients(obj, cut)
        rel = {n: ((g_full[n] - g_cut[n]).norm() / (g_full[n].norm() + 1e-30)).item() for n in g_full}
        worst = max(rel, key=rel.get)
        print(f"batch {i}: rows {full['input_ids'].shape[1]} -> {cut['input_ids'].shape[1]} tokens, "
              f"loss {loss_full:.8f} / {loss_cut:.8f}, largest relative gradient difference {rel[worst]:.1e} ({worst})")


if __name__ == "__main__":
    main()
