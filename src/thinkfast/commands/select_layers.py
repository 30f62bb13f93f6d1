"""``thinkfast select-layers``: score the teacher's layers and write the attention layers to keep.

    thinkfast select-layers --teacher runs/teacher/model --data train.jsonl --method loo --keep 0.25 \\
        --out layers.json
    thinkfast distill --config recipe.yaml student.keep=layers.json

kl-guided trains one short distillation per layer under OUT's stem + ".runs/" (resumable); it
runs unchanged under ``torchrun --nproc_per_node N -m thinkfast.cli select-layers ...``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..data.dataset import DataConfig
from .args import (add_dataclass_arguments, add_threads, dataclass_from_args, existing_dir, fraction,
                   non_negative_int, output_dir, output_file, positive_float, positive_int)

DATA = ["eval", "eval_fraction", "format", "prompt_template", "response_template", "seq_len", "max_examples"]
"""The ``DataConfig`` fields that are flags (``--loss-on``, ``--seed`` and the ``--no-*`` switches
fill the others)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, type=existing_dir, help="thinkfast model directory of the teacher")
    parser.add_argument("--data", required=True, help="JSONL rows (the distillation data); held-out text is "
                        "split off it by --eval-fraction unless --eval is given")
    parser.add_argument("--method", required=True, choices=("uniform", "loo", "kl-guided"))
    parser.add_argument("--keep", required=True, help="attention layers to keep: a count K or a fraction in (0, 1)")
    parser.add_argument("--out", required=True, type=output_file, help="layers.json to write (accepted by distill's student.keep)")
    parser.add_argument("--tokenizer", type=existing_dir, default=None, help="tokenizer dir (default: beside the teacher)")
    d = parser.add_argument_group("data (as in a distill recipe's data section)")
    add_dataclass_arguments(d, DataConfig, DATA[:5], types={"eval_fraction": fraction})
    d.add_argument("--no-bos", action="store_true", help="add_bos: false")
    d.add_argument("--no-eos", action="store_true", help="add_eos: false")
    d.add_argument("--loss-on", default="response", choices=("response", "all"),
                   help="which tokens are trained on and counted in the KL")
    add_dataclass_arguments(d, DataConfig, DATA[5:6], types={"seq_len": positive_int})
    d.add_argument("--no-pack", action="store_true",
                   help="pack: false, one example per row (right-padded, cut at --seq-len), as the demo teacher "
                        "was trained; default: examples packed back to back")
    add_dataclass_arguments(d, DataConfig, DATA[6:], types={"max_examples": positive_int})
    d.add_argument("--eval-blocks", type=positive_int, default=None, help="score on at most this many held-out blocks")
    s = parser.add_argument_group("students")
    s.add_argument("--kind", default="mamba2", choices=("mamba2", "discrete"))
    s.add_argument("--seed", type=non_negative_int, default=0, help="Mamba init, data order and held-out split")
    k = parser.add_argument_group("kl-guided training (the same for every layer)")
    k.add_argument("--steps", type=positive_int, default=100)
    k.add_argument("--batch-size", type=positive_int, default=8)
    k.add_argument("--lr", type=positive_float, default=1e-3)
    k.add_argument("--loss", default="reverse", choices=("reverse", "forward"), help="KL direction of the training")
    k.add_argument("--base", type=existing_dir, default=None, help="an all-Mamba student dir (e.g. after MOHAWK stages 1-2) to "
                   "restore layers into; default: attention-initialised from the teacher")
    k.add_argument("--work-dir", type=output_dir, default=None, help="per-layer runs (default: OUT without .json + '.runs')")
    k.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    add_threads(parser)


def _table(doc: dict) -> str:
    details = doc["details"]
    cols = ["layer", "score"] + list(details) + ["kept"]
    lines = ["  ".join(f"{c:>10}" for c in cols)]
    for i, score in enumerate(doc["scores"]):
        vals = [score] + [details[c][i] for c in details]
        cells = [f"{i:>10}"] + [f"{'-':>10}" if v is None else f"{v:>10.5g}" for v in vals]
        cells.append(f"{'A' if i in doc['layers'] else '':>10}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model, load_tokenizer
    from ..config import ConfigError
    from ..data.dataset import load_data
    from ..data.jsonl import DataError
    from ..runtime import UserError
    from ..select import layers as S

    teacher = load_model(args.teacher).eval()
    n = teacher.config.n_layers
    k = S.keep_count(args.keep, n)
    try:
        data = dataclass_from_args(DataConfig, args, DATA, train=args.data, loss_on=args.loss_on,
                                   add_bos=not args.no_bos, add_eos=not args.no_eos, seed=args.seed,
                                   pack=not args.no_pack)
    except ConfigError as e:
        raise UserError(str(e)) from None
    progress = not args.no_progress
    if args.method == "uniform":
        result = S.uniform_scores(teacher, k)
    else:
        try:
            bundle = load_data(data, load_tokenizer(args.tokenizer or args.teacher), teacher.config.vocab_size)
        except DataError as e:
            raise UserError(str(e)) from None
        if bundle.eval is None:
            raise UserError("no held-out text: give --eval or an --eval-fraction above 0")
        if args.method == "loo":
            result = S.loo_scores(teacher, bundle.eval, args.kind, args.seed, args.eval_blocks, progress=progress)
        else:
            work = args.work_dir or str(Path(args.out).with_suffix("")) + ".runs"
            train = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads}
            result = S.kl_guided_scores(args.teacher, data, work, args.kind, args.seed, train, args.loss,
                                        args.base, args.tokenizer, bundle.eval, args.eval_blocks,
                                        args.device, progress)
            if result is None:  # a torchrun rank other than 0: rank 0 writes the file
                return 0
    chosen, notes = S.choose_layers(result.scores, k)
    doc = S.layers_document(n, chosen, result, notes, keep=args.keep, teacher=os.path.abspath(args.teacher),
                            data=args.data, seq_len=args.seq_len, pack=not args.no_pack, kind=args.kind,
                            seed=args.seed)
    if args.method == "kl-guided":
        doc["training"] = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "loss": args.loss,
                           "seq_len": args.seq_len, "pack": not args.no_pack, "base": args.base}
    S.write_layers_json(args.out, doc)
    print(_table(doc))
    for note in notes:
        print(f"note: {note}")
    print(f"kept attention layers {chosen} (pattern {doc['pattern']}) -> {args.out}")
    return 0
