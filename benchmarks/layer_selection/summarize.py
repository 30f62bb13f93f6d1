"""The results table (markdown) from heldout.json, eval_t1.json, eval_greedy.json, builds.json."""
import json
import sys

R = sys.argv[1] if len(sys.argv) > 1 else "runs/select"
held = json.load(open(f"{R}/heldout.json"))
b = json.load(open(f"{R}/builds.json"))


def by_name(path):
    return {r["name"].rsplit("_", 1)[0]: r for r in json.load(open(path))["runs"]}


t1, gr = by_name(f"{R}/eval_t1.json"), by_name(f"{R}/eval_greedy.json")
print("| hybrid | methods | attention layers | KL held-out | agreement | greedy acc | coverage@16 (95% CI) |")
print("|---|---|---|---|---|---|---|")
for name in [k for k, v in b["builds"].items() if v.get("own")] + ["teacher"]:
    same = [k for k, v in b["builds"].items() if v["dir"] == b["builds"].get(name, {}).get("dir")] or [name]
    h = held.get(name, {"kl": 0.0, "agreement": 1.0})
    cov = [m for m in t1[name]["metrics"]["coverage"] if m["k"] == 16]
    cov_s = f"{cov[0]['mean']:.2f} ({cov[0]['lo']:.2f}-{cov[0]['hi']:.2f})" if cov else "-"
    layers = b["builds"][name]["layers"] if name in b["builds"] else "all"
    print(f"| {name} | {', '.join(same)} | {layers} | {h['kl']:.4f} | {h['agreement']:.4f} | "
          f"{gr[name]['grading']['accuracy']:.2f} | {cov_s} |")
for n in b["notes"]:
    print("note:", n)
