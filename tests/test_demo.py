"""`thinkfast demo --quick` end to end, and its bad-input handling."""

import functools
import json
import operator
import os
import shutil
import statistics
from pathlib import Path

import pytest

import thinkfast.demo as demo
import thinkfast.demo.config as demo_config
import thinkfast.demo.cost as demo_cost
import thinkfast.demo.pipeline as pipeline
import thinkfast.demo.recipes as recipes
import thinkfast.demo.report as demo_report
import thinkfast.demo.sampling as demo_sampling
from thinkfast.cli import main
from thinkfast.eval.io import read_jsonl
from thinkfast.runtime import UserError

RESULT_KEYS = {"config", "task", "teacher", "temperatures", "greedy", "runs", "pareto", "throughput", "claim",
               "stage_seconds", "models", "hybrid_layers", "samples_per_problem", "train_decode_s_per_sample",
               "decisions", "decode_speed", "distillation"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0
    (out.parent / "printed.txt").write_text(printed.getvalue())
    return out


def test_quick_demo_prints_its_expected_duration_then_an_eta(quick_run):
    """The expected duration comes before the first stage; an ETA follows the students' first
    measured training steps, and is printed again as later stages finish."""
    lines = (quick_run.parent / "printed.txt").read_text().splitlines()
    first_stage = next(i for i, line in enumerate(lines) if line.startswith("[data]"))
    expected = [i for i, line in enumerate(lines) if line.startswith("expected duration:")]
    assert expected and expected[0] < first_stage
    etas = [i for i, line in enumerate(lines) if line.startswith("ETA ")]
    assert any("steps of llamba/" in lines[i] or "steps of hybrid/" in lines[i] for i in etas)
    finished_after = [i for i in etas if "score-" in lines[i]]
    assert finished_after, "no ETA after the last stages"


def test_models_are_sampled_with_the_prompts_they_were_trained_on(quick_run):
    """The demo's prompt ids are the start of its training rows (TASK_FORMAT, no BOS), as the
    training formatter builds them."""
    from thinkfast.checkpoint import load_tokenizer
    from thinkfast.data.formatting import Formatter

    tok = load_tokenizer(quick_run / "teacher" / "model")
    task = demo.demo_task()
    examples = task.load("test", path=str(quick_run / "data" / "test.jsonl"))
    rows = [json.loads(line) for line in (quick_run / "data" / "test.jsonl").read_text().splitlines()]
    fmt = Formatter(tok, "auto", demo.TASK_FORMAT["prompt_template"], demo.TASK_FORMAT["response_template"],
                    add_bos=demo.TASK_FORMAT["add_bos"], add_eos=demo.TASK_FORMAT["add_eos"])
    trained = [f.prompt for f in fmt([(f"row {i}", r) for i, r in enumerate(rows)])]
    assert tok.bos_token_id is not None and tok("x")["input_ids"][0] == tok.bos_token_id  # BOS is on by default
    assert demo.demo_prompt_ids(task, examples, tok) == trained


def test_quick_demo_writes_a_complete_report(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    assert RESULT_KEYS <= set(results)
    assert set(results["runs"]) == {"teacher", "llamba", "hybrid"}
    for run in results["runs"].values():
        assert {"coverage", "majority", "best_of_n", "weighted_best_of_n"} <= set(run["metrics"])
        assert all(e["seconds"] is not None and e["seconds"] > 0 for e in run["metrics"]["coverage"])
    assert results["config"]["quick"] is True
    assert {t["model"] for t in results["throughput"]} == {"teacher", "llamba", "hybrid"}
    report = (quick_run / "report.md").read_text()
    assert "meaningless" in report and "Pareto" in report and "Decode throughput" in report
    for png in ("accuracy_vs_seconds_synthetic.png", "coverage_vs_k_synthetic.png"):
        assert (quick_run / png).stat().st_size > 1000
        assert f"({png})" in report
    stages = json.loads((quick_run / "stages.json").read_text())
    assert {"data", "teacher", "select", "llamba", "hybrid", "orm", "sample-teacher"} <= set(stages)
    # the hybrid keeps the half of the layers chosen by leave-one-out KL, and distils with exactly those
    chosen = results["hybrid_layers"]
    n = len(chosen["scores"])
    assert len(chosen["layers"]) == n // 2 and chosen["method"] == "loo"
    ranked = sorted(range(n), key=lambda i: (-chosen["scores"][i], i))
    assert chosen["layers"] == sorted(ranked[: n // 2])
    hybrid = json.loads((quick_run / "hybrid" / "model" / "config.json").read_text())["model"]["layer_pattern"]
    assert [i for i, c in enumerate(hybrid) if c == "A"] == chosen["layers"]
    # the Llamba student is pure discrete Mamba with the configured decay bias and conv span
    llamba = json.loads((quick_run / "llamba" / "model" / "config.json").read_text())["model"]
    assert set(llamba["layer_pattern"]) == {"M"} and llamba["mamba"]["kind"] == "discrete"
    assert llamba["mamba"]["decay_bias"] == results["config"]["llamba_decay_bias"] is not None
    assert llamba["mamba"]["conv_kernel"] == results["config"]["llamba_conv_kernel"] == 8
    # each model sampled the n the budget rule gave it, at the same rows per engine call
    n_by = results["samples_per_problem"]
    probed = {name: p["decode_s_per_sample"] for name, p in results["decode_speed"].items()}
    assert n_by == demo.samples_per_problem(demo.DemoConfig.preset(True), probed)
    # ... from each model's speed probe at the test sampling's shape: repeated calls, their median
    cfg = results["config"]
    for name, p in results["decode_speed"].items():
        assert len(p["calls"]) == cfg["speed_repeats"] * p["processes"]
        assert all(c["rows"] == cfg["batch_problems"] * cfg["n_samples"] for c in p["calls"])
        per_sample = sorted(c["decode_s_per_sample"] for c in p["calls"])
        assert p["decode_s_per_sample"] == pytest.approx(statistics.median(per_sample))
        assert p["decode_s_per_sample_range"] == [per_sample[0], per_sample[-1]]
        assert stages[f"speed-{name}"]["result"] == p
    # ... a decision recorded once, with the timings it came from
    decision = {"value": n_by, "from": probed}
    assert results["decisions"] == stages[demo.DECISIONS] == {"samples_per_problem": decision}
    for name, run in results["runs"].items():
        assert run["n"] == n_by[name] and run["ks"][-1] == n_by[name]
        assert run["timing"]["mean_batch_rows"] == cfg["batch_problems"] * cfg["n_samples"]
    # a student is also scored at the most samples that fit each teacher budget, by its own timings
    from thinkfast.eval.budget import RunTiming, largest_k_within

    for name in ("llamba", "hybrid"):
        run = results["runs"][name]
        timing = RunTiming(**run["timing"])
        for b in results["claim"]["coverage"]["budgets"]:
            k = largest_k_within(b["seconds"], timing, run["n"])
            assert k == 0 or k in run["ks"]
            within = [e for e in run["metrics"]["coverage"] if e["seconds"] <= b["seconds"]]
            assert b[f"{name}_k"] == (max(within, key=lambda e: e["mean"])["k"] if within else None)
    # ... and compared with the teacher on the same problems: a paired difference with its interval
    for method in ("coverage", "majority"):
        claim = results["claim"][method]
        assert set(claim["paired_verdicts"]) == {"llamba", "hybrid"}
        for b in claim["budgets"]:
            for name in ("llamba", "hybrid"):
                assert {f"{name}_{key}" for key in ("diff", "lo", "hi", "paired_verdict", "problems")} <= set(b)
                if b[f"{name}_k"] is None:
                    assert b[f"{name}_paired_verdict"] is None
                    continue
                assert b[f"{name}_lo"] <= b[f"{name}_diff"] <= b[f"{name}_hi"]
                assert b[f"{name}_paired_verdict"] in ("above", "below", "tied")
                assert b[f"{name}_problems"] == results["runs"]["teacher"]["problems"]
                assert b[f"{name}_diff"] == pytest.approx(b[name] - b["teacher"])  # same problems: means subtract
    assert "paired CI" in report
    # every model's samples are also voted on adaptively: on the plot, in the front's candidates
    # and in the claim's second reading
    for run in results["runs"].values():
        assert set(run["adaptive"]) == {"adaptive-esc", "adaptive-beta"}
        assert run["adaptive"]["adaptive-esc"]["rule"]["window"] == cfg["adaptive_window"]
    for method in ("adaptive-esc", "adaptive-beta"):
        claim = results["claim"][method]
        assert claim["budgets_compared"] == results["claim"]["majority"]["budgets_compared"]
        for b in claim["budgets"]:
            for name in ("teacher", "llamba", "hybrid"):
                assert b[f"{name}_max_n"] is None or 1 <= b[f"{name}_samples"] <= b[f"{name}_max_n"]
            for name in ("llamba", "hybrid"):
                if b[f"{name}_max_n"] is not None:
                    assert b[f"{name}_lo"] <= b[f"{name}_diff"] <= b[f"{name}_hi"]
                    assert b[f"{name}_diff"] == pytest.approx(b[name] - b["teacher"])
    assert "adaptive majority (ESC" in report and "speed probe" in report


def test_adaptive_claim_picks_each_models_best_cap_within_the_budget():
    def curve(points):  # (max_n, seconds, per-problem values over problems a, b, c, d)
        return {"problem_ids": ["a", "b", "c", "d"],
                "points": [{"max_n": m, "mean_samples": m / 2, "seconds": t, "mean": sum(v) / 4, "per_problem": v}
                           for m, t, v in points]}

    teacher_run = {"metrics": {"majority": [{"k": 1, "seconds": 0.1}, {"k": 2, "seconds": 0.2},
                                            {"k": 4, "seconds": 0.4}]}}
    curves = {"teacher": curve([(2, 0.15, [1, 0, 0, 0]), (4, 0.3, [1, 1, 0, 0])]),
              "llamba": curve([(4, 0.1, [0, 0, 0, 0]), (8, 0.2, [1, 1, 1, 0]), (16, 0.5, [1, 1, 1, 1])]),
              "hybrid": curve([(4, 0.25, [1, 0, 0, 0])])}
    claim = demo.adaptive_claim({"teacher": teacher_run}, curves, n_boot=200)
    rows = {r["budget_k"]: r for r in claim["budgets"]}
    assert set(rows) == {2, 4}
    assert (rows[2]["teacher_max_n"], rows[2]["llamba_max_n"], rows[2]["hybrid_max_n"]) == (2, 8, None)
    assert (rows[4]["teacher_max_n"], rows[4]["llamba_max_n"], rows[4]["hybrid_max_n"]) == (4, 8, 4)
    assert rows[2]["llamba_diff"] == pytest.approx(0.75 - 0.25) and rows[2]["hybrid_paired_verdict"] is None
    assert rows[4]["hybrid_diff"] == pytest.approx(0.25 - 0.5)
    assert claim["student_wins"] == {"llamba": 2, "hybrid": 0}


def test_adaptive_curve_matches_evaluate_at_the_full_cap(quick_run):
    """At the cap of the file's n, the simulated curve's point is ``thinkfast evaluate``'s
    adaptive entry: the same stops, accuracy and seconds."""
    from thinkfast.eval.adaptive import AdaptiveRule
    from thinkfast.eval.evaluation import EvalSettings, evaluate_run
    from thinkfast.eval.io import read_jsonl

    rows = list(read_jsonl(quick_run / "samples" / "teacher.scored.jsonl"))
    task = demo.demo_task()
    rule = AdaptiveRule("esc", window=2, max_n=4)
    run = evaluate_run(rows, task, "t", "t", EvalSettings(n_boot=10), adaptive=[rule])
    curve = demo.adaptive_curve(rows, task, rule, [1, 2, 4, 64])
    assert [p["max_n"] for p in curve["points"]] == [1, 2, 4]
    last, ref = curve["points"][-1], run["adaptive"]["adaptive-esc"]
    assert last["per_problem"] == ref["per_problem"] and last["mean_samples"] == ref["mean_samples"]
    assert last["seconds"] == pytest.approx(ref["seconds"]) and curve["problem_ids"] == run["problem_ids"]


def test_cost_model_counts_each_stage_by_its_units():
    from dataclasses import replace

    # fp32 training at 200 problems: everything in the training group fits beside Llamba (below)
    cfg = demo.DemoConfig(n_test=200, train_precision="fp32")
    rates = demo.REFERENCE
    n_by = {"teacher": 32, "llamba": 64, "hybrid": 32}
    s = demo.stage_seconds(cfg, rates, n_by)
    assert list(s)[:4] == ["data", "teacher", "select", "temperature-teacher"] and list(s)[-1] == "report"
    # samples x tokens / tokens per second, plus the stage's overhead
    tokens = min(cfg.max_new_tokens, rates.new_tokens_per_sample)
    assert s["sample-llamba"] == pytest.approx(rates.stage_overhead_s
                                               + cfg.n_test * 64 * tokens / rates.decode_tokens_per_s["llamba"])
    # steps x seconds per step
    m, h, k = cfg.mohawk_steps
    per = rates.train_s_per_step
    assert s["llamba"] == pytest.approx(2 * rates.stage_overhead_s + m * per["llamba/matrix"] + h * per["llamba/hidden"]
                                        + k * per["llamba/kd"] + cfg.llamba_sft_steps * per["llamba/sft"])
    # twice the test problems: every test stage's variable part doubles, nothing else moves
    s2 = demo.stage_seconds(replace(cfg, n_test=2 * cfg.n_test), rates, n_by)
    o = rates.stage_overhead_s
    probe = min(cfg.n_test, demo_config.LOOKUP_PROBLEMS) * rates.lookup_s_per_problem  # capped, not doubled
    assert s["greedy-hybrid"] == pytest.approx(o + cfg.n_test * tokens / rates.greedy_tokens_per_s + probe)
    for name in ("sample-teacher", "greedy-hybrid", "score-llamba"):
        fixed = o + (probe if name.startswith("greedy") else 0.0)
        assert s2[name] - fixed == pytest.approx(2 * (s[name] - fixed))
    assert s2["llamba"] == s["llamba"] and s2["orm"] == s["orm"]
    # one worker: every stage after another; two: the parallel groups overlap
    assert demo.total_seconds(s, 1) == pytest.approx(sum(s.values()))
    grouped = [st for g in demo_cost.PARALLEL_GROUPS for st in g]
    assert demo.total_seconds(s, 2) == pytest.approx(
        sum(v for k, v in s.items() if k not in grouped)
        + sum(demo_cost.schedule({st: s[st] for st in g if st in s}, 2, demo_cost.PARALLEL_AFTER)
              for g in demo_cost.PARALLEL_GROUPS))
    # the training group: the stages after the hybrid fill the core it frees while Llamba trains
    train = {st: s[st] for st in demo_cost.TRAINING_GROUP if st in s}
    beside = ("hybrid", "orm", "greedy-teacher", "temperature-hybrid", "greedy-hybrid", "prm")
    assert sum(s[st] for st in beside) < s["llamba"]  # all of it fits beside Llamba's training
    assert demo_cost.schedule(train, 2, demo_cost.TRAINING_AFTER) == pytest.approx(
        s["llamba"] + max(s["temperature-llamba"], s["greedy-llamba"]))
    assert demo.makespan([3, 2, 2], 2) == 4 and demo.makespan([], 2) == 0
    # the largest n_test that fits a limit fits it, and one step more does not
    n = demo.largest_n_test(cfg, 1800)
    fits = lambda n: demo.total_seconds(demo.stage_seconds(replace(cfg, n_test=n), rates, n_by, workers=2), 2) <= 1800
    assert n % 8 == 0 and fits(n) and not fits(n + 8)
    # two workers: a test sampling stage splits its problems between them, each at the speed of a
    # process with another beside it, and pays for starting them; a probe runs its calls in each
    s2w = demo.stage_seconds(cfg, rates, n_by, workers=2)
    split = 2 * rates.side_by_side_decode
    assert s2w["sample-llamba"] == pytest.approx(rates.stage_overhead_s + rates.worker_start_s
                                                 + cfg.n_test * 64 * tokens / rates.decode_tokens_per_s["llamba"] / split)
    assert s2w["speed-teacher"] - rates.worker_start_s - o == pytest.approx(
        (s["speed-teacher"] - o) / rates.side_by_side_decode)
    assert {k: v for k, v in s2w.items() if not k.startswith(("sample-", "speed-"))} == \
        {k: v for k, v in s.items() if not k.startswith(("sample-", "speed-"))}


def test_schedule_hands_a_stage_over_once_what_it_waits_for_has_finished():
    """``schedule`` models ``run_parallel``: jobs handed over in order once ready, FIFO onto the
    first free worker; checked on cases worked by hand."""
    sched = demo_cost.schedule
    assert sched({}, 2) == 0
    assert sched({"a": 3, "b": 2, "c": 2}, 2) == 4  # c starts when b ends
    assert sched({"a": 3, "b": 2, "c": 2}, 2, {"c": ("a",)}) == 5  # c waits for a, not b
    assert sched({"a": 3, "b": 2, "c": 2}, 1, {"c": ("a",)}) == 7
    # d (ready at once) is handed over before c (ready when b ends), so it takes the first free core
    assert sched({"a": 10, "b": 1, "c": 5, "d": 4}, 2, {"c": ("b",)}) == 10  # b, d on one core, then c
    assert sched({"a": 10, "b": 1, "c": 5, "d": 4}, 2, {"c": ("b",), "d": ("a",)}) == 14
    # the Llamba-shaped case: a long job, a short one and what waits for each
    assert sched({"long": 100, "short": 30, "after-short": 20, "after-long": 5}, 2,
                 {"after-short": ("short",), "after-long": ("long",)}) == 105


def test_eta_scales_the_stages_left_by_the_measured_speed():
    cfg = demo.DemoConfig()
    printed, now = [], [1000.0]
    eta = demo.Eta(cfg, workers=2, log=printed.append, clock=lambda: now[0])
    total = eta.announce()
    assert total == pytest.approx(demo.total_seconds(demo.stage_seconds(cfg, workers=2), 2))
    assert printed[-1].startswith("expected duration:")
    # a stage before training prints no ETA (too short to tell the speed)
    eta.stage_finished("data", 50.0, reused=False)
    assert len(printed) == 1
    # training twice as slow as the reference: the stages left take twice as long
    tokens = cfg.batch_size * cfg.seq_len
    eta.training_steps("llamba/kd", 10, 20 * demo.REFERENCE.train_s_per_step["llamba/kd"], tokens)
    assert eta.speed == pytest.approx(2.0) and printed[-1].startswith("ETA ")
    left = demo.stage_seconds(cfg, workers=2)
    del left["data"]
    assert eta.remaining_seconds() == pytest.approx(2 * demo.total_seconds(left, 2))
    # a stage measured again is ignored; another stage's first steps join, weighted by its expected seconds
    eta.training_steps("llamba/kd", 10, 90 * demo.REFERENCE.train_s_per_step["llamba/kd"], tokens)
    assert eta.speed == pytest.approx(2.0)
    eta.training_steps("hybrid/sft", 10, 40 * demo.REFERENCE.train_s_per_step["hybrid/sft"], tokens)
    w_kd = cfg.mohawk_steps[2] * demo.REFERENCE.train_s_per_step["llamba/kd"]
    w_sft = cfg.hybrid_sft_steps * demo.REFERENCE.train_s_per_step["hybrid/sft"]
    assert eta.speed == pytest.approx((2 * w_kd + 4 * w_sft) / (w_kd + w_sft))
    assert "hybrid/sft" in printed[-1] and printed[-1].startswith("ETA ")
    eta.speed = 2.0  # as before the second stage, for what follows
    # the probe's decode speeds replace the model for the sampling stages, which the factor no longer
    # scales; measured as the sampling runs (two processes side by side), they need no correction
    n_by = {"teacher": 32, "llamba": 64, "hybrid": 32}
    eta.decode_measured({"teacher": 1000.0, "llamba": 2000.0, "hybrid": 1000.0}, n_by)
    tokens_per_sample = min(cfg.max_new_tokens, demo.REFERENCE.new_tokens_per_sample)
    assert eta.expected()["sample-llamba"] == pytest.approx(
        demo.REFERENCE.stage_overhead_s + demo.REFERENCE.worker_start_s + cfg.n_test * 64 * tokens_per_sample / 2000.0 / 2)
    before = eta.remaining_seconds()
    eta.stage_finished("teacher", 1.0, reused=True)  # a reused stage: left out of the speed
    assert eta.speed == pytest.approx(2.0) and eta.remaining_seconds() < before


def test_eta_counts_a_parallel_group_under_way_from_when_it_began():
    """While the students train, the stages of their group already run count the time they have
    had: with the hybrid done on time, the ETA is what is left of Llamba's stage (and what waits
    for it), not the whole of it."""
    cfg = demo.DemoConfig(n_test=200, train_precision="fp32")  # the rest of the group fits beside Llamba
    now = [0.0]
    eta = demo.Eta(cfg, workers=2, log=lambda msg: None, clock=lambda: now[0])
    exp = eta.expected()
    after_group = {k: v for k, v in exp.items()
                   if k not in demo_cost.TRAINING_GROUP and list(exp).index(k) > list(exp).index("llamba")}
    for st in ("data", "teacher", "select", "temperature-teacher"):  # before the group, reused: no speed
        eta.stage_finished(st, 1.0, reused=True)
    eta.begin_group(tuple(s for s in demo_cost.TRAINING_GROUP if s in exp))
    now[0] = exp["hybrid"]
    eta.stage_finished("hybrid", exp["hybrid"], reused=False)  # on time: the speed stays 1
    assert eta.speed == pytest.approx(1.0)
    llamba_left = exp["llamba"] + max(exp["temperature-llamba"], exp["greedy-llamba"]) - exp["hybrid"]
    assert eta.remaining_seconds() == pytest.approx(llamba_left + demo.total_seconds(after_group, 2))
    # a resumed run whose hybrid was reused: that stage takes no time in this run's schedule
    resumed = demo.Eta(cfg, workers=2, log=lambda msg: None, clock=lambda: now[0])
    now[0] = 0.0
    for st in ("data", "teacher", "select", "temperature-teacher", "hybrid"):
        resumed.stage_finished(st, 999.0, reused=True)
    resumed.begin_group(tuple(s for s in demo_cost.TRAINING_GROUP if s in exp))
    now[0] = 100.0
    rest = {s: exp[s] for s in demo_cost.TRAINING_GROUP if s in exp and s != "hybrid"}
    assert resumed.remaining_seconds() == pytest.approx(
        demo_cost.schedule({**rest, "hybrid": 0.0}, 2, demo_cost.TRAINING_AFTER) - 100.0
        + demo.total_seconds(after_group, 2))


def test_a_student_that_did_not_distil_is_flagged_first_in_the_report(quick_run):
    """Under half the teacher's greedy accuracy, a student is marked as not distilled (a pure
    check, at the boundary) and the report says so before the claim; a distilled one is not named."""
    check = demo_report.distillation_check
    greedy = {"teacher": {"accuracy": 0.6}, "llamba": {"accuracy": 0.01}, "hybrid": {"accuracy": 0.3}}
    got = check(greedy)
    assert got["llamba"] == {"greedy": 0.01, "teacher_greedy": 0.6, "share": pytest.approx(0.01 / 0.6),
                             "distilled": False, "lookup": None, "teacher_lookup": None,
                             "operands": None, "teacher_operands": None}
    assert got["hybrid"]["distilled"] is True  # exactly half
    assert check({**greedy, "hybrid": {"accuracy": 0.29}})["hybrid"]["distilled"] is False
    assert check({"teacher": {"accuracy": 0.0}, "llamba": {"accuracy": 0.0}, "hybrid": {"accuracy": 0.0}})[
        "llamba"]["distilled"] is True  # no teacher accuracy to fall short of
    results = json.loads((quick_run / "results.json").read_text())
    assert results["distillation"] == check(results["greedy"])
    md = "\n".join(demo_report.demo_markdown({**results, "distillation": got}))
    assert md.index("did not distil") < md.index("Does a student beat its teacher")
    assert "llamba greedy 1.0%" in md and "hybrid greedy" not in md and "look-up" not in md
    # with the greedy stages' look-up probe, the flag says what the student is missing
    probed = {**greedy, "teacher": {"accuracy": 0.6, "lookup_share": 1.0, "operand_share": 1.0},
              "llamba": {"accuracy": 0.01, "lookup_share": 0.04, "operand_share": 0.2}}
    md = "\n".join(demo_report.demo_markdown({**results, "distillation": check(probed)}))
    assert ("llamba greedy 1.0% against the teacher's 60.0%, look-up of sentences 3 and on 4.0% right against "
            "100.0%, copied operands' second digits 20.0% right against 100.0%") in md
    # the quick run's greedy stages recorded the probe for every model
    for name in ("teacher", "llamba", "hybrid"):
        probe = results["greedy"][name]["lookup"]
        assert probe and all(v["right"] + v["other_sentence"] + v["nobody"] == v["total"] for v in probe.values())
        operands = results["greedy"][name]["operands"]
        assert set(operands) >= {"digit 1", "digit 2"} and all(0 <= v["right"] <= v["total"] for v in operands.values())
    fine = "\n".join(demo_report.demo_markdown({**results, "distillation": check(
        {**greedy, "llamba": {"accuracy": 0.5}})}))
    assert "did not distil" not in fine


def test_verifier_is_named_and_checked():
    # validation's pick (docs/verifiers.md): the PRM, a chain scored by its last step
    cfg = demo.DemoConfig()
    assert (cfg.verifier, cfg.prm_aggregate) == ("prm", "last") and set(demo.VERIFIERS) == {"orm", "prm"}
    with pytest.raises(ValueError, match="unknown verifier"):
        demo.DemoConfig(verifier="no-such-verifier")
    with pytest.raises(ValueError, match="unknown prm_aggregate"):
        demo.DemoConfig(prm_aggregate="mean")
    # the PRM's stage is costed only when it runs, and the ORM stage then only samples
    orm = demo.stage_seconds(demo.DemoConfig(verifier="orm"))
    assert "prm" not in orm
    assert demo.stage_seconds(cfg)["prm"] > 0
    assert demo.stage_seconds(cfg)["orm"] == pytest.approx(orm["orm"] - demo.REFERENCE.orm_train_s)


def test_default_verifier_is_the_prm_scored_by_its_last_step(quick_run):
    """The default run trains the PRM from the ORM stage's teacher samples, leaves the ORM untrained,
    and scores every model's samples by the last step's score."""
    results = json.loads((quick_run / "results.json").read_text())
    assert (results["config"]["verifier"], results["config"]["prm_aggregate"]) == ("prm", "last")
    stages = json.loads((quick_run / "stages.json").read_text())
    trained_on = len((quick_run / "orm" / "teacher_train_samples.jsonl").read_text().splitlines())
    assert 0 < stages["prm"]["result"]["samples"] <= trained_on
    assert stages["orm"]["result"] == {"problems": demo.DemoConfig.preset(True).orm_problems, "trained": False}
    assert not (quick_run / "orm" / "model").exists()
    assert (quick_run / "prm" / "model" / "prm.json").exists()
    for name in ("teacher", "llamba", "hybrid"):
        rows = [json.loads(line) for line in (quick_run / "samples" / f"{name}.scored.jsonl").read_text().splitlines()]
        assert rows and all(isinstance(r["reward_steps"], list) for r in rows)
        assert all(r["reward"] == (r["reward_steps"][-1] if r["reward_steps"] else 0.0) for r in rows)
    assert "use the PRM (a process reward model" in (quick_run / "report.md").read_text()
    assert "by its last step: validation's pick" in (quick_run / "report.md").read_text()


@pytest.mark.slow
def test_orm_verifier_trains_the_orm_and_scores_with_it(tmp_path):
    """``--verifier orm``: the ORM stage trains an ORM, which scores every model's samples; no PRM."""
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--verifier", "orm", "--out", str(out), "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["verifier"] == "orm"
    assert (out / "orm" / "model" / "orm.json").exists() and not (out / "prm").exists()
    rows = [json.loads(line) for line in (out / "samples" / "teacher.scored.jsonl").read_text().splitlines()]
    assert all(isinstance(r["reward"], float) and "reward_steps" not in r for r in rows)
    assert "use the ORM (an outcome reward model" in (out / "report.md").read_text()


def test_claim_scores_teacher_and_students_at_their_best_within_each_budget():
    def run(name, points):  # (k, seconds, mean) per point, the same for both methods
        pts = [{"k": k, "seconds": t, "mean": m, "lo": m, "hi": m} for k, t, m in points]
        return {"name": name, "metrics": {"coverage": pts, "majority": pts}}

    # the teacher's curve dips at k = 4; the slow student fits only k = 1 in either budget
    runs = {"teacher": run("teacher", [(1, 0.1, 0.50), (2, 0.2, 0.60), (4, 0.4, 0.55)]),
            "llamba": run("llamba", [(1, 0.15, 0.40), (3, 0.45, 0.58), (6, 0.9, 0.70)]),
            "hybrid": run("hybrid", [(1, 0.05, 0.52), (4, 0.2, 0.61), (8, 0.4, 0.59)])}
    verdict = demo.claim_verdict(runs)["majority"]
    rows = {r["budget_k"]: r for r in verdict["budgets"]}
    assert set(rows) == {2, 4}  # k = 1 is not a budget
    # brute force: the best point of each model costing at most the teacher's seconds at budget_k
    for r in rows.values():
        for name, pts in runs.items():
            ok = [p for p in pts["metrics"]["majority"] if p["seconds"] <= r["seconds"]]
            best = max(ok, key=lambda p: p["mean"]) if ok else None
            assert (r[name], r[f"{name}_k"]) == ((best["mean"], best["k"]) if best else (None, None))
    assert (rows[4]["teacher"], rows[4]["teacher_k"]) == (0.60, 2)  # its dip at k = 4 is not held against it
    assert rows[4]["llamba_k"] == 1 and rows[4]["hybrid_k"] == 4
    assert verdict["student_wins"] == {"llamba": 0, "hybrid": 2}


def test_samples_per_problem_follows_measured_speed():
    cfg = demo.DemoConfig()  # n_samples 32, factor at most 4
    speeds = {"teacher": 0.030, "llamba": 0.018, "hybrid": 0.024, "fast": 0.004, "slow": 0.05}
    # speed-ups 1.67 -> 2, 1.25 -> 1, 7.5 -> 8 capped at 4, 0.6 -> never fewer than the teacher
    assert demo.samples_per_problem(cfg, speeds) == {"teacher": 32, "llamba": 64, "hybrid": 32, "fast": 128,
                                                     "slow": 32}
    assert demo.samples_per_problem(demo.DemoConfig(match_budget=False), speeds) == dict.fromkeys(speeds, 32)
    assert demo.samples_per_problem(cfg, {"teacher": None, "llamba": 0.01}) == {"teacher": 32, "llamba": 32}


def test_second_run_reuses_finished_stages(quick_run, capsys):
    before = (quick_run / "stages.json").read_text()
    assert main(["demo", "--quick", "--out", str(quick_run), "--threads", "1"]) == 0
    assert "reused" in capsys.readouterr().out
    assert (quick_run / "stages.json").read_text() == before


def test_a_resumed_run_keeps_the_recorded_samples_per_problem(quick_run, tmp_path, monkeypatch, capsys):
    """The students' speed probes are measured again (as if they had not finished), and this
    time their timings call for other sample counts: the resumed run keeps the recorded ones,
    which its sample files were drawn with."""
    out = tmp_path / "out"
    shutil.copytree(quick_run, out)
    state = json.loads((out / "stages.json").read_text())
    recorded = state[demo.DECISIONS]["samples_per_problem"]
    for name in ("llamba", "hybrid"):
        del state[f"speed-{name}"]
    (out / "stages.json").write_text(json.dumps(state))
    cfg = demo.DemoConfig.preset(True)
    fastest = cfg.n_samples * min(cfg.max_budget_factor, cfg.batch_problems)
    # each student as fast as the teacher where it was faster, else as fast as can be
    scale = {name: 1.0 if recorded["value"][name] > cfg.n_samples else 1e-3 for name in ("llamba", "hybrid")}
    measure = demo.decode_speed

    def remeasured(model_dir, task, examples, name, temperature, cfg, log, **kw):
        probe = measure(model_dir, task, examples, name, temperature, cfg, log, **kw)
        return {**probe, "decode_s_per_sample": recorded["from"]["teacher"] * scale[name]}

    monkeypatch.setattr(pipeline, "decode_speed", remeasured)
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    new_speeds = {name: p["decode_s_per_sample"] for name, p in results["decode_speed"].items()}
    assert new_speeds != recorded["from"]
    assert demo.samples_per_problem(cfg, new_speeds) == {"teacher": cfg.n_samples, **{
        name: cfg.n_samples if recorded["value"][name] > cfg.n_samples else fastest for name in ("llamba", "hybrid")}}
    assert demo.samples_per_problem(cfg, new_speeds) != recorded["value"]  # a new decision would differ
    assert results["samples_per_problem"] == recorded["value"]
    assert results["decisions"] == {"samples_per_problem": recorded}
    assert {name: run["n"] for name, run in results["runs"].items()} == recorded["value"]
    assert "[samples_per_problem] decided earlier, reused (measured now" in printed


def test_out_dir_of_another_configuration_is_refused(quick_run, capsys):
    marker = quick_run / "results.json"
    before = marker.read_bytes()
    assert main(["demo", "--out", str(quick_run)]) == 2  # full config != the quick one
    assert "different configuration" in capsys.readouterr().err
    assert marker.read_bytes() == before


def test_missing_shipped_teacher_names_the_retrain_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recipes, "SHIPPED_TEACHER", tmp_path / "nowhere")
    assert main(["demo", "--quick", "--out", str(tmp_path / "o")]) == 2
    assert "--retrain-teacher" in capsys.readouterr().err


def test_retrained_teacher_trains_on_its_own_mix(tmp_path, monkeypatch):
    """--retrain-teacher draws the teacher's training problems with the task's ``teacher_train``
    fields (here: 5 operations only), while the problems the students and the test use keep the task's mix."""
    from thinkfast.eval.tasks.synthetic import SyntheticTask

    meta = demo.demo_task_config()
    meta["teacher_train"] = {"step_weights": [0, 0, 0, 1]}
    monkeypatch.setattr(pipeline, "demo_task_config", lambda: meta)
    seen = {}
    full_recipe = demo.teacher_recipe

    def short_recipe(out_dir, tokenizer_dir, train_path):
        seen["train"] = train_path
        recipe = full_recipe(out_dir, tokenizer_dir, train_path)
        recipe.train.steps, recipe.train.warmup_steps = 2, 1
        return recipe

    monkeypatch.setattr(recipes, "teacher_recipe", short_recipe)
    out = tmp_path / "rt"
    assert main(["demo", "--quick", "--retrain-teacher", "--out", str(out), "--threads", "1"]) == 0
    task = SyntheticTask(demo.teacher_train_config(meta), seed=meta["seed"])
    assert seen["train"] == out / "data" / "teacher_train.jsonl"
    teacher_rows = task.load("train", path=str(seen["train"]))
    assert len(teacher_rows) == demo.DemoConfig.preset(True).n_train
    assert {e.meta["n_steps"] for e in teacher_rows} == {5}
    student_rows = task.load("train", path=str(out / "data" / "train.jsonl"))
    assert {e.meta["n_steps"] for e in student_rows} == {2, 3, 4, 5}
    assert json.loads((out / "results.json").read_text())["teacher"] == "retrained"
    with pytest.raises(Exception, match="no_such_field"):
        demo.teacher_train_config({**meta, "teacher_train": {"no_such_field": 1}})


def test_parallel_stages_record_each_and_name_a_failure(tmp_path):
    """Students distil in worker processes: each finished stage is kept, a failing one is named,
    and a rerun redoes only what failed."""
    runner = demo.StageRunner(tmp_path, False, lambda msg: None)
    with pytest.raises(UserError, match="stage 'bad' failed: ZeroDivisionError"):
        runner.run_parallel({"good": functools.partial(pow, 2, 10), "bad": functools.partial(operator.truediv, 1, 0)},
                            workers=2)
    state = json.loads((tmp_path / "stages.json").read_text())
    assert state["good"]["result"] == 1024 and "bad" not in state
    again = demo.StageRunner(tmp_path, False, lambda msg: None)
    assert again.run_parallel({"good": functools.partial(pow, 3, 3), "bad": functools.partial(pow, 2, 3)},
                              workers=2) == {"good": 1024, "bad": 8}


def test_parallel_stage_waits_for_the_stages_it_names(tmp_path):
    """A stage listed in ``after`` starts only once those have finished: here it reads the file the
    slow stage writes (without the wait it would start at once, on the free worker, and find no
    file); a stage waiting for a failed one is not run, and a rerun runs it."""
    import subprocess
    made = tmp_path / "made.txt"
    jobs = {"slow": functools.partial(subprocess.check_call, ["sh", "-c", f"sleep 1; echo done > {made}"]),
            "other": functools.partial(pow, 2, 2),
            "reader": functools.partial(Path.read_text, made)}
    runner = demo.StageRunner(tmp_path / "a", False, lambda msg: None)
    (tmp_path / "a").mkdir()
    assert runner.run_parallel(jobs, workers=2, after={"reader": ("slow",)}) == {
        "slow": 0, "other": 4, "reader": "done\n"}
    with pytest.raises(ValueError, match="listed before it"):
        runner.run_parallel({"reader": jobs["reader"], "slow": jobs["slow"]}, workers=2, after={"reader": ("slow",)})
    # a failed stage: what waits for it is not run, the rest is kept
    out_b = tmp_path / "b"
    out_b.mkdir()
    failing = {"bad": functools.partial(operator.truediv, 1, 0), "waits": functools.partial(pow, 3, 2),
               "free": functools.partial(pow, 5, 2)}
    with pytest.raises(UserError, match="stage 'bad' failed"):
        demo.StageRunner(out_b, False, lambda msg: None).run_parallel(failing, workers=2, after={"waits": ("bad",)})
    state = json.loads((out_b / "stages.json").read_text())
    assert "waits" not in state and state["free"]["result"] == 25
    fixed = {**failing, "bad": functools.partial(operator.truediv, 4, 2)}
    assert demo.StageRunner(out_b, False, lambda msg: None).run_parallel(
        fixed, workers=2, after={"waits": ("bad",)}) == {"bad": 2.0, "waits": 9, "free": 25}


def test_parallel_workers_fit_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert demo.parallel_workers(threads=1, jobs=None) == 2  # at most two
    assert demo.parallel_workers(threads=2, jobs=None) == 2
    assert demo.parallel_workers(threads=3, jobs=None) == 1
    assert demo.parallel_workers(threads=1, jobs=1) == 1


def test_a_run_of_another_shipped_teacher_is_refused(tmp_path):
    cfg = demo.DemoConfig.preset(quick=True)
    demo.check_out_dir(tmp_path, cfg, "shipped", force=False, teacher_weights="aaaa")
    demo.check_out_dir(tmp_path, cfg, "shipped", force=False, teacher_weights="aaaa")  # same run: accepted
    with pytest.raises(UserError, match="different configuration"):
        demo.check_out_dir(tmp_path, cfg, "shipped", force=False, teacher_weights="bbbb")


def test_training_precision_is_decided_for_the_machine_and_recorded(quick_run, monkeypatch, tmp_path):
    import yaml

    import thinkfast.runtime as runtime

    here = "bf16" if runtime.native_bf16("cpu") else "fp32"
    with pytest.raises(ValueError, match="unknown train_precision"):
        demo.DemoConfig(train_precision="fp16")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "native_bf16", lambda device="cpu", native=native: native)
        assert demo.DemoConfig().resolved().train_precision == want
        assert demo.DemoConfig(train_precision="fp32").resolved().train_precision == "fp32"  # asked: kept
    with pytest.raises(ValueError, match="resolved"):  # "auto" is never handed to a recipe
        recipes.llamba_recipe(demo.DemoConfig(), tmp_path / "s", tmp_path / "t", tmp_path / "d.jsonl")
    for precision, bf16 in (("bf16", True), ("fp32", False)):
        cfg = demo.DemoConfig(train_precision=precision)
        for recipe in (recipes.llamba_recipe(cfg, tmp_path / "s", tmp_path / "t", tmp_path / "d.jsonl"),
                       recipes.hybrid_recipe(cfg, tmp_path / "s", tmp_path / "t", tmp_path / "d.jsonl")):
            assert recipe.train.bf16 is bf16
    # the run records the precision it decided, and its students trained in it
    recorded = json.loads((quick_run / "demo_config.json").read_text())["demo"]["train_precision"]
    assert recorded == here
    assert json.loads((quick_run / "results.json").read_text())["config"]["train_precision"] == recorded
    for stage in sorted(quick_run.glob("*/[0-9]-*/run_config.yaml")):
        assert yaml.safe_load(stage.read_text())["train"]["bf16"] is (recorded == "bf16"), stage
    assert len(list(quick_run.glob("*/[0-9]-*/run_config.yaml"))) == 6  # 4 Llamba + 2 hybrid stages


def test_cost_model_takes_bf16_training_at_its_measured_speedup():
    from dataclasses import replace

    rates = demo.REFERENCE
    assert set(rates.bf16_train_speedup) == set(rates.train_s_per_step)
    assert all(v > 1 for v in rates.bf16_train_speedup.values())
    fp32, bf16 = (demo.stage_seconds(demo.DemoConfig(train_precision=p)) for p in ("fp32", "bf16"))
    o = rates.stage_overhead_s
    for student in ("llamba", "hybrid"):
        steps = {k: v for k, v in demo_cost.student_steps(demo.DemoConfig()).items() if k.startswith(student + "/")}
        assert bf16[student] - 2 * o == pytest.approx(sum(
            n * demo_cost.train_step_seconds(rates, k, tok) / rates.bf16_train_speedup[k]
            for k, (n, tok) in steps.items()))
        assert bf16[student] < fp32[student]
    assert {k: v for k, v in bf16.items() if k not in ("llamba", "hybrid")} == \
        {k: v for k, v in fp32.items() if k not in ("llamba", "hybrid")}  # only training changes
    # the ETA measures a bf16 run against bf16's expected step
    cfg = demo.DemoConfig(train_precision="bf16")
    eta = demo.Eta(cfg, workers=2, log=lambda s: None)
    tokens = cfg.batch_size * cfg.seq_len
    ref = rates.train_s_per_step["llamba/kd"] / rates.bf16_train_speedup["llamba/kd"]
    eta.training_steps("llamba/kd", 10, 10 * ref, tokens)
    assert eta.speed == pytest.approx(1.0)
    assert replace(cfg, train_precision="fp32").resolved().train_precision == "fp32"


def test_shards_split_in_order_into_nearly_equal_parts():
    items = list(range(7))
    assert demo_sampling.shards(items, 2) == [[0, 1, 2, 3], [4, 5, 6]]
    assert demo_sampling.shards(items, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert demo_sampling.shards(items, 1) == [items]
    assert demo_sampling.shards([0, 1], 4) == [[0], [1]]  # never an empty part
    for k in (1, 2, 3, 5, 7):
        parts = demo_sampling.shards(items, k)
        assert [x for p in parts for x in p] == items and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_sampling_split_between_workers_draws_the_samples_one_process_draws(quick_run, tmp_path):
    """The test sampling splits its problems between worker processes; the engine keys its
    randomness on (seed, prompt), so the joined file holds the very samples of one process, in
    the same order, each call holding the same problems; only the timings (measured with the
    other part beside) differ."""
    task = demo.demo_task(demo.demo_task_config())
    examples = task.load("test", path=str(quick_run / "data" / "test.jsonl"))[:5]
    cfg = demo.DemoConfig.preset(True)
    model = quick_run / "teacher" / "model"
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    demo.sample_split(model, task, examples, one, "teacher", 3, 1.0, cfg, print, batch_problems=2, workers=1)
    rep = demo.sample_split(model, task, examples, two, "teacher", 3, 1.0, cfg, print, batch_problems=2,
                            workers=2, threads=1)
    assert rep["processes"] == 2 and rep["written"] == 5 and rep["failed"] == 0
    timing = {"prefill_s", "decode_s"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    a, b = read_jsonl(one), read_jsonl(two)
    assert len(a) == 5 * 3 and strip(a) == strip(b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]  # the parts are gone
