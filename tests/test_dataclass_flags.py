"""Flags built from a config dataclass (``commands.args.add_dataclass_arguments``): each takes the
field's default, type and attribute docstring, so a command's flags and its config cannot drift."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from dataclasses import dataclass
from typing import Optional

import pytest

from thinkfast.commands.args import (add_dataclass_arguments, dataclass_from_args, field_docstrings,
                                     positive_int)


@dataclass
class Settings:
    count: int = 3
    """How many: a docstring
    over two lines."""
    rate: float = 0.5
    name: str = "x"
    cap: Optional[int] = None
    """At most this many (100% of them when unset)."""
    verbose: bool = False
    """Say more."""


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_dataclass_arguments(p, Settings, ["count", "rate", "name", "cap", "verbose"], **kw)
    return p


def test_flags_take_the_fields_defaults_types_and_docstrings():
    p = _parser()
    args = p.parse_args([])
    assert dataclass_from_args(Settings, args, ["count", "rate", "name", "cap", "verbose"]) == Settings()
    args = p.parse_args(["--count", "7", "--rate", "2", "--cap", "9", "--verbose", "--name", "y"])
    assert (args.count, args.rate, args.cap, args.verbose, args.name) == (7, 2.0, 9, True, "y")
    assert isinstance(args.rate, float)
    text = p.format_help()
    assert "How many: a docstring over two lines (default 3)" in " ".join(text.split())
    assert "100% of them when unset" in text and "Say more" in text


def test_overrides_of_type_default_and_help():
    p = _parser(types={"count": positive_int}, defaults={"count": 10}, help={"rate": "how fast"})
    assert p.parse_args([]).count == 10
    with pytest.raises(argparse.ArgumentError, match="must be an integer >= 1"):
        p.parse_args(["--count", "0"])  # the bounded type's usage error
    assert "how fast (default 0.5)" in " ".join(p.format_help().split())


def test_a_field_the_class_lacks_or_without_a_default_is_an_error():
    @dataclass
    class NoDefault:
        n: int

    with pytest.raises(KeyError):
        add_dataclass_arguments(argparse.ArgumentParser(), Settings, ["nothing"])
    with pytest.raises(TypeError, match="no default"):
        add_dataclass_arguments(argparse.ArgumentParser(), NoDefault, ["n"])
    add_dataclass_arguments(argparse.ArgumentParser(), NoDefault, ["n"], defaults={"n": 1})


def test_docstrings_of_a_dataclass_and_its_bases():
    from thinkfast.compress.config import CompressLoss
    from thinkfast.distill.config import LossConfig

    docs = field_docstrings(LossConfig)
    assert docs["hidden_weight"].startswith("Weight of the MSE")  # from LossWeights
    assert docs["kind"].startswith("KL direction")
    assert field_docstrings(CompressLoss)["hidden_weight"].startswith("MSE between each student block")


SAMPLE = ["n", "temperature", "top_p", "top_k", "max_new_tokens", "seed"]
EVALUATE = ["reward_key", "n_boot", "max_subsets", "seed"]
TRAIN_RM = ["epochs", "lr", "batch_size", "max_per_class", "train_backbone", "seed"]
SELECT = ["eval", "eval_fraction", "format", "prompt_template", "response_template", "seq_len", "max_examples"]


@pytest.mark.parametrize("command,cls,built,argv", [
    ("sample", "thinkfast.eval.sampling:SampleSettings", SAMPLE,
     ["--model", "m", "--task", "synthetic", "--out", "o.jsonl"]),
    ("evaluate", "thinkfast.eval.evaluation:EvalSettings", EVALUATE, ["runs.jsonl", "--out", "m.json"]),
    ("train_rm", "thinkfast.eval.rewards:TrainRMConfig", TRAIN_RM, ["in.jsonl", "--backbone", "b", "--out", "orm"]),
    ("select_layers", "thinkfast.data.dataset:DataConfig", SELECT,
     ["--teacher", ".", "--data", "d.jsonl", "--method", "loo", "--keep", "1", "--out", "l.json"]),
])
def test_the_commands_flags_default_to_their_configs(command, cls, built, argv, tmp_path, monkeypatch):
    """Every flag a command builds from its config has the config's default (``sample --n``, which
    SampleSettings leaves to the caller, is the command's own)."""
    monkeypatch.chdir(tmp_path)
    for name in ("runs.jsonl", "in.jsonl"):
        (tmp_path / name).write_text("")
    module = importlib.import_module(f"thinkfast.commands.{command}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    mod, name = cls.split(":")
    config = getattr(importlib.import_module(mod), name)
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert set(built) <= {a.dest for a in parser._actions}
    assert getattr(module, "SETTINGS", getattr(module, "DATA", None)) in (built, None)
    for dest in built:
        f = fields[dest]
        if f.default is dataclasses.MISSING:
            assert (command, dest) == ("sample", "n") and args.n == 64
        else:
            assert getattr(args, dest) == f.default, dest
