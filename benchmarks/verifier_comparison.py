"""Verifiers for the demo teacher's samples, side by side: majority vote, the demo's ORM (a head
on the frozen teacher), the ORM with its backbone fine-tuned, and a Math-Shepherd PRM (step
labels from Monte-Carlo rollouts, no human labels; frozen head and fine-tuned) scored by its
minimum or its last step; each as Best-of-k and as weighted majority, k = 1..32, with 95%
bootstrap intervals over problems.

Training data is the demo's: its ORM problems (train problems 32..191) sampled 8 times at the
teacher's temperature; the PRM labels the first ``--prm-problems`` of them x ``--prm-samples``
samples with ``--rollouts`` continuations per step. Verifiers are CHOSEN on validation problems
(train-split problems after the demo's n_train, as benchmarks/teacher_coverage.py draws them);
the same table on the demo's test problems is reported after the choice, never used for it.

    OMP_NUM_THREADS=1 python benchmarks/verifier_comparison.py OUT [--n-val 100] [--split val|test|both]

Writes OUT/result.json (every figure and the seconds of every stage). A rerun on the same OUT reuses
every finished stage whose settings match: samples, PRM labels, trained verifiers, scores.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from thinkfast.config import atomic_write_text
from thinkfast.data import synthetic as syn
from thinkfast.demo import SHIPPED_TEACHER, DemoConfig, demo_task, demo_task_config, sample_file, teacher_train_problems
from thinkfast.eval.grading import grade_rows
from thinkfast.eval.io import read_jsonl
from thinkfast.eval.metrics import (best_of_n_at_k, group_answers, majority_at_k, mean_ci, pass_at_k,
                                    weighted_best_of_n_at_k)
from thinkfast.eval.prm import (PRMRecipe, StepRewardModel, TrainPRMConfig, engine_rollout_fn, label_rows, train_prm)
from thinkfast.eval.rewards import OutcomeRewardModel, TrainRMConfig, balanced_examples, load_backbone, train_orm

KS = (1, 2, 4, 8, 16, 32)


def by_problem(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["problem_id"]].append(r)
    return out


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a correct sample outscores an incorrect one), over all pairs (ties count half)."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None]
    return float(((p > n) + 0.5 * (p == n)).mean())


def table(rows: list[dict], scorers: list[str], n_boot: int, seed: int) -> dict:
    """Per method and k: mean and 95% interval over problems."""
    probs = by_problem(rows)
    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rs in probs.values():
        rs = sorted(rs, key=lambda r: r["sample_index"])
        groups = group_answers([r["pred"] for r in rs], key=str, same=lambda a, b: a == b)
        correct = [bool(r["correct"]) for r in rs]
        n = len(rs)
        for k in KS:
            if k > n:
                continue
            per["coverage"][k].append(pass_at_k(n, sum(correct), k))
            per["majority"][k].append(majority_at_k(groups, correct, k, seed=seed))
            for s in scorers:
                rew = [r[s] for r in rs]
                per[f"BoN {s}"][k].append(best_of_n_at_k(rew, correct, k))
                per[f"weighted {s}"][k].append(weighted_best_of_n_at_k(groups, rew, correct, k, seed=seed))
    out = {m: {str(k): mean_ci(v, n_boot=n_boot, seed=seed) for k, v in ks.items()} for m, ks in per.items()}
    out["auc"] = {s: auc([r[s] for r in rows if r["correct"]], [r[s] for r in rows if not r["correct"]])
                  for s in scorers}
    out["problems"] = len(probs)
    return out


def print_table(name: str, t: dict) -> None:
    print(f"\n{name} ({t['problems']} problems); mean [95% interval], %")
    print("| method | " + " | ".join(f"k={k}" for k in KS) + " |")
    print("|---|" + "---|" * len(KS))
    for m, ks in t.items():
        if m in ("auc", "problems"):
            continue
        cells = [f"{100 * ks[str(k)]['mean']:.1f} [{100 * ks[str(k)]['lo']:.0f}, {100 * ks[str(k)]['hi']:.0f}]"
                 if str(k) in ks else "" for k in KS]
        print(f"| {m} | " + " | ".join(cells) + " |")
    print("AUC: " + ", ".join(f"{s} {v:.3f}" for s, v in t["auc"].items() if v is not None))


def read_cache(path: Path, spec: dict) -> dict | None:
    """``path``'s JSON if it exists and was written for ``spec``, else None."""
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return d if d.get("spec") == spec else None


