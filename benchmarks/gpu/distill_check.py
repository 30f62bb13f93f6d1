"""GPU check of distillation at the real scale: a Llama-3.2-1B-shaped teacher (random weights)
distilled into a Llamba student (pure discrete Mamba-2, forward KL) and a 50% MambaInLlama hybrid
(Mamba-2, reverse KL) for a few hundred KD steps each in bf16, then the scan's parity.

Reports per student: tokens/s, MFU (against the device's peak bf16 TFLOP/s), peak memory
(torch.cuda.max_memory_allocated) beside ``distill.plan``'s estimate for the same stage, the first
and last loss, and the parity of one Mamba mixer's output with the fused kernels (mamba_ssm /
causal_conv1d, when importable) and with the PyTorch chunked scan against the sequential reference
scan (``THINKFAST_SCAN_BACKEND=reference``), on one batch in fp32 (gating) and under bf16 autocast
(reported). Every piece runs under a time guard; the figures go to ``--out`` as JSON.

    python benchmarks/gpu/distill_check.py --out $OUT/distill_check.json            # one H200, < 8 min
    python benchmarks/gpu/distill_check.py --device cpu --tiny --out /tmp/check.json  # CPU smoke test

Exit status: 0 all passed; 1 a parity check failed; 2 a piece raised (out of memory, non-finite
loss, ...); 3 the time guard stopped the run. The JSON is written in every case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

PARITY_TOL_FP32 = 1e-3
"""max |mixer(backend) - mixer(reference)| / max |mixer(reference)| allowed in fp32."""

STUDENTS = {  # name: (keep, kind, KL direction)
    "llamba": (0.0, "discrete", "forward"),
    "hybrid50": (0.5, "mamba2", "reverse"),
}


class TimeGuard(Exception):
    """A piece (or the whole run) ran past its time budget."""


_deadlines: list[tuple[float, str]] = []  # the guards in force, outermost first


def _arm() -> None:
    """Point SIGALRM at the nearest deadline of the guards in force (none: disarmed)."""
    if not _deadlines:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return
    when, _ = min(_deadlines)
    signal.setitimer(signal.ITIMER_REAL, max(when - time.monotonic(), 0.001))


def _fire(signum, frame):
    when, what = min(_deadlines)
    raise TimeGuard(what)


@contextmanager
def time_guard(seconds: float, what: str):
    """Raise TimeGuard in the main thread if the block runs longer than ``seconds``, or when an
    enclosing guard's time runs out first (guards nest)."""
    entry = (time.monotonic() + seconds, f"{what} ran past its {seconds:.0f} s guard")
    old = signal.signal(signal.SIGALRM, _fire)
    _deadlines.append(entry)
    _arm()
    try:
        yield
    finally:
        _deadlines.remove(entry)
        _arm()
        if not _deadlines:
            signal.signal(signal.SIGALRM, old)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the JSON file of figures to write")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: a smoke test)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and a few steps (seconds on a CPU)")
    p.add_argument("--students", default="llamba,hybrid50", help="comma list of: " + ", ".join(STUDENTS))
    p.add_argument("--steps", type=int, default=None, help="KD steps per student (default 300; --tiny 3)")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 (--tiny 64)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8; --tiny 2)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default 4; --tiny 2)")
    p.add_argument("--train-budget-s", type=float, default=None,
                   help="training seconds per student; the loop stops early when they are spent (default 150)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="hard guard on the whole run (default 450, under 8 minutes)")
    p.add_argument("--parity-seq-len", type=int, default=None, help="tokens of the parity batch (default 512)")
    p.add_argument("--inject-parity-error", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    tiny = a.tiny
    defaults = {"steps": 3 if tiny else 300, "seq_len": 64 if tiny else 2048, "batch": 2 if tiny else 8,
                "micro_batch": 2 if tiny else 4, "train_budget_s": 60.0 if tiny else 150.0,
                "budget_s": 300.0 if tiny else 450.0, "parity_seq_len": 32 if tiny else 512}
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.students = [s.strip() for s in a.students.split(",") if s.strip()]
    bad = [s for s in a.students if s not in STUDENTS]
    if bad or not a.students:
        p.error(f"--students: unknown {bad}; choose from {', '.join(STUDENTS)}")
    if a.batch % a.micro_batch:
        p.error("--batch must be a multiple of --micro-batch")
    return a


def teacher_config(tiny: bool):
    from thinkfast.config import ModelConfig

    if tiny:
        return ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                           max_seq_len=512)
    return ModelConfig.from_name("llama3.2-1b", max_seq_len=4096)  # Llama-3.2-1B's shape


def _recipe(args, name: str):
    from thinkfast.distill.config import build_config

    keep, kind, kl = STUDENTS[name]
    bf16 = args.device != "cpu"
    return build_config({
        "teacher": "random", "student": {"init": "teacher", "keep": keep, "kind": kind},
        "data": {"train": "random", "seq_len": args.seq_len},
        "train": {"steps": args.steps, "batch_size": args.batch, "micro_batch_size": args.micro_batch,
                  "lr": 1e-4, "schedule": "constant", "warmup_steps": 0, "clip_grad": 1.0, "bf16": bf16,
                  "device": args.device, "progress": False, "save_every": 0, "log_every": 1000},
        "stages": [{"name": "kd", "objective": "kd", "loss": {"kind": kl, "chunk_size": 1024}}],
    })


def _rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30))


