"""KL and next-token agreement of each hybrid against the teacher on held-out text (test.jsonl
in the demo's layout), and the per-layer score plot.   python benchmarks/layer_selection/measure.py TEACHER NAME=DIR ..."""
import json
import os
import sys

import torch

from thinkfast.checkpoint import load_model, load_tokenizer
from thinkfast.data.dataset import DataConfig, load_data
from thinkfast.distill.metrics import compare_to_teacher

torch.set_num_threads(1)
teacher_dir, R, pairs = sys.argv[1], sys.argv[2], [a.split("=", 1) for a in sys.argv[3:]]
teacher = load_model(teacher_dir).eval()
tok = load_tokenizer(os.environ.get("TOK", "runs/demo/tokenizer"))
cfg = DataConfig(train=os.environ.get("DATA", "runs/demo/data") + "/test.jsonl", eval_fraction=0.0, prompt_template="Question: {question}\nAnswer:",
                 response_template=" {answer}\n\n", add_bos=False, add_eos=False, loss_on="response", seq_len=512,
                 pack=False)
blocks = load_data(cfg, tok, teacher.config.vocab_size).train
out = {}
for name, d in pairs:
    m = compare_to_teacher(load_model(d).eval(), teacher, blocks)
    out[name] = m
    print(f"{name:>16}: KL {m['kl']:.4f}  agreement {m['agreement']:.4f}  student CE {m['student_ce']:.4f}  "
          f"teacher CE {m['teacher_ce']:.4f}  tokens {m['tokens']}", flush=True)
json.dump(out, open(f"{R}/heldout.json", "w"), indent=2)
