"""The README's Python API, run as written, in a fresh interpreter: load, forward, generate, save.

A fresh process because the failure this guards against depends on import order: once any
module imported the engine's package, ``thinkfast.generate`` used to be that package, not the
function the README calls.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TEACHER = Path(__file__).resolve().parents[1] / "src" / "thinkfast" / "assets" / "demo_teacher"

SCRIPT = """
import sys, torch, thinkfast

model, tokenizer = thinkfast.load_pretrained(sys.argv[1])
input_ids = torch.tensor([tokenizer("Question: First Pam has 5 coins.")["input_ids"]])
logits = model(input_ids).logits
assert logits.shape == (1, input_ids.shape[1], model.config.vocab_size), logits.shape
outs = thinkfast.generate(model, ["Question: First Pam has 5 coins."],
                          thinkfast.SamplingParams(n=2, temperature=0.8, max_new_tokens=4), tokenizer=tokenizer)
s = outs[0].samples[1]
assert isinstance(s.text, str) and len(s.logprobs) == len(s.token_ids) > 0, s
assert outs[0].timing is not None
thinkfast.save_model(model, sys.argv[2], tokenizer)
back, _ = thinkfast.load_pretrained(sys.argv[2])
assert torch.equal(back(input_ids).logits, logits)

from thinkfast import ModelConfig, LanguageModel
cfg = ModelConfig.from_name("smollm2-135m", layer_pattern="AM" * 15, mamba={"kind": "mamba2"})
assert cfg.layer_pattern == "AM" * 15
print("ok")
"""


def test_the_documented_api_runs_as_written(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(TEACHER), str(tmp_path / "saved")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
