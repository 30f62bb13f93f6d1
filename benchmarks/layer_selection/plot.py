"""Per-layer scores of loo and kl-guided (from their layers.json) -> R/scores.png."""
import json
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

R = sys.argv[1] if len(sys.argv) > 1 else "runs/select"
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for ax, (m, label) in zip(axes, [("loo", "loo: KL(teacher || teacher with layer i -> Mamba)"),
                                  ("klg", "kl-guided: KL after KD with only layer i attention")]):
    doc = json.load(open(f"{R}/{m}_50.json"))
    kl = doc["details"]["kl"]
    ax.bar(range(len(kl)), kl, color=["C3" if i in doc["layers"] else "C0" for i in range(len(kl))])
    ax.set_xticks(range(len(kl)))
    ax.set_xlabel("layer")
    ax.set_ylabel("KL (nats / token)")
    ax.set_title(label, fontsize=9)
fig.suptitle("layer scores, the demo teacher (red: kept at 50%)", fontsize=10)
fig.tight_layout()
fig.savefig(f"{R}/scores.png", dpi=120)
