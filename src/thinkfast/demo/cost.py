"""How long a demo run takes: a per-stage cost model (``stage_seconds``: training steps x seconds
per step, samples x tokens / decode tokens per second, scoring per sample) and ``Eta``, which
prints the expected duration before a run starts and an ETA once the run has measured its own
speed (the first training steps, the decode speed probe, each finished stage).

The reference rates (``REFERENCE``) are those of the full run in docs/demo-study.md ("Detailed
results": a 2-core CPU, one thread per process, the students and the ORM side by side). A
slower or faster machine is one factor on every stage, which ``Eta`` measures as the run goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from .config import LOOKUP_PROBLEMS, MODELS, STUDENTS, DemoConfig

REF_TOKENS_PER_STEP = 4 * 512
"""Rows x row length of a training step at the reference rates (the demo's batch_size x seq_len)."""


@dataclass(frozen=True)
class Rates:
    """Per-unit costs of the demo's stages on one machine."""

    train_s_per_step: dict[str, float]
    """Seconds per training step of each student stage (``"llamba/kd"``, ...) at
    ``REF_TOKENS_PER_STEP`` tokens per step (the matrix stage's rows are its own, shorter ones)."""
    decode_tokens_per_s: dict[str, float]
    """Each model's decode tokens per second at the test sampling's rows per engine call."""
    bf16_train_speedup: dict[str, float] = field(default_factory=dict)
    """How many times faster each student stage's step is in bf16 mixed precision than in fp32
    (``DemoConfig.train_precision`` "bf16"; a stage not named: 1)."""
    new_tokens_per_sample: float = 256.0
    """Mean new tokens per sample (capped by ``max_new_tokens``)."""
    greedy_tokens_per_s: float = 6000.0
    """Decode tokens per second of a greedy pass (``batch_problems`` rows per call)."""
    lookup_s_per_problem: float = 0.015
    """The greedy stage's teacher-forced look-up probe (``demo.lookup``), per problem probed
    (``config.LOOKUP_PROBLEMS`` at most; 1.4-1.6 s for 100 with each of the three models, one
    thread, beside a training run on the other core)."""
    score_s_per_sample: float = 0.0112
    """Grading and ORM scoring, per sample."""
    orm_train_s: float = 20.0
    """Training the ORM's head, beside sampling its examples."""
    stage_overhead_s: float = 3.0
    """Loading models and data, per stage that does."""
    prm_steps_per_sample: float = 6.0
    """Chain steps (lines) per teacher sample the PRM's rollouts start from."""
    prm_rollout_tokens: float = 130.0
    """Mean new tokens of a rollout (the rest of a chain)."""
    report_s_per_problem: float = 0.05
    """Metrics, bootstrap intervals, plots and the adaptive simulation, per test problem."""
    side_by_side_decode: float = 0.92
    """Each process's decode speed with another sampling process beside it, over its speed alone
    (the test sampling splits its problems between the workers; 0.92-0.93 for Llamba and the
    hybrid, one thread each, on the reference machine's kind). ``decode_tokens_per_s`` measured
    by the speed probe, which runs as the sampling does, needs none: ``Eta.decode_measured`` sets 1."""
    worker_start_s: float = 4.0
    """Starting a worker process (a fresh interpreter importing torch), per split stage."""


REFERENCE = Rates(
    # The reference run's seconds per step (llamba 1150 s = 200 matrix (64-token rows) + 150 hidden
    # + 1600 KD (3.4 steps/s) + 3000 SFT steps; hybrid 889 s = 1600 KD + 2000 SFT steps), divided by
    # the speed-up of today's training step over that run's (hand-written scan and conv backwards,
    # batches cut to their real length: 1.53 / 1.44 / 1.43 / 1.47x, docs/performance.md; the hidden
    # stage runs the same scan on cut rows, taken as 1.3x).
    train_s_per_step={"llamba/matrix": 0.05, "llamba/hidden": 0.25 / 1.3, "llamba/kd": 0.294 / 1.53,
                      "llamba/sft": 0.2 / 1.44, "hybrid/kd": 0.3 / 1.43, "hybrid/sft": 0.195 / 1.47},
    decode_tokens_per_s={"teacher": 12218.0, "llamba": 25186.0, "hybrid": 15248.0},
    # bf16 mixed precision over fp32, one thread, a quiet 2-core AMD EPYC with AVX-512 BF16
    # (benchmarks/train_step_speed.py --variants eager bf16, docs/performance.md "bf16 training on CPU")
    bf16_train_speedup={"llamba/matrix": 1.21, "llamba/hidden": 1.41, "llamba/kd": 1.68, "llamba/sft": 1.84,
                        "hybrid/kd": 1.47, "hybrid/sft": 1.42},
)


def student_steps(cfg: DemoConfig) -> dict[str, tuple[int, int]]:
    """``{"student/stage": (steps, tokens per step)}`` of both students' recipes."""
    m, h, k = cfg.mohawk_steps
    tok = cfg.batch_size * cfg.seq_len
    return {"llamba/matrix": (m, cfg.batch_size * min(64, cfg.seq_len)), "llamba/hidden": (h, tok),
            "llamba/kd": (k, tok), "llamba/sft": (cfg.llamba_sft_steps, tok),
            "hybrid/kd": (cfg.hybrid_kd_steps, tok), "hybrid/sft": (cfg.hybrid_sft_steps, tok)}


def train_step_seconds(rates: Rates, stage: str, tokens_per_step: int, bf16: bool = False) -> float:
    """Seconds per step of one student stage at ``tokens_per_step`` (the reference's scaled
    linearly by tokens; the matrix stage's reference is at its own 64-token rows), in fp32 or,
    with ``bf16``, in bf16 mixed precision."""
    ref_tokens = 4 * 64 if stage.endswith("/matrix") else REF_TOKENS_PER_STEP
    speedup = rates.bf16_train_speedup.get(stage, 1.0) if bf16 else 1.0
    return rates.train_s_per_step[stage] * tokens_per_step / ref_tokens / speedup


def _decode_s(cfg: DemoConfig, rates: Rates, model: str, samples: int) -> float:
    tokens = min(cfg.max_new_tokens, rates.new_tokens_per_sample)
    return samples * tokens / rates.decode_tokens_per_s[model]


TRAINING_GROUP = ("llamba", "hybrid", "orm", "greedy-teacher", "temperature-hybrid", "greedy-hybrid", "prm",
                  "temperature-llamba", "greedy-llamba")
"""The stages ``run_stages`` runs side by side with the students' training, in this order: the
teacher's verifier data, and whatever needs only a finished student and times nothing that the
claim reads, so the core the hybrid frees while Llamba still trains is not left idle."""
TRAINING_AFTER = {"prm": ("orm",), "temperature-hybrid": ("hybrid",), "greedy-hybrid": ("hybrid",),
                  "temperature-llamba": ("llamba",), "greedy-llamba": ("llamba",)}
"""What each stage of ``TRAINING_GROUP`` waits for (``StageRunner.run_parallel``'s ``after``)."""


def stage_seconds(cfg: DemoConfig, rates: Rates = REFERENCE,
                  n_by_model: Optional[dict[str, int]] = None, probe_repeats: int = 3,
                  workers: int = 1) -> dict[str, float]:
    """Expected wall seconds of every stage of ``run_stages``, in the order they run, each as if
    run alone at ``rates`` (a pure function). ``n_by_model``: samples per test problem (default:
    ``cfg.n_samples`` for every model, as before the speed probe decides). ``workers``: the
    processes a test sampling stage splits its problems between (each speed probe runs
    ``probe_repeats`` calls in each of them, side by side)."""
    n_by_model = n_by_model or dict.fromkeys(MODELS, cfg.n_samples)
    o = rates.stage_overhead_s
    # a split stage decodes `parallel` times as fast as one process alone, after starting its workers
    parallel, start = (1.0, 0.0) if workers <= 1 else (workers * rates.side_by_side_decode, rates.worker_start_s)
    rows = cfg.batch_problems * cfg.n_samples
    out = {"data": 1.0 + 1e-4 * (cfg.n_train + cfg.n_test), "teacher": 1.0, "select": o}
    steps = student_steps(cfg)
    for name in MODELS:
        out[f"temperature-{name}"] = o + _decode_s(cfg, rates, name,
                                                   cfg.temp_problems * cfg.temp_samples * len(cfg.temperatures))
        out[f"speed-{name}"] = o + start + _decode_s(cfg, rates, name, probe_repeats * rows) * workers / parallel
        if name in STUDENTS:
            out[name] = 2 * o + sum(n * train_step_seconds(rates, key, tok, cfg.train_precision == "bf16")
                                    for key, (n, tok) in steps.items() if key.startswith(name + "/"))
    orm_train = rates.orm_train_s if cfg.verifier == "orm" else 0.0  # the PRM needs only the ORM's samples
    out["orm"] = o + orm_train + _decode_s(cfg, rates, "teacher", cfg.orm_problems * cfg.orm_samples)
    if cfg.verifier == "prm":
        labelled = min(cfg.orm_problems, cfg.prm_problems) * min(cfg.orm_samples, cfg.prm_samples)
        rollouts = labelled * rates.prm_steps_per_sample * cfg.prm_rollouts
        out["prm"] = o + rates.orm_train_s + rollouts * min(cfg.max_new_tokens, rates.prm_rollout_tokens) \
            / rates.decode_tokens_per_s["teacher"]
    for name in MODELS:
        out[f"sample-{name}"] = o + start + _decode_s(cfg, rates, name, cfg.n_test * n_by_model[name]) / parallel
        out[f"greedy-{name}"] = o + cfg.n_test * min(cfg.max_new_tokens, rates.new_tokens_per_sample) \
            / rates.greedy_tokens_per_s + min(cfg.n_test, LOOKUP_PROBLEMS) * rates.lookup_s_per_problem
    for name in MODELS:
        out[f"score-{name}"] = o + cfg.n_test * n_by_model[name] * rates.score_s_per_sample
    out["report"] = 1.0 + cfg.n_test * rates.report_s_per_problem
    order = ["data", "teacher", "select", "temperature-teacher", *TRAINING_GROUP, *[f"speed-{m}" for m in MODELS],
             *[f"sample-{m}" for m in MODELS], *[f"score-{m}" for m in MODELS], "report"]
    return {k: out[k] for k in order if k in out}


PARALLEL_GROUPS = (TRAINING_GROUP, ("score-teacher", "score-llamba", "score-hybrid"))
"""The stages ``run_stages`` runs side by side, each group in this order (``StageRunner.run_parallel``)."""
PARALLEL_AFTER = TRAINING_AFTER
"""What a stage of any of ``PARALLEL_GROUPS`` waits for (the score stages wait for nothing)."""


def makespan(durations: list[float], workers: int) -> float:
    """Wall seconds of jobs handed in order to the first free of ``workers`` processes (what a
    process pool does with jobs submitted in order)."""
    return schedule(dict(enumerate(durations)), workers)


def schedule(durations: dict, workers: int, after: Optional[dict] = None) -> float:
    """Wall seconds of ``durations``' jobs run as ``StageRunner.run_parallel`` runs them: each job
    is handed to the pool, in the dict's order, once the jobs it waits for (``after``) have
    finished, and the pool starts the jobs handed to it, in the order handed, on its first free
    worker (a pure function; an event simulation)."""
    after = after or {}
    waiting, queue, running, done = list(durations), [], [], set()
    free, now = max(1, workers), 0.0

    def hand_over() -> None:
        for j in list(waiting):
            if all(d in done or d not in durations for d in after.get(j, ())):
                waiting.remove(j)
                queue.append(j)

    hand_over()
    while queue or running:
        while queue and free:
            j = queue.pop(0)
            running.append((now + durations[j], j))
            free -= 1
        running.sort(key=lambda r: r[0])
        now, j = running.pop(0)
        free += 1
        done.add(j)
        hand_over()
    return now


def total_seconds(seconds: dict[str, float], workers: int) -> float:
    """Wall seconds of a run whose stages take ``seconds``: every stage one after another, but
    each of ``PARALLEL_GROUPS`` across ``workers`` processes, as ``schedule`` runs them."""
    grouped = {s for g in PARALLEL_GROUPS for s in g}
    total = sum(v for k, v in seconds.items() if k not in grouped)
    for g in PARALLEL_GROUPS:
        total += schedule({s: seconds[s] for s in g if s in seconds}, workers, PARALLEL_AFTER)
    return total


def largest_n_test(cfg: DemoConfig, limit_s: float, workers: int = 2, rates: Rates = REFERENCE,
                   step: int = 8, speedup: Optional[dict[str, int]] = None) -> int:
    """The most test problems (a multiple of ``step``) whose run fits ``limit_s`` at ``rates``;
    ``speedup``: each model's sample-count factor (default: Llamba x2, as in the reference run)."""
    factors = speedup or {"teacher": 1, "llamba": 2, "hybrid": 1}
    n_by = {m: cfg.n_samples * factors[m] for m in MODELS}
    n = step
    while total_seconds(stage_seconds(replace(cfg, n_test=n + step), rates, n_by, workers=workers),
                        workers) <= limit_s:
        n += step
    return n


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min"


@dataclass
class Eta:
    """The expected duration of a run and, as the run measures its speed, its ETA.

    ``speed`` is actual over expected seconds, first from the students' first training steps
    (``training_steps``), then from every stage that has finished; the stages not yet run are
    expected to take their modelled seconds times it. The sampling stages, once the decode speed
    probe has measured each model (``decode_measured``), take their seconds from those
    measurements instead, times 1."""

    cfg: DemoConfig
    workers: int
    log: Callable[[str], None] = print
    rates: Rates = REFERENCE
    clock: Callable[[], float] = time.time
    n_by_model: Optional[dict[str, int]] = None
    speed: float = 1.0
    done: dict[str, float] = field(default_factory=dict)
    measured: set = field(default_factory=set)
    reused: set = field(default_factory=set)
    started: float = 0.0
    first_expected: float = 0.0
    """The expected duration ``announce`` printed, in seconds."""
    step_speeds: dict = field(default_factory=dict)
    """``{"student/stage": (actual / expected seconds per step, the stage's expected seconds)}``
    of each student stage whose first steps have been measured (``training_steps``)."""
    group_started: dict = field(default_factory=dict)
    """``{index in PARALLEL_GROUPS: clock when it began}`` (``begin_group``)."""

    def __post_init__(self) -> None:
        self.started = self.clock()

    def expected(self) -> dict[str, float]:
        return stage_seconds(self.cfg, self.rates, self.n_by_model, workers=self.workers)

    def begin_group(self, stages: tuple[str, ...]) -> None:
        """The stages of one of ``PARALLEL_GROUPS`` have begun, side by side, now."""
        for i, g in enumerate(PARALLEL_GROUPS):
            if set(stages) <= set(g):
                self.group_started.setdefault(i, self.clock())

    def remaining_seconds(self) -> float:
        """Seconds left: the stages not done at their expected seconds (times ``speed`` where not
        measured), in order; a parallel group under way is scheduled whole, its finished stages
        at their actual seconds (reused ones at none), less the time it has run so far."""
        exp = self.expected()
        scaled = {k: (v if k in self.measured else v * self.speed) for k, v in exp.items()}
        left = {k: v for k, v in scaled.items() if k not in self.done}
        under_way = {s for i in self.group_started for s in PARALLEL_GROUPS[i]}
        total = total_seconds({k: v for k, v in left.items() if k not in under_way}, self.workers)
        for i, start in self.group_started.items():
            g = [s for s in PARALLEL_GROUPS[i] if s in scaled]
            if any(s in left for s in g):
                ran = {s: 0.0 if s in self.reused else self.done.get(s, scaled[s]) for s in g}  # reused: not rerun
                total += max(0.0, schedule(ran, self.workers, PARALLEL_AFTER) - (self.clock() - start))
        return total

    def announce(self) -> float:
        """Print the expected duration before the run starts; returns it in seconds."""
        total = self.first_expected = total_seconds(self.expected(), self.workers)
        self.log(f"expected duration: {_minutes(total)} at the reference machine's speed (docs/demo-study.md); "
                 f"an ETA follows once this machine's speed is measured")
        return total

    def report(self, why: str) -> None:
        left = self.remaining_seconds()
        elapsed = self.clock() - self.started
        at = time.strftime("%H:%M:%S", time.localtime(self.clock() + left))
        self.log(f"ETA {at} ({_minutes(left)} left, {_minutes(elapsed + left)} in all; this machine at "
                 f"{1 / self.speed:.2f}x the reference speed, from {why})")

    @property
    def has_step_speed(self) -> bool:
        """Whether ``training_steps`` has measured the machine's speed."""
        return bool(self.step_speeds)

    def training_steps(self, stage: str, steps: int, train_seconds: float, tokens_per_step: int) -> None:
        """The first measured steps of a student stage (``"llamba/kd"``, ...), once per stage: the
        machine's speed becomes the mean of the measured stages' speeds, each weighted by the
        stage's expected seconds (a short stage says little about a long one: MOHAWK's matrix
        stage runs other shapes than KD and SFT), and the ETA is printed."""
        if stage in self.step_speeds or steps <= 0 or train_seconds <= 0:
            return
        ref = train_step_seconds(self.rates, stage, tokens_per_step, self.cfg.train_precision == "bf16")
        stage_steps = student_steps(self.cfg).get(stage, (steps, tokens_per_step))[0]
        self.step_speeds[stage] = ((train_seconds / steps) / ref, stage_steps * ref)
        weight = sum(w for _, w in self.step_speeds.values())
        self.speed = sum(r * w for r, w in self.step_speeds.values()) / weight
        self.report(f"{steps} steps of {stage}" + (f" and the first steps of {len(self.step_speeds) - 1} "
                                                   f"earlier stages" if len(self.step_speeds) > 1 else ""))

    def decode_measured(self, tokens_per_s: dict[str, float], n_by_model: dict[str, int]) -> None:
        """The probe's decode speeds and the samples each model will draw."""
        self.rates = replace(self.rates, decode_tokens_per_s={**self.rates.decode_tokens_per_s, **tokens_per_s},
                             side_by_side_decode=1.0)  # the probe ran as the sampling runs
        self.n_by_model = dict(n_by_model)
        self.measured |= {f"sample-{m}" for m in tokens_per_s}

    def stage_finished(self, name: str, seconds: float, reused: bool) -> None:
        """Record a stage; a stage run now (not reused) updates the speed and prints the ETA."""
        self.done[name] = seconds
        if reused:
            self.reused.add(name)
            return
        exp = self.expected()
        ran = [k for k in self.done if k in exp and k not in self.measured | self.reused]
        predicted = sum(exp[k] for k in ran)
        if predicted > 0:
            self.speed = sum(self.done[k] for k in ran) / predicted
        if self.step_speeds or set(STUDENTS) & (set(self.done) - self.reused):
            # before the first training steps the stages that ran are too short to tell the speed
            self.report(f"the stages run so far, {name} last")
