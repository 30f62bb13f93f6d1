"""What a demo run is made of: its settings (``DemoConfig``), the shipped assets, and the
synthetic task the teacher was trained on.

The values chosen on validation problems, and how, are in docs/demo-study.md,
docs/llamba-decay-bias.md and docs/layer-selection.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

ASSETS = Path(__file__).parent.parent / "assets"
SHIPPED_TEACHER = ASSETS / "demo_teacher"
TEACHER_RECIPE = ASSETS / "demo_teacher_recipe.yaml"
MODELS = ("teacher", "llamba", "hybrid")
LOOKUP_PROBLEMS = 100
"""Test problems (the first ones) each greedy stage's look-up probe reads (``demo.lookup``):
about 300 look-ups, enough to tell a student that has it from one that does not, in a few seconds."""
VERIFIERS = ("orm", "prm")
PRECISIONS = ("auto", "bf16", "fp32")
"""The training precisions ``DemoConfig.train_precision`` may name."""
"""The verifiers ``DemoConfig.verifier`` may name."""
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
    n_test: int = 300
    """Test problems evaluated: enough to resolve about 3.2 points of coverage at the large budgets
    (docs/demo-study.md, "How many test problems"), in a run expected to take 20.3 minutes on the
    reference 2-core machine when it trains in bf16 (24.0 in fp32; ``cost.largest_n_test`` gives
    448 within 25 minutes there, 328 in fp32), so that a machine 0.8x as fast stays near 25."""
    # students
    mohawk_steps: list[int] = field(default_factory=lambda: [200, 150, 1600])
    """Steps of MOHAWK's matrix, hidden and KD stages (Llamba)."""
    llamba_kd_lr: float = 2e-3
    """Peak learning rate of Llamba's KD stage, chosen on validation problems
    (docs/llamba-decay-bias.md)."""
    llamba_decay_bias: Optional[list[float]] = field(default_factory=lambda: [4.0, 1024.0])
    """The Llamba student's ``mamba.decay_bias`` (heads' initial memory, in tokens); None = none,
    as in Llamba's release, where every head starts with a one-token memory (docs/llamba-decay-bias.md)."""
    llamba_conv_kernel: int = 8
    """The Llamba student's causal-conv span (``mamba.conv_kernel``): 8 taps, not Mamba's 4, give
    its keys room to hold a number's first digit and the sentence around it, the copy the
    4-tap student learns in few seeds (docs/demo-study.md, "A longer conv")."""
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
    train_precision: str = "auto"
    """The students' training precision: "bf16" (mixed precision, ``train.bf16``: bf16 matrix
    products, fp32 weights, gradients and optimizer), "fp32", or "auto", which ``resolved`` turns
    into bf16 on a CPU that computes bf16 natively (AVX-512 BF16 or AMX, ``runtime.native_bf16``)
    and fp32 elsewhere. There it made the demo's training steps 1.9-2.0x faster than fp32 (docs/
    performance.md, "bf16 training on CPU"); where bf16 is emulated it is slower than fp32."""
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
    """A student that decodes m times as fast per sample as the teacher (the medians of their speed
    probes, ``sampling.decode_speed``: the test sampling's rows per call, prompts and
    max_new_tokens) draws n_samples * 2**round(log2(m)) samples per problem, so its curves reach
    the teacher's largest budget."""
    max_budget_factor: int = 4
    """The most that factor may be."""
    max_new_tokens: int = 400
    speed_repeats: int = 3
    """Engine calls of the test sampling's shape in each model's decode speed probe
    (``sampling.decode_speed``), whose median decides ``samples_per_problem``."""
    adaptive_window: int = 4
    """Window of the adaptive-majority rules the report simulates on every model's samples
    (docs/adaptive-sampling.md)."""
    adaptive_threshold: float = 0.95
    """The beta rule's confidence."""
    verifier: str = "prm"
    """The verifier whose scores Best-of-N and weighted Best-of-N use (one of ``VERIFIERS``):
    "prm" (the default), a Math-Shepherd process reward model (``eval.prm``) on the frozen teacher,
    its step labels from rollouts of the teacher on the ORM stage's graded teacher samples of train
    problems (stage ``prm``), a chain scored by ``prm_aggregate``; "orm", an outcome reward model on
    the frozen teacher trained on those samples. Chosen on validation problems (docs/verifiers.md):
    weighted majority with the PRM scored by its last step is at or above majority at every k there,
    with the highest mean over k of any verifier rule, fine-tuned ones included."""
    prm_aggregate: str = "last"
    """How the PRM scores a chain from its steps' scores: "last" (the last step's, validation's
    pick) or "min" (the lowest)."""
    prm_rollouts: int = 4
    """Teacher continuations per step that label the PRM's training steps (verifier "prm")."""
    prm_problems: int = 64
    """The PRM labels the samples of this many of the ORM stage's problems ..."""
    prm_samples: int = 4
    """... and of each, its first this many samples."""

    def __post_init__(self) -> None:
        if self.verifier not in VERIFIERS:
            raise ValueError(f"unknown verifier {self.verifier!r}; choose from {', '.join(VERIFIERS)}")
        if self.prm_aggregate not in ("min", "last"):
            raise ValueError(f"unknown prm_aggregate {self.prm_aggregate!r}; choose from min, last")
        if self.train_precision not in PRECISIONS:
            raise ValueError(f"unknown train_precision {self.train_precision!r}; choose from {', '.join(PRECISIONS)}")

    def resolved(self) -> "DemoConfig":
        """This configuration with ``train_precision`` "auto" decided for this machine."""
        if self.train_precision != "auto":
            return self
        from ..runtime import native_bf16

        return replace(self, train_precision="bf16" if native_bf16("cpu") else "fp32")

    @classmethod
    def preset(cls, quick: bool) -> "DemoConfig":
        if not quick:
            return cls()
        return cls(quick=True, select_rows=8, n_train=400, n_test=8, mohawk_steps=[4, 4, 6], hybrid_kd_steps=6,
                   llamba_sft_steps=4, hybrid_sft_steps=4, batch_size=4, seq_len=128, temperatures=[0.8, 1.0], temp_problems=4, temp_samples=2,
                   orm_problems=8, orm_samples=4, n_samples=4, batch_problems=4, max_new_tokens=64)


