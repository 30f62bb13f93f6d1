"""llama.cpp beside thinkfast and transformers on the same weights: decode tokens/s, one table.

    python benchmarks/vs_llamacpp.py --llamacpp-dir /work/llamacpp/build \
        --model smollm2-135m --batch 1,16,64 --prompt 64 --gen 128 --threads 2 --rounds 3

MODEL is a preset of ``thinkfast.config.MODEL_PRESETS`` (random weights, seeded) or a thinkfast
Llama checkpoint directory. The model is saved once as a thinkfast directory, exported to the
Hugging Face Llama format with ``thinkfast.convert.export`` (the exporter users run), and that
folder is converted to GGUF files (F32, F16, Q8_0 by default) by ``hf_to_gguf`` below, which
writes what llama.cpp's ``convert_hf_to_gguf.py`` writes for a Llama: the same tensor names, the
q/k rows permuted to GGML's rotary layout, 1-D tensors in F32. The vocabulary is a placeholder
of the model's size (the benchmark feeds token ids, never text).

Each round runs, one after another and in a rotated order, every variant as its own process:
llama.cpp's ``llama-batched-bench`` once per GGUF file (all batch sizes in one call; it decodes a
fixed number of tokens, so random weights never stop early at an EOS), thinkfast's engine once
per ``--dtype`` that ``thinkfast bench`` accepts on its fast decode step (and float32 on the
reference step too; greedy, no EOS) and transformers' ``generate`` (greedy, ``min_new_tokens`` =
``max_new_tokens``). The table shows the median over rounds.

Decode tokens/s: llama.cpp's ``S_TG`` (batch * gen / time of the gen decode steps after the
prompt); thinkfast and transformers: batch * (gen - 1) / (T(gen) - T(1)), the rule of
``thinkfast bench`` (``thinkfast.bench.throughput``). llama.cpp decodes the tokens it is given
and samples nothing; the others also pick a token each step (an argmax, small beside a step).

llama.cpp is found with ``--llamacpp-dir`` or ``$LLAMA_CPP_DIR``: a directory holding
``llama-batched-bench`` (or ``bin/llama-batched-bench``). Building it (CPU only) is in
``BUILD_HELP``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

BUILD_HELP = """\
llama.cpp was not found. Build it (CPU only) outside this repository, then pass its build
directory with --llamacpp-dir DIR or set LLAMA_CPP_DIR=DIR:

    pip download --no-binary :all: --no-deps llama-cpp-python     # an sdist vendoring llama.cpp
    tar xzf llama_cpp_python-*.tar.gz
    cmake -S llama_cpp_python-*/vendor/llama.cpp -B llamacpp-build -G Ninja \\
          -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
          -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF
    cmake --build llamacpp-build -j2 --target llama-batched-bench

(or clone https://github.com/ggml-org/llama.cpp and build the same target.) If a Q8_0 run dies
with an illegal instruction on a CPU that reports AMX, configure with -DGGML_NATIVE=OFF and the
instruction sets named (e.g. -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON): that
leaves ggml's AMX kernels out."""

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# thinkfast --dtype -> the GGUF type of the same weight precision (for the "vs llama.cpp" ratio)
MATCHING_GGUF = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "int8": "q8_0"}


# --- HF Llama folder -> GGUF ------------------------------------------------------------------------

_LAYER_NAMES = {  # HF Llama key (after "model.layers.{i}.") -> GGUF name (after "blk.{i}.")
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def gguf_name(hf_key: str) -> str:
    """The GGUF tensor name of a HF Llama key (``KeyError`` for a key GGUF's llama has no place for)."""
    if hf_key in _TOP_NAMES:
        return _TOP_NAMES[hf_key]
    parts = hf_key.split(".", 3)  # model, layers, i, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES[parts[3]]}"
    raise KeyError(f"no GGUF llama tensor for {hf_key!r}")


def rotary_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """q or k rows from HF's rotate-half order to GGML's interleaved (GPT-J) pairs, per head.

    w: (n_heads * head_dim, d_model). HF stores each head's rotary pairs as (i, i + head_dim/2);
    GGML's llama rope rotates (2i, 2i + 1). The same permutation as ``LlamaModel.permute`` in
    llama.cpp's convert_hf_to_gguf.py."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])  # (h, 2, hd/2, d)
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of ``rotary_permute``."""
    return (w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:])  # (h, hd/2, 2, d)
            .swapaxes(1, 2).reshape(w.shape))


