"""Speed of the demo's training steps on one CPU thread: the eager step against each optimisation,
measured side by side in one process (alternating runs), with the losses compared.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/train_step_speed.py --steps 20

Builds, from the demo's own recipes (``thinkfast.demo.recipes``) and the shipped teacher, the
trainer of each long stage -- llamba kd, llamba sft, hybrid kd, hybrid sft, and on request MOHAWK's
llamba matrix (its own 64-token rows) and llamba hidden -- on the demo's rows
(batch 4, one problem per row right-padded to seq_len 512, response-only loss), and for each variant runs the same optimizer
steps from the same start. Variants:

  reference  THINKFAST_SCAN_BACKEND=torch_reference and train.trim_padding 0: the readable chunked
             scan (``ssd_chunked``) and F.conv1d under autograd on rows padded to 512 tokens,
             the training step before either optimisation
  untrimmed  the default backend, rows padded to 512 (train.trim_padding 0)
  eager      the recipe as the demo runs it (the default backend: ``ssd_chunked_fast`` and
             ``causal_depthwise_conv``, hand-written backwards; batches cut to their longest
             row, train.trim_padding 16)
  chunk0     loss.chunk_size 0: the logit losses on full logits (the demo's vocabulary is 217)
  compile    train.compile: the objective's forward + backward compiled by inductor
  compile+chunk0
  long32     loss.long_window 32, long_cap 10: long-context token weights (distill.token_weights),
             one more teacher pass over twice the tokens per step; a different loss, so its loss
             column is not a rounding check
  bf16       train.bf16: bf16 mixed precision (autocast: bf16 matrix products, fp32 weights,
             gradients and optimizer), what the demo trains in on a CPU with native bf16; its loss
             column is bf16's rounding, not fp32's

Prints tokens/s per variant, the ratio to eager (each variant's median over alternated rounds
divided by eager's), and the largest loss difference from eager over the steps. ``--profile``
instead prints torch.profiler's top ops of one step of each stage and their shares by kind
(matmul, attention, aten's conv, other) (eager; ``--variant`` to pick another). ``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

STAGES = ("llamba-kd", "llamba-sft", "hybrid-kd", "hybrid-sft", "llamba-matrix", "llamba-hidden")
VARIANTS = {
    "reference": {"scan_backend": "torch_reference", "train": {"trim_padding": 0}},
    "untrimmed": {"train": {"trim_padding": 0}},
    "eager": {},
    "chunk0": {"loss": {"chunk_size": 0}},
    "compile": {"train": {"compile": True}},
    "compile+chunk0": {"train": {"compile": True}, "loss": {"chunk_size": 0}},
    "long32": {"loss": {"long_window": 32, "long_cap": 10.0}},
    "bf16": {"train": {"bf16": True}},
}


def demo_data(work: Path, n: int = 256) -> Path:
    """``n`` train problems of the demo's task (the demo writes 20,000 the same way)."""
    from thinkfast.data import synthetic as syn
    from thinkfast.demo.config import demo_task, demo_task_config

    meta = demo_task_config()
    syn.write_splits(work / "data", demo_task(meta).config, n_train=n, n_test=1, seed=meta["seed"])
    return work / "data" / "train.jsonl"


