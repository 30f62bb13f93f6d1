"""Build the hybrids named by the layers.json files (duplicates skipped), measure them.
   [PROMPT=plain|fewshot] python benchmarks/layer_selection/study.py R TEACHER KD_STEPS LIMIT N MAX_NEW"""
import json
import os
import subprocess
import sys

R, T, KD, LIMIT, N, MAXNEW = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")


def sh(*cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


builds, notes = {}, []
for keep in ("25", "50"):
    seen = {}
    for m in ("uniform", "loo", "klg"):
        doc = json.load(open(f"{R}/{m}_{keep}.json"))
        p = doc["pattern"]
        if p in seen:
            notes.append(f"{m} {keep}% chose {doc['layers']} ({p}), the same as {seen[p]}: not built again")
            builds[f"{m}_{keep}"] = {**builds[seen[p]], "own": False, "same_as": seen[p]}
            continue
        seen[p] = f"{m}_{keep}"
        builds[f"{m}_{keep}"] = {"layers": doc["layers"], "pattern": p, "dir": f"{R}/hybrids/{m}_{keep}",
                                 "json": f"{R}/{m}_{keep}.json", "own": True}
for n in notes:
    print("note:", n, flush=True)
for name, b in builds.items():
    if b.get("own"):
        sh("python", "-m", "thinkfast.cli", "distill", "--config", "benchmarks/layer_selection/hybrid.yaml", f"out_dir={b['dir']}",
           f"teacher={T}", f"tokenizer={os.environ.get('TOK', 'runs/demo/tokenizer')}", f"data.train={os.environ.get('DATA', 'runs/demo/data')}/train.jsonl", f"student.keep={b['json']}", f"train.steps={KD}")
own = {k: b for k, b in builds.items() if b.get("own")}
sh("python", "benchmarks/layer_selection/measure.py", T, R, *[f"{k}={b['dir']}/model" for k, b in own.items()])
models = {k: f"{b['dir']}/model" for k, b in own.items()}
models["teacher"] = T
for name, d in models.items():
    common = ["--model", d, "--task", "synthetic", "--data", os.environ.get("DATA", "runs/demo/data") + "/test.jsonl", "--limit", LIMIT,
              "--prompt-style", os.environ.get("PROMPT", "plain"), "--max-new-tokens", MAXNEW, "--batch-problems", "8", "--threads", "1"]
    sh("python", "-m", "thinkfast.cli", "sample", *common, "--n", N, "--temperature", "1.0",
       "--out", f"{R}/samples/{name}_t1.jsonl")
    sh("python", "-m", "thinkfast.cli", "sample", *common, "--n", "1", "--temperature", "0",
       "--out", f"{R}/samples/{name}_greedy.jsonl")
sh("python", "-m", "thinkfast.cli", "evaluate", "--out", f"{R}/eval_t1.json", *[f"{R}/samples/{k}_t1.jsonl" for k in models])
sh("python", "-m", "thinkfast.cli", "evaluate", "--out", f"{R}/eval_greedy.json",
   *[f"{R}/samples/{k}_greedy.jsonl" for k in models])
json.dump({"builds": builds, "notes": notes}, open(f"{R}/builds.json", "w"), indent=2)
