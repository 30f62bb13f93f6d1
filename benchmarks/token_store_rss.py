"""Peak memory of one training rank reading a token store, for stores of growing size.

For each size, a synthetic store of random token ids (examples of 64..2048 tokens, each with a
random prompt share) is written with ``TokenStoreWriter`` into a temporary directory. A fresh
Python process per size then does what a rank of the trainer does: ``load_data`` on
``data.train: store:DIR`` (held-out split included), the ``BatchSchedule`` of (seed, step), and
``StoreBlocks.batch`` for its own micro-batches of N steps. It reports the peak resident set
(``VmHWM``, which counts the mapped pages of the store it touched as well as the heap) against
the same process just after its imports, the store's pages mapped (``/proc/self/smaps``, sampled
every 10 steps), and the time from ``load_data`` to the first batch.
The temporary stores are deleted at the end.

    python benchmarks/token_store_rss.py [--sizes 20000000,200000000] [--steps 200]

The store is read right after it was written, so its pages are in the page cache: the time to
first batch is that of a warm cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status(key: str) -> int:
    """A ``/proc/self/status`` figure in bytes (VmHWM, VmRSS, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _store_pages(store: Path) -> int:
    """Bytes of the store's files mapped into this process now (``/proc/self/smaps``)."""
    total, mine = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:  # a mapping's header line
            mine = len(parts) > 5 and parts[5].startswith(str(store))
        elif mine and parts[0] == "Rss:":
            total += int(parts[1]) * 1024
    return total


def build(out: Path, n_tokens: int, vocab: int, seed: int) -> dict:
    """A store of ``n_tokens`` random ids in ``out``, written 4M tokens at a time."""
    import numpy as np

    from thinkfast.data.store import TokenStoreWriter, token_dtype

    rng = np.random.default_rng(seed)
    writer = TokenStoreWriter(out, token_dtype(vocab))
    left = n_tokens
    while left > 0:
        lengths = rng.integers(64, 2049, size=4096)
        lengths = lengths[np.cumsum(lengths) <= left] if lengths.sum() > left else lengths
        if lengths.size == 0:
            lengths = np.array([left])
        total = int(lengths.sum())
        tokens = rng.integers(0, vocab, size=total, dtype=np.int64)
        prompt = (rng.random(len(lengths)) * 0.5 * lengths).astype(np.int64)
        position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask = position >= np.repeat(prompt, lengths)
        writer.append(tokens, mask, lengths)
        left -= total
    return writer.finish({"source": f"random ids, seed {seed}", "format": {}, "tokenizer": None})


def child(args: argparse.Namespace) -> None:
    """One rank: open the store, then read its micro-batches of ``args.steps`` steps."""
    import torch  # noqa: F401  (the imports a training process has before it reads data)

    from thinkfast.data.dataset import BatchSchedule, DataConfig, load_data

    base = {k: _status(k) for k in ("VmHWM", "RssFile", "RssAnon")}
    t0 = time.perf_counter()
    data = load_data(DataConfig(train=f"store:{args.store}", seq_len=args.seq_len, eval_fraction=0.05))
    if args.map_budget is not None:
        data.train.store.map_budget = (args.map_budget << 20) if args.map_budget > 0 else float("inf")
    sched = BatchSchedule(len(data.train), args.micro * args.world, seed=0)
    first, tokens, store_max, sampled = None, 0, 0, 0.0
    for step in range(args.steps):
        for ix in sched.micro_batches(step, args.rank, args.world, args.micro):
            batch = data.train.batch(ix)
            tokens += int(batch["valid"].sum())
            if first is None:
                first = time.perf_counter() - t0
        if step % 10 == 0:  # sampled (reading smaps takes a while; its time is not counted)
            t = time.perf_counter()
            store_max = max(store_max, _store_pages(Path(args.store)))
            sampled += time.perf_counter() - t
    wall = time.perf_counter() - t0 - sampled
    print(json.dumps({"blocks": len(data.train), "base_hwm": base["VmHWM"], "peak_hwm": _status("VmHWM"),
                      "file_growth": _status("RssFile") - base["RssFile"],
                      "anon_growth": _status("RssAnon") - base["RssAnon"], "store_pages_max": store_max,
                      "first_batch_s": first,
                      "read_s": wall, "tokens_read": tokens}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000000,200000000", help="store sizes in tokens, comma-separated")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps the rank reads")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=8, help="blocks per micro-batch (one per step and rank)")
    ap.add_argument("--world", type=int, default=8, help="ranks sharing each step; this process is rank 0")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--map-budget", type=int, default=None,
                    help="MiB of store pages the reader keeps mapped (default: the reader's; 0: never unmap)")
    ap.add_argument("--dir", default=None, help="where to put the temporary stores (default: the system temp)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="token_store_rss-", dir=args.dir))
    rows = []
    try:
        for size in (int(float(s)) for s in args.sizes.split(",")):
            store = work / f"store-{size}"
            t0 = time.perf_counter()
            m = build(store, size, args.vocab, seed=0)
            built = time.perf_counter() - t0
            disk = sum(p.stat().st_size for p in store.iterdir())
            cmd = [sys.executable, __file__, "--child", "--store", str(store), "--steps", str(args.steps),
                   "--seq-len", str(args.seq_len), "--micro", str(args.micro), "--world", str(args.world)]
            cmd += ["--map-budget", str(args.map_budget)] if args.map_budget is not None else []
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append({"tokens": m["n_tokens"], "examples": m["n_examples"], "disk": disk, "build_s": built, **r})
            shutil.rmtree(store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 1 << 20
    budget = "default" if args.map_budget is None else (f"{args.map_budget} MiB" if args.map_budget else "never unmap")
    print(f"seq_len {args.seq_len}, {args.steps} steps of {args.micro} blocks on rank 0 of {args.world}, "
          f"vocab {args.vocab}, map budget {budget}\n")
    print("| store tokens | on disk | peak RSS after imports | peak RSS after reading | store pages mapped (max) | "
          "growth: all mapped files | growth: heap | time to first batch | read time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tokens'] / 1e6:.0f}M | {r['disk'] / mib:.0f} MiB | {r['base_hwm'] / mib:.0f} MiB | "
              f"{r['peak_hwm'] / mib:.0f} MiB | {r['store_pages_max'] / mib:.0f} MiB | {r['file_growth'] / mib:.0f} MiB | "
              f"{r['anon_growth'] / mib:.1f} MiB | "
              f"{r['first_batch_s'] * 1e3:.0f} ms | "
              f"{r['read_s']:.2f} s |")


if __name__ == "__main__":
    main()
