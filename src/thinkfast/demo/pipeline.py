"""The demo's stages, in the order they run (``run_stages``), and ``run_demo``, which prepares and
locks OUT first. Each stage is one call into the library the commands use; what each stage does,
and why, is in docs/demo-study.md ("The stages in full").
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import atomic_write_text, to_dict
from ..runtime import UserError
from .config import MODELS, STUDENTS, DemoConfig, demo_task, demo_task_config
from .cost import TRAINING_AFTER, TRAINING_GROUP, Eta, student_steps
from .recipes import (distil, hybrid_recipe, llamba_recipe, select_hybrid_layers, shipped_teacher_digest,
                      shipped_teacher_task, teacher_stage)
from .report import (adaptive_claim, adaptive_curve, budget_ks, claim_verdict, demo_markdown, distillation_check,
                     throughput_table)
from .sampling import (choose_temperature, decode_speed, greedy_stage, orm_stage, prm_stage, sample_split,
                       samples_per_problem, score_stage)
from .stages import (StageRunner, check_out_dir, in_worker, lock_out_dir, out_dir_meta, parallel_workers,
                     refuse_unusable_out)


def run_demo(out: Path, quick: bool = False, force: bool = False, retrain_teacher: bool = False,
             log: Callable[[str], None] = print, jobs: Optional[int] = None,
             verifier: Optional[str] = None, train_precision: Optional[str] = None) -> dict[str, Any]:
    """Run every stage (reusing finished ones), holding OUT's lock; returns results.json's
    content. ``jobs``: processes for the stages that run side by side (default: ``parallel_workers``);
    ``verifier``, ``train_precision``: ``DemoConfig``'s (None: its default)."""
    cfg = DemoConfig.preset(quick)
    if verifier is not None:
        cfg = dataclasses.replace(cfg, verifier=verifier)
    if train_precision is not None:
        cfg = dataclasses.replace(cfg, train_precision=train_precision)
    cfg = cfg.resolved()  # "auto" decided here, so OUT/demo_config.json records what trains
    task_meta = demo_task_config()
    teacher_tag = "retrained" if retrain_teacher else "shipped"
    if not retrain_teacher:
        shipped = shipped_teacher_task()
        if shipped != task_meta:
            raise UserError("the shipped demo teacher was trained on another task configuration; "
                            "run `thinkfast demo --retrain-teacher`")
    weights = None if retrain_teacher else shipped_teacher_digest()
    # Refused before the lock file is created, so that a refused OUT is left as it was; checked
    # again under the lock, as another run may have written there meanwhile.
    refuse_unusable_out(out, out_dir_meta(cfg, teacher_tag, weights), force)
    with lock_out_dir(out):
        check_out_dir(out, cfg, teacher_tag, force, weights, log)
        return run_stages(out, cfg, task_meta, teacher_tag, StageRunner(out, force, log), retrain_teacher,
                          log, jobs)


