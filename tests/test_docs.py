"""README.md and docs/*.md cannot drift from the code.

Every ``thinkfast <subcommand>`` shown (in a fenced shell block or in inline code) names a real
subcommand, and each ``--flag`` after it is one that subcommand's parser accepts (the parser is
built as ``thinkfast.cli`` builds it); every ``benchmarks/...`` script named exists; the README
opens with the two set-up commands; no run-directory name or commit hash appears. No model is
loaded: only the subcommands' ``add_arguments`` run.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import re
from pathlib import Path

import pytest

from thinkfast.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FILES = [README, *DOCS]

SETUP = [
    'pip install torch==2.13.0 -e . && thinkfast demo',
    'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q',
]

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
# "thinkfast NAME" as a command: not thinkfast.x, thinkfast[x], src/thinkfast/, thinkfast's.
INVOCATION = re.compile(r"(?:^|(?<=[\s(;&|]))thinkfast(?:\.cli)?\s+([A-Za-z<][\w<>-]*)")
SEPARATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "&"}
# Example outputs of the README's walk-through (each recipe header in configs/ writes under runs/).
WALKTHROUGH_RUNS = {
    "teacher", "data", "tokenizer", "llamba", "llamba_sft", "hybrid", "hybrid-hf", "orm", "red",
    "red_50", "mambainllama_50", "mambainllama_stepwise", "sft", "metrics.json", "report", "llamba.jsonl", "teacher.jsonl", "teacher_train.jsonl",
    "teacher_train.graded.jsonl", "h.jsonl", "h_ref.jsonl",
}
HEX = re.compile(r"(?<![\w./-])(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w/-])")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _shell_snippets(text: str) -> list[str]:
    """Command lines from shell blocks (continuations joined, comments dropped) and inline code."""
    out = []
    for lang, body in FENCE.findall(text):
        if lang.lower() not in SHELL_LANGS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            out.append(re.sub(r"(^|\s)#.*", "", line))
    prose = FENCE.sub("", text)
    out.extend(span.replace("\n", " ") for span in INLINE.findall(prose))
    return out


def _invocations(text: str) -> list[tuple[str, list[str], str]]:
    """(subcommand, its --flags, the snippet) for every ``thinkfast NAME ...`` shown."""
    found = []
    for snippet in _shell_snippets(text):
        for m in INVOCATION.finditer(snippet):
            name = m.group(1)
            if name.startswith("<"):  # "thinkfast <command> --help"
                continue
            flags = []
            for token in snippet[m.end():].split():
                if token in SEPARATORS or token.startswith(("|", ">", "#")):
                    break
                token = token.strip("[]()|,")
                if token.startswith("--"):
                    flags.append(token.split("=", 1)[0])
            found.append((name, flags, snippet.strip()))
    return found


@functools.lru_cache(maxsize=None)
def _option_strings(name: str) -> frozenset[str]:
    parser = argparse.ArgumentParser(prog=f"thinkfast {name}")
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    return frozenset(s for action in parser._actions for s in action.option_strings)


def test_the_docs_exist_and_the_readme_links_each():
    names = {p.name for p in DOCS}
    assert "README.md" in names and len(DOCS) >= 9, names
    readme = _text(README)
    for path in DOCS:
        assert f"docs/{path.name}" in readme, f"README.md does not link docs/{path.name}"
    for path in FILES:
        for target in re.findall(r"\]\(([^)#\s]+)", _text(path)):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_every_documented_command_and_flag_exists(path):
    invocations = _invocations(_text(path))
    problems = []
    for name, flags, snippet in invocations:
        if name not in COMMANDS:
            problems.append(f"unknown subcommand {name!r} in: {snippet}")
            continue
        accepted = _option_strings(name)
        problems += [f"thinkfast {name} has no {flag} (in: {snippet})" for flag in flags if flag not in accepted]
    assert not problems, "\n".join(problems)


def test_the_readme_shows_every_subcommand():
    shown = {name for name, _, _ in _invocations(_text(README))}
    assert set(COMMANDS) <= shown, sorted(set(COMMANDS) - shown)


def test_the_flag_check_catches_drift():
    text = "```bash\nthinkfast grade x.jsonl --workers 2 --no-such-flag 3 | tee --also\n```\n`thinkfast nope`"
    inv = _invocations(text)
    assert ("grade", ["--workers", "--no-such-flag"]) == inv[0][:2]
    assert inv[1][0] == "nope"
    assert "--no-such-flag" not in _option_strings("grade") and "--workers" in _option_strings("grade")


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_every_benchmark_script_named_exists(path):
    text = _text(path)
    run = re.findall(r"(?:python3?|bash)\s+((?:\./)?benchmarks/[\w./-]+)", text)
    named = re.findall(r"(?<![\w/])(benchmarks/[\w/.-]+\.(?:py|sh|yaml))", text)
    missing = sorted({p for p in run + named if not (ROOT / p.rstrip(".")).exists()})
    assert not missing, missing


def test_the_readme_is_short_and_opens_with_the_setup_commands():
    text = _text(README)
    assert len(text.splitlines()) <= 300
    first_block = FENCE.search(text)
    assert first_block and first_block.group(1) == "bash"
    commands = [line.strip() for line in first_block.group(2).splitlines() if line.strip()]
    assert commands[:2] == SETUP
    ci = ROOT / ".ci" / "run"
    if ci.exists():
        assert SETUP[1] in _text(ci)


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_no_run_directory_names_or_commit_hashes(path):
    text = _text(path)
    runs = re.findall(r"(?<![\w.-])runs/([\w.-]+)", text)
    if path.parent.name == "docs":
        assert not runs, f"docs name run directories (use OUT / DEMO_OUT placeholders): {runs}"
    else:
        assert set(runs) <= WALKTHROUGH_RUNS, sorted(set(runs) - WALKTHROUGH_RUNS)
    assert not HEX.findall(text), HEX.findall(text)
