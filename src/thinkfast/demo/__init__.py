"""The embedded demo: the whole study on one CPU, in minutes (``thinkfast demo``).

Stages (each one's output lives in OUT/<stage>; a finished stage is recorded in OUT/stages.json
and reused by the next run; ``force`` redoes them, removing only the demo's own files from OUT;
a run holds a lock on OUT, and its worker processes die with it):

  data         synthetic train/test problems (the task the shipped teacher was trained on)
  teacher      the shipped teacher (or ``retrain_teacher``: thinkfast's own pretraining recipe)
  select       the hybrid's attention layers, by leave-one-out KL on train problems
  llamba       Llamba student (with a decay bias): MOHAWK stages 1-3 (matrix, hidden, KD), then SFT
  hybrid       MambaInLlama hybrid: attention initialisation, reverse-KL KD, then SFT
               (the students, the ORM and the score stages run side by side in worker
               processes when there are cores; a timed stage runs one model at a time)
  temperature  each model's sampling temperature, chosen on TRAIN problems (majority@n), and its
               decode seconds per sample there
  orm          an outcome reward model trained on graded teacher samples of TRAIN problems
  prm          (``verifier="prm"`` only) a process reward model, its step labels from teacher
               rollouts of the ORM stage's samples; it then scores instead of the ORM
  speed-*      each model's decode speed at the test sampling's shape (rows per call, test prompts,
               max_new_tokens): the median of ``speed_repeats`` calls in each worker process,
               side by side, and their range
  sample-*     samples of every TEST problem for each model, its problems split between the
               worker processes (``sample_split``), at one number of rows per engine call for
               all; a student draws more samples in proportion to its probed speed
               (``samples_per_problem``), decided once per OUT (``StageRunner.decide``)
  score        grading and ORM scores
  report       metrics, budgets, the Pareto front, report.md + plots, results.json; each student
               is also scored at the most samples that fit each teacher budget (``budget_ks``), and
               every model's samples are voted on adaptively (ESC and Beta rules, simulated)

The claim tested: at equal seconds per problem, does a student reach a higher coverage and
majority accuracy than its teacher once the budget allows several teacher samples? Each budget
compares a student with the teacher on the same test problems: the mean per-problem difference
with a paired bootstrap interval (``claim_verdict``), and again with adaptive majority for every
model (``adaptive_claim``). Before it starts a run prints its expected duration, and an ETA once
it has measured this machine's speed (``cost``).

The modules, read top-down: ``pipeline`` (``run_demo`` and the stage list), ``config``
(``DemoConfig``, the task), ``cost`` (the duration model and the ETA), ``recipes`` (teacher, students, layer choice), ``sampling``
(sampling, temperature, ORM and scoring stages), ``report`` (the claim, report.md), ``stages``
(``StageRunner``, the output directory's safety and lock). The design and the figures of full
runs: docs/demo-study.md.
"""

from __future__ import annotations

from .config import (ASSETS, MODELS, SHIPPED_TEACHER, STUDENTS, TASK_FORMAT, TEACHER_RECIPE, VERIFIERS, DemoConfig,
                     demo_task, demo_task_config, teacher_train_config, teacher_train_problems)
from .cost import REFERENCE, Eta, Rates, largest_n_test, makespan, stage_seconds, total_seconds
from .pipeline import run_demo, run_stages, write_results
from .recipes import (distil, hybrid_recipe, llamba_recipe, load_shipped_teacher, select_hybrid_layers,
                      shipped_teacher_digest, shipped_teacher_task, teacher_recipe, teacher_stage)
from .report import (adaptive_claim, adaptive_curve, budget_ks, claim_verdict, demo_markdown,
                     paired_budget_difference, throughput_table)
from .sampling import (choose_temperature, decode_speed, demo_prompt_ids, greedy_stage, orm_stage, sample_file,
                       sample_split, samples_per_problem, score_stage, train_orm_stage)
from .stages import (DECISIONS, LOCK_NAME, OWN_DIRS, OWN_FILES, OWN_PLOTS, StageRunner, check_out_dir,
                     in_worker, is_demo_output, lock_out_dir, out_dir_meta, parallel_workers,
                     refuse_unusable_out, remove_demo_outputs)

__all__ = [
    "ASSETS", "MODELS", "SHIPPED_TEACHER", "STUDENTS", "TASK_FORMAT", "TEACHER_RECIPE", "VERIFIERS", "DemoConfig",
    "demo_task", "demo_task_config", "teacher_train_config", "teacher_train_problems",
    "REFERENCE", "Eta", "Rates", "largest_n_test", "makespan", "stage_seconds", "total_seconds",
    "run_demo", "run_stages", "write_results",
    "distil", "hybrid_recipe", "llamba_recipe", "load_shipped_teacher", "select_hybrid_layers",
    "shipped_teacher_digest", "shipped_teacher_task", "teacher_recipe", "teacher_stage",
    "adaptive_claim", "adaptive_curve", "budget_ks", "claim_verdict", "demo_markdown", "paired_budget_difference",
    "throughput_table", "choose_temperature", "decode_speed", "demo_prompt_ids", "greedy_stage", "orm_stage", "sample_file",
    "sample_split", "samples_per_problem", "score_stage", "train_orm_stage",
    "DECISIONS", "LOCK_NAME", "OWN_DIRS", "OWN_FILES", "OWN_PLOTS", "StageRunner", "check_out_dir",
    "in_worker", "is_demo_output", "lock_out_dir", "out_dir_meta", "parallel_workers",
    "refuse_unusable_out", "remove_demo_outputs",
]
