"""Adaptive majority in ``thinkfast evaluate``: the stopping point, accuracy, cost and the fixed-k
comparison, each against brute force on small hand-made inputs."""

from __future__ import annotations

import itertools
import json

import pytest

from thinkfast.eval import metrics as M
from thinkfast.eval.adaptive import AdaptiveRule, beta_should_stop, esc_should_stop
from thinkfast.eval.evaluation import EvalSettings, evaluate_run, pareto_by_task


def brute_stop(answers, rule_fn, window, max_n):
    """Samples drawn: check the rule after every whole window and stop at max_n."""
    for m in range(1, max_n + 1):
        if m == max_n:
            return m
        if m % window == 0 and rule_fn(list(answers[:m])):
            return m
    raise AssertionError


@pytest.mark.parametrize("window,max_n", [(1, 4), (2, 5), (3, 6), (2, 2)])
def test_stop_after_is_the_first_window_the_rule_stops_at(window, max_n):
    for answers in itertools.product(["a", "b", None], repeat=max_n):
        esc = AdaptiveRule("esc", window=window, max_n=max_n)
        assert esc.stop_after(answers) == brute_stop(answers, lambda a: esc_should_stop(a, window), window, max_n)
        beta = AdaptiveRule("beta", window=window, max_n=max_n, threshold=0.8)
        assert beta.stop_after(answers) == brute_stop(answers, lambda a: beta_should_stop(a, 0.8), window, max_n)
        # round by round: open until the stop, then closed
        stop = esc.stop_after(answers)
        drawn = 0
        while esc.is_open(answers[:drawn]):
            drawn += esc.next_window(drawn)
        assert drawn == stop


def test_rule_parameters_are_checked():
    for bad in (dict(rule="vote"), dict(rule="esc", window=0), dict(rule="beta", threshold=1.0)):
        with pytest.raises(ValueError):
            AdaptiveRule(**bad)


class Task:
    name = "toy"

    @staticmethod
    def same_answer(a, b):
        return a == b


def rows_of(problems, seconds=None):
    """problems: {pid: [(pred, correct), ...]} -> samples rows (with timings when ``seconds``)."""
    rows = []
    for pid, samples in problems.items():
        for i, (pred, ok) in enumerate(samples):
            r = {"problem_id": pid, "sample_index": i, "pred": pred, "correct": ok, "gold": "x"}
            if seconds:
                r.update(prefill_s=seconds[0], decode_s=seconds[1], batch_problems=1, batch_rows=len(samples))
            rows.append(r)
    return rows


PROBLEMS = {  # 4 samples each; gold is "x"
    "p0": [("x", True), ("x", True), ("y", False), ("x", True)],    # esc w=2 stops at 2
    "p1": [("y", False), ("x", True), ("x", True), ("x", True)],    # runs to 4
    "p2": [("y", False), ("y", False), ("x", True), ("x", True)],   # esc stops at 2, wrong
    "p3": [(None, False), ("x", True), ("x", True), ("z", False)],  # runs to 4
}


