"""The demo's sampling and scoring stages, each a thin use of the library the commands use:
``eval.sampling.run_sampling`` over the engine (``thinkfast sample``), ``eval.grading``
(``thinkfast grade``), ``eval.evaluation`` (``thinkfast evaluate``) and ``eval.rewards``
(``thinkfast train-rm`` / ``score``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Optional

from .config import TASK_FORMAT, DemoConfig


def demo_prompt_ids(task: Any, examples: list, tokenizer: Any) -> list[list[int]]:
    """The prompts every demo model is sampled with, laid out as its training rows begin
    (``TASK_FORMAT``: no BOS)."""
    from ..eval.sampling import encode_prompts

    return encode_prompts(task, examples, tokenizer, "fewshot", add_special_tokens=TASK_FORMAT["add_bos"])


def sample_file(model_dir: Path, task: Any, examples: list, out_path: Path, name: str, n: int,
                temperature: float, cfg: DemoConfig, log: Callable[[str], None],
                batch_problems: Optional[int] = None) -> dict[str, Any]:
    """Sample ``n`` completions per example into ``out_path`` (resumable), ``batch_problems``
    (default ``cfg.batch_problems``) per engine call, on the CPU: what ``thinkfast sample
    --backend thinkfast --device cpu`` does, with the demo's prompts (``demo_prompt_ids``) and a
    progress bar. Returns the report."""
    from tqdm import tqdm

    from ..eval.budget import hardware_string
    from ..eval.sampling import SampleSettings, run_sampling
    from ..inference.backends import open_backend
    from ..runtime import PROGRESS_POSITION

    backend = open_backend("thinkfast", str(model_dir), device="cpu", seed=cfg.seed)
    settings = SampleSettings(task=task.name, model=name, n=n, temperature=temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, prompt_style="fewshot")
    prompts = demo_prompt_ids(task, examples, backend.tokenizer)
    with tqdm(total=len(examples), desc=f"sample {name}", unit="problem", leave=False,
              position=PROGRESS_POSITION) as bar:
        rep = run_sampling(examples, prompts, backend.make_generate_fn(settings, task.stop), out_path, settings,
                           batch_problems=batch_problems or cfg.batch_problems, context_len=backend.context_len,
                           hardware=hardware_string(backend.device),
                           on_progress=lambda done, total: bar.update(done - bar.n))
    if rep.failed:
        log(f"{name}: {len(rep.failed)} problems could not be sampled: {rep.failed[:3]}")
    return {"written": rep.written, "skipped": rep.skipped, "failed": len(rep.failed)}


def greedy_stage(model_dir: Path, task: Any, examples: list, out_path: Path, name: str, cfg: DemoConfig,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Greedy (temperature 0) accuracy on ``examples``: the teacher's acceptance figure."""
    from ..checkpoint import load_model, load_tokenizer
    from ..eval.grading import grade_rows
    from ..eval.io import read_jsonl
    from .config import LOOKUP_PROBLEMS
    from .lookup import lookup_probes, lookup_share, operand_share

    sample_file(model_dir, task, examples, out_path, name, 1, 0.0, cfg, log)
    rows = grade_rows(task, read_jsonl(out_path), str(out_path))
    acc = sum(bool(r["correct"]) for r in rows) / max(len(rows), 1)
    # The look-up of sentence k, teacher-forced on the first of the same problems (docs/demo-study.md).
    probe, operands = lookup_probes(load_model(model_dir).eval(), load_tokenizer(model_dir),
                                    [(ex.question, ex.gold) for ex in examples[:LOOKUP_PROBLEMS]])
    share, op_share = lookup_share(probe), operand_share(operands)
    log(f"{name}: greedy accuracy {acc:.3f} on {len(rows)} test problems"
        + (f"; look-up of sentences 3 and on {share:.1%} right" if share is not None else "")
        + (f", of operands' second digits {op_share:.1%}" if op_share is not None else ""))
    return {"accuracy": acc, "problems": len(rows), "lookup": probe, "lookup_share": share,
            "operands": operands, "operand_share": op_share}


