"""How much int8 weight-only quantization (``thinkfast.inference.quant``) changes a model's outputs.

Against the same model in fp32, on held-out text:

* ``kl``: mean KL(fp32 || int8) per token (nats), teacher-forced;
* ``argmax_agreement``: teacher-forced, the fraction of positions where both pick the same token;
* ``greedy_match`` / ``greedy_prefix``: free-running greedy decoding of ``--gen`` tokens from the
  same prompts, the fraction of positions with the same token, and the mean share of the tokens
  before the first difference.

Models: (a) the demo teacher (``thinkfast/assets/demo_teacher``) on the demo task's test problems,
laid out as it was trained (``demo.config.TASK_FORMAT``); (b) no pretrained Llama is available
offline (no weights on this disk, no hub access), so the nearest measurable proxy: a
SmolLM2-135M-shaped Llama with random (seeded) weights on GSM8K test text as UTF-8 byte ids.
(b) says nothing about a trained model's sensitivity; it checks the kernels at full size.

And the demo teacher's accuracy on ``--problems`` test problems sampled in fp32 and int8, greedy
and at ``--temperature`` (``--n`` samples each), through ``open_backend`` / ``run_sampling`` /
``grade_rows`` as ``thinkfast sample --dtype int8`` and ``thinkfast grade`` run them::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/quant_quality.py --json quant_quality.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from thinkfast.checkpoint import load_pretrained
from thinkfast.inference.engine import SamplingParams, generate
from thinkfast.inference.quant import quantize_for_inference

DEMO_TEACHER = Path(__file__).resolve().parents[1] / "src/thinkfast/assets/demo_teacher"
GSM8K = Path("/work/shared/data/gsm8k_test.jsonl")


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits of P (fp32) and Q (int8) -> (...) KL(P || Q) in nats."""
    lp, lq = F.log_softmax(p_logits.float(), -1), F.log_softmax(q_logits.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@torch.inference_mode()
def teacher_forced(ref, quant, seqs: Sequence[list[int]], batch: int = 8) -> dict[str, float]:
    """Mean KL(ref || quant) and argmax agreement over every position of ``seqs`` (unpadded:
    each batch holds sequences cut to the batch's shortest length, so no padding is scored)."""
    kl = agree = count = 0.0
    for i in range(0, len(seqs), batch):
        chunk = seqs[i: i + batch]
        L = min(len(s) for s in chunk)
        ids = torch.tensor([s[:L] for s in chunk])  # (B, L)
        a, b = ref(ids).logits, quant(ids).logits  # (B, L, V)
        kl += float(kl_rows(a, b).sum())
        agree += float((a.argmax(-1) == b.argmax(-1)).sum())
        count += ids.numel()
    return {"kl": kl / count, "argmax_agreement": agree / count, "tokens": int(count)}


def free_running(ref, quant, prompts: Sequence[list[int]], gen: int) -> dict[str, float]:
    """Greedy ``gen`` tokens from each prompt with both models: position-wise match and the mean
    share of tokens before the first difference."""
    sp = SamplingParams(temperature=0, max_new_tokens=gen, eos_token_ids=[])
    ra = [o.samples[0].token_ids for o in generate(ref, list(prompts), sp)]
    rb = [o.samples[0].token_ids for o in generate(quant, list(prompts), sp)]
    match = prefix = 0.0
    for x, y in zip(ra, rb):
        same = [int(u == v) for u, v in zip(x, y)]
        match += sum(same) / gen
        k = next((j for j, s in enumerate(same) if not s), len(same))
        prefix += k / gen
    return {"greedy_match": match / len(ra), "greedy_prefix": prefix / len(ra), "prompts": len(ra), "gen": gen}


def demo_texts(n: int) -> tuple[list[list[int]], list[list[int]], Any]:
    """Token ids of ``n`` demo test problems as trained (question + solution), and their prompts."""
    from thinkfast.demo.config import TASK_FORMAT, demo_task

    _, tok = load_pretrained(str(DEMO_TEACHER))
    task = demo_task()
    exs = task.load("test", limit=n)
    full, prompts = [], []
    for ex in exs:
        p = TASK_FORMAT["prompt_template"].format(question=ex.question)
        r = TASK_FORMAT["response_template"].format(answer=ex.gold)
        full.append(list(tok(p + r, add_special_tokens=False)["input_ids"]))
        prompts.append(list(tok(p, add_special_tokens=False)["input_ids"]))
    return full, prompts, tok


def gsm8k_bytes(n: int, max_len: int) -> list[list[int]]:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:n]]
    return [list((r["question"] + "\n" + r["answer"]).encode())[:max_len] for r in rows]


