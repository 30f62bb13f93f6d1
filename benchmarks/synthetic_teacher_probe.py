"""Learnability probe for the synthetic task: can a ~1M-parameter Llama learn it in ~15 minutes
of one CPU thread, landing at greedy accuracy 50-85% with coverage@32 at least 20 points higher?

Throwaway research script (not part of the package API). It trains ``LanguageModel`` with a plain
AdamW loop on packed few-shot-style rows (``Question: q\\nAnswer: cot\\n\\n`` repeated; loss on
the answer tokens only, so every example after the first in a row is a k-shot example), then
evaluates greedy accuracy and coverage / majority at k on test problems with the task's few-shot
prompt. Results go to OUT/result.json (and a checkpoint to OUT/model.pt).

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 python benchmarks/synthetic_teacher_probe.py \\
        --out /tmp/probe/E1 --minutes 15

Re-evaluate a saved run (e.g. at another temperature) with ``--eval-only``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from thinkfast.config import ModelConfig  # noqa: E402
from thinkfast.data import synthetic as syn  # noqa: E402
from thinkfast.data.tokenizer import build_tokenizer  # noqa: E402
from thinkfast.eval.tasks.synthetic import SyntheticTask  # noqa: E402
from thinkfast.models.lm import LanguageModel  # noqa: E402


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# --- data ---------------------------------------------------------------------------------------

class RowPacker:
    """Packs whole examples into rows of at most ``seq_len`` tokens: <bos> ex ex ex <pad>...

    ``per_row`` > 0 caps the examples per row (1 = zero-shot rows only). Returns (ids (B, L),
    loss mask (B, L)) where mask[t] says ids[t] is an answer token; L is the longest row."""

    def __init__(self, tok, cfg: syn.SyntheticConfig, seq_len: int, seed: int, per_row: int = 0):
        self.tok, self.seq_len, self.per_row = tok, seq_len, per_row
        self.stream = syn.iter_problems(cfg, "train", seed)
        self.pending = None
        self.n_problems = 0

    def _encode(self, p: syn.Problem):
        a = self.tok.encode(syn.format_prompt(p.question), add_special_tokens=False)
        b = self.tok.encode(syn.format_completion(p.solution), add_special_tokens=False)
        return a + b, [False] * len(a) + [True] * len(b)

    def row(self):
        ids, mask, n = [self.tok.bos_token_id], [False], 0
        while not (self.per_row and n >= self.per_row):
            if self.pending is None:
                self.pending = self._encode(next(self.stream))
                self.n_problems += 1
            e_ids, e_mask = self.pending
            if len(ids) + len(e_ids) > self.seq_len:
                if n == 0:
                    raise ValueError(f"an example of {len(e_ids)} tokens does not fit in {self.seq_len}")
                break
            ids += e_ids
            mask += e_mask
            n += 1
            self.pending = None
        return ids, mask

    def batch(self, b: int):
        rows = [self.row() for _ in range(b)]
        L = max(len(r[0]) for r in rows)
        pad = self.tok.pad_token_id
        ids = torch.tensor([r[0] + [pad] * (L - len(r[0])) for r in rows])
        mask = torch.tensor([r[1] + [False] * (L - len(r[1])) for r in rows])
        return ids, mask


# --- generation -----------------------------------------------------------------------------------

@torch.inference_mode()
def decode(model, prompts: list[list[int]], n: int, temperature: float, max_new: int, stop_ids: set[int],
           gen: torch.Generator) -> list[list[list[int]]]:
    """Batched incremental decoding with the KV cache. Returns per prompt n token lists (stop
    token excluded)."""
    P = len(prompts)
    Lp = max(len(p) for p in prompts)
    max_new = min(max_new, model.config.max_seq_len - Lp)
    ids = torch.zeros(P, Lp, dtype=torch.long)
    mask = torch.zeros(P, Lp, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, Lp - len(p):] = torch.tensor(p)
        mask[i, Lp - len(p):] = True
    cache = model.allocate_cache(P, Lp + max_new)
    logits = model(ids, attention_mask=None if bool(mask.all()) else mask, cache=cache,
                   logits_to_keep=1).logits[:, -1]
    if n > 1:
        idx = torch.arange(P).repeat_interleave(n)
        cache.select(idx)
        logits = logits.index_select(0, idx)
    R = P * n
    rows = list(range(R))
    out: list[list[int]] = [[] for _ in range(R)]
    done = [False] * R
    stop_t = torch.tensor(sorted(stop_ids))
    for step in range(max_new):
        if temperature == 0:
            tok = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, -1)
            tok = torch.multinomial(probs, 1, generator=gen)[:, 0]
        fin = torch.isin(tok, stop_t).tolist()
        for b, t in enumerate(tok.tolist()):
            r = rows[b]
            if fin[b]:
                done[r] = True
            else:
                out[r].append(t)
        live = [b for b, r in enumerate(rows) if not done[r]]
        if not live or step == max_new - 1:
            break
        if len(live) < len(rows) * 0.8:
            index = torch.tensor(live)
            cache.select(index)
            tok = tok.index_select(0, index)
            rows = [rows[b] for b in live]
        logits = model(tok[:, None], cache=cache).logits[:, -1]
    return [out[i * n:(i + 1) * n] for i in range(P)]


def evaluate(model, tok, task: SyntheticTask, examples, n_greedy: int, n_cov: int, k: int,
             temperature: float, max_new: int, seed: int = 0, greedy_batch: int = 50,
             sample_prompts: int = 8, style: str = "fewshot"):
    model.eval()
    stop_ids = {tok.convert_tokens_to_ids(syn.EXAMPLE_END), tok.eos_token_id}
    gen = torch.Generator().manual_seed(seed)
    res = {}
    t0 = time.time()
    ex_g = examples[:n_greedy]
    prompts = [tok.encode(task.prompt(e, style)) for e in ex_g]
    greedy_ok, lens = [], []
    for s in range(0, len(ex_g), greedy_batch):
        outs = decode(model, prompts[s:s + greedy_batch], 1, 0.0, max_new, stop_ids, gen)
        for e, o in zip(ex_g[s:s + greedy_batch], outs):
            text = tok.decode(o[0], skip_special_tokens=True)
            greedy_ok.append(task.is_correct(task.extract(text), e))
            lens.append(len(o[0]))
    res["greedy"] = sum(greedy_ok) / len(greedy_ok)
    res["greedy_by_steps"] = by_steps(ex_g, greedy_ok)
    res["gen_tokens_mean"] = sum(lens) / len(lens)
    res["prompt_tokens_mean"] = sum(len(p) for p in prompts) / len(prompts)
    res["greedy_s"] = time.time() - t0
    if n_cov and k:
        t0 = time.time()
        ex_c = examples[:n_cov]
        cov, maj, mean_acc = [], [], []
        for s in range(0, len(ex_c), sample_prompts):
            chunk = ex_c[s:s + sample_prompts]
            outs = decode(model, [tok.encode(task.prompt(e, style)) for e in chunk], k, temperature,
                          max_new, stop_ids, gen)
            for e, o in zip(chunk, outs):
                preds = [task.extract(tok.decode(x, skip_special_tokens=True)) for x in o]
                ok = [task.is_correct(p, e) for p in preds]
                cov.append(any(ok))
                mean_acc.append(sum(ok) / len(ok))
                votes = collections.Counter(p for p in preds if p is not None)
                maj.append(bool(votes) and task.is_correct(votes.most_common(1)[0][0], e))
        res.update({
            f"coverage@{k}": sum(cov) / len(cov), f"majority@{k}": sum(maj) / len(maj),
            "sample_acc": sum(mean_acc) / len(mean_acc), "coverage_by_steps": by_steps(ex_c, cov),
            "sample_acc_by_steps": by_steps(ex_c, mean_acc), "temperature": temperature, "k": k,
            "n_cov": len(ex_c), "sample_s": time.time() - t0,
            f"greedy_on_cov_subset": sum(greedy_ok[:len(ex_c)]) / max(1, len(greedy_ok[:len(ex_c)])),
        })
    res["n_greedy"] = len(ex_g)
    model.train()
    return res


def by_steps(examples, vals):
    d = collections.defaultdict(list)
    for e, v in zip(examples, vals):
        d[e.meta["n_steps"]].append(float(v))
    return {str(s): round(sum(v) / len(v), 4) for s, v in sorted(d.items())}


# --- teacher-forced diagnostics -------------------------------------------------------------------

_COL = re.compile(r" (\d) (.) (\d) (.) (\d) = (\d) (\d)")


def cot_spans(sol: str) -> list[tuple[int, int, str]]:
    """Character spans of the chain of thought by role: the restated sentence, the value copied,
    the operand converted, column inputs / outputs, the bound result, the final answer."""
    out, pos = [], 0
    for line in sol.split("\n"):
        if line.startswith("####") or line.startswith("answer ="):
            out.append((pos, pos + len(line), "answer" if line.startswith("####") else "answer_msb"))
            pos += len(line) + 1
            continue
        m = re.match(r"[^.]*\.", line)
        out.append((pos, pos + m.end(), "sentence"))
        e = m.end()
        m2 = re.match(r" \w+ =((?: \d)+)", line[e:])
        op_line = " : " in line
        out.append((pos + e, pos + e + m2.start(1), "name"))
        out.append((pos + e + m2.start(1), pos + e + m2.end(), "value_copy" if op_line else "convert"))
        e += m2.end()
        if op_line:
            m3 = re.match(r" \w+((?: \d)+) :", line[e:])
            out.append((pos + e + m3.start(1), pos + e + m3.end(1), "operand"))
            e3 = e + m3.end()
            end = line.index(" . ", e3)
            for c in _COL.finditer(line[:end], e3):
                out.append((pos + c.start(1) - 1, pos + c.end(5), "col_inputs"))
                out.append((pos + c.start(6) - 1, pos + c.end(6), "col_carry"))
                out.append((pos + c.start(7) - 1, pos + c.end(7), "col_digit"))
            m4 = re.match(r" \. \w+ =", line[end:])
            out.append((pos + end, pos + end + m4.end(), "name"))
            out.append((pos + end + m4.end(), pos + len(line), "result"))
        pos += len(line) + 1
    return out


@torch.inference_mode()
def token_diagnostics(model, tok, task, examples, style: str) -> dict:
    """Teacher-forced next-token accuracy of the answer tokens, by role (see ``cot_spans``)."""
    model.eval()
    acc = collections.defaultdict(list)
    for e in examples:
        prompt = task.prompt(e, style)
        enc = tok(prompt + " " + e.gold, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        pred = model(ids).logits[0].argmax(-1)
        base = len(prompt) + 1
        spans = cot_spans(e.gold)
        for t in range(1, ids.shape[1]):
            a, b = enc["offset_mapping"][t]
            if a < base - 1:
                continue
            c = b - 1 - base
            role = next((r for s0, s1, r in spans if s0 <= c < s1), "other")
            acc[role].append(int(pred[t - 1] == ids[0, t]))
    model.train()
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(acc.items())}


# --- main -----------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=15.0, help="training time budget (eval excluded)")
    ap.add_argument("--tokens", type=float, default=0, help="token budget (0 = time budget only)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=384)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4, help="rows per step")
    ap.add_argument("--per-row", type=int, default=0, help="max examples per row (0 = fill, 1 = zero-shot)")
    ap.add_argument("--eval-style", default="fewshot", choices=["fewshot", "plain"])
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    # task knobs
    ap.add_argument("--min-steps", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=5)
    ap.add_argument("--step-weights", default="", help="comma list, e.g. 1,1,2,2")
    ap.add_argument("--ops", default="add,sub,mul")
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--start-range", default="10,999")
    ap.add_argument("--operand-range", default="10,999")
    ap.add_argument("--backref", type=float, default=0.0)
    ap.add_argument("--no-markers", action="store_true")
    ap.add_argument("--shot-steps", type=int, default=0, help="steps of the few-shot example (0 = default)")
    ap.add_argument("--n-shots", type=int, default=1)
    # eval
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--cov-n", type=int, default=100)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--max-new", type=int, default=600)
    ap.add_argument("--probe-every", type=float, default=4.0, help="minutes between quick greedy probes")
    ap.add_argument("--eval-only", action="store_true", help="load OUT/model.pt and evaluate")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    cfg = syn.SyntheticConfig(
        min_steps=args.min_steps, max_steps=args.max_steps,
        step_weights=[float(x) for x in args.step_weights.split(",")] if args.step_weights else None,
        ops=args.ops.split(","), width=args.width, start_range=ints(args.start_range),
        operand_range=ints(args.operand_range), backref_prob=args.backref, markers=not args.no_markers,
    )
    task = SyntheticTask(cfg, seed=args.seed, n_shots=args.n_shots,
                         shot_steps=args.shot_steps or None)
    tok = build_tokenizer(syn.tokenizer_texts(cfg))
    V = len(tok)
    mcfg = ModelConfig(vocab_size=V, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                       n_kv_heads=args.kv_heads, d_ff=args.d_ff, max_seq_len=args.seq_len)
    torch.manual_seed(args.seed)
    model = LanguageModel(mcfg)
    test = task.load("test", limit=max(args.eval_n, args.cov_n))
    probe_set = test[:50]
    log(f"params {model.num_parameters()} vocab {V} task {cfg.to_dict()}")
    log("shot prompt tokens:", len(tok.encode(task.prompt(test[0], "fewshot"))))

    result = {"args": vars(args), "task": cfg.to_dict(), "model": mcfg.to_dict(),
              "params": model.num_parameters(), "argv": sys.argv}
    if args.eval_only:
        model.load_state_dict(torch.load(out / "model.pt"))
        prev = json.loads((out / "result.json").read_text())
        r = evaluate(model, tok, task, test, args.eval_n, args.cov_n, args.k, args.temp, args.max_new,
                     seed=args.seed, style=args.eval_style)
        r["roles"] = token_diagnostics(model, tok, task, test[:50], args.eval_style)
        prev.setdefault("reevals", []).append({"temp": args.temp, "k": args.k, "style": args.eval_style, **r})
        (out / "result.json").write_text(json.dumps(prev, indent=1))
        log(json.dumps(r))
        return

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.wd)
    packer = RowPacker(tok, cfg, args.seq_len, args.seed, args.per_row)
    budget_s = args.minutes * 60
    train_s, tokens, loss_tokens, step = 0.0, 0, 0, 0
    ema, curve, probes = None, [], []
    next_log, next_probe = 30.0, args.probe_every * 60
    model.train()
    while True:
        progress = max(train_s / budget_s, tokens / args.tokens if args.tokens else 0.0)
        if progress >= 1.0:
            break
        t0 = time.time()
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            lr = args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, mask = packer.batch(args.batch)
        logits = model(ids[:, :-1]).logits
        tgt = ids[:, 1:]
        m = mask[:, 1:]
        loss = F.cross_entropy(logits[m].float(), tgt[m])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += ids.numel()
        loss_tokens += int(m.sum())
        train_s += time.time() - t0
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if train_s >= next_log:
            next_log += 30.0
            curve.append({"step": step, "tokens": tokens, "train_s": round(train_s, 1), "loss": round(ema, 4),
                          "lr": lr})
            log(f"step {step} tok {tokens/1e6:.2f}M ({tokens/train_s:.0f}/s) loss {ema:.4f} lr {lr:.2e} "
                f"problems {packer.n_problems}")
        if train_s >= next_probe:
            next_probe += args.probe_every * 60
            r = evaluate(model, tok, task, probe_set, len(probe_set), 0, 0, 1.0, args.max_new,
                         style=args.eval_style)
            dg = token_diagnostics(model, tok, task, probe_set[:20], args.eval_style)
            probes.append({"step": step, "tokens": tokens, "train_s": round(train_s, 1), "loss": round(ema, 4),
                           "greedy50": r["greedy"], "by_steps": r["greedy_by_steps"], "eval_s": r["greedy_s"],
                           "roles": dg})
            log(f"probe: greedy50 {r['greedy']:.3f} {r['greedy_by_steps']} ({r['greedy_s']:.0f}s) roles {dg}")
    log(f"done: {step} steps {tokens} tokens in {train_s:.0f}s, loss {ema:.4f}")
    torch.save(model.state_dict(), out / "model.pt")
    tok.save_pretrained(out / "tokenizer")
    result.update({"steps": step, "tokens": tokens, "loss_tokens": loss_tokens, "train_s": train_s,
                   "tok_per_s": tokens / train_s, "final_loss_ema": ema, "problems_seen": packer.n_problems,
                   "curve": curve, "probes": probes})
    (out / "result.json").write_text(json.dumps(result, indent=1))
    result["roles"] = token_diagnostics(model, tok, task, test[:50], args.eval_style)
    log("roles", result["roles"])
    r = evaluate(model, tok, task, test, args.eval_n, args.cov_n, args.k, args.temp, args.max_new, seed=args.seed,
                 style=args.eval_style)
    result["eval"] = r
    (out / "result.json").write_text(json.dumps(result, indent=1))
    log("EVAL", json.dumps(r))


if __name__ == "__main__":
    main()