def mixer_parity(student, device, seq_len: int, inject: float = 0.0) -> dict[str, Any]:
    """One Mamba mixer's output with each scan backend against the sequential reference."""
    import torch

    from thinkfast.models import ssd

    out: dict[str, Any] = {"layers": []}
    layers = student.mamba_layers
    for i in sorted({layers[0], layers[-1]}):
        mixer = student.layers[i].mixer
        g = torch.Generator().manual_seed(i)
        u = torch.randn(2, seq_len, student.config.d_model, generator=g).to(device)  # like an RMSNorm output

        def run(backend: str, autocast: bool = False):
            old = os.environ.get(ssd.BACKEND_ENV)
            os.environ[ssd.BACKEND_ENV] = backend
            try:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    return mixer(u).float()
            finally:
                if old is None:
                    os.environ.pop(ssd.BACKEND_ENV)
                else:
                    os.environ[ssd.BACKEND_ENV] = old

        ref = run("reference")
        fused = run("auto")
        if inject:
            fused = fused + inject * ref.abs().max()  # testing aid: a wrong kernel must fail the check
        row = {"layer": i, "auto_backend": ssd.scan_backend(device), "conv_backend": ssd.conv_backend(device),
               "fused_vs_reference_fp32": _rel(fused, ref), "chunked_vs_reference_fp32": _rel(run("torch"), ref)}
        if device.type == "cuda":
            row["fused_vs_reference_bf16"] = _rel(run("auto", autocast=True), ref)
        row["passed"] = (row["fused_vs_reference_fp32"] < PARITY_TOL_FP32
                         and row["chunked_vs_reference_fp32"] < PARITY_TOL_FP32)
        out["layers"].append(row)
    out["passed"] = all(r["passed"] for r in out["layers"])
    out["tolerance_fp32"] = PARITY_TOL_FP32
    return out


