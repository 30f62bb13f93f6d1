"""Argument types for the ``thinkfast`` commands: bad values are usage errors at parse time.

Pass one of these as ``type=`` to ``add_argument``. argparse turns the ``ArgumentTypeError`` they
raise into ``thinkfast CMD: error: argument --n: must be an integer >= 1, got '0'`` and exit
status 2, before any model is loaded, instead of a traceback from deep inside the run.

Numbers:  positive_int, non_negative_int, positive_float, non_negative_float, probability
          (0 < p <= 1), fraction (0 <= x < 1).
Paths:    existing_file, existing_dir, data_source (an existing file or ``hf:NAME``) for inputs;
          output_file, output_dir for outputs (an output file must not be an existing directory
          and the reverse; neither needs to exist).
Lists:    comma_list(*choices): "a,b" -> ["a", "b"], each one of ``choices``.
Pairs:    key_value: "KEY=VALUE" -> (key, value), the value read as a bool, None, int, float or
          JSON where it looks like one, else kept as text (``--vllm-arg``).
Sharding: add_shard_arguments(parser) adds ``--shard`` / ``--num-shards``; shard_spec(args)
          reads them (and torchrun's ranks) into an ``eval.shards.ShardSpec`` or None.
Engine:   add_engine_arguments(parser) adds the thinkfast engine's --sampler and its speed-only
          batching flags; engine_options(args) reads the latter.
Configs:  add_dataclass_arguments(parser, Cls, fields) adds one flag per field of a config
          dataclass (its default, type and attribute docstring); dataclass_from_args builds it back.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, Optional

from ..runtime import UserError

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float", "probability",
           "fraction", "existing_file", "existing_dir", "data_source", "output_file", "output_dir", "comma_list",
           "key_value", "add_shard_arguments", "shard_spec", "add_engine_arguments", "engine_options"]


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):  # float() accepts "nan" and "inf"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _bounded(parse: Callable[[str, str], Any], what: str, ok: Callable[[Any], bool], name: str):
    """An argparse type: ``parse`` the text, then require ``ok(value)``; errors say ``what``."""
    def check(text: str):
        value = parse(text, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    check.__name__ = name
    return check


positive_int = _bounded(_int, "an integer >= 1", lambda v: v >= 1, "positive_int")
non_negative_int = _bounded(_int, "an integer >= 0", lambda v: v >= 0, "non_negative_int")
positive_float = _bounded(_float, "a number > 0", lambda v: v > 0, "positive_float")
non_negative_float = _bounded(_float, "a number >= 0", lambda v: v >= 0, "non_negative_float")
probability = _bounded(_float, "a number in (0, 1]", lambda v: 0 < v <= 1, "probability")
"""A number in (0, 1], such as top-p."""
fraction = _bounded(_float, "a number in [0, 1)", lambda v: 0 <= v < 1, "fraction")
"""A number in [0, 1), such as a held-out share of the data."""


def existing_file(text: str) -> str:
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


def existing_dir(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    return text


def data_source(text: str) -> str:
    """Training-style data: a JSONL file, or ``hf:NAME[:CONFIG]`` (a Hugging Face dataset)."""
    return text if text.startswith("hf:") else existing_file(text)


def output_file(text: str) -> str:
    """A file to write: it may not exist yet, but it must not be a directory (nor lie in a file)."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name to write")
    _parent_is_not_a_file(text)
    return text


def output_dir(text: str) -> str:
    """A directory to write into: it may not exist yet, but it must not be a file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    _parent_is_not_a_file(text)
    return text


def _parent_is_not_a_file(text: str) -> None:
    parent = os.path.dirname(os.path.abspath(text))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, so nothing can be written under it")


def comma_list(*choices: str):
    """A type for "a,b,c": the list of names, each one of ``choices``, at least one."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(choices)}, got {text!r}")
        return names
    parse.__name__ = "comma_list"
    return parse


def add_threads(parser: argparse.ArgumentParser, default: Optional[int] = None, help: str = "") -> None:
    """The ``--threads`` flag every command has: PyTorch's intra-op threads (``cli.main`` applies
    it through ``runtime.configure_threads``; default all cores, or ``THINKFAST_THREADS``)."""
    parser.add_argument("--threads", type=positive_int, default=default,
                        help=help or "PyTorch intra-op threads (default: all cores, or THINKFAST_THREADS)")


def _scalar(text: str) -> Any:
    """A command-line value as the type it looks like: true/false, none/null, int, float, JSON
    (an object, list or quoted string); anything else is the text itself."""
    import json

    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for parse in (int, float):
        try:
            value = parse(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            break
        return value
    if text.strip()[:1] in ("{", "[", '"'):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{text!r} looks like JSON but does not parse: {e.msg} "
                                             f"at column {e.colno}") from None
    return text


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (KEY with dashes as underscores, VALUE read by type: see the module doc)."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE with KEY a name, got {text!r}")
    return key, _scalar(value)


def _shard_index(text: str) -> str:
    if text != "auto":
        non_negative_int(text)
    return text


