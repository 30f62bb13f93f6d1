"""Every command, given bad input, stops with exit status 2 and one line naming what is wrong.

Each invocation fails at argument or input validation, before any real work, and runs in-process
through ``thinkfast.cli.main``. A traceback (any exception escaping ``main``) fails the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from thinkfast.cli import main

TEACHER = Path(__file__).resolve().parents[1] / "src" / "thinkfast" / "assets" / "demo_teacher"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, str]:
    """Paths the cases below refer to as {name}."""
    root = tmp_path_factory.mktemp("bad_input")
    model = root / "model"
    shutil.copytree(TEACHER, model)
    bad_cfg = root / "bad_cfg"
    bad_cfg.mkdir()
    meta = json.loads((TEACHER / "config.json").read_text())
    meta["model"]["d_model"] = "128"
    (bad_cfg / "config.json").write_text(json.dumps(meta))
    no_tok = root / "no_tok"
    shutil.copytree(TEACHER, no_tok)
    (no_tok / "tokenizer.json").unlink()
    (root / "empty").mkdir()
    (root / "file.txt").write_text("not a directory\n")
    (root / "good.jsonl").write_text('{"question": "q", "completion": "c", "correct": true}\n')
    (root / "bad_json.jsonl").write_text('{"question": "q"}\n{"question": "q\n')
    (root / "bad_utf8.jsonl").write_bytes(b'{"question": "q"}\n{"question": "\xff"}\n')
    (root / "bad.json").write_text('{"runs": [}\n')
    recipe = {"out_dir": str(root / "run"), "teacher": str(model), "data": {"train": str(root / "good.jsonl")},
              "train": {"steps": "many"}, "stages": [{"name": "kd", "objective": "kd"}]}
    (root / "distill_type.yaml").write_text(yaml.safe_dump(recipe))
    (root / "broken.yaml").write_text("train:\n  steps: [1\n")
    (root / "compress_type.yaml").write_text(yaml.safe_dump({"teacher": str(model), "d_s": "half"}))
    names = ["model", "bad_cfg", "no_tok", "empty", "file.txt", "good.jsonl", "bad_json.jsonl", "bad_utf8.jsonl",
             "bad.json", "distill_type.yaml", "broken.yaml", "compress_type.yaml"]
    paths = {n.split(".")[0]: str(root / n) for n in names}
    paths["missing"] = str(root / "missing")
    paths["out"] = str(root / "out")
    return paths


# (argv, what the error line must say); {name} is a path of the ws fixture.
CASES = [
    # generate: numbers at parse time, then the model path
    ("generate --model {model} --n 0 Q", "argument --n: must be an integer >= 1, got '0'"),
    ("generate --model {model} --n two Q", "argument --n: must be an integer >= 1, got 'two'"),
    ("generate --model {model} --temperature -1 Q", "argument --temperature: must be a number >= 0, got '-1'"),
    ("generate --model {model} --temperature nan Q", "argument --temperature: must be a number >= 0, got 'nan'"),
    ("generate --model {model} --top-p 0 Q", "argument --top-p: must be a number in (0, 1], got '0'"),
    ("generate --model {model} --top-p 1.5 Q", "argument --top-p: must be a number in (0, 1], got '1.5'"),
    ("generate --model {model} --top-k -1 Q", "argument --top-k: must be an integer >= 0, got '-1'"),
    ("generate --model {model} --max-new-tokens 0 Q", "argument --max-new-tokens: must be an integer >= 1"),
    ("generate --model {model} --seed -3 Q", "argument --seed: must be an integer >= 0"),
    ("generate --model {model} --threads 0 Q", "argument --threads: must be an integer >= 1"),
    ("generate --model {missing} Q", "{missing} does not exist"),
    ("generate --model {file} Q", "{file} is a file"),
    ("generate --model {empty} Q", "{empty} has no config.json"),
    ("generate --model {bad_cfg} Q", "{bad_cfg}/config.json: model.d_model: expected int, got '128' (str)"),
    ("generate --model {no_tok} Q", "{no_tok} has no tokenizer.json (only tokenizer_config.json)"),
    # convert / export: sources that are not checkpoints, outputs that are files
    ("convert {missing} {out}", "{missing} does not exist"),
    ("convert {empty} {out}", "{empty} has no config.json"),
    ("convert {model} {out}", "{model} is already a thinkfast model directory"),
    ("convert {model} {file}", "argument out_dir: {file} is a file, not a directory"),
    ("export {missing} {out}", "{missing} does not exist"),
    ("export {bad_cfg} {out}", "model.d_model: expected int"),
    ("export {model} {file}", "argument out_dir: {file} is a file, not a directory"),
    ("export {model} {out} --threads -1", "argument --threads: must be an integer >= 1"),
    # bench
    ("bench --batch 0", "argument --batch: must be an integer >= 1"),
    ("bench --gen -5", "argument --gen: must be an integer >= 1"),
    ("bench --prompt x", "argument --prompt: must be an integer >= 1, got 'x'"),
    ("bench --repeats 0", "argument --repeats: must be an integer >= 1"),
    ("bench --preset huge", "argument --preset: invalid choice: 'huge'"),
    ("bench --kinds llama,gpt", "argument --kinds: must be a comma-separated list of llama, mamba, hybrid"),
    ("bench --json {empty}", "argument --json: {empty} is a directory"),
    # distill / compress: the recipe file and its settings
    ("distill --config {missing}", "argument --config: {missing} does not exist"),
    ("distill --config {empty}", "argument --config: {empty} is a directory, not a file"),
    ("distill --config {broken}", "{broken}:3: not valid YAML"),
    ("distill --config {distill_type}", "{distill_type}: config.train.steps: expected int, got 'many' (str)"),
    ("distill --config {distill_type} train.steps=0", "train.steps and train.batch_size must be >= 1"),
    ("distill --config {distill_type} --threads 0", "argument --threads: must be an integer >= 1"),
    ("compress --config {missing}", "argument --config: {missing} does not exist"),
    ("compress --config {compress_type}", "{compress_type}: config.d_s: expected int, got 'half' (str)"),
    # erank
    ("erank --model {model} --data {missing}", "argument --data: {missing} does not exist"),
    ("erank --model {model} --data {empty}", "argument --data: {empty} is a directory, not a file"),
    ("erank --model {model} --data {good} --seq-len 0", "argument --seq-len: must be an integer >= 1"),
    ("erank --model {model} --data {good} --sequences -1", "argument --sequences: must be an integer >= 1"),
    ("erank --model {model} --data {good} --tokenizer {file}", "argument --tokenizer: {file} is a file"),
    ("erank --model {model} --data {good} --out {empty}", "argument --out: {empty} is a directory"),
    ("erank --model {missing} --data {good}", "{missing} does not exist"),
    ("erank --model {model} --data {bad_utf8}", "{bad_utf8}:2: not UTF-8 text"),
    # select-layers
    ("select-layers --teacher {missing} --data {good} --method loo --keep 2 --out {out}",
     "argument --teacher: {missing} does not exist"),
    ("select-layers --teacher {file} --data {good} --method loo --keep 2 --out {out}",
     "argument --teacher: {file} is a file, not a directory"),
    # --keep is checked against the teacher's depth, once its config is read
    ("select-layers --teacher {model} --data {good} --method loo --keep 0 --out {out}",
     "cannot keep 0 attention layers: the teacher has 4 layers"),
    ("select-layers --teacher {model} --data {good} --method loo --keep 1.5 --out {out}",
     "keep fraction 1.5 is outside (0, 1)"),
    ("select-layers --teacher {model} --data {good} --method loo --keep half --out {out}",
     "--keep 'half' is neither a number of layers nor a fraction"),
    ("select-layers --teacher {model} --data {good} --method loo --keep 9 --out {out}",
     "cannot keep 9 attention layers: the teacher has 4 layers"),
    ("select-layers --teacher {model} --data {good} --method loo --keep 2 --out {empty}",
     "argument --out: {empty} is a directory"),
    ("select-layers --teacher {model} --data {good} --method loo --keep 2 --out {out} --eval-fraction 1",
     "argument --eval-fraction: must be a number in [0, 1), got '1'"),
    ("select-layers --teacher {model} --data {good} --method kl-guided --keep 2 --out {out} --lr 0",
     "argument --lr: must be a number > 0"),
    ("select-layers --teacher {model} --data {good} --method kl-guided --keep 2 --out {out} --steps 0",
     "argument --steps: must be an integer >= 1"),
    ("select-layers --teacher {model} --data {missing} --method loo --keep 2 --out {out}",
     "cannot read {missing}: No such file or directory"),  # read only by the methods that need data
    ("select-layers --teacher {bad_cfg} --data {good} --method loo --keep 2 --out {out}", "model.d_model"),
    # the evaluation pipeline's JSONL and JSON inputs
    ("score {missing} --rm {model}", "argument input: {missing} does not exist"),
    ("score {empty} --rm {model}", "argument input: {empty} is a directory, not a file"),
    ("score {good} --rm {model} --batch-size 0", "argument --batch-size: must be an integer >= 1"),
    ("score {good} --rm {model} --out {empty}", "argument --out: {empty} is a directory"),
    ("score {bad_json} --rm {model}", "{bad_json}:2: malformed JSON row (Unterminated string starting at column 14)"),
    ("score {bad_utf8} --rm {model}", "{bad_utf8}:2: not UTF-8 text (invalid start byte at byte 15 of the line)"),
    ("train-rm {missing} --backbone {model} --out {out}", "argument inputs: {missing} does not exist"),
    ("train-rm {good} --backbone {model} --out {file}", "argument --out: {file} is a file, not a directory"),
    ("train-rm {good} --backbone {model} --out {out} --epochs 0", "argument --epochs: must be an integer >= 1"),
    ("train-rm {good} --backbone {model} --out {out} --lr -1", "argument --lr: must be a number > 0"),
    ("train-rm {good} --backbone {model} --out {out} --max-len 0", "argument --max-len: must be an integer >= 1"),
    ("train-rm {bad_json} --backbone {model} --out {out}", "{bad_json}:2: malformed JSON row"),
    ("evaluate {missing} --out {out}", "argument runs: {missing} does not exist"),
    ("evaluate {empty} --out {out}", "argument runs: {empty} is a directory, not a file"),
    ("evaluate {good} --out {empty}", "argument --out: {empty} is a directory"),
    ("evaluate {good} --out {out} --n-boot 0", "argument --n-boot: must be an integer >= 1"),
    ("evaluate {good} --out {out} --max-subsets -2", "argument --max-subsets: must be an integer >= 1"),
    ("evaluate {bad_utf8} --out {out}", "{bad_utf8}:2: not UTF-8 text"),
    ("report {missing} --out {out}", "argument metrics: {missing} does not exist"),
    ("report {bad} --out {out}", "{bad}:1: malformed JSON (Expecting value at column 11)"),
    ("report {good} --out {file}", "argument --out: {file} is a file, not a directory"),
    ("grade {good} --workers 0", "argument --workers"),
    ("grade {good} --timeout -1", "argument --timeout"),
    ("grade {missing}", "{missing}: file not found"),
    ("grade {empty}", "cannot read {empty}: Is a directory"),
    ("grade {bad_json}", "{bad_json}:2: malformed JSON row"),
    ("grade {good} --out {empty}", "argument --out: {empty} is a directory"),
    ("sample --model {model} --task synthetic --out {out} --n 0", "argument --n: must be an integer >= 1"),
    ("sample --model {model} --task synthetic --out {out} --batch-problems 0", "argument --batch-problems"),
    ("sample --model {model} --task synthetic --out {out} --temperature -1", "argument --temperature"),
    ("sample --model {model} --task synthetic --out {out} --top-p 2", "argument --top-p"),
    ("sample --model {model} --task synthetic --out {out} --limit 0", "argument --limit"),
    ("sample --model {model} --task synthetic --out {empty}", "argument --out: {empty} is a directory"),
    ("demo --out {file}", "--out {file} is not a directory"),
    ("demo --out {out} --threads 0", "argument --threads"),
    ("demo --out {out} --jobs 0", "argument --jobs"),
]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors exit from the parser
        return e.code


@pytest.mark.parametrize("template,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_usage_error_naming_it(template, expected, ws, capsys, monkeypatch):
    monkeypatch.setenv("THINKFAST_THREADS", "1")  # main() sets torch's threads for the whole process
    argv = [part.format(**ws) for part in template.split()]
    code = _run(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, err
    assert len(errors) == 1 and errors[0].startswith(f"thinkfast {argv[0]}: error: "), err
    assert expected.format(**ws) in errors[0], err
    assert "Traceback" not in err
    assert not Path(ws["out"]).exists(), "a refused command wrote its output"