def _placeholder_vocab(n: int) -> tuple[list[str], list[int]]:
    """A SentencePiece-style vocabulary of ``n`` tokens: <unk> <s> </s>, the newline byte llama.cpp
    looks up, then numbered pieces. Only its size matters here (ids in, ids out)."""
    import gguf

    if n < 4:
        raise ValueError(f"vocab_size {n} < 4: too small for a GGUF vocabulary")
    tokens = ["<unk>", "<s>", "</s>", "<0x0A>"] + [f"\u2581t{i}" for i in range(4, n)]
    T = gguf.TokenType
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL, T.BYTE] + [T.NORMAL] * (n - 4)
    return tokens, [int(t) for t in types]


def hf_to_gguf(hf_dir: str | os.PathLike, out_path: str | os.PathLike, out_type: str = "f32") -> Path:
    """Convert a HF Llama folder (config.json + model.safetensors, as ``thinkfast export`` writes)
    to one GGUF file of type ``out_type`` (f32, f16, bf16, q8_0; 1-D tensors stay F32).
    Written to a temporary file, then renamed."""
    import gguf
    from safetensors.numpy import load_file

    if out_type not in GGUF_TYPES:
        raise ValueError(f"out_type {out_type!r} not in {GGUF_TYPES}")
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ValueError(f"{hf_dir} is not a Llama folder (model_type {cfg.get('model_type')!r})")
    if cfg.get("rope_scaling") or cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError("rope scaling and biases are not converted (the benchmark's models have none)")
    sd = load_file(str(hf_dir / "model.safetensors"))
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[out_type]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out_type]

    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(hf_dir.name)
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(n_heads)
        w.add_head_count_kv(n_kv)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_vocab_size(cfg["vocab_size"])
        w.add_file_type(ftype)
        tokens, types = _placeholder_vocab(cfg["vocab_size"])
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * len(tokens))
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
        for key in sorted(sd):
            if key.endswith("rotary_emb.inv_freq"):
                continue
            name, data = gguf_name(key), sd[key].astype(np.float32)
            if name.endswith("attn_q.weight"):
                data = rotary_permute(data, n_heads)
            elif name.endswith("attn_k.weight"):
                data = rotary_permute(data, n_kv)
            if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(name, data)
            elif qtype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(name, data.astype(np.float16))
            else:
                w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


# --- llama.cpp ----------------------------------------------------------------------------------


class LlamaCppMissing(RuntimeError):
    pass


def find_batched_bench(llamacpp_dir: Optional[str]) -> Path:
    """llama-batched-bench under ``llamacpp_dir`` (or $LLAMA_CPP_DIR): DIR/, DIR/bin/, DIR/build/bin/."""
    root = llamacpp_dir or os.environ.get("LLAMA_CPP_DIR")
    if not root:
        raise LlamaCppMissing(BUILD_HELP)
    for sub in ("", "bin", "build/bin"):
        exe = Path(root) / sub / "llama-batched-bench"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    raise LlamaCppMissing(f"no llama-batched-bench under {root} (looked in ., bin/, build/bin/).\n\n{BUILD_HELP}")


def llamacpp_version(exe: Path) -> str:
    """What ``--version`` prints (``version: N (commit)``), '' when it prints nothing."""
    try:
        p = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("version:")]
    return lines[0].split(":", 1)[1].strip() if lines else ""


def parse_batched_bench(text: str) -> list[dict[str, float]]:
    """Rows of llama-batched-bench's output, Markdown table (the default) or ``--output-format
    jsonl``: dicts with pp, tg, pl (batch), t_pp, speed_pp, t_tg, speed_tg (decode tokens/s)."""
    rows = []
    md = ("pp", "tg", "pl", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            r = json.loads(line)
            rows.append({k: float(r[k]) for k in md})
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == len(md):
                try:
                    rows.append(dict(zip(md, map(float, cells))))
                except ValueError:  # the header and the |----| line
                    continue
    return rows


def run_llamacpp(exe: Path, gguf_path: Path, batches: list[int], prompt: int, gen: int, threads: int,
                 timeout: float = 1800) -> dict[int, float]:
    """Decode tokens/s per batch size from one llama-batched-bench run (separate prompts, no
    shared prefix: each of the ``batch`` sequences gets its own prompt, as in the other engines)."""
    ctx = max(batches) * (prompt + gen)
    cmd = [str(exe), "-m", str(gguf_path), "-c", str(ctx), "-b", "2048", "-ub", "512",
           "-npp", str(prompt), "-ntg", str(gen), "-npl", ",".join(map(str, batches)),
           "-t", str(threads), "-tb", str(threads)]  # Markdown: its --output-format jsonl dropped rows here
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    rows = parse_batched_bench(p.stdout + "\n" + p.stderr)
    if p.returncode != 0 or not rows:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"llama-batched-bench failed (rc {p.returncode}):\n{tail}")
    return {int(r["pl"]): r["speed_tg"] for r in rows}


