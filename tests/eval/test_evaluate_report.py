"""``thinkfast evaluate`` and ``thinkfast report`` end to end on synthetic sample files."""

from __future__ import annotations

import json
import random
from math import comb

import pytest

from thinkfast.cli import main
from thinkfast.eval.evaluation import EvalSettings, evaluate_run
from thinkfast.eval.io import read_json
from thinkfast.eval.tasks.base import get_task

N = 4


def _write_run(path, p_correct, seconds_per_call, seed, rewards=True):
    """A gsm8k-style samples file: problem i has gold i; wrong answers are i + 1 (written with a
    thousands separator sometimes, so grouping must go by value, not string)."""
    rng = random.Random(seed)
    rows = []
    for pid in range(12):
        for i in range(N):
            ok = rng.random() < p_correct
            ans = str(1000 + pid) if ok else "1,%03d" % (pid + 1)
            row = {"task": "gsm8k", "model": path.stem, "problem_id": str(pid), "sample_index": i,
                   "question": f"q{pid}", "gold": f"#### {1000 + pid}", "completion": f"so #### {ans}",
                   "prefill_s": 0.1 * seconds_per_call, "decode_s": seconds_per_call, "batch_problems": 1,
                   "batch_rows": N, "num_tokens": 5, "hardware": "cpu: synthetic"}
            if rewards:
                row["reward"] = (0.8 if ok else 0.3) + 0.1 * rng.random()
            rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_evaluate_run_groups_by_value_and_scores_rewards(tmp_path):
    rows = _write_run(tmp_path / "a.jsonl", 0.5, 1.0, seed=0)
    run = evaluate_run(rows, get_task("gsm8k"), "a", "a.jsonl", EvalSettings(n_boot=200))
    assert run["ks"] == [1, 2, 4] and run["problems"] == 12 and run["has_rewards"]
    m = run["metrics"]
    # at k=1 every method is the per-sample accuracy
    acc = sum(r["completion"].endswith(str(1000 + int(r["problem_id"]))) for r in rows) / len(rows)
    for method in ("coverage", "majority", "best_of_n", "weighted_best_of_n"):
        assert m[method][0]["mean"] == pytest.approx(acc)
        assert all(e["lo"] <= e["mean"] <= e["hi"] for e in m[method])
    # rewards separate right from wrong perfectly here, so Best-of-N@n equals coverage@n
    assert m["best_of_n"][-1]["mean"] == pytest.approx(m["coverage"][-1]["mean"])
    # the per-problem values every mean comes from are kept, one list per method per k
    assert run["problem_ids"] == [str(i) for i in range(12)]
    for method, entries in m.items():
        assert len(run["per_problem"][method]) == len(run["ks"])
        for e, values in zip(entries, run["per_problem"][method]):
            assert len(values) == 12 and sum(values) / 12 == pytest.approx(e["mean"])
    # seconds: prefill 0.1 + k * 1.0 / 4 per problem
    assert [e["seconds"] for e in m["majority"]] == pytest.approx([0.1 + k / 4 for k in (1, 2, 4)])


def test_extra_ks_add_points_and_leave_the_grid_alone(tmp_path):
    rows = _write_run(tmp_path / "a.jsonl", 0.5, 1.0, seed=1)
    task, settings = get_task("gsm8k"), EvalSettings(n_boot=50)
    base = evaluate_run(rows, task, "a", "a.jsonl", settings)
    more = evaluate_run(rows, task, "a", "a.jsonl", settings, extra_ks=[3, 0, 9, 2])  # 0 and 9 > n are dropped
    assert more["ks"] == [1, 2, 3, 4]
    for method, entries in more["metrics"].items():
        by_k = {e["k"]: e for e in entries}
        assert [by_k[k]["mean"] for k in base["ks"]] == [e["mean"] for e in base["metrics"][method]]
    # coverage@3 is the unbiased pass@k of each problem's 4 samples, averaged
    per = {}
    for r in rows:
        per.setdefault(r["problem_id"], []).append(r["completion"].endswith(str(1000 + int(r["problem_id"]))))
    want = sum(1 - comb(4 - sum(c), 3) / comb(4, 3) for c in per.values()) / len(per)
    assert {e["k"]: e["mean"] for e in more["metrics"]["coverage"]}[3] == pytest.approx(want)


def test_evaluate_and_report_cli(tmp_path):
    _write_run(tmp_path / "weak.jsonl", 0.3, 1.0, seed=1)
    _write_run(tmp_path / "strong.jsonl", 0.8, 4.0, seed=2, rewards=False)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(tmp_path / "weak.jsonl"), str(tmp_path / "strong.jsonl"),
                 "--out", str(out), "--n-boot", "100"]) == 0
    doc = read_json(out)
    assert [r["name"] for r in doc["runs"]] == ["weak", "strong"]
    assert "best_of_n" in doc["runs"][0]["metrics"] and "best_of_n" not in doc["runs"][1]["metrics"]
    front = doc["pareto"]["gsm8k"]["accuracy"]
    assert front and all(a["seconds"] < b["seconds"] and a["value"] < b["value"] for a, b in zip(front, front[1:]))

    report_dir = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report_dir)]) == 0
    md = (report_dir / "report.md").read_text()
    for png in ("coverage_vs_k_gsm8k.png", "accuracy_vs_k_gsm8k.png", "accuracy_vs_seconds_gsm8k.png"):
        assert f"({png})" in md
        assert (report_dir / png).read_bytes()[:4] == b"\x89PNG"
    assert "Pareto front" in md and "| k |" in md


def test_evaluate_reports_bad_rows(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "gsm8k", "problem_id": "0", "gold": "#### 1", "completion": "1"}\n[1, 2]\n')
    out = tmp_path / "m.json"
    assert main(["evaluate", str(bad), "--out", str(out)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