def train_student(args, name: str, student, teacher, tcfg, device) -> dict[str, Any]:
    """A few hundred KD steps of the real Trainer.train_step (no checkpoints written)."""
    import torch

    from thinkfast.data.dataset import DataBundle
    from thinkfast.data.packing import TokenBlocks
    from thinkfast.distill import distributed as D
    from thinkfast.distill.config import resolve_train
    from thinkfast.distill.plan import plan_stage
    from thinkfast.distill.stages import build_objective
    from thinkfast.distill.trainer import Trainer

    cfg = _recipe(args, name)
    stage, tc = cfg.stages[0], resolve_train(cfg, 0)
    plan = plan_stage(cfg, 0, student.config, tcfg, devices=1, accelerator=device.type != "cpu")
    g = torch.Generator().manual_seed(1)
    n_blocks = max(4 * args.batch, 32)
    ids = torch.randint(0, tcfg.vocab_size, (n_blocks, args.seq_len), generator=g)
    blocks = TokenBlocks(ids, ids.clone(), torch.ones_like(ids, dtype=torch.bool))
    obj = build_objective(stage, student.to(device), teacher, cfg.student.kind)
    env = D.DistEnv(device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(obj, DataBundle(blocks, None), tc, tmp, env, name=name)
        tr.build()  # the model and optimizer fit() would train, without its checkpoints
        losses, times = [], []
        t_start = time.perf_counter()
        stopped_early = False
        while tr.step < tc.steps:
            if time.perf_counter() - t_start > args.train_budget_s:
                stopped_early = True
                break
            t0 = time.perf_counter()
            rec = tr.train_step()  # synchronizes the device at its end
            times.append(time.perf_counter() - t0)
            losses.append(rec["loss"])
    warm = min(3, max(len(times) - 1, 0))  # the first steps compile kernels and warm the allocator
    timed = times[warm:]
    tokens_per_step = args.batch * args.seq_len
    tok_s = tokens_per_step * len(timed) / sum(timed) if timed and sum(timed) > 0 else None
    mfu = (tok_s * tr.flops_per_token / (tr.peak_tflops * 1e12)) if (tok_s and tr.peak_tflops) else None
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
    return {
        "pattern": student.config.layer_pattern, "student_params": plan.student_params,
        "teacher_params": plan.teacher_params, "steps": len(losses), "steps_asked": tc.steps,
        "stopped_by_train_budget": stopped_early, "tokens_per_step": tokens_per_step,
        "tokens_per_s": tok_s, "mfu": mfu, "flops_per_token": tr.flops_per_token, "peak_tflops": tr.peak_tflops,
        "peak_memory_allocated": peak, "peak_memory_reserved": reserved, "plan_peak": plan.memory.peak,
        "plan_ratio": (peak / plan.memory.peak) if peak else None,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "loss_finite": all(math.isfinite(x) for x in losses), "step_s_median": sorted(timed)[len(timed) // 2]
        if timed else None,
    }


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    t_all = time.perf_counter()
    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "inject_parity_error"},
                              "students": {}, "errors": [], "python": platform.python_version()}
    status = 0

    def write() -> None:
        report["wall_s"] = time.perf_counter() - t_all
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")

    try:
        with time_guard(args.budget_s, "the whole check"):
            import torch

            from thinkfast.convert.from_attention import student_from_teacher
            from thinkfast.models import ssd
            from thinkfast.models.lm import LanguageModel

            device = torch.device(args.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("--device cuda but CUDA is not available (use --device cpu --tiny)")
            report.update({"torch": torch.__version__, "device": torch.cuda.get_device_name(device)
                           if device.type == "cuda" else "cpu",
                           "scan_backend_auto": ssd.scan_backend(device), "conv_backend_auto": ssd.conv_backend(device)})
            torch.manual_seed(0)
            tcfg = teacher_config(args.tiny)
            teacher = LanguageModel(tcfg).eval()  # random weights, fp32, on the CPU for the conversions
            students = {n: student_from_teacher(teacher, STUDENTS[n][0], STUDENTS[n][1], seed=0)
                        for n in args.students}
            teacher.to(device)
            for name in args.students:
                entry: dict[str, Any] = {}
                report["students"][name] = entry
                student = students.pop(name)
                try:
                    with time_guard(args.train_budget_s + 120, f"{name}: training"):
                        entry["train"] = train_student(args, name, student, teacher, tcfg, device)
                    if not entry["train"]["loss_finite"]:
                        raise RuntimeError(f"{name}: non-finite loss")
                    with time_guard(90, f"{name}: parity"):
                        entry["parity"] = mixer_parity(student, device, args.parity_seq_len,
                                                       args.inject_parity_error)
                    if not entry["parity"]["passed"]:
                        report["errors"].append(f"{name}: parity failed {entry['parity']['layers']}")
                        status = max(status, 1)
                except TimeGuard:
                    raise
                except Exception as e:  # one student's failure (e.g. out of memory) is reported, the other runs
                    entry["error"] = f"{type(e).__name__}: {e}"
                    report["errors"].append(f"{name}: {entry['error']}")
                    traceback.print_exc()
                    status = 2
                finally:
                    del student
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                write()
            report["backends_used"] = ssd.backends_used()
    except TimeGuard as e:
        report["errors"].append(str(e))
        status = 3
    except Exception as e:
        report["errors"].append(f"{type(e).__name__}: {e}")
        traceback.print_exc()
        status = 2
    report["status"] = status
    write()
    for name, entry in report["students"].items():
        t, par = entry.get("train", {}), entry.get("parity", {})
        gib = (lambda v: f"{v / 2**30:.1f} GiB" if v else "-")
        print(f"{name}: {t.get('steps')} steps, {t.get('tokens_per_s') or 0:.0f} tokens/s, "
              f"MFU {t.get('mfu') if t.get('mfu') is None else round(t['mfu'], 3)}, peak {gib(t.get('peak_memory_allocated'))}"
              f" (plan {gib(t.get('plan_peak'))}), loss {t.get('first_loss')} -> {t.get('last_loss')}, "
              f"parity {'ok' if par.get('passed') else 'FAILED' if par else '-'}")
    for err in report["errors"]:
        print(f"ERROR: {err}", file=sys.stderr)
    print(f"status {status}; figures in {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