def run_stages(out: Path, cfg: DemoConfig, task_meta: dict[str, Any], teacher_tag: str, stages: StageRunner,
               retrain_teacher: bool, log: Callable[[str], None], jobs: Optional[int]) -> dict[str, Any]:
    """``run_demo``'s stages, in a prepared and locked OUT: data, teacher, select, the teacher's
    temperature; side by side, the students, the verifier's data and training, each model's greedy
    pass and the students' temperatures; then each model's speed probe and test samples, one at a
    time; the scores (side by side), and the report."""
    import torch

    from ..data import synthetic as syn

    task = demo_task(task_meta)
    threads = torch.get_num_threads()
    workers = parallel_workers(threads, jobs)
    eta = Eta(cfg, workers, log)
    eta.announce()
    stages.on_stage = eta.stage_finished
    data = out / "data"
    stages.run("data", lambda: {k: str(v) for k, v in syn.write_splits(
        data, task.config, n_train=cfg.n_train, n_test=cfg.n_test, seed=task_meta["seed"]).items()})
    train_path, test_path = data / "train.jsonl", data / "test.jsonl"

    stages.run("teacher", lambda: teacher_stage(out, cfg, task_meta, task.config, train_path, retrain_teacher))
    model_dirs = {name: out / name / "model" for name in MODELS}
    layers_json = out / "select" / "layers.json"
    hybrid_layers = stages.run("select", lambda: select_hybrid_layers(cfg, model_dirs["teacher"], train_path,
                                                                      layers_json, log))

    train_examples = task.load("train", path=str(train_path))
    temp_ex = train_examples[: cfg.temp_problems]
    orm_ex = train_examples[cfg.temp_problems: cfg.temp_problems + cfg.orm_problems]
    temps, speeds = {}, {}

    def took_temperature(name: str, chosen: dict[str, Any]) -> None:
        temps[name], speeds[name] = chosen["temperature"], chosen.get("decode_s_per_sample")

    took_temperature("teacher", stages.run("temperature-teacher", lambda: choose_temperature(
        model_dirs["teacher"], task, temp_ex, out / "temperature", "teacher", cfg, log)))
    test_examples = task.load("test", path=str(test_path))
    samples = out / "samples"
    # Stages that time nothing the claim reads run side by side when there is a core for each (one
    # thread each, the demo's default, keeps the sum of their steps/s): the two students, the
    # teacher samples of train problems the verifier learns from (the ORM stage; with the PRM
    # verifier it only samples, for the PRM's labels, then the PRM), and each greedy pass and
    # student temperature as soon as its model exists, so the core the hybrid frees while Llamba
    # still trains does not idle (cost.TRAINING_GROUP; the students' temperature stages record
    # their decode speed only for the record: the speed probes below set the sample counts).
    def job(position: int, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        return functools.partial(in_worker, threads, position, fn, *args)

    def temperature_job(name: str, position: int) -> Callable[[], Any]:
        return job(position, choose_temperature, model_dirs[name], task, temp_ex, out / "temperature", name, cfg,
                   print)

    def greedy_job(name: str, position: int) -> Callable[[], Any]:
        return job(position, greedy_stage, model_dirs[name], task, test_examples, samples / f"{name}.greedy.jsonl",
                   name, cfg, print)

    training = {
        "llamba": job(0, distil, llamba_recipe(cfg, out / "llamba", model_dirs["teacher"], train_path)),
        "hybrid": job(1, distil, hybrid_recipe(cfg, out / "hybrid", model_dirs["teacher"], train_path,
                                               str(layers_json))),
        "orm": job(1, orm_stage, model_dirs["teacher"], task, orm_ex, out / "orm", temps["teacher"], cfg, print,
                   cfg.verifier == "orm"),
        "greedy-teacher": greedy_job("teacher", 1),
        "temperature-hybrid": temperature_job("hybrid", 1),
        "greedy-hybrid": greedy_job("hybrid", 1),
        # its labels roll out the ORM stage's teacher samples
        "prm": job(1, prm_stage, model_dirs["teacher"], task, orm_ex, out / "orm" / "teacher_train_samples.jsonl",
                   out / "prm" / "model", temps["teacher"], cfg, print),
        "temperature-llamba": temperature_job("llamba", 1),
        "greedy-llamba": greedy_job("llamba", 0),
    }
    if cfg.verifier != "prm":
        del training["prm"]
    assert tuple(training) == tuple(s for s in TRAINING_GROUP if s in training), "cost.TRAINING_GROUP's order"
    eta.begin_group(tuple(training))
    done = stages.run_parallel(training, workers, poll=functools.partial(_training_step_speeds, out, cfg, eta),
                               after=TRAINING_AFTER)
    for name in STUDENTS:
        took_temperature(name, done[f"temperature-{name}"])
    greedy = {name: done[f"greedy-{name}"] for name in MODELS}
    verifier_dir, verifier_kind = out / cfg.verifier / "model", {"orm": "orm", "prm": "thinkfast-prm"}[cfg.verifier]
    # Each model's speed where the test sampling spends it: its calls' rows, prompts and
    # max_new_tokens, in as many processes side by side as sample it (timed: one model at a time).
    probes = {name: stages.run(f"speed-{name}", lambda name=name: decode_speed(
        model_dirs[name], task, test_examples, name, temps[name], cfg, log, repeats=cfg.speed_repeats,
        workers=workers, threads=threads))
        for name in MODELS}
    measured = {name: p["decode_s_per_sample"] for name, p in probes.items()}
    # Decided once per run from those timings, and kept by any run that resumes this one
    # (StageRunner.decide): a sample file must hold one n, whatever a rerun measures.
    n_by_model = stages.decide("samples_per_problem", measured, functools.partial(samples_per_problem, cfg))
    log("samples per test problem: " + ", ".join(f"{k} {v}" for k, v in n_by_model.items()))
    eta.decode_measured({name: p["decode_tokens_per_s"] for name, p in probes.items() if p["decode_tokens_per_s"]},
                        n_by_model)

    # Timed (the claim's seconds): one model at a time, its problems split between the worker
    # processes, one part each, so every model is timed under the same load as its speed probe.
    for name in MODELS:
        n = n_by_model[name]  # same rows per call for every model: fewer problems when n is larger
        stages.run(f"sample-{name}", lambda name=name, n=n: sample_split(
            model_dirs[name], task, test_examples, samples / f"{name}.jsonl", name, n, temps[name], cfg, log,
            batch_problems=max(1, cfg.batch_problems * cfg.n_samples // n), workers=workers, threads=threads))
    scored = {name: samples / f"{name}.scored.jsonl" for name in MODELS}
    eta.begin_group(tuple(f"score-{name}" for name in MODELS))
    stages.run_parallel({f"score-{name}": functools.partial(
        in_worker, threads, i % 2, score_stage, task, samples / f"{name}.jsonl", scored[name], verifier_dir,
        verifier_kind, cfg.prm_aggregate)
        for i, name in enumerate(MODELS)}, workers)

    results = write_results(out, cfg, task, task_meta, teacher_tag, stages, scored, temps, speeds, n_by_model,
                            greedy, hybrid_layers, model_dirs, probes)
    for name, v in results["distillation"].items():
        if not v["distilled"]:
            log(f"warning: {name} did not distil (greedy {v['greedy']:.1%} against the teacher's "
                f"{v['teacher_greedy']:.1%}); its comparisons do not test the claim (report.md)")
    log(f"finished in {(eta.clock() - eta.started) / 60:.1f} min (expected at the start: "
        f"{eta.first_expected / 60:.1f} min at the reference speed)")
    return results


def write_results(out: Path, cfg: DemoConfig, task: Any, task_meta: dict[str, Any], teacher_tag: str,
                  stages: StageRunner, scored: dict[str, Path], temps: dict[str, float],
                  speeds: dict[str, Optional[float]], n_by_model: dict[str, int], greedy: dict[str, Any],
                  hybrid_layers: dict[str, Any], model_dirs: dict[str, Path],
                  probes: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """The report stage: every model's metrics (``thinkfast evaluate``; each student also at the
    most samples that fit each teacher budget), OUT/metrics.json, report.md and its plots
    (``thinkfast report``) under the demo's own section, and results.json, which it returns.
    Every model's samples are also voted on adaptively (``cfg.adaptive_window``; the ESC and
    Beta rules, simulated), on the plot and the front and in the claim's second reading."""
    from ..eval.adaptive import AdaptiveRule
    from ..eval.evaluation import EvalSettings, evaluate_run, pareto_by_task
    from ..eval.io import read_jsonl, write_json_atomic
    from ..eval.report import write_report

    rules = (AdaptiveRule("esc", cfg.adaptive_window, max(n_by_model.values())),
             AdaptiveRule("beta", cfg.adaptive_window, max(n_by_model.values()), cfg.adaptive_threshold))
    runs: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {rule.method: {} for rule in rules}
    for name in MODELS:
        rows = list(read_jsonl(scored[name]))
        extra = budget_ks(runs["teacher"], rows) if name != "teacher" else []
        runs[name] = evaluate_run(rows, task, name, str(scored[name]), EvalSettings(seed=cfg.seed), extra_ks=extra,
                                  adaptive=rules)
        for rule in rules:
            curves[rule.method][name] = adaptive_curve(rows, task, rule, runs[name]["ks"], seed=cfg.seed)

    metrics = {"runs": list(runs.values()), "pareto": pareto_by_task(list(runs.values()))}
    write_json_atomic(out / "metrics.json", metrics)
    results = {
        "config": to_dict(cfg), "task": task_meta, "teacher": teacher_tag, "temperatures": temps,
        "samples_per_problem": n_by_model, "train_decode_s_per_sample": speeds,
        "decisions": stages.decisions, "greedy": greedy, "distillation": distillation_check(greedy),
        "hybrid_layers": {k: hybrid_layers[k] for k in ("layers", "pattern", "method", "scores")},
        "runs": runs, "pareto": metrics["pareto"], "throughput": throughput_table(list(runs.values())),
        "claim": {**claim_verdict(runs, seed=cfg.seed),
                  **{m: adaptive_claim(runs, c, seed=cfg.seed) for m, c in curves.items()}},
        "decode_speed": dict(probes or {}), "stage_seconds": stages.seconds(),
        "models": {k: str(v) for k, v in model_dirs.items()},
    }
    write_report([metrics], out)
    body = (out / "report.md").read_text()
    atomic_write_text(out / "report.md", "\n".join(demo_markdown(results)) + "\n" + body)
    write_json_atomic(out / "results.json", results)
    return results


def _training_step_speeds(out: Path, cfg: DemoConfig, eta: Eta, min_seconds: float = 5.0) -> None:
    """Hand ``eta`` each student stage's first measured training steps, once per stage: the first
    record of the stage's metrics.jsonl (the trainer appends one every ``log_every`` steps) with
    at least ``min_seconds`` of training, or a finished stage's last record (a later stage has
    begun)."""
    steps = student_steps(cfg)
    for name in STUDENTS:
        files = sorted((out / name).glob("*-*/metrics.jsonl"))
        for i, metrics in enumerate(files):
            key = f"{name}/{metrics.parent.name.split('-', 1)[1]}"
            if key not in steps or key in eta.step_speeds:
                continue
            records = [r for r in _records(metrics) if r.get("train_time_s") and r.get("step")]
            long_enough = [r for r in records if r["train_time_s"] >= min_seconds]
            rec = long_enough[0] if long_enough else records[-1] if records and i + 1 < len(files) else None
            if rec is not None:
                eta.training_steps(key, int(rec["step"]), float(rec["train_time_s"]), steps[key][1])


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a file another process is appending to (a line being written is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