# --- thinkfast and transformers: one process per measurement -------------------------------------


@dataclass
class TorchCase:
    engine: str  # "thinkfast" | "hf"
    model_dir: str  # thinkfast directory (engine thinkfast) or HF Llama folder (engine hf)
    dtype: str
    batch: int
    prompt: int
    gen: int
    threads: int
    seed: int = 0
    decode: str = "fast"  # thinkfast's decode step, as `thinkfast bench --decode`: "fast" | "reference"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_torch(case: TorchCase) -> dict[str, Any]:
    """The rule of thinkfast.bench.throughput: warm-up, T(1), T(gen); decode = T(gen) - T(1)."""
    import torch

    torch.set_num_threads(case.threads)
    g = torch.Generator().manual_seed(case.seed + 1)
    if case.engine == "thinkfast":
        from thinkfast.checkpoint import load_model
        from thinkfast.inference.engine import SamplingParams, generate
        from thinkfast.inference.quant import quantize_for_inference

        model = load_model(case.model_dir).eval()
        fast = case.decode == "fast"
        if fast:
            model.prepare_for_inference()  # q|k|v and gate|up packed, as the sampling backend does
        quantize_for_inference(model, case.dtype)  # a float cast, or int8 weight-only linears
        prompts = torch.randint(0, model.config.vocab_size, (case.batch, case.prompt), generator=g).tolist()

        def run(n):
            generate(model, prompts, SamplingParams(temperature=0, max_new_tokens=n, eos_token_ids=[], fast=fast))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(case.model_dir, dtype=getattr(torch, case.dtype)).eval()
        ids = torch.randint(0, model.config.vocab_size, (case.batch, case.prompt), generator=g)
        mask = torch.ones_like(ids)

        def run(n):
            with torch.inference_mode():
                model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=None, pad_token_id=0, use_cache=True)
    run(2)  # warm-up
    t1 = _timed(lambda: run(1))
    tg = _timed(lambda: run(case.gen))
    return dict(asdict(case), prefill_s=t1, total_s=tg,
                decode_tokens_per_s=case.batch * (case.gen - 1) / max(tg - t1, 1e-9))