def write_json(path: Path, d: dict) -> None:
    atomic_write_text(path, json.dumps(d) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--teacher", type=Path, default=SHIPPED_TEACHER)
    ap.add_argument("--temperature", type=float, default=0.6, help="the demo's chosen teacher temperature")
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--split", choices=("val", "test", "both"), default="both")
    ap.add_argument("--prm-problems", type=int, default=128)
    ap.add_argument("--prm-samples", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--prm-label", choices=("soft", "hard"), default="soft")
    ap.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned ORM and PRM (the slow ones)")
    ap.add_argument("--ft-epochs", type=int, default=3, help="epochs of the fine-tuned ORM and PRM")
    ap.add_argument("--ft-lr", type=float, default=3e-4, help="learning rate of the fine-tuned ORM and PRM")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out
    (out / "data").mkdir(parents=True, exist_ok=True)
    cfg, meta = DemoConfig(), demo_task_config()
    task = demo_task(meta)
    # Finished stages are reused: samples resume (``run_sampling``), the PRM labels, every trained
    # verifier (OUT/models/NAME, with NAME.json holding its settings) and every split's scores
    # (OUT/scores/NAME_SPLIT.json) are read back when their settings match. A stage's seconds are
    # those of the run that did it (OUT/seconds.json).
    seconds_path = out / "seconds.json"
    seconds: dict[str, float] = json.loads(seconds_path.read_text()) if seconds_path.exists() else {}

    def timed(name, fn, keep=lambda r: True):
        t0 = time.perf_counter()
        r = fn()
        if keep(r):
            seconds[name] = round(time.perf_counter() - t0, 1)
            write_json(seconds_path, seconds)
        print(f"[{name}: {seconds.get(name)} s]", flush=True)
        return r

    def sampled(r: dict) -> bool:  # a sampling stage that wrote nothing was reused
        return r["written"] > 0

    # --- problems: the demo's ORM train problems, validation problems, the demo's test problems
    train_all = syn.generate(task.config, "train", cfg.n_train + args.n_val, seed=meta["seed"])
    syn.write_jsonl(train_all[cfg.temp_problems: cfg.temp_problems + cfg.orm_problems], out / "data" / "train.jsonl")
    val = train_all[cfg.n_train:]
    if meta.get("teacher_train"):  # validation problems the teacher trained on are dropped
        seen = {p.question for p in teacher_train_problems(meta, cfg.n_train)}
        val = [p for p in val if p.question not in seen]
    syn.write_jsonl(val, out / "data" / "val.jsonl")
    syn.write_jsonl(syn.generate(task.config, "test", cfg.n_test, seed=meta["seed"]), out / "data" / "test.jsonl")
    train_ex = task.load("train", path=str(out / "data" / "train.jsonl"))

    # --- training samples, as the demo's ORM stage draws them
    train_path = out / "teacher_train_samples.jsonl"
    timed("sample_train", lambda: sample_file(args.teacher, task, train_ex, train_path, "teacher", cfg.orm_samples,
                                              args.temperature, cfg, print), sampled)
    train_rows = grade_rows(task, read_jsonl(train_path), str(train_path))
    base_spec = {"teacher": str(args.teacher), "temperature": args.temperature, "seed": args.seed,
                 "train_samples": len(train_rows)}

    # name -> (spec, loader): the loader returns the trained model, training it if no saved one matches
    verifiers: dict[str, tuple[dict, object]] = {}
    info: dict[str, object] = {}

    def trained(name: str, spec: dict, cls, train) -> object:
        """The verifier ``name``: read back from OUT/models if trained with ``spec``, else trained
        (``train(model)`` returns the epochs' losses) and saved (backbone too if fine-tuned)."""
        model_dir, meta_path = out / "models" / name, out / "models" / f"{name}.json"
        done = read_cache(meta_path, spec)
        if done is not None and model_dir.exists():
            info[name] = done["info"]
            print(f"[{name}: reusing {model_dir}]", flush=True)
            return cls.load(model_dir)
        m = train()
        m.save(model_dir, save_backbone=spec["train_backbone"])
        write_json(meta_path, {"spec": spec, "info": info[name]})
        return m

    def known(name: str, spec: dict) -> None:  # a saved verifier's training figures, even if it is not loaded
        done = read_cache(out / "models" / f"{name}.json", spec)
        if done is not None:
            info[name] = done["info"]

    def orm(name: str, rmcfg: TrainRMConfig) -> None:
        spec = {**base_spec, "kind": "orm", **vars(rmcfg)}

        def train():
            bb, tk = load_backbone(str(args.teacher), "thinkfast")
            m = OutcomeRewardModel(bb, tk, max_len=bb.config.max_seq_len, backbone_path=str(args.teacher))
            data = balanced_examples(train_rows, rmcfg.seed)
            losses = timed(f"train_{name}", lambda: train_orm(m, data, rmcfg, log=print))
            info[name] = {"examples": len(data), "loss_first_last": [losses[0], losses[-1]]}
            return m

        verifiers[name] = (spec, lambda: trained(name, spec, OutcomeRewardModel, train))
        known(name, spec)

    orm("orm", TrainRMConfig(epochs=20, lr=3e-3, batch_size=32, seed=args.seed))
    if not args.no_finetune:
        orm("orm_ft", TrainRMConfig(epochs=args.ft_epochs, lr=args.ft_lr, batch_size=32, seed=args.seed,
                                    train_backbone=True))

    # --- PRM labels: rollouts from every step of a subset of the training samples
    pids = list(dict.fromkeys(r["problem_id"] for r in train_rows))[: args.prm_problems]
    keep = set(pids)
    prm_rows = [r for r in train_rows if r["problem_id"] in keep and r["sample_index"] < args.prm_samples]
    labels_path = out / "prm_labels.jsonl"
    label_spec = {**base_spec, "prm_problems": args.prm_problems, "prm_samples": args.prm_samples,
                  "rollouts": args.rollouts}
    if read_cache(out / "prm_labels.json", label_spec) is not None and labels_path.exists():
        labelled = list(read_jsonl(labels_path))
    else:
        backbone, tok = load_backbone(str(args.teacher), "thinkfast")
        examples = {e.id: e for e in train_ex}
        fn = engine_rollout_fn(backbone, tok, task, examples, args.temperature, cfg.max_new_tokens, seed=args.seed)
        labelled = timed("prm_label", lambda: label_rows(prm_rows, fn, args.rollouts, "line"))
        atomic_write_text(labels_path, "".join(json.dumps(d) + "\n" for d in labelled))
        write_json(out / "prm_labels.json", {"spec": label_spec})
    n_steps = sum(len(d["soft"]) for d in labelled)
    info["prm_labels"] = {"samples": len(labelled), "steps": n_steps, "rollouts": args.rollouts,
                          "correct_samples": sum(d["correct"] for d in labelled),
                          "mean_soft": sum(sum(d["soft"]) for d in labelled) / n_steps,
                          "mean_hard": sum(sum(d["hard"]) for d in labelled) / n_steps}
    print(info["prm_labels"])

    def prm(name: str, pcfg: TrainPRMConfig) -> None:
        spec = {**label_spec, "kind": "prm", "label_steps": n_steps, **vars(pcfg)}

        def train():
            bb, tk = load_backbone(str(args.teacher), "thinkfast")
            m = StepRewardModel(bb, tk, "line", "min", max_len=bb.config.max_seq_len, backbone_path=str(args.teacher))
            losses = timed(f"train_{name}", lambda: train_prm(m, labelled, pcfg, log=print))
            info[name] = {"loss_first_last": [losses[0], losses[-1]]}
            return m

        verifiers[name] = (spec, lambda: trained(name, spec, StepRewardModel, train))
        known(name, spec)

    prm("prm", TrainPRMConfig(epochs=20, lr=3e-3, batch_size=32, seed=args.seed, label=args.prm_label))
    if not args.no_finetune:
        prm("prm_ft", TrainPRMConfig(epochs=args.ft_epochs, lr=args.ft_lr, batch_size=32, seed=args.seed,
                                     label=args.prm_label, train_backbone=True))

    # --- score the samples of each evaluation split
    splits = ("val", "test") if args.split == "both" else (args.split,)
    models: dict[str, object] = {}

    def model(name: str):
        if name not in models:
            models[name] = verifiers[name][1]()
        return models[name]

    split_rows = {}
    for split in splits:  # train every verifier before sampling: a run's seconds come in the same order
        exs = task.load("test", path=str(out / "data" / f"{split}.jsonl"))[: args.n_val if split == "val" else None]
        split_rows[split] = exs
        for name, (spec, _) in verifiers.items():
            if read_cache(out / "scores" / f"{name}_{split}.json", {**spec, "split": split}) is None:
                model(name)
    result = {"temperature": args.temperature, "n_samples": args.n_samples, "prm_problems": args.prm_problems,
              "prm_samples": args.prm_samples, "rollouts": args.rollouts, "prm_label": args.prm_label,
              "ft_epochs": None if args.no_finetune else args.ft_epochs, "ft_lr": args.ft_lr, "train": info,
              "splits": {}}
    for split in splits:
        exs = split_rows[split]
        path = out / f"{split}_samples_T{args.temperature}.jsonl"
        timed(f"sample_{split}", lambda: sample_file(args.teacher, task, exs, path, "teacher", args.n_samples,
                                                     args.temperature, cfg, print), sampled)
        rows = grade_rows(task, read_jsonl(path), str(path))
        qs, cs = [r["question"] for r in rows], [r["completion"] for r in rows]
        keys = [[r["problem_id"], r["sample_index"]] for r in rows]
        names = []
        for name, (spec, _) in verifiers.items():
            score_path, score_spec = out / "scores" / f"{name}_{split}.json", {**spec, "split": split}
            done = read_cache(score_path, score_spec)
            if done is not None and done["keys"] == keys:
                scores = done["scores"]
                print(f"[score_{name}_{split}: reusing {score_path}]", flush=True)
            else:
                m = model(name)
                if isinstance(m, StepRewardModel):  # per row: its steps' scores
                    scores = timed(f"score_{name}_{split}", lambda: m.step_scores_batch(qs, cs, batch_size=32))
                else:
                    scores = timed(f"score_{name}_{split}", lambda: m.score(qs, cs, batch_size=32))
                write_json(score_path, {"spec": score_spec, "keys": keys, "scores": scores})
            if spec["kind"] == "prm":
                for r, s in zip(rows, scores):
                    r[f"{name}_min"] = min(s) if s else 0.0
                    r[f"{name}_last"] = s[-1] if s else 0.0
                names += [f"{name}_min", f"{name}_last"]
            else:
                for r, s in zip(rows, scores):
                    r[name] = s
                names.append(name)
        t = table(rows, names, args.n_boot, args.seed)
        result["splits"][split] = t
        print_table(split, t)
        result["seconds"] = seconds  # written after each split: validation's figures come first
        atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
