"""The embedded demo: the whole study on one CPU, in minutes.

Stages (each one's output lives in OUT/<stage>; a finished stage is recorded in OUT/stages.json
and reused by the next run; ``force`` redoes them, removing only the demo's own files from OUT;
a run holds a lock on OUT, and its worker processes die with it):

  data         synthetic train/test problems (the task the shipped teacher was trained on)
  teacher      the shipped teacher (or ``retrain_teacher``: thinkfast's own pretraining recipe)
  llamba       Llamba student (with a decay bias): MOHAWK stages 1-3 (matrix, hidden, KD), then SFT
  hybrid       50% MambaInLlama hybrid: attention initialisation, reverse-KL KD, then SFT
               (the students, the ORM and the score stages run side by side in worker
               processes when there are cores; timed stages always run alone)
  temperature  each model's sampling temperature, chosen on TRAIN problems (majority@n), and its
               decode seconds per sample there
  orm          an outcome reward model trained on graded teacher samples of TRAIN problems
  sample-*     samples of every TEST problem for each model, at one batch size for all: 32 for the
               teacher, more for a student in proportion to its speed (``samples_per_problem``),
               decided once per OUT and recorded with the speeds it came from (``StageRunner.decide``)
  score        grading and ORM scores
  report       metrics, budgets, the Pareto front, report.md + plots, results.json; each student
               is also scored at the most samples that fit each teacher budget (``budget_ks``)

The claim tested: at equal seconds per problem, does a student reach a higher coverage and
majority accuracy than its teacher once the budget allows several teacher samples? Each budget
compares a student with the teacher on the same test problems: the mean per-problem difference
with a paired bootstrap interval (``claim_verdict``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .config import atomic_write_text, to_dict
from .runtime import UserError, die_with_parent

ASSETS = Path(__file__).parent / "assets"
SHIPPED_TEACHER = ASSETS / "demo_teacher"
TEACHER_RECIPE = ASSETS / "demo_teacher_recipe.yaml"
MODELS = ("teacher", "llamba", "hybrid")
TASK_FORMAT = {"prompt_template": "Question: {question}\nAnswer:", "response_template": " {answer}\n\n",
               "add_bos": False, "add_eos": False, "pack": False}
"""How training rows are laid out: one problem per row, exactly as the (zero-shot) prompt shows it
and right-padded (the teacher recipe's YAML says the same). Rows are not packed: a packed row holds
earlier problems whose sentences ("Third Vic has ...") are decoys for the look-up of sentence k in
the current question, which is the step a small model learns last."""


@dataclass
class DemoConfig:
    """Every setting of a demo run; OUT/demo_config.json holds it and a rerun must match it."""

    quick: bool = False
    seed: int = 0
    n_train: int = 20000
    """Training problems written for distillation and SFT."""
    n_test: int = 100
    """Test problems evaluated."""
    # students
    mohawk_steps: list[int] = field(default_factory=lambda: [200, 150, 1600])
    """Steps of MOHAWK's matrix, hidden and KD stages (Llamba)."""
    llamba_kd_lr: float = 2e-3
    """Peak learning rate of Llamba's KD stage, chosen on validation problems
    (docs/llamba-decay-bias.md)."""
    llamba_decay_bias: Optional[list[float]] = field(default_factory=lambda: [4.0, 1024.0])
    """The Llamba student's ``mamba.decay_bias`` (heads' initial memory, in tokens); None = none,
    as in Llamba's release, where every head starts with a one-token memory (docs/llamba-decay-bias.md)."""
    hybrid_keep: float = 0.5
    """Share of the teacher's layers the hybrid keeps as attention, chosen by leave-one-out KL."""
    select_rows: int = 64
    """Train problems the leave-one-out scores are measured on (half of them held out)."""
    hybrid_kd_steps: int = 1600
    llamba_sft_steps: int = 3000
    """Llamba's SFT steps on the train problems' reference chains, chosen on validation problems
    (docs/demo-study.md)."""
    hybrid_sft_steps: int = 2000
    """The hybrid's SFT steps, chosen on validation problems (docs/demo-study.md)."""
    batch_size: int = 4
    seq_len: int = 512
    """Row length: a prompt plus the longest chain of the shipped task is ~430 tokens."""
    lr: float = 1e-3
    # sampling
    temperatures: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0])
    temp_problems: int = 32
    temp_samples: int = 8
    orm_problems: int = 160
    orm_samples: int = 8
    n_samples: int = 32
    """Samples per test problem for the teacher, and the least any model draws."""
    batch_problems: int = 8
    """Problems per engine call for the teacher: every call of every model, temperature choice
    included, decodes ``batch_problems * n_samples`` rows."""
    match_budget: bool = True
    """A student that decodes m times as fast as the teacher (measured in its temperature stage, on
    train problems, at the same rows per call) draws n_samples * 2**round(log2(m)) samples per
    problem, so its curves reach the teacher's largest budget."""
    max_budget_factor: int = 4
    """The most that factor may be."""
    max_new_tokens: int = 400

    @classmethod
    def preset(cls, quick: bool) -> "DemoConfig":
        if not quick:
            return cls()
        return cls(quick=True, select_rows=8, n_train=400, n_test=8, mohawk_steps=[4, 4, 6], hybrid_kd_steps=6,
                   llamba_sft_steps=4, hybrid_sft_steps=4, batch_size=4, seq_len=128, temperatures=[0.8, 1.0], temp_problems=4, temp_samples=2,
                   orm_problems=8, orm_samples=4, n_samples=4, batch_problems=4, max_new_tokens=64)


# --- stage bookkeeping --------------------------------------------------------------------------

DECISIONS = "decisions"
"""The entry of stages.json that holds the run's decisions (``StageRunner.decide``), not a stage."""