def run_torch(case: TorchCase, timeout: float = 1800) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(case.threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(asdict(case))],
                       capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{case.engine} {case.dtype} batch {case.batch} failed:\n{p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["decode_tokens_per_s"]


# --- the run ------------------------------------------------------------------------------------


def bench_choices(dest: str) -> list[str]:
    """The choices of a ``thinkfast bench`` option (``dtype``, ``decode``): what thinkfast's engine
    runs in this checkout; [] when the option is not there."""
    from thinkfast.commands import bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    acts = [a for a in p._actions if a.dest == dest]
    return list(acts[0].choices) if acts else []


def prepare(model: str, work: Path, seed: int, gguf_types: list[str]) -> tuple[Path, Path, dict[str, Path]]:
    """(thinkfast dir, HF Llama folder, {gguf type: file}) of ``model`` under ``work``."""
    import torch

    from thinkfast.checkpoint import is_thinkfast_dir, load_model, save_model
    from thinkfast.config import MODEL_PRESETS, ModelConfig
    from thinkfast.convert.export import export_model
    from thinkfast.models.lm import LanguageModel

    if model in MODEL_PRESETS:
        cfg = ModelConfig.from_name(model)
        torch.manual_seed(seed)
        lm = LanguageModel(cfg.with_pattern("A" * cfg.n_layers)).eval()
        tf_dir = save_model(lm, work / "thinkfast")
    elif is_thinkfast_dir(model):
        lm, tf_dir = load_model(model), Path(model)
    else:
        raise SystemExit(f"{model}: neither a preset ({', '.join(sorted(MODEL_PRESETS))}) nor a thinkfast directory")
    if lm.config.kind != "llama":
        raise SystemExit(f"{model} is a {lm.config.kind}: llama.cpp runs the Llama (all-attention) models here")
    hf_dir = export_model(lm, work / "hf", dtype=torch.float32).out_dir
    ggufs = {t: hf_to_gguf(hf_dir, work / f"model-{t}.gguf", t) for t in gguf_types}
    return Path(tf_dir), hf_dir, ggufs


def table(results: dict[str, dict[int, list[float]]], batches: list[int], ref: str) -> str:
    """Markdown: median tokens/s per variant and batch, then the ratio to ``ref`` per batch."""
    med = {v: {b: statistics.median(x) for b, x in per.items() if x} for v, per in results.items()}
    head = "| engine | " + " | ".join(f"batch {b} tok/s" for b in batches) + " | " + \
        " | ".join(f"b{b} / {ref}" for b in batches) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(batches))]
    for v, per in med.items():
        tps = [f"{per[b]:.0f}" if b in per else "-" for b in batches]
        rat = [f"{per[b] / med[ref][b]:.2f}" if b in per and b in med.get(ref, {}) else "-" for b in batches]
        lines.append(f"| {v} | " + " | ".join(tps) + " | " + " | ".join(rat) + " |")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="a thinkfast preset (random weights) or a thinkfast Llama directory")
    p.add_argument("--llamacpp-dir", default=None, help="llama.cpp build directory (default $LLAMA_CPP_DIR)")
    p.add_argument("--batch", default="1,16,64", help="comma-separated batch sizes")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gguf-types", default="f32,f16,q8_0", help=f"of {','.join(GGUF_TYPES)}")
    p.add_argument("--dtypes", default="auto", help="thinkfast dtypes; auto: every --dtype thinkfast bench accepts")
    p.add_argument("--no-hf", action="store_true", help="leave transformers out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="keep the converted models here (default: a temporary directory)")
    p.add_argument("--json", dest="json_out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.batch = [int(x) for x in a.batch.split(",")]
    a.gguf_types = a.gguf_types.split(",")
    bad = [t for t in a.gguf_types if t not in GGUF_TYPES]
    if bad or min(a.batch) < 1 or min(a.prompt, a.gen - 1, a.threads, a.rounds) < 1:
        p.error(f"bad value: gguf types {bad} (of {GGUF_TYPES}); batch, prompt, threads, rounds >= 1, gen >= 2")
    return a


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(measure_torch(TorchCase(**json.loads(a.worker)))))
        return 0
    try:
        exe = find_batched_bench(a.llamacpp_dir)
    except LlamaCppMissing as e:
        print(e, file=sys.stderr)
        return 2
    dtypes = bench_choices("dtype") if a.dtypes == "auto" else a.dtypes.split(",")
    dtypes = [d for d in dtypes if d != "float16"]  # fp16 matmuls on CPU are emulated: not a decode dtype here
    # every dtype on the fast decode step, and float32 on the reference one too when both exist
    tf_variants = [(d, "fast") for d in dtypes]
    if "reference" in bench_choices("decode") and "float32" in dtypes:
        tf_variants.insert(0, ("float32", "reference"))
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="vs_llamacpp-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tf_dir, hf_dir, ggufs = prepare(a.model, work, a.seed, a.gguf_types)
        variants: list[tuple[str, Any]] = [(f"llama.cpp {t.upper()}", t) for t in ggufs]
        variants += [(f"thinkfast {d} {dec}", (d, dec)) for d, dec in tf_variants]
        if not a.no_hf:
            variants.append(("transformers float32", ("float32", "")))
        results: dict[str, dict[int, list[float]]] = {v: {b: [] for b in a.batch} for v, _ in variants}
        version = llamacpp_version(exe)
        print(f"llama.cpp {version}; model {a.model}; prompt {a.prompt}, gen {a.gen}, threads {a.threads}", flush=True)
        for r in range(a.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]  # rotate: no variant always first
            for name, v in order:
                if name.startswith("llama.cpp"):
                    tps = run_llamacpp(exe, ggufs[v], a.batch, a.prompt, a.gen, a.threads)
                else:
                    eng = "hf" if name.startswith("transformers") else "thinkfast"
                    tps = {b: run_torch(TorchCase(eng, str(hf_dir if eng == "hf" else tf_dir), v[0], b, a.prompt,
                                                  a.gen, a.threads, a.seed, v[1] or "fast")) for b in a.batch}
                for b, x in tps.items():
                    results[name][b].append(x)
                print(f"round {r + 1} {name:24s} " + "  ".join(f"b{b} {x:8.1f}" for b, x in tps.items()), flush=True)
        ref = "llama.cpp F32" if "f32" in ggufs else variants[0][0]
        print()
        print(table(results, a.batch, ref))
        if a.json_out:
            from thinkfast.bench.throughput import hardware
            from thinkfast.config import atomic_write_text

            atomic_write_text(a.json_out, json.dumps(dict(
                llamacpp_version=version, settings={k: v for k, v in vars(a).items() if k != "worker"},
                hardware=hardware(), tokens_per_s=results), indent=2) + "\n")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
