"""Bad files are named by file and line (the README's promise), and nothing is half-written over."""

from __future__ import annotations

import argparse
import json

import pytest

from thinkfast.commands import args as A
from thinkfast.config import atomic_write_text, json_error_detail
from thinkfast.data import jsonl as training_jsonl
from thinkfast.data.jsonl import DataError
from thinkfast.eval import io as eval_io
from thinkfast.runtime import UserError

BAD_UTF8 = b'{"a": 1}\n{"a": 2}\n{"a": "caf\xe9"}\n'


def test_invalid_utf8_is_reported_by_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(BAD_UTF8)
    expected = f"{path}:3: not UTF-8 text (invalid continuation byte at byte 11 of the line)"
    with pytest.raises(UserError) as e:
        eval_io.read_jsonl(path)
    assert str(e.value) == expected
    with pytest.raises(DataError) as e:
        list(training_jsonl.iter_jsonl(path))
    assert str(e.value) == expected


def test_rows_before_the_bad_line_are_read_by_the_streaming_reader(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(BAD_UTF8)
    rows = training_jsonl.iter_jsonl(path)
    assert [next(rows), next(rows)] == [(1, {"a": 1}), (2, {"a": 2})]
    with pytest.raises(DataError, match=":3: not UTF-8"):
        next(rows)


def test_a_writer_killed_mid_character_leaves_a_tail_that_resuming_skips(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_bytes('{"a": 1}\n{"a": "é'.encode()[:-1])  # the last line cut inside a two-byte character
    assert eval_io.read_jsonl(path, allow_truncated_tail=True) == [{"a": 1}]
    with pytest.raises(UserError, match=rf"^{path}:2: not UTF-8 text"):
        eval_io.read_jsonl(path)


def test_json_messages_do_not_say_at_twice(tmp_path):
    try:
        json.loads('{"a": "open')
    except json.JSONDecodeError as e:
        assert json_error_detail(e) == "Unterminated string starting at column 7"
    try:
        json.loads("[1,]")
    except json.JSONDecodeError as e:
        assert json_error_detail(e) == "Expecting value at column 4"
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": "open\n{"a": 3}\n')
    with pytest.raises(DataError) as e:
        list(training_jsonl.iter_jsonl(path))
    assert str(e.value) == f"{path}:2: malformed JSON (Unterminated string starting at column 7)"
    with pytest.raises(UserError) as e:
        eval_io.read_jsonl(path)
    assert str(e.value) == f"{path}:2: malformed JSON row (Unterminated string starting at column 7)"


def test_a_directory_given_as_a_file_is_named(tmp_path):
    with pytest.raises(UserError, match=rf"^cannot read {tmp_path}: Is a directory$"):
        eval_io.read_jsonl(tmp_path)
    with pytest.raises(UserError, match=rf"^cannot read {tmp_path}: Is a directory$"):
        eval_io.read_json(tmp_path)
    with pytest.raises(DataError, match=rf"^cannot read {tmp_path}: Is a directory$"):
        list(training_jsonl.iter_jsonl(tmp_path))


def test_writing_a_file_over_a_directory_is_refused_and_keeps_it(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "theirs.txt").write_text("keep")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'out'} is a directory: cannot write a file in its place"):
        atomic_write_text(tmp_path / "out", "x")
    (tmp_path / "a_file").write_text("keep")
    with pytest.raises(UserError, match="a file stands where a directory of its path belongs"):
        atomic_write_text(tmp_path / "a_file" / "x.json", "x")
    assert (tmp_path / "out" / "theirs.txt").read_text() == "keep" and (tmp_path / "a_file").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "out"]  # no temporary file left


@pytest.mark.parametrize("parse,good,bad", [
    (A.positive_int, [("1", 1), ("12", 12)], ["0", "-1", "1.5", "x", ""]),
    (A.non_negative_int, [("0", 0), ("3", 3)], ["-1", "2.0", "one"]),
    (A.positive_float, [("0.5", 0.5), ("2", 2.0)], ["0", "-0.1", "inf", "nan", "x"]),
    (A.non_negative_float, [("0", 0.0), ("1e-3", 1e-3)], ["-1", "-inf", "nan"]),
    (A.probability, [("1", 1.0), ("0.9", 0.9)], ["0", "1.01", "-0.5"]),
    (A.fraction, [("0", 0.0), ("0.25", 0.25)], ["1", "-0.1", "2"]),
])
def test_number_types(parse, good, bad):
    for text, value in good:
        assert parse(text) == value and type(parse(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=rf"^must be .*, got {text!r}$"):
            parse(text)


def test_path_types(tmp_path):
    (tmp_path / "f").write_text("x")
    missing = tmp_path / "new" / "deeper"
    assert A.existing_file(str(tmp_path / "f")) == str(tmp_path / "f")
    assert A.existing_dir(str(tmp_path)) == str(tmp_path)
    assert A.output_file(str(missing)) == str(missing) and A.output_dir(str(missing)) == str(missing)
    assert A.data_source("hf:gsm8k:main") == "hf:gsm8k:main"
    cases = [(A.existing_file, tmp_path, "is a directory, not a file"),
             (A.existing_file, missing, "does not exist"),
             (A.data_source, missing, "does not exist"),
             (A.existing_dir, tmp_path / "f", "is a file, not a directory"),
             (A.existing_dir, missing, "does not exist"),
             (A.output_file, tmp_path, "is a directory; give a file name to write"),
             (A.output_dir, tmp_path / "f", "is a file, not a directory"),
             (A.output_file, tmp_path / "f" / "x.json", f"{tmp_path / 'f'} is a file, so nothing can be written")]
    for parse, path, expected in cases:
        with pytest.raises(argparse.ArgumentTypeError, match=expected):
            parse(str(path))


def test_comma_list():
    parse = A.comma_list("llama", "mamba")
    assert parse("llama, mamba") == ["llama", "mamba"]
    for text in ("", "llama,gpt", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated list of llama, mamba"):
            parse(text)


def test_the_erank_plot_is_replaced_whole(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from thinkfast.commands.erank import _plot

    out = tmp_path / "erank.png"
    out.write_bytes(b"previous plot")

    def dying_savefig(self, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", dying_savefig)
    with pytest.raises(KeyboardInterrupt):
        _plot({"m": {"erank": [1.0, 2.0], "cov_erank": [1.0, 1.5]}}, out)
    assert out.read_bytes() == b"previous plot" and [p.name for p in tmp_path.iterdir()] == ["erank.png"]