STUDENTS = ("llamba", "hybrid")


def demo_task_config() -> dict[str, Any]:
    """The synthetic task the demo teacher is trained on (shipped with the package)."""
    return json.loads((ASSETS / "demo_task.json").read_text())


def demo_task(task_meta: Optional[dict[str, Any]] = None):
    """The demo's ``SyntheticTask`` (its ``config`` is the task's ``SyntheticConfig``), built from
    ``task_meta`` (default: ``demo_task_config()``)."""
    from ..data import synthetic as syn
    from ..eval.tasks.synthetic import SyntheticTask

    meta = task_meta if task_meta is not None else demo_task_config()
    return SyntheticTask(syn.SyntheticConfig.from_dict(meta["config"]), seed=meta["seed"],
                         n_shots=meta.get("n_shots", 1))


def teacher_train_config(task_meta: dict[str, Any]):
    """The SyntheticConfig the teacher's own training problems are drawn from: the demo task's
    ``config`` with its ``teacher_train`` fields laid over it (e.g. a ``step_weights`` that trains
    more on long chains). Only the teacher's pretraining uses it; the test problems, and the train
    problems the students, the reward model and the temperature choice see, keep the task's own mix."""
    from ..data import synthetic as syn

    return syn.SyntheticConfig.from_dict({**task_meta["config"], **task_meta.get("teacher_train", {})})


def teacher_train_problems(task_meta: dict[str, Any], n: int) -> list:
    """The first ``n`` train-split problems of the teacher's own stream (``teacher_train_config``)."""
    from ..data import synthetic as syn

    return syn.generate(teacher_train_config(task_meta), "train", n, seed=task_meta["seed"])