def test_simulated_adaptive_against_brute_force():
    """With one ordering (the index order) the simulation is the rule on each problem's samples in
    index order; with the default orderings, that single ordering is kept as ``index_order``."""
    settings = EvalSettings(n_boot=50, max_subsets=1000, adaptive_orderings=1)
    rules = [AdaptiveRule("esc", window=2, max_n=99), AdaptiveRule("beta", window=1, max_n=99, threshold=0.7)]
    run = evaluate_run(rows_of(PROBLEMS, seconds=(1.0, 8.0)), Task(), "toy", "toy.jsonl", settings, adaptive=rules)
    averaged = evaluate_run(rows_of(PROBLEMS, seconds=(1.0, 8.0)), Task(), "toy", "toy.jsonl",
                            EvalSettings(n_boot=50, max_subsets=1000), adaptive=rules)
    for rule in rules:
        a = run["adaptive"][rule.method]
        assert a["orderings"] == 1 and averaged["adaptive"][rule.method]["orderings"] == 64
        fn = (lambda x: esc_should_stop(x, 2)) if rule.rule == "esc" else (lambda x: beta_should_stop(x, 0.7))
        stops, hits = [], []
        for samples in PROBLEMS.values():
            preds = [p for p, _ in samples]
            m = brute_stop(preds, fn, rule.window, 4)  # max_n capped at the file's n
            votes = {}
            for p in preds[:m]:
                if p is not None:
                    votes[p] = votes.get(p, 0) + 1
            top = max(votes.values())
            winner = next(p for p in preds[:m] if p is not None and votes[p] == top)  # ties: seen first
            stops.append(m)
            hits.append(float(winner == "x"))
        assert a["samples"] == stops and a["per_problem"] == hits
        ref = averaged["adaptive"][rule.method]["index_order"]
        assert ref["samples"] == stops and ref["per_problem"] == hits and ref["mean"] == pytest.approx(sum(hits) / 4)
        assert a["mean"] == pytest.approx(sum(hits) / 4)
        assert a["mean_samples"] == pytest.approx(sum(stops) / 4)
        assert a["stopped_early"] == sum(m < 4 for m in stops) and a["rule"]["max_n"] == 4 and a["simulated"]
        # cost: per-problem prefill + mean samples x decode per sample (8 s per call of 4 rows)
        assert a["seconds"] == pytest.approx(1.0 + a["mean_samples"] * 2.0)
        # fixed-k majority by brute force: every k-subset of every problem
        curve = []
        for k in range(1, 5):
            per = []
            for samples in PROBLEMS.values():
                preds = [p for p, _ in samples]
                groups = M.group_answers(preds, key=lambda s: s, same=lambda x, y: x == y)
                ok = [c for _, c in samples]
                per.append(M.expected_correct(lambda s: M.select_majority(groups, s), ok, k, max_subsets=1000))
            curve.append(sum(per) / 4)
        k_same = next((k for k, v in enumerate(curve, 1) if v >= a["mean"] - 1e-12), None)
        assert a["fixed_k_same_accuracy"] == k_same
        assert a["samples_saved"] == (None if k_same is None else pytest.approx(k_same - a["mean_samples"]))
    esc = run["adaptive"]["adaptive-esc"]
    assert esc["samples"] == [2, 4, 2, 4] and esc["per_problem"] == [1.0, 1.0, 0.0, 1.0]


def test_no_adaptive_rules_no_adaptive_key():
    run = evaluate_run(rows_of(PROBLEMS), Task(), "toy", "toy.jsonl", EvalSettings(n_boot=10))
    assert "adaptive" not in run


def test_adaptive_joins_the_front_only_where_no_fixed_point_is_as_cheap_and_as_good():
    # every problem says x, x, x, x: esc w=2 stops at 2 with majority@4's accuracy, at half its decode
    same = {f"p{i}": [("x", True)] * 4 for i in range(3)}
    rule = AdaptiveRule("esc", window=2, max_n=4)
    run = evaluate_run(rows_of(same, seconds=(0.0, 4.0)), Task(), "a", "a.jsonl", EvalSettings(n_boot=10),
                       adaptive=[rule])
    run["task"] = "toy"
    front = pareto_by_task([run])["toy"]["accuracy"]
    # majority@1 costs 1 s at accuracy 1; adaptive costs 2 s: it is dominated and stays off
    assert [(p["method"], p["k"]) for p in front] == [("majority", 1)]
    # with a window of 4 it draws all 4 (tied with majority@4): the front is still the fixed one
    run4 = evaluate_run(rows_of(same, seconds=(0.0, 4.0)), Task(), "a", "a.jsonl", EvalSettings(n_boot=10),
                        adaptive=[AdaptiveRule("esc", window=4, max_n=4)])
    run4["task"] = "toy"
    assert pareto_by_task([run4])["toy"]["accuracy"] == front


def test_adaptive_point_on_the_front_when_it_beats_fixed_k():
    # p0 settles at once; p1 needs all 4 samples to be right: adaptive gets both at 3 samples mean
    probs = {"p0": [("x", True)] * 4,
             "p1": [("y", False), ("z", False), ("x", True), ("x", True)]}
    rule = AdaptiveRule("esc", window=1, max_n=4)
    index_order = EvalSettings(n_boot=10, max_subsets=100, adaptive_orderings=1)
    run = evaluate_run(rows_of(probs, seconds=(0.0, 4.0)), Task(), "a", "a.jsonl", index_order, adaptive=[rule])
    run["task"] = "toy"
    a = run["adaptive"]["adaptive-esc"]
    assert a["samples"] == [1, 1] and a["mean"] == 0.5  # window 1 stops at every first answer
    rule2 = AdaptiveRule("esc", window=2, max_n=4)
    run2 = evaluate_run(rows_of(probs, seconds=(0.0, 4.0)), Task(), "a", "a.jsonl", index_order, adaptive=[rule2])
    run2["task"] = "toy"
    a2 = run2["adaptive"]["adaptive-esc"]
    assert a2["samples"] == [2, 4] and a2["mean"] == 1.0 and a2["seconds"] == pytest.approx(3.0)
    # fixed majority@4 reaches 1.0 at 4 s, @3 only 0.75: adaptive is strictly better at 3 s
    assert a2["fixed_k_same_accuracy"] == 4 and a2["samples_saved"] == pytest.approx(1.0)
    front = pareto_by_task([run2])["toy"]["accuracy"]
    assert ("adaptive-esc", 4) in [(p["method"], p["k"]) for p in front]
    assert ("majority", 4) not in [(p["method"], p["k"]) for p in front]


