"""Decode speed of a Llamba student with a wider state or a longer conv, against the teacher and the demo's Llamba.

Untrained students built from the shipped demo teacher (speed does not depend on training), 8
prompts of 64 tokens x 32 samples = 256 rows (the demo's test sampling shape), greedy with no EOS
so every row decodes ``--gen`` tokens, one thread; rounds alternate the models and the median is
reported:

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/llamba_state_speed.py --d-state 32 64
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/llamba_state_speed.py --d-state 32 --conv-kernel 4 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib.resources import files

import torch

from thinkfast.checkpoint import load_pretrained
from thinkfast.convert.from_attention import student_from_teacher
from thinkfast.demo import DemoConfig
from thinkfast.inference import engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-state", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--conv-kernel", type=int, nargs="+", default=[4], help="mamba.conv_kernel values")
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher, _ = load_pretrained(str(files("thinkfast") / "assets" / "demo_teacher"))
    bias = DemoConfig().llamba_decay_bias
    models = {"teacher": teacher.eval()}
    for n in args.d_state:
        for k in args.conv_kernel:
            name = f"llamba d_state={n}" + (f" conv={k}" if len(args.conv_kernel) > 1 else "")
            models[name] = student_from_teacher(
                teacher, 0.0, "discrete", mamba={"decay_bias": bias, "d_state": n, "conv_kernel": k}).eval()
    prompts = torch.randint(4, teacher.config.vocab_size, (8, 64), generator=torch.Generator().manual_seed(0)).tolist()

    def run(model, new: int) -> None:
        engine.generate(model, prompts, engine.SamplingParams(n=32, temperature=0, max_new_tokens=new, eos_token_ids=[]))

    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for k, m in models.items():
                t = time.perf_counter()
                run(m, 1)  # the prefill, subtracted
                t1 = time.perf_counter() - t
                t = time.perf_counter()
                run(m, args.gen + 1)
                times[k].append(time.perf_counter() - t - t1)
    rows = 256 * args.gen
    base = rows / statistics.median(times["teacher"])
    for k, ts in times.items():
        tps = rows / statistics.median(ts)
        print(f"{k:28s} {tps:8.0f} decode tokens/s  {tps / base:5.2f}x the teacher  (rounds: "
              + ", ".join(f"{rows / x:.0f}" for x in ts) + ")")


if __name__ == "__main__":
    main()