def build_trainer(stage: str, variant: dict, work: Path, train_path: Path, steps: int = 100):
    """The demo's trainer of ``stage`` (its recipe's settings, the shipped teacher, the student at
    its initial weights), built and ready for ``train_step``; ``variant`` overrides the stage's
    ``train`` and ``loss`` settings."""
    from thinkfast.checkpoint import load_model, load_tokenizer
    from thinkfast.data.dataset import load_data
    from thinkfast.demo.config import SHIPPED_TEACHER, DemoConfig
    from thinkfast.demo.recipes import hybrid_recipe, llamba_recipe
    from thinkfast.distill.config import build_config, resolve_train
    from thinkfast.distill.recipe import initial_student
    from thinkfast.distill.stages import build_objective
    from thinkfast.distill.trainer import Trainer

    student_kind, stage_name = stage.split("-")
    cfg = DemoConfig(train_precision="fp32")  # the variants choose their own precision
    out = work / f"{stage}-{id(variant)}"
    if student_kind == "llamba":
        recipe = llamba_recipe(cfg, out, SHIPPED_TEACHER, train_path)
    else:  # the demo's layers come from select-layers; any half of them costs the same
        recipe = hybrid_recipe(cfg, out, SHIPPED_TEACHER, train_path, keep=[0, 2])
    data = recipe.to_dict()
    i = [s["name"] for s in data["stages"]].index(stage_name)
    st = data["stages"][i]
    st["train"] = {**st["train"], **variant.get("train", {}), "steps": steps, "progress": False,
                   "save_every": 0}
    st["loss"] = {**st["loss"], **variant.get("loss", {})}
    recipe = build_config(data)
    teacher = load_model(SHIPPED_TEACHER)
    tok = load_tokenizer(SHIPPED_TEACHER)
    student = initial_student(recipe, teacher, len(tok))
    seq_len = recipe.stages[i].seq_len or recipe.data.seq_len  # the matrix stage's own, shorter rows
    bundle = load_data(dataclasses.replace(recipe.data, seq_len=seq_len), tok, student.config.vocab_size)
    tc = resolve_train(recipe, i)
    obj = build_objective(recipe.stages[i], student, teacher, recipe.student.kind, recipe.student.seed)
    trainer = Trainer(obj, bundle, tc, out, name=stage_name)
    trainer.build()
    return trainer


def _timed_steps(trainer, n: int, scan_backend: str = "") -> tuple[float, int, list[float]]:
    """Run ``n`` optimizer steps with ``$THINKFAST_SCAN_BACKEND`` set to ``scan_backend`` ("" is
    the default): (seconds, the trainer's token count after them, their losses)."""
    from thinkfast.models.ssd import BACKEND_ENV

    before = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = scan_backend
    try:
        losses = []
        t0 = time.perf_counter()
        for _ in range(n):
            rec = trainer.train_step()
            losses.append(rec["loss"])
        wall = time.perf_counter() - t0
    finally:
        if before is None:
            os.environ.pop(BACKEND_ENV)
        else:
            os.environ[BACKEND_ENV] = before
    return wall, trainer.tokens, losses


CATEGORIES = (  # (name, op-name prefixes) for the profile's shares; the first match wins
    ("matmul", ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")),
    ("attention", ("aten::_scaled_dot_product", "aten::_flash_attention")),
    ("conv", ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::_convolution",
              "aten::convolution")),
)


HAND_WRITTEN = ("ChunkScan", "CausalDepthwiseConv")  # thinkfast.models.ssd's autograd.Functions


def category(op: str) -> str:
    """matmul / attention / conv (aten's depthwise conv kernels) / other: everything else, the
    elementwise passes, copies, reductions and the hand-written conv and scan backwards."""
    for name, prefixes in CATEGORIES:
        if op.startswith(prefixes):
            return name
    return "other"


