"""The token store: batches read from it equal today's in-memory batches; writing is atomic,
refuses foreign directories and restarts after an interruption; hf: sources are streamed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from token_data import write_token_data

from thinkfast.cli import main
from thinkfast.data.dataset import BatchSchedule, DataConfig, held_out_indices, load_data
from thinkfast.data.formatting import Formatter
from thinkfast.data.jsonl import DataError
from thinkfast.data.store import (Examples, StoreBlocks, TokenStore, TokenStoreWriter, formatter_for, stream_rows,
                                  token_dtype, tokenizer_identity, write_store)
from thinkfast.data.tokenizer import build_tokenizer

VOCAB = 40


def _rows(path: Path) -> Path:
    """Token rows of three kinds, of uneven lengths (some longer than the windows tested)."""
    rng = random.Random(1)
    with open(path, "w") as f:
        for i in range(37):
            n = rng.randrange(1, 30)
            ids = [rng.randrange(4, VOCAB) for _ in range(n)]
            if i % 3 == 0:
                row = {"prompt_ids": ids[: n // 2], "response_ids": ids[n // 2:]}
            elif i % 3 == 1:
                p = rng.randrange(0, n + 1)
                row = {"input_ids": ids, "loss_mask": [0] * p + [1] * (n - p)}
            else:
                row = {"input_ids": ids}
            f.write(json.dumps(row) + "\n")
    return path


def _store(src: Path, out: Path, tokenizer=None, shard_tokens: int = 1 << 30, **data_settings) -> Path:
    """What ``thinkfast tokenize`` writes for ``src`` (batches of 5 rows)."""
    formatter, settings = formatter_for(tokenizer, **data_settings)
    info = {"source": str(src), "format": settings, "tokenizer": tokenizer_identity(tokenizer)}
    write_store(stream_rows(str(src)), out, formatter, dtype=token_dtype(len(tokenizer) if tokenizer else VOCAB),
                info=info, shard_tokens=shard_tokens, batch_rows=5)
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("loss_on", ["response", "all"])
def test_store_batches_equal_the_in_memory_batches(tmp_path, pack, loss_on):
    src = _rows(tmp_path / "rows.jsonl")
    # Small shards: examples end up in many files, and windows cross shard boundaries.
    store = _store(src, tmp_path / "store", shard_tokens=64)
    assert len(TokenStore(store).manifest["shards"]) > 5
    for seq_len, eval_fraction, max_examples in ((4, 0.2, None), (7, 0.0, None), (16, 0.1, 30)):
        kw = dict(seq_len=seq_len, eval_fraction=eval_fraction, max_examples=max_examples, seed=3, pack=pack,
                  loss_on=loss_on)
        ref = load_data(DataConfig(train=str(src), **kw), vocab_size=VOCAB)
        got = load_data(DataConfig(train=f"store:{store}", **kw), vocab_size=VOCAB)
        assert isinstance(got.train, StoreBlocks)
        assert got.stats == ref.stats
        assert len(got.train) == len(ref.train) and got.train.seq_len == ref.train.seq_len
        assert got.train.n_loss_tokens == ref.train.n_loss_tokens
        _same(got.train.batch(list(range(len(ref.train)))), ref.train.batch(list(range(len(ref.train)))))
        assert (got.eval is None) == (ref.eval is None)
        if ref.eval is not None:
            _same(got.eval.batch(list(range(len(ref.eval)))), ref.eval.batch(list(range(len(ref.eval)))))
        # The trainer's draw: step s, rank r of W, micro-batches of the schedule (seed, step).
        sched = BatchSchedule(len(got.train), 6, seed=5)
        for step in (0, 1, 7):
            for rank in range(2):
                for micro in sched.micro_batches(step, rank, 2, 2):
                    _same(got.train.batch(micro), ref.train.batch(micro))


def test_text_rows_through_a_tokenizer_give_the_same_batches(tmp_path):
    src = tmp_path / "qa.jsonl"
    rows = [{"question": f"Ann has {i} apples and {i + 3} pears.", "answer": f"She has {2 * i + 3} fruits."}
            for i in range(25)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_tokenizer(texts=[f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows])
    store = _store(src, tmp_path / "store", tok, format="question_answer")
    kw = dict(format="question_answer", seq_len=12, eval_fraction=0.2)
    ref = load_data(DataConfig(train=str(src), **kw), tok, len(tok))
    got = load_data(DataConfig(train=f"store:{store}", **kw), tok, len(tok))
    assert got.stats == ref.stats
    _same(got.train.to_blocks().__dict__, ref.train.__dict__)
    _same(got.eval.to_blocks().__dict__, ref.eval.__dict__)
    assert TokenStore(store).dtype == np.uint16
    # Another tokenizer, or a format the store was not written with, is refused by name.
    other = build_tokenizer(texts=["something else entirely"])
    with pytest.raises(DataError, match="manifest.json: the store was tokenised with"):
        load_data(DataConfig(train=f"store:{store}", **kw), other)
    with pytest.raises(DataError, match="data.prompt_template is 'Q: {question}'"):
        load_data(DataConfig(train=f"store:{store}", **kw, prompt_template="Q: {question}"), tok)


def test_a_store_eval_set_and_an_eval_file_beside_a_store(tmp_path):
    src = _rows(tmp_path / "rows.jsonl")
    ev = write_token_data(tmp_path / "eval.jsonl", VOCAB, n=6)
    store, ev_store = _store(src, tmp_path / "store"), _store(ev, tmp_path / "ev_store")
    kw = dict(seq_len=8)
    ref = load_data(DataConfig(train=str(src), eval=str(ev), **kw))
    for train, eval_ in ((f"store:{store}", str(ev)), (f"store:{store}", f"store:{ev_store}"),
                         (str(src), f"store:{ev_store}")):
        got = load_data(DataConfig(train=train, eval=eval_, **kw))
        assert got.stats == ref.stats
        _same(got.train.batch(list(range(len(ref.train)))), ref.train.batch(list(range(len(ref.train)))))
        _same(got.eval.batch(list(range(len(ref.eval)))), ref.eval.batch(list(range(len(ref.eval)))))


def test_examples_of_a_split_are_found_without_listing_them():
    held = np.array([0, 2, 5, 6, 9], np.int64)
    rest, only = Examples(10, held, "rest"), Examples(10, held, "held")
    assert rest.ids(np.arange(len(rest))).tolist() == [1, 3, 4, 7, 8]
    assert only.ids(np.arange(len(only))).tolist() == held.tolist()
    first, stop = rest.runs()
    assert [list(range(a, b)) for a, b in zip(first, stop)] == [[1], [3, 4], [7, 8]]


def test_writer_shards_never_split_an_example_and_ids_must_fit_the_dtype(tmp_path):
    w = TokenStoreWriter(tmp_path / "w", np.uint16, shard_tokens=10)
    lengths = np.array([4, 0, 5, 12, 3, 0], np.int64)
    toks = np.arange(lengths.sum()) % 50
    w.append(toks, toks % 2, lengths)
    m = w.finish({"source": "arange"})
    assert [s["n_tokens"] for s in m["shards"]] == [9, 12, 3]  # 4+0+5 | the long one alone | 3+0
    s = TokenStore(tmp_path / "w")
    assert s.offsets.tolist() == [0, 4, 4, 9, 21, 24, 24]
    assert s.read(0, 24).tolist() == toks.tolist() and s.read(7, 23, mask=True).tolist() == (toks[7:23] % 2).tolist()
    assert s.loss_cum.tolist() == np.r_[0, np.cumsum([int((toks[a:b] % 2).sum()) for a, b in
                                                      zip(s.offsets[:-1], s.offsets[1:])])].tolist()
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32 and token_dtype(None) == np.uint32
    src = tmp_path / "big.jsonl"
    src.write_text('{"input_ids": [5, 6]}\n{"input_ids": [70000]}\n')
    with pytest.raises(DataError, match=r"big.jsonl:2: token id 70000 does not fit the store's uint16"):
        write_store(stream_rows(str(src)), tmp_path / "big", Formatter(None), dtype=np.uint16, info={})
    assert not (tmp_path / "big").exists()
    write_store(stream_rows(str(src)), tmp_path / "big", Formatter(None), dtype=np.uint32, info={})
    assert TokenStore(tmp_path / "big").read(0, 3).tolist() == [5, 6, 70000]


def test_hf_rows_are_streamed_not_materialised(tmp_path):
    """``stream_rows`` opens an hf: set with streaming=True and the writer consumes rows as they
    come: each batch is written before the next rows are pulled."""
    pulled, calls = [], []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        for i in range(23):
            pulled.append(i)
            yield {"input_ids": [4 + i % 7] * (1 + i % 5)}

    progress = []
    rows = stream_rows("hf:org/set:main", "validation", load_dataset=fake_load_dataset)
    m = write_store(rows, tmp_path / "s", Formatter(None), dtype=np.uint16, info={"source": "hf:org/set:main"},
                    batch_rows=5, on_progress=lambda r, t: progress.append((r, len(pulled))))
    assert calls == [("org/set", "main", "validation", True)]
    assert progress == [(5, 5), (10, 10), (15, 15), (20, 20), (23, 23)]
    assert m["n_examples"] == 23 and m["n_tokens"] == sum(1 + i % 5 for i in range(23))
    limited = list(stream_rows("hf:x", load_dataset=fake_load_dataset, limit=3))
    assert [w for w, _ in limited] == ["hf:x[train][0]", "hf:x[train][1]", "hf:x[train][2]"]


def test_writing_is_atomic_refuses_foreign_directories_and_restarts(tmp_path):
    src = _rows(tmp_path / "rows.jsonl")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a token store thinkfast wrote"):
        _store(src, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    # A manifest.json of someone else's is no licence either.
    (foreign / "notes.txt").unlink()
    (foreign / "manifest.json").write_text('{"kind": "other"}')
    with pytest.raises(DataError, match="not a thinkfast token store"):
        _store(src, foreign)
    assert (foreign / "manifest.json").read_text() == '{"kind": "other"}'

    out = tmp_path / "store"

    def dying_rows():
        for i, item in enumerate(stream_rows(str(src))):
            if i == 12:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        write_store(dying_rows(), out, Formatter(None), dtype=np.uint16, info={}, batch_rows=5)
    partial = tmp_path / ".store.tokenize-partial"
    assert not out.exists() and partial.is_dir()  # nothing half-written under the real name
    _store(src, out)  # the rerun restarts from the first row
    assert not partial.exists() and TokenStore(out).n_examples == 37
    # An existing store is replaced only when asked.
    with pytest.raises(DataError, match="pass --overwrite"):
        _store(src, out)
    write_store(stream_rows(str(src), limit=4), out, Formatter(None), dtype=np.uint16, info={}, overwrite=True)
    assert TokenStore(out).n_examples == 4 and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))\
        == []
    # A partial directory holding a stranger's file is not deleted.
    partial.mkdir()
    (partial / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="holds files thinkfast did not write"):
        write_store(stream_rows(str(src)), out, Formatter(None), dtype=np.uint16, info={}, overwrite=True)
    assert (partial / "keep.txt").exists()


def test_a_damaged_or_foreign_store_is_named(tmp_path):
    src = _rows(tmp_path / "rows.jsonl")
    store = _store(src, tmp_path / "store")
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_data(DataConfig(train=f"store:{tmp_path}"))
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        load_data(DataConfig(train=f"store:{store}"), vocab_size=10)
    shard = store / "tokens-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="tokens-00000.bin holds .* bytes, .* expected"):
        load_data(DataConfig(train=f"store:{store}"))


def test_tokenize_command(tmp_path, capsys):
    src = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}"} for i in range(12)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_tokenizer(texts=[f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows])
    tok.save_pretrained(tmp_path / "tok")
    out = tmp_path / "store"
    assert main(["tokenize", str(src), "--tokenizer", str(tmp_path / "tok"), "--out", str(out), "--no-eos"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_examples"] == 12 and m["dtype"] == "uint16" and m["format"]["add_eos"] is False
    assert m["tokenizer"]["vocab_size"] == len(tok) and m["source"] == str(src)
    mode = lambda name: (out / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("manifest.json") == mode("tokens-00000.bin")  # other users' ranks can read it too
    ref = load_data(DataConfig(train=str(src), add_eos=False, seq_len=8), tok)
    got = load_data(DataConfig(train=f"store:{out}", add_eos=False, seq_len=8), tok)
    _same(got.train.to_blocks().__dict__, ref.train.__dict__)
    assert main(["tokenize", str(src), "--tokenizer", str(tmp_path / "tok"), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    assert main(["tokenize", str(bad), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "b")]) == 2
    assert "bad.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / ".b.tokenize-partial").exists()


@pytest.mark.slow  # three small training runs (~15 s on one core)
def test_a_recipe_trains_and_resumes_exactly_from_a_store(tmp_path):
    """Two stages of different seq_len from one store: the losses are those of the same recipe on
    the JSONL file, and a run killed mid-stage and resumed ends on the same weights."""
    from safetensors.torch import load_file

    from thinkfast.checkpoint import save_model
    from thinkfast.config import ModelConfig
    from thinkfast.distill.config import build_config
    from thinkfast.distill.recipe import run_recipe
    from thinkfast.models.lm import LanguageModel

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                                      max_seq_len=64, init_std=0.15))
    teacher = save_model(model.eval(), tmp_path / "teacher")
    src = write_token_data(tmp_path / "data.jsonl", VOCAB, n=40)
    store = _store(src, tmp_path / "store")
    stages = [{"name": "kd", "objective": "kd", "loss": {"kind": "forward"}},
              {"name": "kd_long", "objective": "kd", "loss": {"kind": "forward"}, "seq_len": 24}]

    def cfg(out, train, **kw):
        return build_config({
            "out_dir": str(tmp_path / out), "teacher": str(teacher),
            "student": {"init": "teacher", "keep": 0.0, "kind": "discrete"},
            "data": {"train": train, "seq_len": 16, "eval_fraction": 0.1},
            "train": {"steps": 4, "batch_size": 4, "lr": 3e-3, "progress": False, "log_every": 1, "save_every": 2,
                      "schedule": "constant", **kw},
            "stages": [dict(s) for s in stages]})

    def losses(out, stage):
        lines = (tmp_path / out / stage / "metrics.jsonl").read_text().splitlines()
        return [json.loads(ln)["loss"] for ln in lines if "loss" in json.loads(ln)]

    run_recipe(cfg("jsonl", str(src)))
    run_recipe(cfg("store", f"store:{store}"))
    assert run_recipe(cfg("resumed", f"store:{store}", stop_after=3)).get("interrupted")
    run_recipe(cfg("resumed", f"store:{store}"))
    for stage in ("1-kd", "2-kd_long"):
        assert losses("store", stage) == losses("jsonl", stage) == losses("resumed", stage)
    a, b = (load_file(str(tmp_path / r / "model/model.safetensors")) for r in ("store", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) << 10
    raise KeyError("RssFile")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc/self/status")
def test_the_reader_unmaps_the_pages_it_read(tmp_path):
    """Mapped pages count in the resident set: after ``map_budget`` bytes the reader drops them,
    and what it reads afterwards is still the store's data."""
    w = TokenStoreWriter(tmp_path / "s", np.uint16)
    toks = np.random.default_rng(0).integers(0, 60000, size=16 << 20)
    w.append(toks, np.ones(toks.size, np.uint8), np.full(16, 1 << 20))
    w.finish({})
    store = TokenStore(tmp_path / "s", map_budget=1 << 40)  # never released by itself
    before = _rss_file()
    assert np.array_equal(store.read(0, toks.size), toks)
    assert _rss_file() - before > 24 << 20  # 32 MiB of tokens were mapped
    store.release()
    assert _rss_file() - before < 1 << 20
    small = TokenStore(tmp_path / "s", map_budget=1 << 20)
    same = [np.array_equal(small.read(a, a + (1 << 15)), toks[a:a + (1 << 15)]) for a in (0, 1 << 16)]
    small.release()
    before = _rss_file()
    for a in range(1 << 17, toks.size, 1 << 16):  # 254 reads of 64 KiB: ~32 MiB mapped without a release
        same.append(np.array_equal(small.read(a, a + (1 << 15)), toks[a:a + (1 << 15)]))
    # the budget plus what the kernel maps around the last faults (64 KiB, or a large folio)
    assert _rss_file() - before < 8 << 20
    assert all(same)


