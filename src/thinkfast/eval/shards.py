"""Splitting a run over many workers, and putting the pieces back together.

Assignment: problems are dealt round-robin in blocks of ``block`` consecutive problems (the
task's problem order for ``sample``; the order in which problems first appear in the input for
``grade`` and ``score``): the problem at position ``p`` belongs to shard ``(p // block) %
num_shards``. ``sample`` uses its ``--batch-problems`` as the block, so every engine call of a
shard holds exactly the problems of one call of the unsharded run, and the engine's numbers
(log-probabilities, not only the tokens) come out the same; ``grade`` and ``score`` use 1.
Round-robin rather than contiguous ranges, so a task whose problems are ordered by difficulty
or length (MATH-500 by subject and level) gives every shard a similar load.

A shard writes its rows, exactly as the unsharded run would write them for its problems (same
seeds, same fields), to its own file, plus a manifest beside it (``FILE.shard.json``, see
``manifest_path``): the command, ``shard`` and ``num_shards``, what must agree across shards
(``identity``: the sampling settings, or the input file's digest and the grading / scoring
options) and every problem of the whole run, in order, with the rows it should have.
``merge_shards`` reads the manifests, checks the shards are all there, from one run, disjoint
and complete, and writes the rows in the unsharded order.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment) the commands shard by rank
(``torchrun_env``), name each rank's file ``shard_path(out, ...)`` and put each rank on its own
GPU (``rank_device``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from ..runtime import UserError
from .io import iter_jsonl, read_json, write_json_atomic, write_jsonl_atomic

MANIFEST_FORMAT = "thinkfast-shard"


def assignment(block: int) -> str:
    """How problems are dealt to shards, as recorded in every manifest."""
    return f"(position // {int(block)}) % num_shards"


@dataclass(frozen=True)
class ShardSpec:
    index: int
    count: int
    auto: bool = False
    """Taken from torchrun's environment (the output file name then says which shard it is)."""
    block: int = 1
    """Consecutive problems dealt to one shard together (see the module doc)."""

    def owns(self, position: int) -> bool:
        return (position // self.block) % self.count == self.index

    def positions(self, total: int) -> list[int]:
        return [p for p in range(total) if self.owns(p)]

    def with_block(self, block: int) -> "ShardSpec":
        return ShardSpec(self.index, self.count, self.auto, max(1, int(block)))

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


# --- torchrun ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def torchrun_env(env: Optional[dict[str, str]] = None) -> Optional[RankEnv]:
    """The ranks torchrun (or any launcher that sets ``RANK`` and ``WORLD_SIZE``) gave this
    process; None outside such a launcher."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise UserError(f"RANK / WORLD_SIZE / LOCAL_RANK in the environment are not integers "
                        f"({env.get('RANK')!r}, {env.get('WORLD_SIZE')!r}, {env.get('LOCAL_RANK')!r})") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return RankEnv(rank, world, local, max(1, local_world))


def resolve_shard(shard: Optional[str], num_shards: Optional[int],
                  log: Callable[[str], None] = lambda s: None) -> Optional[ShardSpec]:
    """The shard this process runs, from ``--shard`` / ``--num-shards``; None for the whole run.

    ``--shard I --num-shards N``: shard I of N. ``--shard auto``, or neither flag under a
    launcher with ``WORLD_SIZE`` > 1: shard RANK of WORLD_SIZE. ``--shard auto`` outside one runs
    the whole task (one process is shard 0 of 1)."""
    if shard is None and num_shards is not None:
        raise UserError("--num-shards needs --shard I (0 <= I < N), or --shard auto under torchrun")
    if shard is None or shard == "auto":
        env = torchrun_env()
        if env is None or env.world_size == 1:
            if shard == "auto":
                log("--shard auto: no torchrun ranks in the environment (WORLD_SIZE), so this process runs "
                    "the whole task")
            return None
        if num_shards is not None and num_shards != env.world_size:
            raise UserError(f"--num-shards {num_shards} with --shard auto, but torchrun's WORLD_SIZE is "
                            f"{env.world_size}; drop --num-shards or give --shard I")
        return ShardSpec(env.rank, env.world_size, auto=True)
    try:
        index = int(shard)
    except ValueError:
        raise UserError(f"--shard must be an integer 0 <= I < N or 'auto', got {shard!r}") from None
    if num_shards is None:
        raise UserError(f"--shard {index} needs --num-shards N")
    if not 0 <= index < num_shards:
        raise UserError(f"--shard {index} is not in 0..{num_shards - 1} (--num-shards {num_shards})")
    return ShardSpec(index, num_shards)


def shard_path(out: str | os.PathLike, spec: ShardSpec) -> str:
    """``runs/x.jsonl`` -> ``runs/x.shard-3-of-8.jsonl``: where rank 3 of 8 writes when every
    rank was given the same ``--out``."""
    p = Path(out)
    suffix = p.suffix if p.suffix else ""
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    return str(p.with_name(f"{stem}.shard-{spec.index}-of-{spec.count}{suffix}"))


def output_for(out: str | os.PathLike, spec: Optional[ShardSpec]) -> str:
    """The file this process writes: ``out`` itself, or ``shard_path`` when sharding by rank."""
    return shard_path(out, spec) if spec is not None and spec.auto else os.fspath(out)


def rank_device(device: Optional[str]) -> str:
    """``device`` with each torchrun rank on its own GPU: None, "auto" or "cuda" become
    ``cuda:LOCAL_RANK`` under torchrun (plain "cuda" outside it) when CUDA is available, else
    "cpu". An explicit "cuda:K" or "cpu" is kept."""
    import torch

    if device not in (None, "auto", "cuda"):
        return str(device)
    if not torch.cuda.is_available():
        if device == "cuda":
            raise UserError("--device cuda, but CUDA is not available on this machine")
        return "cpu"
    env = torchrun_env()
    if env is None:
        return "cuda"
    k = env.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(k)
    return f"cuda:{k}"


def pin_visible_devices(per_rank: int = 1, env: Optional[dict[str, str]] = None) -> Optional[str]:
    """Under torchrun, restrict this rank to its own ``per_rank`` GPUs through
    ``CUDA_VISIBLE_DEVICES`` (rank k gets k*per_rank .. k*per_rank + per_rank - 1), for libraries
    that pick devices themselves (vLLM); must run before CUDA is initialised. Returns the value
    set, or None when nothing was changed (no torchrun, or the variable is already set)."""
    env = os.environ if env is None else env
    ranks = torchrun_env(env)
    if ranks is None or ranks.local_world_size == 1 or "CUDA_VISIBLE_DEVICES" in env:
        return None
    first = ranks.local_rank * per_rank
    value = ",".join(str(first + i) for i in range(per_rank))
    env["CUDA_VISIBLE_DEVICES"] = value
    return value


def default_workers() -> int:
    """Grading workers for this process: its cores, shared among the ranks of this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    env = torchrun_env()
    return max(1, cores // (env.local_world_size if env is not None else 1))


# --- problems of a rows file ---------------------------------------------------------------------


def problem_groups(path: str | os.PathLike, rows: Optional[Sequence[dict[str, Any]]] = None
                   ) -> list[tuple[str, list[int]]]:
    """``(problem id, row indices)`` per problem of a rows file, in order of first appearance.
    Every row needs a ``problem_id`` and a problem's rows must be together (a samples file's
    are), or the rows could not be put back in their order after sharding."""
    numbered = list(iter_jsonl(path)) if rows is None else list(enumerate(rows, start=1))
    groups: list[tuple[str, list[int]]] = []
    seen: dict[str, int] = {}
    for i, (lineno, row) in enumerate(numbered):
        pid = row.get("problem_id")
        if pid is None:
            raise UserError(f"{path}:{lineno}: row has no 'problem_id'; sharding deals problems to shards")
        pid = str(pid)
        if groups and groups[-1][0] == pid:
            groups[-1][1].append(i)
            continue
        if pid in seen:
            raise UserError(f"{path}:{lineno}: problem {pid!r} appears again after other problems (first at "
                            f"line {seen[pid]}); sharding needs each problem's rows together")
        seen[pid] = lineno
        groups.append((pid, [i]))
    return groups


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- manifests -----------------------------------------------------------------------------------


def manifest_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.shard.json")


def make_manifest(command: str, spec: ShardSpec, identity: dict[str, Any],
                  problems: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """``problems``: (problem id, rows it should have) for every problem of the whole run."""
    return {"format": MANIFEST_FORMAT, "command": command, "shard": spec.index, "num_shards": spec.count,
            "block": spec.block, "assignment": assignment(spec.block), "identity": identity,
            "problems": [[str(p), int(n)] for p, n in problems]}


def _describe(m: dict[str, Any]) -> str:
    return f"`thinkfast {m.get('command')}` shard {m.get('shard')} of {m.get('num_shards')}"


def claim_output(out: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Before a shard writes ``out``: refuse a file that belongs to another run or shard (its
    manifest differs, or it has rows but no manifest), then write the manifest."""
    mpath = manifest_path(out)
    if mpath.exists():
        old = read_json(mpath)
        keys = ("format", "command", "shard", "num_shards", "block", "identity", "problems")
        if not isinstance(old, dict) or any(old.get(k) != manifest[k] for k in keys):
            what = next((k for k in keys if not isinstance(old, dict) or old.get(k) != manifest[k]), "format")
            raise UserError(f"{out} belongs to another run: its manifest {mpath} says "
                            f"{_describe(old) if isinstance(old, dict) else 'something else'} and differs in "
                            f"{what!r} from this run ({_describe(manifest)}). Choose another --out.")
        return
    if Path(out).exists() and Path(out).stat().st_size > 0 and manifest["command"] == "sample":
        raise UserError(f"{out} already has rows but no shard manifest ({mpath}): it was not written by "
                        f"{_describe(manifest)}. Choose another --out.")
    write_json_atomic(mpath, manifest)


def refuse_shard_file(out: str | os.PathLike, command: str) -> None:
    """An unsharded ``sample`` must not resume a shard's file (it would add other shards' problems)."""
    mpath = manifest_path(out)
    if mpath.exists():
        m = read_json(mpath)
        raise UserError(f"{out} is {_describe(m) if isinstance(m, dict) else 'a shard'} (see {mpath}); resume it "
                        f"with the same --shard / --num-shards, or choose another --out")


def carry_manifest(source: str | os.PathLike, out: str | os.PathLike) -> None:
    """After ``grade`` / ``score`` rewrote ``source`` into ``out`` whole: a shard's rows stay a
    shard (its manifest is copied), and an ``out`` that is no longer one loses a stale manifest."""
    if os.path.abspath(source) == os.path.abspath(out):
        return
    src, dst = manifest_path(source), manifest_path(out)
    if src.exists():
        write_json_atomic(dst, read_json(src))
    elif dst.exists():
        dst.unlink()


# --- merging -------------------------------------------------------------------------------------


@dataclass
class MergeReport:
    shards: int
    problems: int
    rows: int
    failed: list[dict[str, Any]]
    """The sampling failures the shards reported (``FILE.errors.jsonl``), in problem order."""


def _read_manifest(path: str) -> dict[str, Any]:
    mpath = manifest_path(path)
    if not Path(path).is_file():
        raise UserError(f"{path}: no such shard file")
    if not mpath.exists():
        raise UserError(f"{path}: no shard manifest beside it ({mpath}); only files written with --shard "
                        "(or under torchrun) can be merged")
    m = read_json(mpath)
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{mpath}: not a thinkfast shard manifest")
    for k, t in (("command", str), ("shard", int), ("num_shards", int), ("block", int), ("problems", list),
                 ("identity", dict)):
        if not isinstance(m.get(k), t):
            raise UserError(f"{mpath}: {k!r} is missing or not a {t.__name__}")
    return m


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} vs {b!r}"]


def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                 log: Callable[[str], None] = lambda s: None) -> MergeReport:
    """Merge shard files into ``out`` (written atomically): the rows of every problem, in the
    unsharded run's order. Refuses, naming the files, shards of different runs or settings, a
    shard given twice or missing, rows in the wrong shard or in two, and incomplete shards."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise UserError("no shard files given")
    if any(os.path.abspath(p) == os.path.abspath(out) for p in paths):
        raise UserError(f"--out {out} is one of the shard files; choose another --out")
    manifests = [_read_manifest(p) for p in paths]
    ref, ref_path = manifests[0], paths[0]
    for p, m in zip(paths[1:], manifests[1:]):
        for k in ("command", "num_shards", "block", "identity", "problems"):
            if m.get(k) != ref.get(k):
                if k == "identity":
                    detail = "; ".join(_differences(ref[k], m[k])[:3])
                elif k == "problems":
                    detail = f"{len(ref[k])} vs {len(m[k])} problems" if len(ref[k]) != len(m[k]) else \
                        "the same number of problems, but not the same ones in the same order"
                else:
                    detail = f"{ref.get(k)!r} vs {m.get(k)!r}"
                raise UserError(f"{p} is not a shard of the same run as {ref_path}: they differ in {k} ({detail})")
    count, block = ref["num_shards"], max(1, ref["block"])
    by_index: dict[int, str] = {}
    for p, m in zip(paths, manifests):
        i = m["shard"]
        if not 0 <= i < count:
            raise UserError(f"{manifest_path(p)}: shard {i} is not in 0..{count - 1}")
        if i in by_index:
            same = os.path.realpath(by_index[i]) == os.path.realpath(p)
            raise UserError(f"overlapping shards: {by_index[i]} and {p} are both shard {i} of {count}"
                            + (" (the same file given twice)" if same else ""))
        by_index[i] = p
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        given = ", ".join(f"{p} = shard {m['shard']}" for p, m in zip(paths, manifests))
        raise UserError(f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {count} "
                        f"(given: {given})")

    problems = [(str(pid), int(n)) for pid, n in ref["problems"]]
    position = {pid: k for k, (pid, _) in enumerate(problems)}
    command = ref["command"]
    settings = ref["identity"].get("settings") if command == "sample" else None
    rows_of: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, str] = {}
    failed: dict[str, dict[str, Any]] = {}
    keys_ref: Optional[tuple[str, frozenset]] = None
    for i in range(count):
        p = by_index[i]
        last = None
        for lineno, row in iter_jsonl(p, allow_truncated_tail=True):  # a cut last line: unfinished, below
            pid = row.get("problem_id")
            pid = None if pid is None else str(pid)
            if pid not in position:
                raise UserError(f"{p}:{lineno}: problem {pid!r} is not one of the run's problems")
            belongs = (position[pid] // block) % count
            if belongs != i:
                raise UserError(f"{p}:{lineno}: problem {pid!r} belongs to shard {belongs}, not {i}: "
                                "the shards overlap")
            if pid in owner and owner[pid] != p:
                raise UserError(f"{p}:{lineno}: problem {pid!r} is also in {owner[pid]}: the shards overlap")
            if pid in rows_of and last != pid:
                raise UserError(f"{p}:{lineno}: problem {pid!r} appears again after other problems")
            if settings is not None and row.get("settings") != settings:
                raise UserError(f"{p}:{lineno}: row made with other settings ({row.get('settings')}) than its "
                                f"manifest says ({settings})")
            keys = frozenset(row)
            if keys_ref is None:
                keys_ref = (f"{p}:{lineno}", keys)
            elif keys != keys_ref[1]:
                extra, lack = sorted(keys - keys_ref[1]), sorted(keys_ref[1] - keys)
                raise UserError(f"{p}:{lineno}: row fields differ from {keys_ref[0]} (here also {extra}, here "
                                f"without {lack}); were some shards graded or scored and others not?")
            owner[pid] = p
            rows_of.setdefault(pid, []).append(row)
            last = pid
        errors = Path(f"{p}.errors.jsonl")
        if command == "sample" and errors.exists():
            for _, e in iter_jsonl(errors):
                if str(e.get("problem_id")) in position:
                    failed[str(e.get("problem_id"))] = e
        unfinished = []
        mine = ShardSpec(i, count, block=block).positions(len(problems))
        for pos in mine:
            pid, want = problems[pos]
            got = rows_of.get(pid, [])
            if not got and pid in failed:
                continue  # could not be sampled (its reason is in the shard's errors file)
            whole = len(got) == want
            if whole and command == "sample":
                whole = sorted(r.get("sample_index", -1) for r in got) == list(range(want))
            if not whole:
                unfinished.append(f"{pid!r} has {len(got)} of {want} rows")
        if unfinished:
            raise UserError(f"{p} (shard {i} of {count}) is incomplete: {len(unfinished)} of its "
                            f"{len(mine)} problems are unfinished (first: {unfinished[0]}); "
                            f"re-run its command with the same arguments to finish it (it resumes)")
    merged = [r for pid, _ in problems for r in rows_of.get(pid, [])]
    write_jsonl_atomic(out, merged)
    err_out = Path(f"{os.fspath(out)}.errors.jsonl")
    fails = [failed[pid] for pid, _ in problems if pid in failed and pid not in rows_of]
    if fails:
        write_jsonl_atomic(err_out, fails)
    elif err_out.exists():
        err_out.unlink()
    log(f"merged {count} shards: {len(merged)} rows of {len(problems) - len(fails)} problems"
        + (f"; {len(fails)} problems could not be sampled (see {err_out})" if fails else "") + f" -> {out}")
    return MergeReport(count, len(problems) - len(fails), len(merged), fails)