def add_shard_arguments(parser: argparse.ArgumentParser, in_blocks: bool = False) -> None:
    """``--shard I --num-shards N`` (or ``--shard auto``: torchrun's RANK of WORLD_SIZE, the
    default under torchrun); see ``thinkfast.eval.shards``."""
    dealt = "blocks of --batch-problems problems" if in_blocks else "problems"
    parser.add_argument("--shard", type=_shard_index, default=None, metavar="I|auto",
                        help=f"process only shard I of --num-shards N: the {dealt} in order, dealt round-robin "
                             "(the k-th to shard k %% N); merge the shard files with `thinkfast merge`. auto = "
                             "torchrun's RANK of WORLD_SIZE, the default under torchrun")
    parser.add_argument("--num-shards", type=positive_int, default=None, metavar="N",
                        help="how many shards the run is split into (with --shard I)")


def shard_spec(args: argparse.Namespace, log: Callable[[str], None] = lambda s: None):
    """The ``ShardSpec`` of ``--shard`` / ``--num-shards`` (or torchrun's ranks), or None."""
    from ..eval.shards import resolve_shard

    return resolve_shard(getattr(args, "shard", None), getattr(args, "num_shards", None), log)


# --- flags from a dataclass ----------------------------------------------------------------------

def add_dataclass_arguments(parser: Any, cls: type, fields: list[str], types: Optional[dict[str, Any]] = None,
                            defaults: Optional[dict[str, Any]] = None,
                            help: Optional[dict[str, str]] = None) -> None:
    """One ``--field-name`` flag per name in ``fields`` of dataclass ``cls``, so that a command's
    flags and the config they fill cannot drift: the flag's default is the field's (``defaults``
    overrides it, for a field without one or a command's own), its type the field's annotation
    (``types`` overrides it with one of the bounded types above), and its help the field's
    attribute docstring (the string literal under it; ``help`` gives one where there is none).
    A bool field that defaults to False is a switch (``store_true``). ``parser`` may be a group."""
    import dataclasses
    import typing

    by_name = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    docs = field_docstrings(cls)
    for name in fields:
        f = by_name[name]  # a KeyError names a field the class does not have
        if defaults and name in defaults:
            default = defaults[name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{name} has no default: give one in defaults=")
        text = (help or {}).get(name) or docs.get(name, "")
        flag = "--" + name.replace("_", "-")
        kind = _plain_type(hints[name])
        if kind is bool and default is False and not (types and name in types):
            parser.add_argument(flag, action="store_true", help=_help_text(text, None))
            continue
        parse = (types or {}).get(name) or kind
        parser.add_argument(flag, type=parse, default=default, help=_help_text(text, default))


def dataclass_from_args(cls: type, args: argparse.Namespace, fields: list[str], **given: Any) -> Any:
    """``cls`` built from the parsed flags of ``fields`` (``add_dataclass_arguments``) and the
    ``given`` values."""
    return cls(**{name: getattr(args, name) for name in fields}, **given)


def field_docstrings(cls: type) -> dict[str, str]:
    """Field name -> its attribute docstring (the string literal right under ``name: type = ...``),
    from the source of ``cls`` and of its dataclass bases (a subclass's own wins), each on one line."""
    import ast
    import inspect
    import textwrap

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. made at run time): no docstrings
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                out[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return out


def _plain_type(hint: Any) -> Any:
    """``X`` of an annotation ``X`` or ``Optional[X]``; only the scalar types a flag can take."""
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    if kind not in (int, float, str, bool):
        raise TypeError(f"no flag for a field of type {hint!r}")
    return kind


def _help_text(text: str, default: Any) -> str:
    """``text`` with the default said, without reST's double backquotes, escaped for argparse's
    %-formatting."""
    said = text.replace("``", "").rstrip(".")
    if default is not None and default is not False:
        said = f"{said} (default {default})" if said else f"default {default}"
    return said.replace("%", "%%")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The thinkfast engine's options: the sampler (changes which tokens a seed draws) and the
    speed-only batching options (``inference.backends.ENGINE_OPTIONS``: never change a sample)."""
    g = parser.add_argument_group("thinkfast engine")
    g.add_argument("--sampler", choices=("gumbel", "cdf"), default="gumbel",
                   help="gumbel: Gumbel-max over the whole vocabulary (the reference); cdf: one uniform per "
                        "row over the top-k / nucleus candidates, cheaper at large vocabularies. Both are "
                        "exact and independent of batching, but draw different tokens for one seed")
    g.add_argument("--continuous", action="store_true",
                   help="continuous batching: a finished row's slot goes to the next waiting sample "
                        "(same samples, token for token)")
    g.add_argument("--max-batch-rows", type=positive_int, default=None,
                   help="rows decoded at once with --continuous (default: problems per call x n)")
    g.add_argument("--shared-prompt", action="store_true",
                   help="with --continuous: a prompt's n samples read one copy of its attention cache")
    g.add_argument("--fast-decode", action="store_true",
                   help="decode with the fewer-kernel fast step (same samples, token for token)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The speed-only engine options given on the command line (empty when none was)."""
    opts: dict[str, Any] = {}
    if args.continuous:
        opts["continuous"] = True
    if args.max_batch_rows is not None:
        opts["max_batch_rows"] = args.max_batch_rows
    if args.shared_prompt:
        opts["shared_prompt"] = True
    if args.fast_decode:
        opts["fast"] = True
    if ("max_batch_rows" in opts or "shared_prompt" in opts) and not args.continuous:
        raise UserError("--max-batch-rows and --shared-prompt apply with --continuous only")
    return opts
