"""Training forward+backward of the discrete (Llamba) mixer on CPU, one scan path against another.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/mixer_paths.py --json mixer_paths.json

Paths (``THINKFAST_SCAN_BACKEND`` values where there is one):

  reference     ``ssd_sequential``: the per-step recurrence, one token at a time.
  chunked       ``ssd_chunked`` on (x, log alpha): what runs on CPU (and on CUDA without mamba_ssm).
  kernel-form   ``discrete_as_continuous`` then ``chunk_scan``'s torch path: the (x / dt, dt, A = -1)
                rewrite that the mamba_ssm kernel receives, computed in PyTorch -- its cost on CPU
                and its distance from the chunked path's outputs.

Each (shape, path) runs in a fresh subprocess: the mixer and its input are built, ``ru_maxrss`` is
read, one forward+backward runs (a fixed random projection of the output as the loss) and
``ru_maxrss`` is read again; the growth is that step's peak memory. Then ``--repeat`` more steps
are timed and the median is kept. Ratios are against ``chunked`` within this one run. The output
of each path is compared with the chunked path's (max abs difference over the mixer's output).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {
    # the demo student's mixer: d_model 128, 4 heads of 32, state 32, batch 4 x 512 tokens
    "demo": dict(batch=4, seq=512, d_model=128, heads=4, head_dim=32, d_state=32, chunk=64),
    # SmolLM2-135M's width: d_model 576, 9 heads of 64, state 64, batch 2 x 2048 tokens
    "bigger": dict(batch=2, seq=2048, d_model=576, heads=9, head_dim=64, d_state=64, chunk=64),
}
PATHS = ("reference", "chunked", "kernel-form")


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(shape: str, path: str, repeat: int, threads: int) -> dict:
    import torch

    from thinkfast.config import ModelConfig
    from thinkfast.models.mamba2 import build_mixer
    from thinkfast.models.ssd import chunk_scan, discrete_as_continuous

    torch.set_num_threads(threads)
    s = SHAPES[shape]
    cfg = ModelConfig(vocab_size=64, d_model=s["d_model"], n_layers=1, n_heads=s["heads"], n_kv_heads=s["heads"],
                      d_ff=2 * s["d_model"], max_seq_len=s["seq"], layer_pattern="M",
                      mamba=dict(kind="discrete", head_dim=s["head_dim"], d_state=s["d_state"], chunk_size=s["chunk"]))
    torch.manual_seed(0)
    mixer = build_mixer(cfg)
    if path == "kernel-form":
        def kernel_form(x, log_a, Bm, Cm, init):
            x_in, dt, A = discrete_as_continuous(x, log_a)
            return chunk_scan(x_in, dt, A, Bm, Cm, chunk_size=mixer.chunk_size, initial_state=init, backend="torch")
        mixer._chunk_scan = kernel_form
    g = torch.Generator().manual_seed(1)
    u = torch.randn(s["batch"], s["seq"], s["d_model"], generator=g)
    proj = torch.randn(s["batch"], s["seq"], s["d_model"], generator=g)

    def step() -> torch.Tensor:
        inp = u.clone().requires_grad_(True)
        y = mixer(inp)
        (y * proj).sum().backward()
        mixer.zero_grad(set_to_none=True)
        return y.detach()

    base = maxrss()
    y = step()
    peak = maxrss()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out_file = os.environ.get("MIXER_PATHS_OUT")
    if out_file:
        torch.save(y, out_file)
    return {"shape": shape, "path": path, "step_s": statistics.median(times), "peak_growth_mb": (peak - base) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--repeat", type=int, default=3, help="timed steps per (shape, path); the median is kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=2, metavar=("SHAPE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.repeat, args.threads)))
        return

    import tempfile

    import torch

    rows, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            for path in args.paths:
                env = dict(os.environ, MIXER_PATHS_OUT=os.path.join(tmp, f"{shape}-{path}.pt"),
                           THINKFAST_SCAN_BACKEND="reference" if path == "reference" else "torch")
                res = subprocess.run([sys.executable, __file__, "--child", shape, path, "--repeat", str(args.repeat),
                                      "--threads", str(args.threads)], env=env, capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"{shape} / {path} failed:\n{res.stderr}")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                outputs[shape, path] = torch.load(env["MIXER_PATHS_OUT"])
                print(f"{shape:7s} {path:12s} {rows[-1]['step_s']:.3f} s  {rows[-1]['peak_growth_mb']:.0f} MB", flush=True)
    base = {r["shape"]: r for r in rows if r["path"] == "chunked"}
    print("\n| shape | path | fwd+bwd (s) | peak growth (MB) | time vs chunked | memory vs chunked | max abs diff vs chunked |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b = base.get(r["shape"])
        if b is not None:
            r["time_vs_chunked"] = r["step_s"] / b["step_s"]
            r["memory_vs_chunked"] = r["peak_growth_mb"] / max(b["peak_growth_mb"], 1e-9)
            r["max_abs_diff_vs_chunked"] = float((outputs[r["shape"], r["path"]] - outputs[r["shape"], "chunked"]).abs().max())
        cells = [f"{r[k]:.2f}x" if k in r else "-" for k in ("time_vs_chunked", "memory_vs_chunked")]
        diff = f"{r['max_abs_diff_vs_chunked']:.1e}" if "max_abs_diff_vs_chunked" in r else "-"
        print(f"| {r['shape']} | {r['path']} | {r['step_s']:.3f} | {r['peak_growth_mb']:.0f} | {cells[0]} | {cells[1]} | {diff} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shapes": {k: SHAPES[k] for k in args.shapes}, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