def benchmark(stages, variants, steps: int, rounds: int, warmup: int, work: Path) -> dict:
    train_path = demo_data(work)
    results = {}
    for stage in stages:
        trainers = {v: build_trainer(stage, VARIANTS[v], work, train_path) for v in variants}
        for t in trainers.values():  # the same starting weights in every variant
            t.obj.student.load_state_dict(trainers[variants[0]].obj.student.state_dict())
        # warm-up (compilation) steps, the same for every variant, so they stay in step
        scan = {v: VARIANTS[v].get("scan_backend", "") for v in variants}
        warm_losses = {v: _timed_steps(t, warmup, scan[v])[2] for v, t in trainers.items()}
        rates: dict[str, list[float]] = {v: [] for v in variants}
        losses: dict[str, list[float]] = {v: list(warm_losses[v]) for v in variants}
        for r in range(rounds):
            order = variants if r % 2 == 0 else list(reversed(variants))
            for v in order:
                t = trainers[v]
                before = t.tokens
                wall, after, ls = _timed_steps(t, steps, scan[v])
                rates[v].append((after - before) / wall)
                losses[v] += ls
        ref = losses[variants[0]]
        row = {}
        for v in variants:
            med = statistics.median(rates[v])
            row[v] = {"tokens_per_s": med, "ratio": med / statistics.median(rates[variants[0]]),
                      "max_loss_diff": max(abs(a - b) for a, b in zip(losses[v], ref)),
                      "max_rel_loss_diff": max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses[v], ref)),
                      "rates": rates[v]}
        results[stage] = row
        print(f"\n{stage}: {rounds} rounds x {steps} steps (after {warmup} warm-up steps), "
              f"batch {trainers[variants[0]].cfg.batch_size}")
        print(f"  {'variant':16s} {'tok/s':>9s} {'x ' + variants[0]:>10s} {'max |dloss|':>12s}")
        for v in variants:
            x = row[v]
            print(f"  {v:16s} {x['tokens_per_s']:9.0f} {x['ratio']:10.2f} {x['max_loss_diff']:12.3g}")
        sys.stdout.flush()
    return results


def profile(stages, variant: str, work: Path, row_limit: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    train_path = demo_data(work)
    out = {}
    for stage in stages:
        t = build_trainer(stage, VARIANTS[variant], work, train_path)
        scan = VARIANTS[variant].get("scan_backend", "")
        _timed_steps(t, 3, scan)  # warm-up
        wall = _timed_steps(t, 3, scan)[0] / 3
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            _timed_steps(t, 1, scan)
        events = prof.key_averages()
        # "ops per step": aten ops called (nested ones included: what the dispatcher runs)
        aten_calls = sum(e.count for e in events if e.key.startswith("aten::"))
        total_self = sum(e.self_cpu_time_total for e in events)
        shares = {name: 0.0 for name, _ in CATEGORIES} | {"other": 0.0}
        for e in events:
            shares[category(e.key)] += e.self_cpu_time_total / total_self
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:row_limit]
        print(f"\n=== {stage} ({variant}): {wall * 1e3:.0f} ms/step unprofiled, {aten_calls} aten calls/step, "
              f"{len(events)} distinct ops")
        print("  shares of self time: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
              + f" (matmul {shares['matmul'] * wall * 1e3:.0f} ms of the unprofiled step)")
        # the hand-written Functions, forward and backward, with everything they run (matmuls too)
        inside = {name: sum(e.cpu_time_total for e in events if e.key in (name, name + "Backward")) / total_self
                  for name in HAND_WRITTEN}
        if any(inside.values()):
            print("  inside the hand-written Functions: " + ", ".join(f"{k} {v:.1%}" for k, v in inside.items()))
        shares.update({f"in {k}": v for k, v in inside.items()})
        print(f"  {'op':46s} {'self ms':>8s} {'share':>6s} {'calls':>6s}")
        rows = []
        for e in top:
            share = e.self_cpu_time_total / total_self
            print(f"  {e.key[:46]:46s} {e.self_cpu_time_total / 1e3:8.1f} {share:6.1%} {e.count:6d}")
            rows.append({"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": share, "calls": e.count})
        out[stage] = {"ms_per_step": wall * 1e3, "aten_calls": aten_calls, "shares": shares, "top": rows}
        sys.stdout.flush()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", default=list(STAGES[:4]), choices=STAGES)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="the first is the reference (default eager)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed run")
    ap.add_argument("--rounds", type=int, default=4, help="alternated runs of every variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--variant", default="eager", choices=list(VARIANTS), help="--profile: which variant")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="thinkfast-trainbench-") as tmp:
        if args.profile:
            res = profile(args.stages, args.variant, Path(tmp), args.top)
        else:
            res = benchmark(args.stages, args.variants, args.steps, args.rounds, args.warmup, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": res},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
