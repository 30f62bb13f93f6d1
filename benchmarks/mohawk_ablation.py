"""MOHAWK ablation: a Llamba student after stages 1-2-3 vs the same student after stage 3 alone,
at the same token budget, on a small teacher pretrained here on GSM8K solutions.

    OMP_NUM_THREADS=1 python benchmarks/mohawk_ablation.py --data /work/shared/data/gsm8k_train.jsonl \
        --out runs/mohawk_ablation

Everything goes through thinkfast's own recipe runner (``run_recipe``, the code behind
``thinkfast distill``): a byte-level BPE tokenizer trained on the data, a Llama teacher pretrained
with the ``lm`` objective, then two students initialised identically from its attention. Per
stage it reports tokens, wall time, final loss, and next-token agreement / KL against the
teacher on held-out rows (``data.eval_fraction`` of the file, never trained on). Results go to
OUT/results{TAG}.json and a Markdown table on stdout. ``--quick`` runs a few steps of everything
(a smoke test; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from thinkfast.checkpoint import load_model, load_tokenizer
from thinkfast.convert.from_attention import student_from_teacher
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.config import build_config
from thinkfast.distill.metrics import compare_to_teacher
from thinkfast.distill.recipe import run_recipe


def train_tokenizer(texts: list[str], vocab_size: int, out: Path):
    """A byte-level BPE tokenizer trained on ``texts``, saved in transformers' format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if (out / "tokenizer.json").exists():
        return load_tokenizer(out)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(str(out))
    return fast


def common(out: Path, data: str, seq_len: int, batch: int) -> dict:
    return {
        "out_dir": str(out),
        "data": {"train": data, "seq_len": seq_len, "loss_on": "all", "eval_fraction": 0.05, "seed": 0},
        "train": {"batch_size": batch, "progress": False, "log_every": 10, "save_every": 100, "eval_every": 0,
                  "eval_batches": 8, "schedule": "wsd", "warmup_steps": 10, "clip_grad": 1.0, "threads": 1},
    }


def stage_row(name: str, result: dict, scores: dict) -> dict:
    return {"stage": name, "tokens": result["tokens"], "wall_s": round(result["wall_s"], 1),
            "final_loss": round(result["final_loss"], 4), "eval_loss": round(result["eval_loss"], 4),
            "agreement": round(scores["agreement"], 4), "kl": round(scores["kl"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/gsm8k_train.jsonl")
    ap.add_argument("--out", default="runs/mohawk_ablation")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--steps", default="100,100,150", help="MOHAWK stage 1,2,3 steps")
    ap.add_argument("--stage1-seq-len", type=int, default=64)
    ap.add_argument("--mixer-init", default="attention", choices=["attention", "random"],
                    help="how both students' mixers start (random: without attention initialisation)")
    ap.add_argument("--tag", default="", help="suffix of the student directories (another split, same teacher)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    s1, s2, s3 = (int(x) for x in args.steps.split(","))
    if args.quick:
        args.teacher_steps, s1, s2, s3 = 4, 2, 2, 2
    T, B, T1 = args.seq_len, args.batch, args.stage1_seq_len

    rows = [json.loads(line) for line in open(args.data)]
    tok = train_tokenizer([f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows], 512, out / "tokenizer")

    teacher_cfg = common(out / "teacher", args.data, T, B)
    teacher_cfg.update(tokenizer=str(out / "tokenizer"), student={
        "init": "new", "seed": 0,
        "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "d_ff": 384, "max_seq_len": 512}})
    teacher_cfg["stages"] = [{"name": "pretrain", "objective": "lm",
                              "train": {"steps": args.teacher_steps, "lr": 3e-3, "weight_decay": 0.1}}]
    teacher_res = run_recipe(build_config(teacher_cfg))["results"][0]
    teacher_dir = out / "teacher" / "model"

    student = {"init": "teacher", "keep": 0.0, "kind": "discrete", "seed": 0, "mixer_init": args.mixer_init}
    kd_train = {"lr": 1e-3}
    mohawk = common(out / f"mohawk{args.tag}", args.data, T, B)
    mohawk.update(teacher=str(teacher_dir), student=student, stages=[
        {"name": "matrix", "objective": "matrix", "seq_len": T1, "train": {"steps": s1, "lr": 3e-3}},
        {"name": "hidden", "objective": "hidden", "train": {"steps": s2, "lr": 1e-3}},
        {"name": "kd", "objective": "kd", "loss": {"kind": "forward"}, "train": {"steps": s3, **kd_train}},
    ])
    mohawk_res = run_recipe(build_config(mohawk))["results"]
    budget = sum(r["tokens"] for r in mohawk_res)
    steps_only = max(1, round(budget / (B * T)))
    only = common(out / f"stage3_only{args.tag}", args.data, T, B)
    only.update(teacher=str(teacher_dir), student=student, stages=[
        {"name": "kd", "objective": "kd", "loss": {"kind": "forward"}, "train": {"steps": steps_only, **kd_train}}])
    only_res = run_recipe(build_config(only))["results"][0]

    # Held-out rows: the same split every recipe used (eval_fraction 0.05, seed 0).
    held = load_data(DataConfig(train=args.data, seq_len=T, loss_on="all", eval_fraction=0.05, seed=0), tok).eval
    teacher = load_model(teacher_dir)
    n_eval = 16 if args.quick else 64

    def score(model):
        t0 = time.perf_counter()
        s = compare_to_teacher(model, teacher, held, batch_size=8, max_blocks=n_eval)
        s["eval_s"] = time.perf_counter() - t0
        return s

    init = score(student_from_teacher(teacher, 0.0, "discrete", seed=0, mixer_init=args.mixer_init))
    table = [{"stage": "teacher (pretrain)", "tokens": teacher_res["tokens"], "wall_s": round(teacher_res["wall_s"], 1),
              "final_loss": round(teacher_res["final_loss"], 4), "eval_loss": round(teacher_res["eval_loss"], 4),
              "agreement": 1.0, "kl": 0.0, "teacher_ce_heldout": round(init["teacher_ce"], 4)},
             {"stage": f"llamba: {args.mixer_init} init (no training)", "tokens": 0, "wall_s": 0.0, "final_loss": None,
              "eval_loss": None, "agreement": round(init["agreement"], 4), "kl": round(init["kl"], 4)}]
    for name, r in zip(("matrix", "hidden", "kd"), mohawk_res):
        table.append(stage_row(f"llamba MOHAWK stage {name}", r, score(load_model(r["model_dir"]))))
    table.append(stage_row("llamba stage 3 only (same tokens)", only_res, score(load_model(only_res["model_dir"]))))
    summary = {"held_out_tokens": init["tokens"], "mohawk_tokens": budget, "stage3_only_tokens": only_res["tokens"],
               "rows": table, "args": vars(args)}
    (out / f"results{args.tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    cols = ["stage", "tokens", "wall_s", "final_loss", "eval_loss", "agreement", "kl"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in table:
        print("| " + " | ".join(str(row.get(c)) for c in cols) + " |")
    print(f"held-out positions scored: {init['tokens']}; teacher held-out CE {init['teacher_ce']:.4f}")


if __name__ == "__main__":
    main()