def test_a_file_made_adaptively_is_scored_on_all_its_samples():
    probs = {"p0": [("x", True), ("x", True)],
             "p1": [("y", False), ("x", True), ("x", True), ("y", False)]}
    rows = rows_of(probs, seconds=(1.0, 2.0))
    rule = AdaptiveRule("esc", window=2, max_n=4)
    for r in rows:
        r["settings"] = {"n": 4, "adaptive": rule.to_dict()}
    run = evaluate_run(rows, Task(), "a", "a.jsonl", EvalSettings(n_boot=10),
                       adaptive=[AdaptiveRule("beta", window=1, max_n=4)])  # ignored: the file says esc
    assert list(run["adaptive"]) == ["adaptive-esc"]
    a = run["adaptive"]["adaptive-esc"]
    assert not a["simulated"] and a["samples"] == [2, 4] and a["per_problem"] == [1.0, 0.0]
    # measured cost: every call's seconds over problems (2 calls: 1 + 2 s, and 1 + 2 s)
    assert a["seconds"] == pytest.approx(6.0 / 2)
    json.dumps(run)


def test_the_report_plots_and_tabulates_adaptive_majority(tmp_path):
    from thinkfast.eval.report import write_report

    probs = {"p0": [("x", True)] * 4, "p1": [("y", False), ("z", False), ("x", True), ("x", True)]}
    run = evaluate_run(rows_of(probs, seconds=(0.0, 4.0)), Task(), "a", "a.jsonl",
                       EvalSettings(n_boot=10, max_subsets=100, adaptive_orderings=1),
                       adaptive=[AdaptiveRule("esc", window=2, max_n=4)])
    run["task"] = "toy"
    md = write_report([{"runs": [run]}], tmp_path).read_text()
    assert "| adaptive majority (ESC) (simulated) | window=2, max_n=4 | 1.000 [1.000, 1.000] | 3 | 3 | 4 | 1 |" in md
    assert "| adaptive majority (ESC) | <= 4 | 1.000" in md  # on the front, its k the cap
    assert (tmp_path / "accuracy_vs_seconds_toy.png").is_file()


def test_a_broken_rule_in_a_files_settings_is_a_user_error_naming_the_file():
    from thinkfast.runtime import UserError

    rows = rows_of(PROBLEMS)
    for r in rows:
        r["settings"] = {"n": 4, "adaptive": {"rule": "vote", "window": 2, "max_n": 4}}
    with pytest.raises(UserError, match=r"toy\.jsonl: row 1 has settings.adaptive .*unknown adaptive rule 'vote'"):
        evaluate_run(rows, Task(), "toy", "toy.jsonl", EvalSettings(n_boot=10))


def test_the_fixed_curve_is_the_runs_majority_at_its_ks():
    from thinkfast.eval.evaluation import fixed_majority_curve, group_by_problem
    from thinkfast.eval.grading import answer_key

    settings = EvalSettings(n_boot=10, max_subsets=3)  # sampled subsets: the seeds must match too
    rows = rows_of(PROBLEMS)
    run = evaluate_run(rows, Task(), "toy", "toy.jsonl", settings)
    problems = group_by_problem(rows, "reward", "toy.jsonl")
    groups = [M.group_answers(p.preds, key=answer_key, same=Task.same_answer) for p in problems]
    curve = fixed_majority_curve(problems, groups, 4, settings)
    assert len(curve) == 4
    for e in run["metrics"]["majority"]:
        assert curve[e["k"] - 1] == pytest.approx(e["mean"])