@pytest.mark.parametrize("n,G", [(10, 4), (7, 7), (5, 12)])
def test_the_batch_order_is_unchanged_by_holding_permutations_as_tensors(n, G):
    """Checkpoints written before resume on the same batches: step s takes samples [s*G, (s+1)*G)
    of the epochs' seeded permutations, however many epochs a step spans."""
    perm = lambda e: torch.randperm(n, generator=torch.Generator().manual_seed(9 * 1_000_003 + e)).tolist()  # noqa: E731
    sched = BatchSchedule(n, G, seed=9)
    for step in (0, 1, 2, 5, 11):
        assert sched.global_indices(step) == [perm(k // n)[k % n] for k in range(step * G, (step + 1) * G)]
    held = held_out_indices(50, 0.1, seed=2)
    first = set(torch.randperm(50, generator=torch.Generator().manual_seed(2)).tolist()[:5])
    assert held.tolist() == sorted(first)


def test_a_run_is_not_resumed_on_a_store_rewritten_in_place(tmp_path):
    """The resume fingerprint holds the store's manifest digest: the same ``store:DIR`` written
    again (here from the same rows) is another store, and a run begun on the first refuses it."""
    from thinkfast.checkpoint import save_model
    from thinkfast.config import ModelConfig
    from thinkfast.distill.config import build_config
    from thinkfast.distill.recipe import run_recipe
    from thinkfast.models.lm import LanguageModel
    from thinkfast.runtime import UserError

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                                      max_seq_len=32))
    teacher = save_model(model.eval(), tmp_path / "teacher")
    src = write_token_data(tmp_path / "data.jsonl", VOCAB, n=20)
    store = _store(src, tmp_path / "store")
    cfg = build_config({
        "out_dir": str(tmp_path / "run"), "teacher": str(teacher),
        "student": {"init": "teacher", "keep": 0.0, "kind": "discrete"},
        "data": {"train": f"store:{store}", "seq_len": 16, "eval_fraction": 0.0},
        "train": {"steps": 3, "batch_size": 2, "progress": False, "save_every": 1, "stop_after": 1},
        "stages": [{"name": "kd", "objective": "kd"}]})
    assert run_recipe(cfg).get("interrupted")
    _store(src, tmp_path / "again")
    import shutil

    shutil.rmtree(store)
    (tmp_path / "again").rename(store)
    cfg.train.stop_after = None
    with pytest.raises(UserError, match="stores"):
        run_recipe(cfg)
