"""thinkfast: distilled subquadratic reasoners and budgeted reasoning evaluation.

Top-level API (imported lazily so ``import thinkfast`` stays cheap):

    model, tokenizer = thinkfast.load_pretrained(path)   # thinkfast dir, HF dir / hub id, .gguf
    logits = model(input_ids).logits                      # (B, T, V)
    outs = thinkfast.generate(model, prompts, thinkfast.SamplingParams(n=8), tokenizer=tokenizer)
    thinkfast.save_model(model, out_dir, tokenizer)
"""

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "thinkfast.config",
    "MambaConfig": "thinkfast.config",
    "LanguageModel": "thinkfast.models.lm",
    "load_pretrained": "thinkfast.checkpoint",
    "load_model": "thinkfast.checkpoint",
    "save_model": "thinkfast.checkpoint",
    "generate": "thinkfast.inference.engine",
    "SamplingParams": "thinkfast.inference.engine",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thinkfast' has no attribute {name!r}")
