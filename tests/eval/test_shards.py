"""Sharded sample / grade / score on a tiny model, merged back: the same rows as one unsharded
run; merge refuses shards that are missing, overlap, come from other settings or are unfinished."""

from __future__ import annotations

import os

import pytest

from thinkfast.cli import main
from thinkfast.eval.io import dumps_row, read_jsonl
from thinkfast.eval.shards import (ShardSpec, default_workers, manifest_path, merge_shards, pin_visible_devices,
                                   rank_device, resolve_shard, shard_path, torchrun_env)
from thinkfast.runtime import UserError

from .conftest import PER_CALL, make_model, make_tokenizer, save_tiny_gsm8k

PROBLEMS = 7

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    for var in TORCHRUN_VARS:  # a test run under torchrun must not shard these commands
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    model, data = save_tiny_gsm8k(tmp, [{"question": f"question {i} + 1 ?", "answer": f"so\n#### {i + 1}"}
                                        for i in range(PROBLEMS)])
    base = ["sample", "--model", str(model), "--task", "gsm8k", "--n", "2", "--data", str(data),
            "--max-new-tokens", "4", "--seed", "7", "--batch-problems", "2", "--threads", "1", "--device", "cpu"]
    whole = tmp / "whole.jsonl"
    assert main(base + ["--out", str(whole)]) == 0
    return tmp, base, whole


@pytest.fixture(scope="module")
def score_argv(setup):
    """``thinkfast score`` with an ORM whose head is random, so rewards differ per row."""
    import torch

    from thinkfast.eval.rewards import OutcomeRewardModel

    tmp = setup[0]
    orm = OutcomeRewardModel(make_model(seed=1), make_tokenizer(chat=True), backbone_path=str(tmp / "tiny"))
    torch.nn.init.normal_(orm.head.weight, std=1.0)
    orm.save(tmp / "orm", save_backbone=False)
    return ["score", "--rm", str(tmp / "orm"), "--batch-size", "3", "--device", "cpu", "--threads", "1"]


def _sample_shards(base, tmp, count, extra=()):
    paths = [tmp / f"s{count}_{i}.jsonl" for i in range(count)]
    for i, p in enumerate(paths):
        assert main(base + ["--out", str(p), "--shard", str(i), "--num-shards", str(count), *extra]) == 0
    return paths


def _sample_part(path):
    """Each row as written, less the fields of the engine call (timings, batch sizes, hardware)."""
    return [dumps_row({k: v for k, v in r.items() if k not in PER_CALL}) for r in read_jsonl(path)]