def choose_temperature(model_dir: Path, task: Any, examples: list, out_dir: Path, name: str,
                       cfg: DemoConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """The temperature with the best majority@n on TRAIN problems (ties: the lower one), and the
    model's decode seconds per sample at it, at the test sampling's rows per call."""
    from ..eval.evaluation import EvalSettings, evaluate_run
    from ..eval.io import read_jsonl

    rows_per_call = cfg.batch_problems * cfg.n_samples
    scores = {}
    for t in cfg.temperatures:
        path = out_dir / f"{name}_T{t}.jsonl"
        sample_file(model_dir, task, examples, path, name, cfg.temp_samples, t, cfg, log,
                    batch_problems=max(1, rows_per_call // cfg.temp_samples))
        run = evaluate_run(read_jsonl(path), task, name, str(path), EvalSettings(n_boot=10, seed=cfg.seed))
        maj = run["metrics"]["majority"][-1]["mean"]
        scores[str(t)] = {"majority": maj, "coverage": run["metrics"]["coverage"][-1]["mean"],
                          "decode_s_per_sample": (run.get("timing") or {}).get("decode_s_per_sample")}
    best = max(cfg.temperatures, key=lambda t: (scores[str(t)]["majority"], -t))
    log(f"{name}: temperature {best} (majority@{cfg.temp_samples} on train: "
        + ", ".join(f"T={t}: {v['majority']:.2f}" for t, v in scores.items()) + ")")
    return {"temperature": best, "train_scores": scores,
            "decode_s_per_sample": scores[str(best)]["decode_s_per_sample"]}


def shards(items: list, count: int) -> list[list]:
    """``items`` in ``count`` contiguous parts, as equal as can be, in order (none empty unless
    there are fewer items than parts; then fewer parts)."""
    count = max(1, min(count, len(items)))
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def sample_split(model_dir: Path, task: Any, examples: list, out_path: Path, name: str, n: int,
                 temperature: float, cfg: DemoConfig, log: Callable[[str], None],
                 batch_problems: Optional[int] = None, workers: int = 1, threads: int = 1) -> dict[str, Any]:
    """``sample_file`` with ``examples`` split into ``workers`` contiguous parts of whole engine
    calls (``batch_problems`` problems each), each sampled by its own worker process
    (``threads`` threads) side by side into ``out_path``'s part file (``NAME.part-I-of-K.jsonl``,
    each resumable), then joined in order into ``out_path`` (written atomically) and the parts
    removed. The engine keys its randomness on (seed, prompt) and every call holds the problems
    it would hold in one process, so the file is the one one process would write but for the
    timings, each measured with the other parts running beside it. One worker: ``sample_file``."""
    from ..eval.io import read_jsonl, write_jsonl_atomic
    from .stages import in_worker, run_in_workers

    bp = max(1, batch_problems or cfg.batch_problems)
    calls = [examples[i: i + bp] for i in range(0, len(examples), bp)]
    parts = [[e for call in part for e in call] for part in shards(calls, workers)]
    if len(parts) <= 1:
        return sample_file(model_dir, task, examples, out_path, name, n, temperature, cfg, log, batch_problems)
    paths = [out_path.with_name(f"{out_path.stem}.part-{i}-of-{len(parts)}{out_path.suffix}")
             for i in range(len(parts))]
    reports = run_in_workers([functools.partial(in_worker, threads, i, sample_file, model_dir, task, part, path,
                                                name, n, temperature, cfg, print, batch_problems)
                              for i, (part, path) in enumerate(zip(parts, paths))], workers)
    write_jsonl_atomic(out_path, (row for path in paths for row in read_jsonl(path)))
    for path in paths:
        path.unlink()
    out = {k: sum(r[k] for r in reports) for k in ("written", "skipped", "failed")}
    if out["failed"]:
        log(f"{name}: {out['failed']} problems could not be sampled")
    return {**out, "processes": len(parts)}


def decode_speed_calls(model_dir: Path, task: Any, examples: list, name: str, temperature: float,
                       cfg: DemoConfig, repeats: int, first: int = 0) -> list[dict[str, Any]]:
    """The timings of ``repeats`` engine calls of ``batch_problems`` test prompts x ``n_samples``
    rows: call r (counting from ``first``) on the next test prompts, seeded ``cfg.seed + r``."""
    from ..eval.sampling import SampleSettings
    from ..inference.backends import open_backend

    if repeats < 1 or not examples:
        raise ValueError(f"the speed probe needs at least one repeat and one prompt ({repeats}, {len(examples)})")
    backend = open_backend("thinkfast", str(model_dir), device="cpu", seed=cfg.seed)
    settings = SampleSettings(task=task.name, model=name, n=cfg.n_samples, temperature=temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, prompt_style="fewshot")
    gen = backend.make_generate_fn(settings, task.stop)
    prompts = demo_prompt_ids(task, examples, backend.tokenizer)
    bp = cfg.batch_problems
    calls = []
    for r in range(first, first + repeats):
        batch = [prompts[(r * bp + i) % len(prompts)] for i in range(bp)]
        t = dict(gen(batch, cfg.seed + r)[0].timing)  # timings of the whole call
        rows, toks, dec = t["batch_rows"], t["new_tokens"], t["decode_s"]
        calls.append({"rows": rows, "new_tokens": toks, "prefill_s": t["prefill_s"], "decode_s": dec,
                      "decode_s_per_sample": dec / rows, "decode_tokens_per_s": toks / dec if dec > 0 else None})
    return calls


def decode_speed(model_dir: Path, task: Any, examples: list, name: str, temperature: float, cfg: DemoConfig,
                 log: Callable[[str], None], repeats: int = 3, workers: int = 1, threads: int = 1) -> dict[str, Any]:
    """A model's decode speed where the test sampling spends it: ``repeats`` engine calls of
    ``batch_problems`` test prompts x ``n_samples`` rows (the rows of every test-sampling call),
    at its temperature and ``max_new_tokens``, in each of ``workers`` processes side by side, as
    ``sample_split`` samples (so under the load the samples are timed at), each call on the next
    test prompts (seeded ``cfg.seed + r``). Returns every call's figures, and the median and range
    of decode seconds per sample (``samples_per_problem`` reads the median) and of decode tokens
    per second. Nothing of these calls is kept but their timings; they see no answer."""
    import statistics

    from .stages import in_worker, run_in_workers

    if workers <= 1:
        calls = decode_speed_calls(model_dir, task, examples, name, temperature, cfg, repeats)
    else:
        calls = [c for part in run_in_workers([functools.partial(
            in_worker, threads, i, decode_speed_calls, model_dir, task, examples, name, temperature, cfg,
            repeats, i * repeats) for i in range(workers)], workers) for c in part]
    per_sample = [c["decode_s_per_sample"] for c in calls]
    tps = [c["decode_tokens_per_s"] for c in calls if c["decode_tokens_per_s"] is not None]
    out = {"calls": calls, "rows": calls[0]["rows"], "max_new_tokens": cfg.max_new_tokens,
           "processes": max(1, workers),
           "decode_s_per_sample": statistics.median(per_sample),
           "decode_s_per_sample_range": [min(per_sample), max(per_sample)],
           "decode_tokens_per_s": statistics.median(tps) if tps else None,
           "decode_tokens_per_s_range": [min(tps), max(tps)] if tps else None,
           "new_tokens_per_sample": sum(c["new_tokens"] for c in calls) / sum(c["rows"] for c in calls)}
    if tps:
        where = f", {workers} processes side by side" if workers > 1 else ""
        log(f"{name}: decode {out['decode_tokens_per_s']:.0f} tokens/s (median of {len(calls)} calls of "
            f"{out['rows']} rows{where}, range {min(tps):.0f}-{max(tps):.0f}), "
            f"{out['decode_s_per_sample']:.4f} s/sample")
    return out


def samples_per_problem(cfg: DemoConfig, decode_s_per_sample: dict[str, Optional[float]]) -> dict[str, int]:
    """Samples per test problem for each model, from each model's decode seconds per sample
    (``decode_speed``'s median). The teacher draws ``cfg.n_samples``; a student
    that is m times as fast per sample draws ``n_samples * 2**round(log2(m))``, so that at the
    teacher's largest budget it holds about as many samples as those seconds buy. The factor is
    at least 1 and at most ``max_budget_factor`` and ``batch_problems`` (so every model's engine
    calls hold the same rows). Without ``match_budget``, or without a timing, every model draws
    n_samples."""
    teacher = decode_s_per_sample.get("teacher")
    out = {}
    for name, t in decode_s_per_sample.items():
        factor = 1
        if cfg.match_budget and name != "teacher" and teacher and t:
            factor = 2 ** max(0, round(math.log2(teacher / t)))
            factor = min(factor, cfg.max_budget_factor, cfg.batch_problems)  # rows per call stay equal
        out[name] = cfg.n_samples * factor
    return out


def orm_stage(teacher_dir: Path, task: Any, examples: list, out_dir: Path, temperature: float,
              cfg: DemoConfig, log: Callable[[str], None] = print, train: bool = True) -> dict[str, Any]:
    """Sample the teacher on TRAIN problems, grade the samples and train an ORM on them (unless
    ``train`` is false: the PRM verifier needs only the samples)."""
    path = out_dir / "teacher_train_samples.jsonl"
    rep = sample_file(teacher_dir, task, examples, path, "teacher", cfg.orm_samples, temperature, cfg, log)
    if not train:
        return {"problems": rep["written"] + rep["skipped"], "trained": False}
    return train_orm_stage(teacher_dir, task, path, out_dir / "model", cfg, log)


def train_orm_stage(teacher_dir: Path, task: Any, samples: Path, out_dir: Path, cfg: DemoConfig,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """An ORM (a head on the frozen teacher) trained on graded teacher samples of TRAIN problems."""
    from ..eval.grading import grade_rows
    from ..eval.io import read_jsonl
    from ..eval.rewards import OutcomeRewardModel, TrainRMConfig, balanced_examples, load_backbone, train_orm

    rows = grade_rows(task, read_jsonl(samples), str(samples))
    n_pos = sum(bool(r["correct"]) for r in rows)
    rmcfg = TrainRMConfig(epochs=20, lr=3e-3, batch_size=32, seed=cfg.seed)
    gold_added = 0
    if n_pos == 0:  # a weak teacher (e.g. --quick): its problems' gold solutions are the positives
        seen = set()
        for r in rows:
            if r["problem_id"] not in seen:
                seen.add(r["problem_id"])
                rows.append({**r, "completion": " " + r["gold"], "correct": True})
                gold_added += 1
        log(f"ORM: no correct teacher sample; using {gold_added} gold train solutions as positives")
    data = balanced_examples(rows, rmcfg.seed)
    backbone, tok = load_backbone(str(teacher_dir), "thinkfast")
    orm = OutcomeRewardModel(backbone, tok, max_len=backbone.config.max_seq_len, backbone_path=str(teacher_dir))
    losses = train_orm(orm, data, rmcfg)
    orm.save(out_dir, save_backbone=False)
    log(f"ORM: {len(data)} balanced examples from {len(rows)} samples ({n_pos} correct), "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return {"examples": len(data), "samples": len(rows) - gold_added, "correct": n_pos, "gold_positives": gold_added,
            "loss": losses}


def prm_stage(teacher_dir: Path, task: Any, examples: list, samples: Path, out_dir: Path, temperature: float,
              cfg: DemoConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """A process reward model (``eval.prm.train_prm_from_samples``: Math-Shepherd step labels from
    ``cfg.prm_rollouts`` teacher rollouts per step, a head on the frozen teacher) trained on the
    ORM stage's graded teacher samples of TRAIN problems (``samples``; the first ``prm_samples``
    of each of its first ``prm_problems`` problems), into ``out_dir``."""
    from ..eval.grading import grade_rows
    from ..eval.io import read_jsonl
    from ..eval.prm import PRMRecipe, train_prm_from_samples

    rows = grade_rows(task, read_jsonl(samples), str(samples))
    recipe = PRMRecipe(problems=cfg.prm_problems, samples_per_problem=cfg.prm_samples,
                       rollouts=cfg.prm_rollouts, temperature=temperature, max_new_tokens=cfg.max_new_tokens,
                       split="line", aggregate=cfg.prm_aggregate, seed=cfg.seed, add_bos=TASK_FORMAT["add_bos"],
                       batch_rows=cfg.batch_problems * cfg.n_samples)
    summary = train_prm_from_samples(teacher_dir, task, rows, out_dir, recipe,
                                     examples={e.id: e for e in examples}, log=log)
    return {k: v for k, v in summary.items() if k != "recipe"}


def score_stage(task: Any, raw: Path, scored: Path, orm_dir: Path, kind: str = "orm",
                aggregate: str = "min") -> dict[str, Any]:
    """Grade the samples in ``raw`` and add the verifier's scores: ``thinkfast grade`` then ``thinkfast
    score --kind KIND --aggregate AGGREGATE`` (``orm``, or ``thinkfast-prm`` for the demo's PRM,
    which scores a chain by its steps' min or last), into ``scored``."""
    from ..eval.grading import grade_rows, summarize
    from ..eval.io import read_jsonl, write_jsonl_atomic
    from ..eval.rewards import load_scorer, score_rows

    rows = grade_rows(task, read_jsonl(raw), str(raw))
    rows, failed = score_rows(load_scorer(str(orm_dir), kind, aggregate), rows, batch_size=32)
    write_jsonl_atomic(scored, rows)
    return {"grading": summarize(rows).to_dict(), "unscored": failed}