class StageRunner:
    """Runs named stages once; records results and wall time in OUT/stages.json, and beside them
    the run's decisions (``decide``)."""

    def __init__(self, out: Path, force: bool, log: Callable[[str], None]):
        self.out, self.force, self.log = out, force, log
        self.path = out / "stages.json"
        state: dict[str, Any] = {}
        if self.path.exists() and not force:
            try:
                state = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"{self.path}:{e.lineno}: malformed JSON ({e.msg}); "
                                f"use --force to redo every stage") from None
            if not isinstance(state, dict):
                raise UserError(f"{self.path}: expected an object of stages, found {type(state).__name__}; "
                                f"use --force to redo every stage")
        self.decisions: dict[str, Any] = state.pop(DECISIONS, {})
        self.state: dict[str, Any] = state

    def decide(self, name: str, measured: dict[str, Any], rule: Callable[[dict[str, Any]], Any]) -> Any:
        """``rule(measured)``, decided once per OUT: the first run records it with the
        measurements it came from, and every later run in this OUT reuses the recorded value even
        when its own measurements differ. Timings vary from run to run; a choice made from them
        (how many samples a model draws) must not, or a resumed run would mix two choices and its
        figures that are not timings would depend on the timings of the run that resumed it."""
        if name in self.decisions:
            kept = self.decisions[name]
            note = "" if kept["from"] == measured else f" (measured now: {measured}; kept: {kept['from']})"
            self.log(f"[{name}] decided earlier, reused{note}")
            return kept["value"]
        value = rule(measured)
        self.decisions[name] = {"value": value, "from": measured}
        self._write()
        return value

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        assert name != DECISIONS, f"{DECISIONS!r} is stages.json's entry for decisions, not a stage name"
        if name in self.state:
            self.log(f"[{name}] done earlier ({self.state[name]['seconds']:.0f}s), reused")
            return self.state[name]["result"]
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a stage that fails names itself; earlier stages stay on disk
            raise self._failure(name, e) from (None if isinstance(e, UserError) else e)
        self._record(name, result, time.perf_counter() - t0)
        return result

    def run_parallel(self, jobs: dict[str, Callable[[], Any]], workers: int) -> dict[str, Any]:
        """Run independent stages at once, each in a spawned worker process, and record each as it
        finishes (its own wall time; they overlap). ``jobs`` values must pickle (module-level
        functions, ``functools.partial`` of them). With ``workers`` <= 1, or one stage left to do,
        they run here one after another. A failing stage is named; the others still finish and
        are kept, so a rerun redoes only the failed one."""
        todo = [name for name in jobs if name not in self.state]
        if workers <= 1 or len(todo) <= 1:
            return {name: self.run(name, fn) for name, fn in jobs.items()}
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        self.log(f"[{', '.join(todo)}] ... (in parallel, {min(workers, len(todo))} processes)")
        errors: dict[str, BaseException] = {}
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked OpenMP or torch state
        # Each worker dies with this process, even on kill -9: a worker left running would keep
        # writing into OUT beside a rerun.
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_timed, jobs[name]): name for name in todo}
            for future in as_completed(futures):
                name = futures[future]
                try:
                    result, seconds = future.result()
                except BaseException as e:  # noqa: BLE001 -- named and re-raised below
                    errors[name] = e
                    continue
                self._record(name, result, seconds)
        for name, e in errors.items():
            raise self._failure(name, e) from e
        return {name: self.state[name]["result"] for name in jobs}

    def _failure(self, name: str, e: BaseException) -> UserError:
        detail = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        return UserError(f"stage {name!r} failed: {detail} (earlier stages are kept in {self.out})")

    def _record(self, name: str, result: Any, seconds: float) -> None:
        self.state[name] = {"seconds": seconds, "result": result}
        self._write()
        self.log(f"[{name}] finished in {seconds:.0f}s")

    def _write(self) -> None:
        doc = {**self.state, DECISIONS: self.decisions} if self.decisions else self.state
        atomic_write_text(self.path, json.dumps(doc, indent=2) + "\n")

    def seconds(self) -> dict[str, float]:
        return {k: round(v["seconds"], 1) for k, v in self.state.items()}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def in_worker(threads: int, position: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker process, with ``threads`` PyTorch threads and its progress bars on
    terminal line ``position``."""
    from . import runtime

    runtime.configure_threads(threads)
    runtime.PROGRESS_POSITION = position
    return fn(*args)


def distil(recipe) -> list[dict[str, Any]]:
    """One student's recipe; returns its stage summaries."""
    from .distill.recipe import run_recipe

    return run_recipe(recipe)["stages"]


def parallel_workers(threads: int, jobs: Optional[int]) -> int:
    """Processes for the stages that run side by side: ``jobs`` if given, else as many as there are
    cores for ``threads`` threads each, at most 2 (the students are the long ones)."""
    if jobs is not None:
        return max(1, jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores // max(1, threads)))


# --- the output directory -----------------------------------------------------------------------

OWN_DIRS = ("data", "teacher", "tokenizer", "select", "llamba", "hybrid", "temperature", "orm", "samples")
"""The stage directories the demo writes in OUT (``tokenizer`` only with ``retrain_teacher``); each
is the demo's own, whole, in a directory that holds a demo run."""
OWN_FILES = ("demo_config.json", "stages.json", "metrics.json", "results.json", "report.md")
OWN_PLOTS = ("coverage_vs_k_*.png", "accuracy_vs_k_*.png", "accuracy_vs_seconds_*.png")
"""The report's figures (``thinkfast.eval.report.write_report``), one of each per task."""
LOCK_NAME = ".thinkfast-demo.lock"
"""The file a running demo holds locked (``lock_out_dir``); it stays, and is the demo's own."""


def is_demo_output(p: Path) -> bool:
    """Whether ``p``, an entry of OUT, is one the demo writes: a stage directory, one of its files
    or figures, the lock, or what an interrupted atomic write of one of those left behind
    (``.NAME.<random>.tmp``). A symlink never is: the demo writes none."""
    if p.is_symlink():
        return False
    if p.is_dir():
        return p.name in OWN_DIRS
    if not p.is_file():
        return False
    name = p.name
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 2)[0]  # ".report.md.k3j9x.tmp" -> "report.md"
    elif name == LOCK_NAME:
        return True
    return name in OWN_FILES or any(Path(name).match(g) for g in OWN_PLOTS)


def out_dir_meta(cfg: DemoConfig, teacher_tag: str, teacher_weights: Optional[str] = None) -> dict[str, Any]:
    """What OUT/demo_config.json records, and a rerun in the same OUT must match."""
    meta = {"demo": to_dict(cfg), "teacher": teacher_tag}
    if teacher_weights is not None:
        meta["teacher_weights"] = teacher_weights
    return meta


def refuse_unusable_out(out: Path, meta: dict[str, Any], force: bool) -> None:
    """Raise a UserError unless OUT can take this run, without writing anything: OUT must not
    exist yet, or be a directory that holds a demo run of this configuration (``meta``; of any
    configuration with ``force``), or one that holds nothing but what a run leaves before it
    records its configuration (``_left_before_config``). A directory that holds no demo run is
    refused even with ``force``: what is in it is not the demo's to remove."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a directory; name a directory (it is created if missing)")
    if not out.exists():
        return
    path = out / "demo_config.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != meta and not force:
            raise UserError(f"{out} holds a demo run with a different configuration ({path}); use another "
                            f"--out, or --force to redo every stage there (it removes only the demo's own files)")
        return
    # Without demo_config.json (the first file a run writes, once it holds the lock) even a
    # stage-named entry may be someone else's: only what a run leaves before it is accepted.
    foreign = sorted(p.name for p in out.iterdir() if not _left_before_config(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"{out} is not empty and holds no demo run (no demo_config.json; it holds {shown}); "
                        f"use an empty or new --out")


def _left_before_config(p: Path) -> bool:
    """Whether ``p`` is what a run leaves in OUT before demo_config.json: the lock, or a
    half-written demo_config.json."""
    return (p.is_file() and not p.is_symlink()
            and (p.name == LOCK_NAME or (p.name.startswith(".demo_config.json.") and p.name.endswith(".tmp"))))


def remove_demo_outputs(out: Path) -> list[str]:
    """Remove the demo's own entries of OUT (``is_demo_output``) but the lock, which the caller
    holds; returns the names of the entries kept that the demo did not write."""
    kept = []
    for p in sorted(out.iterdir()):
        if p.name == LOCK_NAME:
            continue
        if not is_demo_output(p):
            kept.append(p.name)
        elif p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return kept


def check_out_dir(out: Path, cfg: DemoConfig, teacher_tag: str, force: bool,
                  teacher_weights: Optional[str] = None, log: Callable[[str], None] = print) -> None:
    """Make OUT ready for this run and record its configuration: refuse an unusable OUT
    (``refuse_unusable_out``), and with ``force`` remove the demo's own files there, so that no
    stage resumes from an old checkpoint. ``teacher_weights`` (a digest of the shipped teacher)
    makes a run of an older shipped teacher another configuration. The caller holds OUT's lock."""
    meta = out_dir_meta(cfg, teacher_tag, teacher_weights)
    refuse_unusable_out(out, meta, force)
    if force and out.exists():
        kept = remove_demo_outputs(out)
        if kept:
            log(f"--force: kept what the demo did not write in {out}: {', '.join(kept)}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "demo_config.json", json.dumps(meta, indent=2) + "\n")


@contextlib.contextmanager
def lock_out_dir(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUT (``flock`` on OUT/.thinkfast-demo.lock) while the block runs;
    a second run on the same OUT is refused meanwhile. The kernel drops the lock when its holder
    dies, so a killed run leaves no stale lock, and the descriptor is not inherited by the
    workers the run starts (Python's default), so a worker never holds it. Where ``fcntl`` is
    missing (Windows) the run is not locked."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a parent of OUT is a file
        raise UserError(f"cannot create --out {out}: {e.strerror or e}") from None
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # e.g. OUT is not writable
        raise UserError(f"cannot write into --out {out}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise UserError(f"{out} is in use by another thinkfast demo run"
                            f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to end, "
                            f"or use another --out") from None
        # The holder's pid, for that message. Written in place: the lock belongs to this inode,
        # which a rename would replace.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# --- the teacher --------------------------------------------------------------------------------

def shipped_teacher_task() -> dict[str, Any]:
    """The synthetic-task config stored beside the shipped teacher."""
    cfg = SHIPPED_TEACHER / "config.json"
    try:
        meta = json.loads(cfg.read_text())
        return meta["demo_task"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise UserError(f"the shipped demo teacher at {SHIPPED_TEACHER} is missing or corrupt ({e}); "
                        f"run `thinkfast demo --retrain-teacher` to train it again") from None


def shipped_teacher_digest() -> Optional[str]:
    """SHA-256 of the shipped teacher's weights (None when missing: the teacher stage says so)."""
    import hashlib

    try:
        return hashlib.sha256((SHIPPED_TEACHER / "model.safetensors").read_bytes()).hexdigest()
    except OSError:
        return None


def load_shipped_teacher():
    from .checkpoint import load_model, load_tokenizer

    try:
        return load_model(SHIPPED_TEACHER), load_tokenizer(SHIPPED_TEACHER)
    except UserError as e:
        raise UserError(f"the shipped demo teacher is missing or corrupt: {e}; "
                        f"run `thinkfast demo --retrain-teacher` to train it again") from None


def teacher_recipe(out_dir: Path, tokenizer_dir: Path, train_path: Path):
    """The DistillConfig that trains the demo teacher: the YAML `thinkfast distill` runs."""
    from .distill.config import load_config

    return load_config(TEACHER_RECIPE, [f"out_dir={out_dir}", f"tokenizer={tokenizer_dir}",
                                        f"data.train={train_path}"])


# --- students -----------------------------------------------------------------------------------

def _student_recipe(cfg: DemoConfig, out_dir: Path, teacher_dir: Path, train: Path, keep: float, kind: str,
                    stages: list[dict[str, Any]], mamba: Optional[dict[str, Any]] = None):
    from .distill.config import build_config

    return build_config({
        "out_dir": str(out_dir), "teacher": str(teacher_dir),
        "student": {"init": "teacher", "keep": keep, "kind": kind, "seed": cfg.seed, "mamba": mamba or {}},
        "data": {"train": str(train), **TASK_FORMAT, "loss_on": "response", "seq_len": cfg.seq_len,
                 "eval_fraction": 0.02, "seed": cfg.seed},
        "train": {"batch_size": cfg.batch_size, "lr": cfg.lr, "schedule": "cosine", "warmup_steps": 10,
                  "clip_grad": 1.0, "eval_every": 0, "save_every": 100, "seed": cfg.seed,
                  "progress": True},
        "stages": stages,
    })


def llamba_recipe(cfg: DemoConfig, out_dir: Path, teacher_dir: Path, train: Path):
    m, h, k = cfg.mohawk_steps
    return _student_recipe(cfg, out_dir, teacher_dir, train, 0.0, "discrete", [
        {"name": "matrix", "objective": "matrix", "seq_len": min(64, cfg.seq_len), "train": {"steps": m}},
        {"name": "hidden", "objective": "hidden", "train": {"steps": h}},
        {"name": "kd", "objective": "kd", "loss": {"kind": "forward"},
         "train": {"steps": k, "lr": cfg.llamba_kd_lr}},
        {"name": "sft", "objective": "lm", "train": {"steps": cfg.llamba_sft_steps, "lr": cfg.lr / 3}},
    ], mamba={"decay_bias": cfg.llamba_decay_bias} if cfg.llamba_decay_bias else None)


def select_hybrid_layers(cfg: DemoConfig, teacher_dir: Path, train: Path, out_path: Path,
                         log: Callable[[str], None]) -> dict[str, Any]:
    """The hybrid's attention layers: the half of the teacher's layers whose leave-one-out KL is
    largest (``thinkfast select-layers --method loo``), measured on train rows. On the shipped
    teacher it matches kl-guided selection, and distilled to a held-out KL 2.2x lower than even
    spacing at equal steps (docs/layer-selection.md)."""
    from .checkpoint import load_model, load_tokenizer
    from .data.dataset import DataConfig, load_data
    from .select import layers as S

    teacher = load_model(teacher_dir).eval()
    data = DataConfig(train=str(train), **TASK_FORMAT, loss_on="response", seq_len=cfg.seq_len,
                      max_examples=cfg.select_rows, eval_fraction=0.5, seed=cfg.seed)
    bundle = load_data(data, load_tokenizer(teacher_dir), teacher.config.vocab_size)
    result = S.loo_scores(teacher, bundle.eval, "mamba2", cfg.seed)
    k = S.keep_count(cfg.hybrid_keep, teacher.config.n_layers)
    chosen, notes = S.choose_layers(result.scores, k)
    doc = S.layers_document(teacher.config.n_layers, chosen, result, notes, keep=cfg.hybrid_keep, method="loo")
    S.write_layers_json(out_path, doc)
    log(f"hybrid keeps attention layers {chosen} (leave-one-out KL "
        + ", ".join("-" if v is None else f"{v:.3g}" for v in result.scores) + ")")
    return doc


def hybrid_recipe(cfg: DemoConfig, out_dir: Path, teacher_dir: Path, train: Path, keep: Any = 0.5):
    return _student_recipe(cfg, out_dir, teacher_dir, train, keep, "mamba2", [
        {"name": "kd", "objective": "kd", "loss": {"kind": "reverse"}, "train": {"steps": cfg.hybrid_kd_steps}},
        {"name": "sft", "objective": "lm", "train": {"steps": cfg.hybrid_sft_steps, "lr": cfg.lr / 3}},
    ])


# --- sampling -----------------------------------------------------------------------------------

def demo_prompt_ids(task: Any, examples: list, tokenizer: Any) -> list[list[int]]:
    """The prompts every demo model is sampled with, laid out as its training rows begin
    (``TASK_FORMAT``: no BOS)."""
    from .eval.sampling import encode_prompts

    return encode_prompts(task, examples, tokenizer, "fewshot", add_special_tokens=TASK_FORMAT["add_bos"])


def sample_file(model_dir: Path, task: Any, examples: list, out_path: Path, name: str, n: int,
                temperature: float, cfg: DemoConfig, log: Callable[[str], None],
                batch_problems: Optional[int] = None) -> dict[str, Any]:
    """Sample ``n`` completions per example into ``out_path`` (resumable), ``batch_problems``
    (default ``cfg.batch_problems``) per engine call; returns the report."""
    from .checkpoint import load_model, load_tokenizer
    from .eval.budget import hardware_string
    from .eval.sampling import SampleSettings, run_sampling
    from .inference.backends import engine_generate_fn

    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    settings = SampleSettings(task=task.name, model=name, n=n, temperature=temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, prompt_style="fewshot")
    prompts = demo_prompt_ids(task, examples, tok)
    gen = engine_generate_fn(model, tok, settings, task.stop)
    from tqdm import tqdm

    from .runtime import PROGRESS_POSITION

    bar = tqdm(total=len(examples), desc=f"sample {name}", unit="problem", leave=False, position=PROGRESS_POSITION)

    def progress(msg: str) -> None:
        done = int(msg.split("/")[0]) if "/" in msg and msg.split("/")[0].isdigit() else None
        if done is not None:
            bar.update(done - bar.n)

    rep = run_sampling(examples, prompts, gen, out_path, settings,
                       batch_problems=batch_problems or cfg.batch_problems, context_len=model.config.max_seq_len, hardware=hardware_string(), log=progress)
    bar.close()
    if rep.failed:
        log(f"{name}: {len(rep.failed)} problems could not be sampled: {rep.failed[:3]}")
    return {"written": rep.written, "skipped": rep.skipped, "failed": len(rep.failed)}


def greedy_stage(model_dir: Path, task: Any, examples: list, out_path: Path, name: str, cfg: DemoConfig,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Greedy (temperature 0) accuracy on ``examples``: the teacher's acceptance figure."""
    from .eval.grading import grade_rows
    from .eval.io import read_jsonl

    sample_file(model_dir, task, examples, out_path, name, 1, 0.0, cfg, log)
    rows = grade_rows(task, read_jsonl(out_path), str(out_path))
    acc = sum(bool(r["correct"]) for r in rows) / max(len(rows), 1)
    log(f"{name}: greedy accuracy {acc:.3f} on {len(rows)} test problems")
    return {"accuracy": acc, "problems": len(rows)}


def choose_temperature(model_dir: Path, task: Any, examples: list, out_dir: Path, name: str,
                       cfg: DemoConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """The temperature with the best majority@n on TRAIN problems (ties: the lower one), and the
    model's decode seconds per sample at it, at the test sampling's rows per call."""
    from .eval.evaluation import EvalSettings, evaluate_run
    from .eval.io import read_jsonl

    rows_per_call = cfg.batch_problems * cfg.n_samples
    scores = {}
    for t in cfg.temperatures:
        path = out_dir / f"{name}_T{t}.jsonl"
        sample_file(model_dir, task, examples, path, name, cfg.temp_samples, t, cfg, log,
                    batch_problems=max(1, rows_per_call // cfg.temp_samples))
        run = evaluate_run(read_jsonl(path), task, name, str(path), EvalSettings(n_boot=10, seed=cfg.seed))
        maj = run["metrics"]["majority"][-1]["mean"]
        scores[str(t)] = {"majority": maj, "coverage": run["metrics"]["coverage"][-1]["mean"],
                          "decode_s_per_sample": (run.get("timing") or {}).get("decode_s_per_sample")}
    best = max(cfg.temperatures, key=lambda t: (scores[str(t)]["majority"], -t))
    log(f"{name}: temperature {best} (majority@{cfg.temp_samples} on train: "
        + ", ".join(f"T={t}: {v['majority']:.2f}" for t, v in scores.items()) + ")")
    return {"temperature": best, "train_scores": scores,
            "decode_s_per_sample": scores[str(best)]["decode_s_per_sample"]}


def samples_per_problem(cfg: DemoConfig, decode_s_per_sample: dict[str, Optional[float]]) -> dict[str, int]:
    """Samples per test problem for each model. The teacher draws ``cfg.n_samples``; a student
    that is m times as fast per sample draws ``n_samples * 2**round(log2(m))``, so that at the
    teacher's largest budget it holds about as many samples as those seconds buy. The factor is
    at least 1 and at most ``max_budget_factor`` and ``batch_problems`` (so every model's engine
    calls hold the same rows). Without ``match_budget``, or without a timing, every model draws
    n_samples."""
    teacher = decode_s_per_sample.get("teacher")
    out = {}
    for name, t in decode_s_per_sample.items():
        factor = 1
        if cfg.match_budget and name != "teacher" and teacher and t:
            factor = 2 ** max(0, round(math.log2(teacher / t)))
            factor = min(factor, cfg.max_budget_factor, cfg.batch_problems)  # rows per call stay equal
        out[name] = cfg.n_samples * factor
    return out


def orm_stage(teacher_dir: Path, task: Any, examples: list, out_dir: Path, temperature: float,
              cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample the teacher on TRAIN problems, grade the samples and train an ORM on them."""
    path = out_dir / "teacher_train_samples.jsonl"
    sample_file(teacher_dir, task, examples, path, "teacher", cfg.orm_samples, temperature, cfg, log)
    return train_orm_stage(teacher_dir, path, out_dir / "model", cfg, log)


def train_orm_stage(teacher_dir: Path, samples: Path, out_dir: Path, cfg: DemoConfig,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """An ORM (a head on the frozen teacher) trained on graded teacher samples of TRAIN problems."""
    from .eval.grading import grade_rows
    from .eval.io import read_jsonl
    from .eval.rewards import OutcomeRewardModel, TrainRMConfig, balanced_examples, load_backbone, train_orm
    from .eval.tasks.base import get_task

    rows = grade_rows(get_task("synthetic"), read_jsonl(samples), str(samples))
    n_pos = sum(bool(r["correct"]) for r in rows)
    rmcfg = TrainRMConfig(epochs=20, lr=3e-3, batch_size=32, seed=cfg.seed)
    gold_added = 0
    if n_pos == 0:  # a weak teacher (e.g. --quick): its problems' gold solutions are the positives
        seen = set()
        for r in rows:
            if r["problem_id"] not in seen:
                seen.add(r["problem_id"])
                rows.append({**r, "completion": " " + r["gold"], "correct": True})
                gold_added += 1
        log(f"ORM: no correct teacher sample; using {gold_added} gold train solutions as positives")
    data = balanced_examples(rows, rmcfg.seed)
    backbone, tok = load_backbone(str(teacher_dir), "thinkfast")
    orm = OutcomeRewardModel(backbone, tok, max_len=backbone.config.max_seq_len, backbone_path=str(teacher_dir))
    losses = train_orm(orm, data, rmcfg)
    orm.save(out_dir, save_backbone=False)
    log(f"ORM: {len(data)} balanced examples from {len(rows)} samples ({n_pos} correct), "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return {"examples": len(data), "samples": len(rows) - gold_added, "correct": n_pos, "gold_positives": gold_added,
            "loss": losses}


def score_stage(raw: Path, scored: Path, orm_dir: Path) -> dict[str, Any]:
    from .eval.grading import grade_rows, summarize
    from .eval.io import read_jsonl, write_jsonl_atomic
    from .eval.rewards import load_scorer, score_rows
    from .eval.tasks.base import get_task

    rows = grade_rows(get_task("synthetic"), read_jsonl(raw), str(raw))
    rows, failed = score_rows(load_scorer(str(orm_dir), "orm"), rows, batch_size=32)
    write_jsonl_atomic(scored, rows)
    return {"grading": summarize(rows).to_dict(), "unscored": failed}


def throughput_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decode throughput of each model at the batch size it was sampled with."""
    out = []
    for r in runs:
        t = r.get("timing") or {}
        per_sample = t.get("decode_s_per_sample")
        toks = t.get("new_tokens_per_sample")
        rows = t.get("mean_batch_rows")
        out.append({"model": r["name"], "batch_rows": rows, "new_tokens_per_sample": toks,
                    "decode_tokens_per_s": (toks / per_sample) if per_sample and toks else None,
                    "seconds_per_problem_k1": (r["metrics"]["coverage"][0]["seconds"])})
    return out


def budget_ks(teacher_run: dict[str, Any], rows: list[dict[str, Any]]) -> list[int]:
    """For each of the teacher's budgets (seconds per problem at its k = 2, 4, ...), the most
    samples a student's ``rows`` fit in it, by the student's own measured timings: the student is
    also scored at exactly those k, so the comparison uses each budget whole."""
    from .eval.budget import largest_k_within, timing_from_rows

    timing = timing_from_rows(rows)
    if timing is None:
        return []
    n = min(collections.Counter(r["problem_id"] for r in rows).values())
    ks = [largest_k_within(e["seconds"], timing, n) for e in teacher_run["metrics"]["coverage"]
          if e["k"] >= 2 and e["seconds"] is not None]
    return sorted({k for k in ks if k >= 1})


STUDENTS = ("llamba", "hybrid")


def paired_budget_difference(student: dict[str, Any], teacher: dict[str, Any], method: str, student_k: int,
                             teacher_k: int, n_boot: int, seed: int) -> Optional[dict[str, Any]]:
    """``paired_difference`` of the student's per-problem values at ``student_k`` against the
    teacher's at ``teacher_k``, over the problems both runs scored (in the teacher's order), plus
    ``problems``: how many; None when either run keeps no per-problem values or none are shared."""
    from .eval.evaluation import per_problem_values
    from .eval.metrics import paired_difference

    s = per_problem_values(student, method, student_k)
    t = per_problem_values(teacher, method, teacher_k)
    if s is None or t is None:
        return None
    pids = [p for p in teacher["problem_ids"] if p in s]
    if not pids:
        return None
    d = paired_difference([s[p] for p in pids], [t[p] for p in pids], n_boot=n_boot, seed=seed)
    return {**d, "problems": len(pids)}


def claim_verdict(runs: dict[str, dict[str, Any]], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """For each teacher budget (the seconds per problem of its k >= 2): the best the teacher and
    each student reach within that many seconds. Teacher and students are scored alike, so a
    majority curve that dips at larger k counts its best point for every model.

    Each student is then compared with the teacher on the same problems: the mean per-problem
    difference (student at its best k minus teacher at its best k) with a paired bootstrap
    interval (``n_boot`` resamples, ``seed``), as ``{name}_diff``, ``{name}_lo``, ``{name}_hi`` and
    ``{name}_paired_verdict`` (above / below / tied; None when no comparison can be made)."""
    from .eval.budget import best_at_budget
    from .eval.evaluation import run_points

    teacher = runs["teacher"]
    verdict: dict[str, Any] = {}
    for method in ("coverage", "majority"):
        rows = []
        for e in teacher["metrics"][method]:
            if e["k"] < 2 or e["seconds"] is None:
                continue
            row: dict[str, Any] = {"budget_k": e["k"], "seconds": e["seconds"]}
            for name in MODELS:
                best = best_at_budget(run_points(runs[name], [method]), e["seconds"])
                row[name] = best.value if best else None
                row[f"{name}_k"] = best.k if best else None
            for name in STUDENTS:
                d = None
                if row[f"{name}_k"] is not None and row["teacher_k"] is not None:
                    d = paired_budget_difference(runs[name], teacher, method, row[f"{name}_k"], row["teacher_k"],
                                                 n_boot, seed)
                for key in ("diff", "lo", "hi"):
                    row[f"{name}_{key}"] = d[key] if d else None
                row[f"{name}_paired_verdict"] = d["verdict"] if d else None
                row[f"{name}_problems"] = d["problems"] if d else None
            rows.append(row)
        wins = {name: sum(1 for r in rows if r[name] is not None and r[name] > r["teacher"]) for name in STUDENTS}
        paired = {name: {v: sum(1 for r in rows if r[f"{name}_paired_verdict"] == v) for v in ("above", "tied", "below")}
                  for name in STUDENTS}
        verdict[method] = {"budgets": rows, "student_wins": wins, "paired_verdicts": paired,
                           "budgets_compared": len(rows)}
    return verdict


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _paired(row: dict[str, Any], name: str) -> str:
    """A student's paired difference from the teacher, in percentage points, with its interval."""
    if row.get(f"{name}_diff") is None:
        return "-"
    return (f"{_pts(row[f'{name}_diff'])} pts [{_pts(row[f'{name}_lo'])}, {_pts(row[f'{name}_hi'])}] "
            f"{row[f'{name}_paired_verdict']}")


def demo_markdown(results: dict[str, Any]) -> list[str]:
    """The demo's own section of report.md: the claim, throughput and stage times."""
    md = ["# thinkfast demo", ""]
    if results["config"]["quick"]:
        md += ["**--quick run: tiny budgets everywhere, so these numbers are meaningless;** it only "
               "shows that every stage runs.", ""]
    md += ["## Does a student beat its teacher at equal seconds per problem?", ""]
    if results.get("samples_per_problem"):
        md += ["Samples per test problem: " + ", ".join(f"{k} {v}" for k, v in results["samples_per_problem"].items())
               + " (a student's n grows with its measured speed, so its curves reach the teacher's largest "
               "budget).", ""]
    for method in ("coverage", "majority"):
        v = results["claim"][method]
        md += [f"### {method}", "", "| budget: teacher k | seconds/problem | best teacher within it (k) | "
               "best Llamba within it (k) | Llamba - teacher [95% paired CI] | best hybrid within it (k) | "
               "hybrid - teacher [95% paired CI] |", "|---|---|---|---|---|---|---|"]
        for r in v["budgets"]:
            md.append(f"| {r['budget_k']} | {r['seconds']:.3f} | {_pct(r['teacher'])} ({r['teacher_k']}) | "
                      f"{_pct(r['llamba'])} ({r['llamba_k']}) | {_paired(r, 'llamba')} | "
                      f"{_pct(r['hybrid'])} ({r['hybrid_k']}) | {_paired(r, 'hybrid')} |")
        paired = v.get("paired_verdicts")
        md += [""]
        if paired:
            md += ["Paired over the same test problems (the student's per-problem value at its k minus the "
                   "teacher's at its k, bootstrap over problems): " + "; ".join(
                       f"{label} above the teacher in {paired[name]['above']}, tied in {paired[name]['tied']}, "
                       f"below in {paired[name]['below']}" for name, label in (("llamba", "Llamba"), ("hybrid", "hybrid")))
                   + f" of {v['budgets_compared']} budgets.", ""]
        md += [f"Budgets where a student's mean is above the teacher's: Llamba {v['student_wins']['llamba']}, "
               f"hybrid {v['student_wins']['hybrid']} of {v['budgets_compared']}.", ""]
    hl = results["hybrid_layers"]
    md += [f"The hybrid keeps attention in layers {hl['layers']} ({hl['pattern']}), chosen by {hl['method']} "
           "KL on train problems.", ""]
    md += ["## Accuracy at k = 1 and greedy", "", "| model | greedy | temperature | accuracy@1 | coverage@n |",
           "|---|---|---|---|---|"]
    for name in MODELS:
        run = results["runs"][name]
        cov = run["metrics"]["coverage"]
        md.append(f"| {name} | {_pct(results['greedy'][name]['accuracy'])} | {results['temperatures'][name]} | "
                  f"{_pct(cov[0]['mean'])} | {_pct(cov[-1]['mean'])} (n={cov[-1]['k']}) |")
    md += ["", "## Decode throughput at the sampling batch size", "",
           "| model | rows per batch | new tokens / sample | decode tokens/s | seconds/problem (k=1) |",
           "|---|---|---|---|---|"]
    for t in results["throughput"]:
        md.append(f"| {t['model']} | {t['batch_rows']:.0f} | {t['new_tokens_per_sample']:.0f} | "
                  f"{t['decode_tokens_per_s']:.0f} | {t['seconds_per_problem_k1']:.3f} |")
    md += ["", "## Wall time per stage (seconds)", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k} | {v:.0f} |" for k, v in results["stage_seconds"].items()]
    return md + [""]


def demo_task_config() -> dict[str, Any]:
    """The synthetic task the demo teacher is trained on (shipped with the package)."""
    return json.loads((ASSETS / "demo_task.json").read_text())


def demo_task(task_meta: Optional[dict[str, Any]] = None):
    """The demo's ``SyntheticTask`` (its ``config`` is the task's ``SyntheticConfig``), built from
    ``task_meta`` (default: ``demo_task_config()``)."""
    from .data import synthetic as syn
    from .eval.tasks.synthetic import SyntheticTask

    meta = task_meta if task_meta is not None else demo_task_config()
    return SyntheticTask(syn.SyntheticConfig.from_dict(meta["config"]), seed=meta["seed"],
                         n_shots=meta.get("n_shots", 1))


def teacher_train_config(task_meta: dict[str, Any]):
    """The SyntheticConfig the teacher's own training problems are drawn from: the demo task's
    ``config`` with its ``teacher_train`` fields laid over it (e.g. a ``step_weights`` that trains
    more on long chains). Only the teacher's pretraining uses it; the test problems, and the train
    problems the students, the reward model and the temperature choice see, keep the task's own mix."""
    from .data import synthetic as syn

    return syn.SyntheticConfig.from_dict({**task_meta["config"], **task_meta.get("teacher_train", {})})


def teacher_train_problems(task_meta: dict[str, Any], n: int) -> list:
    """The first ``n`` train-split problems of the teacher's own stream (``teacher_train_config``)."""
    from .data import synthetic as syn

    return syn.generate(teacher_train_config(task_meta), "train", n, seed=task_meta["seed"])


def run_demo(out: Path, quick: bool = False, force: bool = False, retrain_teacher: bool = False,
             log: Callable[[str], None] = print, jobs: Optional[int] = None) -> dict[str, Any]:
    """Run every stage (reusing finished ones), holding OUT's lock; returns results.json's
    content. ``jobs``: processes for the stages that run side by side (default: ``parallel_workers``)."""
    cfg = DemoConfig.preset(quick)
    task_meta = demo_task_config()
    teacher_tag = "retrained" if retrain_teacher else "shipped"
    if not retrain_teacher:
        shipped = shipped_teacher_task()
        if shipped != task_meta:
            raise UserError("the shipped demo teacher was trained on another task configuration; "
                            "run `thinkfast demo --retrain-teacher`")
    weights = None if retrain_teacher else shipped_teacher_digest()
    # Refused before the lock file is created, so that a refused OUT is left as it was; checked
    # again under the lock, as another run may have written there meanwhile.
    refuse_unusable_out(out, out_dir_meta(cfg, teacher_tag, weights), force)
    with lock_out_dir(out):
        check_out_dir(out, cfg, teacher_tag, force, weights, log)
        return run_stages(out, cfg, task_meta, teacher_tag, StageRunner(out, force, log), retrain_teacher,
                          log, jobs)


def run_stages(out: Path, cfg: DemoConfig, task_meta: dict[str, Any], teacher_tag: str, stages: StageRunner,
               retrain_teacher: bool, log: Callable[[str], None], jobs: Optional[int]) -> dict[str, Any]:
    """``run_demo``'s stages, in a prepared and locked OUT."""
    from .data import synthetic as syn
    from .eval.evaluation import EvalSettings, evaluate_run, pareto_by_task
    from .eval.io import read_jsonl, write_json_atomic
    from .eval.report import write_report

    task = demo_task(task_meta)
    syn_cfg = task.config
    data = out / "data"

    def make_data():
        paths = syn.write_splits(data, syn_cfg, n_train=cfg.n_train, n_test=cfg.n_test, seed=task_meta["seed"])
        return {k: str(v) for k, v in paths.items()}

    stages.run("data", make_data)
    train_path, test_path = data / "train.jsonl", data / "test.jsonl"

    def teacher():
        dest = out / "teacher" / "model"
        if retrain_teacher:
            from .data.tokenizer import build_tokenizer
            from .distill.recipe import run_recipe

            tok = build_tokenizer(texts=syn.tokenizer_texts(syn_cfg))
            tok.save_pretrained(str(out / "tokenizer"))
            teacher_train = train_path
            if task_meta.get("teacher_train"):
                teacher_train = data / "teacher_train.jsonl"
                syn.write_jsonl(teacher_train_problems(task_meta, cfg.n_train), teacher_train)
            summary = run_recipe(teacher_recipe(out / "teacher", out / "tokenizer", teacher_train))
            return {"source": "retrained", "stages": summary["stages"]}
        load_shipped_teacher()  # a clear error when missing or corrupt
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(SHIPPED_TEACHER, dest)
        return {"source": str(SHIPPED_TEACHER)}

    stages.run("teacher", teacher)
    model_dirs = {"teacher": out / "teacher" / "model", "llamba": out / "llamba" / "model",
                  "hybrid": out / "hybrid" / "model"}
    layers_json = out / "select" / "layers.json"
    hybrid_layers = stages.run("select", lambda: select_hybrid_layers(cfg, model_dirs["teacher"], train_path,
                                                                      layers_json, log))
    train_examples = task.load("train", path=str(train_path))
    temp_ex = train_examples[: cfg.temp_problems]
    orm_ex = train_examples[cfg.temp_problems: cfg.temp_problems + cfg.orm_problems]
    temps, speeds = {}, {}

    def temperature(name: str) -> None:  # timed: runs with nothing beside it
        chosen = stages.run(f"temperature-{name}", lambda: choose_temperature(
            model_dirs[name], task, temp_ex, out / "temperature", name, cfg, log))
        temps[name], speeds[name] = chosen["temperature"], chosen.get("decode_s_per_sample")

    temperature("teacher")
    # Stages that time nothing run side by side when there is a core for each (one thread each,
    # the demo's default, keeps the sum of their steps/s): the two students and the ORM (which
    # needs only the teacher and its temperature), later the grading and scoring of the samples.
    import torch

    threads = torch.get_num_threads()
    workers = parallel_workers(threads, jobs)
    stages.run_parallel({
        "llamba": functools.partial(in_worker, threads, 0, distil,
                                    llamba_recipe(cfg, out / "llamba", model_dirs["teacher"], train_path)),
        "hybrid": functools.partial(in_worker, threads, 1, distil,
                                    hybrid_recipe(cfg, out / "hybrid", model_dirs["teacher"], train_path,
                                                  str(layers_json))),
        "orm": functools.partial(in_worker, threads, 1, orm_stage, model_dirs["teacher"], task, orm_ex,
                                 out / "orm", temps["teacher"], cfg),
    }, workers)
    for name in MODELS[1:]:
        temperature(name)
    # Decided once per run from the temperature stages' timings, and kept by any run that resumes
    # this one (StageRunner.decide): a sample file must hold one n, whatever a rerun measures.
    n_by_model = stages.decide("samples_per_problem", speeds, functools.partial(samples_per_problem, cfg))
    log("samples per test problem: " + ", ".join(f"{k} {v}" for k, v in n_by_model.items()))

    test_examples = task.load("test", path=str(test_path))
    greedy: dict[str, dict[str, Any]] = {}
    for name in MODELS:  # timed: one model at a time
        raw = out / "samples" / f"{name}.jsonl"
        n = n_by_model[name]  # same rows per call for every model: fewer problems when n is larger
        stages.run(f"sample-{name}", lambda name=name, raw=raw, n=n: sample_file(
            model_dirs[name], task, test_examples, raw, name, n, temps[name], cfg, log,
            batch_problems=max(1, cfg.batch_problems * cfg.n_samples // n)))
        greedy[name] = stages.run(f"greedy-{name}", lambda name=name: greedy_stage(
            model_dirs[name], task, test_examples, out / "samples" / f"{name}.greedy.jsonl", name, cfg, log))
    scored = {name: out / "samples" / f"{name}.scored.jsonl" for name in MODELS}
    stages.run_parallel({f"score-{name}": functools.partial(
        in_worker, threads, i % 2, score_stage, out / "samples" / f"{name}.jsonl", scored[name], out / "orm" / "model")
        for i, name in enumerate(MODELS)}, workers)
    runs: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        rows = list(read_jsonl(scored[name]))
        extra = budget_ks(runs["teacher"], rows) if name != "teacher" else []
        runs[name] = evaluate_run(rows, task, name, str(scored[name]), EvalSettings(seed=cfg.seed), extra_ks=extra)

    metrics = {"runs": list(runs.values()), "pareto": pareto_by_task(list(runs.values()))}
    write_json_atomic(out / "metrics.json", metrics)
    results = {
        "config": to_dict(cfg), "task": task_meta, "teacher": teacher_tag, "temperatures": temps,
        "samples_per_problem": n_by_model, "train_decode_s_per_sample": speeds,
        "decisions": stages.decisions, "greedy": greedy,
        "hybrid_layers": {k: hybrid_layers[k] for k in ("layers", "pattern", "method", "scores")},
        "runs": runs, "pareto": metrics["pareto"], "throughput": throughput_table(list(runs.values())),
        "claim": claim_verdict(runs, seed=cfg.seed), "stage_seconds": stages.seconds(),
        "models": {k: str(v) for k, v in model_dirs.items()},
    }
    write_report([metrics], out)
    body = (out / "report.md").read_text()
    atomic_write_text(out / "report.md", "\n".join(demo_markdown(results)) + "\n" + body)
    write_json_atomic(out / "results.json", results)
    return results