def demo_accuracy(problems: int, temperature: float, n: int, max_new_tokens: int) -> dict[str, Any]:
    """Accuracy of the demo teacher sampled in fp32 and int8, greedy and at ``temperature``."""
    from thinkfast.demo.config import TASK_FORMAT, demo_task
    from thinkfast.eval.grading import grade_rows
    from thinkfast.eval.io import read_jsonl
    from thinkfast.eval.sampling import SampleSettings, encode_prompts, run_sampling
    from thinkfast.inference.backends import open_backend

    task = demo_task()
    exs = task.load("test", limit=problems)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for dtype in ("float32", "int8"):
            backend = open_backend("thinkfast", str(DEMO_TEACHER), device="cpu", dtype=dtype)
            prompts = encode_prompts(task, exs, backend.tokenizer, "fewshot", add_special_tokens=TASK_FORMAT["add_bos"])
            for t, k in ((0.0, 1), (temperature, n)):
                s = SampleSettings(task=task.name, model="demo_teacher", n=k, temperature=t,
                                   max_new_tokens=max_new_tokens, seed=0, prompt_style="fewshot", dtype=dtype)
                path = Path(d) / f"{dtype}_T{t}.jsonl"
                t0 = time.perf_counter()
                run_sampling(exs, prompts, backend.make_generate_fn(s, task.stop), path, s, batch_problems=10,
                             context_len=backend.context_len)
                rows = grade_rows(task, read_jsonl(path), str(path))
                acc = sum(bool(r["correct"]) for r in rows) / len(rows)
                key = "greedy" if t == 0 else f"T{t}"
                out.setdefault(key, {})[dtype] = {"accuracy": acc, "samples": len(rows),
                                                  "seconds": round(time.perf_counter() - t0, 1)}
                # the same problems, same seeds: how many samples came out word for word the same
                out[key].setdefault("_texts", {})[dtype] = [r["completion"] for r in rows]
    for key, v in out.items():
        a, b = v.pop("_texts").values()
        v["identical_completions"] = sum(x == y for x, y in zip(a, b)) / len(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", type=int, default=200, help="demo test problems scored teacher-forced")
    ap.add_argument("--prompts", type=int, default=32, help="prompts decoded free-running")
    ap.add_argument("--gen", type=int, default=64, help="free-running greedy tokens")
    ap.add_argument("--proxy-texts", type=int, default=16)
    ap.add_argument("--proxy-len", type=int, default=256)
    ap.add_argument("--proxy-prompts", type=int, default=4)
    ap.add_argument("--problems", type=int, default=50, help="demo test problems for the accuracy")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--n", type=int, default=4, help="samples per problem at --temperature")
    ap.add_argument("--max-new-tokens", type=int, default=400)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: demo, proxy, accuracy")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    skip = set(filter(None, a.skip.split(",")))
    report: dict[str, Any] = {"settings": vars(a)}

    if "demo" not in skip:
        ref, _ = load_pretrained(str(DEMO_TEACHER))
        quant = quantize_for_inference(copy.deepcopy(ref), "int8")
        full, prompts, _ = demo_texts(a.texts)
        r = teacher_forced(ref.eval(), quant, full)
        r.update(free_running(ref, quant, prompts[: a.prompts], a.gen))
        report["demo_teacher"] = r
        print("demo teacher:", json.dumps(r), flush=True)

    if "proxy" not in skip:
        from thinkfast.config import ModelConfig
        from thinkfast.models.lm import LanguageModel

        torch.manual_seed(0)
        ref = LanguageModel(ModelConfig.from_name("smollm2-135m")).eval()
        quant = quantize_for_inference(copy.deepcopy(ref), "int8")
        seqs = gsm8k_bytes(a.proxy_texts, a.proxy_len)
        r = teacher_forced(ref, quant, seqs, batch=4)
        r.update(free_running(ref, quant, [s[:32] for s in seqs[: a.proxy_prompts]], a.gen))
        r["what"] = "PROXY: random-init SmolLM2-135M-shaped Llama, GSM8K test text as byte ids (no pretrained Llama offline)"
        report["proxy_random_smollm2_135m"] = r
        print("proxy (random-init SmolLM2-135M shape, GSM8K bytes):", json.dumps(r), flush=True)

    if "accuracy" not in skip:
        r = demo_accuracy(a.problems, a.temperature, a.n, a.max_new_tokens)
        report["demo_accuracy"] = r
        print("demo accuracy:", json.dumps(r), flush=True)

    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
