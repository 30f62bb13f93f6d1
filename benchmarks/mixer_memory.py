"""How long each discrete-Mamba (Llamba) head of a model remembers, on real text: per layer and head, the 10th / 50th /
90th percentile of the decay alpha_t over the tokens of a few test chains ("Question: q\\nAnswer:
cot"), and how many heads have a median alpha of at least 0.95 (a memory of 20+ tokens).

    python benchmarks/mixer_memory.py --model demo_out/llamba/model --data demo_out/data/test.jsonl

alpha_t = exp(-softplus(a_t [+ a_bias])); the README's decay-bias section quotes it.
"""

from __future__ import annotations

import argparse
import json

import torch

from thinkfast.checkpoint import load_model, load_tokenizer
from thinkfast.models.mamba2 import DiscreteMamba2Mixer


@torch.inference_mode()
def head_decays(model, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """{layer: (T, H) alpha_t} for every discrete Mamba layer, on ids (1, T)."""
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.layers):
        mixer = block.mixer
        if not isinstance(mixer, DiscreteMamba2Mixer):
            continue

        def grab(mod, inp, out, i=i, mixer=mixer):
            xbc, _, a = torch.split(out, mixer.splits, dim=-1)
            log_a = mixer._heads(xbc, a)[1]  # (1, T, H); the conv does not touch a
            captured[i] = log_a[0].exp()

        hooks.append(mixer.in_proj.register_forward_hook(grab))
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return captured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="JSONL with question / answer")
    ap.add_argument("--problems", type=int, default=10)
    args = ap.parse_args()
    model, tok = load_model(args.model).eval(), load_tokenizer(args.model)
    with open(args.data) as f:
        rows = [json.loads(line) for line in f if line.strip()][: args.problems]
    per_layer: dict[int, list[torch.Tensor]] = {}
    for r in rows:
        text = "Question: " + r["question"] + "\nAnswer: " + r["answer"]
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        for i, a in head_decays(model, ids).items():
            per_layer.setdefault(i, []).append(a)
    if not per_layer:
        raise SystemExit(f"{args.model} has no discrete Mamba layers")
    long_heads = total = 0
    for i, chunks in sorted(per_layer.items()):
        a = torch.cat(chunks)  # (tokens, H)
        q = torch.quantile(a, torch.tensor([0.1, 0.5, 0.9]), dim=0)  # (3, H)
        long_heads += int((q[1] >= 0.95).sum())
        total += a.shape[1]
        print(f"layer {i}: " + "  ".join(f"h{h} {q[0, h]:.2f}/{q[1, h]:.2f}/{q[2, h]:.2f}" for h in range(a.shape[1])))
    print(f"heads with median alpha >= 0.95: {long_heads} of {total}")


if __name__ == "__main__":
    main()
