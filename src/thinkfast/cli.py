"""The ``thinkfast`` command: a table of subcommands, each a thin entry point.

Every entry names a module exposing ``add_arguments(parser)`` and ``run(args) -> int``; the
module is imported only when its subcommand runs, so start-up stays fast and an optional
dependency of one command never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Must precede the first torch import to reach OpenMP; see runtime.configure_threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("thinkfast.commands.demo", "run the whole study on one CPU and write a report"),
    "convert": ("thinkfast.commands.convert", "import a Hugging Face Llama checkpoint"),
    "generate": ("thinkfast.commands.generate", "sample completions for prompts given on the command line"),
    "bench": ("thinkfast.commands.bench", "decode throughput and memory, side by side with transformers"),
    "distill": ("thinkfast.commands.distill", "run a distillation / SFT / pretraining recipe"),
    "sample": ("thinkfast.commands.sample", "sample n completions per problem of a task to JSONL"),
    "grade": ("thinkfast.commands.grade", "grade completions against gold answers"),
    "score": ("thinkfast.commands.score", "add reward-model scores to a samples file"),
    "merge": ("thinkfast.commands.merge", "merge the shard files of a sharded sample / grade / score run"),
    "train-rm": ("thinkfast.commands.train_rm", "train an outcome reward model on graded samples"),
    "train-prm": ("thinkfast.commands.train_prm", "train a process reward model, step labels from rollouts"),
    "evaluate": ("thinkfast.commands.evaluate", "metrics, budgets and the Pareto front to JSON"),
    "report": ("thinkfast.commands.report", "Markdown report with plots from evaluated runs"),
    "select-layers": ("thinkfast.commands.select_layers", "score the teacher's layers and choose the attention "
                      "layers a hybrid keeps (layers.json)"),
    "compress": ("thinkfast.commands.compress", "a narrower student through trained width projections (RED)"),
    "erank": ("thinkfast.commands.erank", "per-layer effective rank of hidden states, models side by side"),
    "tokenize": ("thinkfast.commands.tokenize", "tokenise training data once into a memory-mapped token store"),
    "export": ("thinkfast.commands.export", "write a student as a transformers / vLLM checkpoint (Llama, "
               "GraniteMoeHybrid, Llamba)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"thinkfast {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    from .runtime import UserError, configure_threads

    configure_threads(getattr(args, "threads", None))
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"thinkfast {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"thinkfast {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