@pytest.mark.parametrize("count", [2, 3])
def test_sample_shards_merge_into_the_unsharded_rows(setup, count):
    tmp, base, whole = setup
    paths = _sample_shards(base, tmp, count)
    # round-robin in blocks of --batch-problems (2): shard 1 holds blocks 1, 1 + count, ...
    want = [p for p in range(PROBLEMS) if (p // 2) % count == 1]
    assert [r["problem_id"] for r in read_jsonl(paths[1])][::2] == [f"test/{p}" for p in want]
    merged = tmp / f"merged{count}.jsonl"
    assert main(["merge", *map(str, reversed(paths)), "--out", str(merged)]) == 0
    assert _sample_part(merged) == _sample_part(whole)  # same samples, seeds, order, fields
    assert len(read_jsonl(merged)) == 2 * PROBLEMS
    # the merged file is an unsharded samples file: `sample` resumes it and finds nothing to do
    assert main(base + ["--out", str(merged)]) == 0 and len(read_jsonl(merged)) == 2 * PROBLEMS


@pytest.mark.parametrize("count", [2, 3])
def test_grade_and_score_shards_merge_into_the_unsharded_file(setup, score_argv, count):
    tmp, _, whole = setup
    graded = tmp / "graded.jsonl"
    if not graded.exists():
        assert main(["grade", str(whole), "--out", str(graded), "--workers", "1"]) == 0
    parts = [tmp / f"g{count}_{i}.jsonl" for i in range(count)]
    for i, p in enumerate(parts):
        assert main(["grade", str(whole), "--out", str(p), "--workers", "1", "--shard", str(i),
                     "--num-shards", str(count)]) == 0
        assert not os.path.exists(f"{p}.input.jsonl") and not os.path.exists(f"{p}.grading.jsonl")
    merged = tmp / f"gm{count}.jsonl"
    assert main(["merge", *map(str, parts), "--out", str(merged)]) == 0
    assert merged.read_bytes() == graded.read_bytes()  # grading is per row: identical bytes
    before = parts[0].read_bytes()  # a finished shard run again: nothing regraded, nothing changed
    assert main(["grade", str(whole), "--out", str(parts[0]), "--workers", "1", "--shard", "0",
                 "--num-shards", str(count)]) == 0 and parts[0].read_bytes() == before

    scored = tmp / "scored.jsonl"
    if not scored.exists():
        assert main(score_argv + [str(graded), "--out", str(scored)]) == 0
    spaths = [tmp / f"r{count}_{i}.jsonl" for i in range(count)]
    for i, p in enumerate(spaths):
        assert main(score_argv + [str(graded), "--out", str(p), "--shard", str(i), "--num-shards", str(count)]) == 0
    smerged = tmp / f"rm{count}.jsonl"
    assert main(["merge", *map(str, spaths), "--out", str(smerged)]) == 0
    assert smerged.read_bytes() == scored.read_bytes()  # a batch never mixes problems: same numbers
    assert len({r["reward"] for r in read_jsonl(scored)}) > 1


def test_scoring_each_sample_shard_then_merging(setup, score_argv):
    tmp, base, whole = setup
    paths = _sample_shards(base, tmp, 2)
    copies = []
    for p in paths:  # a scored (or graded) copy of a shard is still a shard
        c = tmp / f"scored_{p.name}"
        assert main(score_argv + [str(p), "--out", str(c)]) == 0
        assert manifest_path(c).exists()
        copies.append(c)
    merged = tmp / "scored_merged.jsonl"
    merge_shards(copies, merged)
    rows = read_jsonl(merged)
    assert [r["problem_id"] for r in rows] == [r["problem_id"] for r in read_jsonl(whole)]
    assert all("reward" in r for r in rows)
    with pytest.raises(UserError, match="fields differ"):  # one scored shard, one not
        merge_shards([copies[0], paths[1]], tmp / "mixed.jsonl")


def test_merge_refuses_missing_overlapping_mismatched_and_unfinished_shards(setup):
    tmp, base, whole = setup
    paths = _sample_shards(base, tmp, 3)
    out = tmp / "bad.jsonl"
    with pytest.raises(UserError, match=r"missing shard 1 of 3"):
        merge_shards([paths[0], paths[2]], out)
    with pytest.raises(UserError, match=r"overlapping shards: .* both shard 0 of 3 \(the same file given twice\)"):
        merge_shards([paths[0], paths[0], paths[1], paths[2]], out)
    with pytest.raises(UserError, match="no shard manifest"):
        merge_shards([whole, paths[1], paths[2]], out)
    with pytest.raises(UserError, match="is one of the shard files"):
        merge_shards(paths, paths[0])
    # another run's shard: other settings
    other = tmp / "hot.jsonl"
    assert main(base + ["--out", str(other), "--shard", "1", "--num-shards", "3", "--temperature", "0.5"]) == 0
    with pytest.raises(UserError, match=r"hot.jsonl is not a shard of the same run .* "
                                        r"identity \(settings.temperature: 1.0 vs 0.5"):
        merge_shards([paths[0], other, paths[2]], out)
    # a row copied into another shard's file
    moved = tmp / "moved.jsonl"
    moved.write_text(paths[1].read_text() + paths[0].read_text().splitlines(keepends=True)[0])
    manifest_path(moved).write_text(manifest_path(paths[1]).read_text())
    with pytest.raises(UserError, match=r"moved.jsonl:\d+: problem 'test/0' belongs to shard 0, not 1"):
        merge_shards([paths[0], moved, paths[2]], out)
    # an unfinished shard (killed mid-write in its first batch: problems 4 and 5), then resumed
    lines = paths[2].read_text().splitlines(keepends=True)
    paths[2].write_text(lines[0] + lines[1][:20])
    with pytest.raises(UserError, match=r"s3_2.jsonl \(shard 2 of 3\) is incomplete: 2 of its 2 problems "
                                        r"are unfinished \(first: 'test/4' has 1 of 2 rows\)"):
        merge_shards(paths, out)
    assert not out.exists()
    assert main(base + ["--out", str(paths[2]), "--shard", "2", "--num-shards", "3"]) == 0  # resumes
    merge_shards(paths, out)
    assert _sample_part(out) == _sample_part(whole)


def test_a_shard_file_resumes_only_as_the_same_shard(setup, capsys):
    tmp, base, _ = setup
    p = tmp / "own.jsonl"
    assert main(base + ["--out", str(p), "--shard", "0", "--num-shards", "2"]) == 0
    capsys.readouterr()
    assert main(base + ["--out", str(p), "--shard", "1", "--num-shards", "2"]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert main(base + ["--out", str(p)]) == 2  # unsharded: would add the other shard's problems
    assert "resume it with the same --shard" in capsys.readouterr().err
    plain = tmp / "plain.jsonl"
    assert main(base + ["--out", str(plain), "--limit", "1"]) == 0
    assert main(base + ["--out", str(plain), "--shard", "0", "--num-shards", "2", "--limit", "1"]) == 2
    assert "no shard manifest" in capsys.readouterr().err


def test_torchrun_ranks_shard_by_default(setup, monkeypatch):
    tmp, base, whole = setup
    out = tmp / "tr.jsonl"
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert main(base[:-2] + ["--out", str(out)]) == 0  # no --device: each rank its own GPU, or the CPU
    names = [shard_path(out, ShardSpec(i, 2)) for i in range(2)]
    assert names[1].endswith("tr.shard-1-of-2.jsonl") and not out.exists()
    merged = tmp / "tr_merged.jsonl"
    assert main(["merge", *names, "--out", str(merged)]) == 0
    assert _sample_part(merged) == _sample_part(whole)


def test_shard_resolution_and_per_rank_resources(monkeypatch):
    assert resolve_shard(None, None) is None and resolve_shard("auto", None) is None
    assert resolve_shard("2", 3) == ShardSpec(2, 3)
    for shard, count, match in [("3", 3, r"not in 0\.\.2"), ("1", None, "needs --num-shards"),
                                (None, 2, "needs --shard"), ("x", 2, "integer")]:
        with pytest.raises(UserError, match=match):
            resolve_shard(shard, count)
    assert ShardSpec(1, 3).positions(8) == [1, 4, 7]
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert resolve_shard(None, None) == ShardSpec(3, 4, auto=True) == resolve_shard("auto", None)
    assert resolve_shard("0", 2) == ShardSpec(0, 2)  # explicit flags win over the launcher
    with pytest.raises(UserError, match="WORLD_SIZE is 4"):
        resolve_shard("auto", 8)
    assert torchrun_env().local_rank == 1
    assert pin_visible_devices(2, env=dict(env)) == "2,3"  # local rank 1 of a node, two GPUs per rank
    assert pin_visible_devices(1, env={**env, "CUDA_VISIBLE_DEVICES": "5"}) is None  # the user's choice stays
    assert rank_device("cpu") == "cpu"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers() == 8  # the node's cores shared by its two ranks
