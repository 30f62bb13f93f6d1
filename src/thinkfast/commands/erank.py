"""``thinkfast erank --model A [B ...] --data FILE``: per-layer effective rank of hidden states
(Roy-Vetterli eRank and Diff-eRank's covariance eRank), models side by side, optionally plotted."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .args import add_threads, data_source, existing_dir, output_file, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", required=True, help="thinkfast model directories")
    parser.add_argument("--data", required=True, type=data_source, help="JSONL rows (formatted like training data)")
    parser.add_argument("--tokenizer", type=existing_dir, default=None, help="tokenizer directory (default: the first model's)")
    parser.add_argument("--format", default="auto", help="row format (see data.format of a recipe)")
    parser.add_argument("--prompt-template", default=None, help='e.g. "Question: {question}\\nAnswer:"')
    parser.add_argument("--response-template", default=None, help='e.g. " {answer}\\n\\n"')
    parser.add_argument("--no-bos", action="store_true", help="do not add BOS to each example")
    parser.add_argument("--no-eos", action="store_true", help="do not add EOS to each example")
    parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per row")
    parser.add_argument("--no-pack", action="store_true",
                        help="one example per row (right-padded, cut at --seq-len; padding is not counted), "
                             "as the demo teacher was trained; default: examples packed back to back")
    parser.add_argument("--sequences", type=positive_int, default=32, help="rows measured (the first ones)")
    parser.add_argument("--out", type=output_file, default=None, help="write results: .json, or .png (plot, plus .json beside it)")
    add_threads(parser)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "erank", "eRank (Roy-Vetterli)"),
                           (axes[1], "cov_erank", "covariance eRank (Diff-eRank)")):
        for name, r in results.items():
            ax.plot(range(len(r[key])), r[key], marker="o", label=name)
        ax.set_xticks(range(max(len(r[key]) for r in results.values())))
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")  # the suffix tells matplotlib the format
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_pretrained, load_tokenizer
    from ..compress.erank import per_layer_erank
    from ..config import atomic_write_text
    from ..data.dataset import DataConfig, load_data

    models = {}
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    for path in args.model:
        model, tok = load_pretrained(path)
        models[path] = model
        tokenizer = tokenizer or tok
    dcfg = DataConfig(train=args.data, eval_fraction=0.0, format=args.format, prompt_template=args.prompt_template,
                      response_template=args.response_template, loss_on="all", seq_len=args.seq_len,
                      add_bos=not args.no_bos, add_eos=not args.no_eos, pack=not args.no_pack)
    blocks = load_data(dcfg, tokenizer, min(m.config.vocab_size for m in models.values())).train
    idx = list(range(min(args.sequences, len(blocks))))
    batches = [blocks.batch(idx[i:i + 8]) for i in range(0, len(idx), 8)]
    results = {name: per_layer_erank(m, batches) | {"d_model": m.config.d_model} for name, m in models.items()}
    names = list(results)
    n_layers = max(len(r["erank"]) for r in results.values())
    print(f"tokens: {next(iter(results.values()))['tokens']}; layer 0 = embeddings, i = output of block i")
    for i, name in enumerate(names):
        print(f"  [{i}] {name} (d_model {results[name]['d_model']})")
    head = "layer " + "".join(f"  eRank[{i}] covR[{i}]" for i in range(len(names)))
    print(head)
    for layer in range(n_layers):
        cells = []
        for name in names:
            r = results[name]
            cells.append(f"{r['erank'][layer]:10.2f} {r['cov_erank'][layer]:8.2f}" if layer < len(r["erank"])
                         else f"{'-':>10} {'-':>8}")
        print(f"{layer:5d} " + "".join("  " + c for c in cells))
    if args.out:
        out = Path(args.out)
        js = out if out.suffix == ".json" else out.with_suffix(".json")
        atomic_write_text(js, json.dumps(results, indent=2) + "\n")
        if out.suffix != ".json":
            _plot(results, out)
        print(f"wrote {out}" + (f" and {js}" if js != out else ""))
    return 0
