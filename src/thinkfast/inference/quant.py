"""Lower-precision weights for inference: bf16 / fp16 casts, and int8 weight-only linears.

``quantize_for_inference(model, "int8")`` swaps every ``nn.Linear`` of ``model`` (in place) for an
``Int8Linear``: the weight stored as int8 with one float scale per output channel (symmetric,
``scale = max|w_row| / 127``, so each weight is off by at most ``scale / 2``), activations kept in
the model's float dtype. It works on any ``nn.Linear``, so a model whose q|k|v or gate|up were
fused into one Linear is quantized the same way (fuse first, then quantize).

The embedding table stays in float: it is a lookup, not a product. With tied embeddings the LM
head is still quantized by default (it is the largest single product of a small model's decode
step); it then holds its own int8 copy of the table, and ``lm_head=False`` keeps it in float.

Kernels (``Int8Linear.kernel``):

* ``"reference"``: dequantize the weight, then ``F.linear``. Readable, slow; the oracle of the tests.
* ``"int8pack"``: PyTorch's CPU weight-only kernel ``torch.ops.aten._weight_int8pack_mm``
  (x float, w int8, per-channel scales). Same numbers as the reference up to float rounding.
  The default on CPU (``benchmarks/quant_kernels.py`` measures it against the others).
* ``"dynamic"``: activations also quantized, per row, to int8 at run time, then
  ``torch._int_mm`` (int8 x int8 -> int32) and both scales. Not weight-only: it adds the
  activations' rounding error too; measured, never the default.

A quantized model is for inference only: it is not saved (``save_model`` would write int8 tensors
no loader reads) and not trained.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["INFERENCE_DTYPES", "INT8_KERNELS", "Int8Linear", "dequantize", "inference_dtype", "quantize_for_inference",
           "quantize_per_channel", "weight_dtype_name"]

INFERENCE_DTYPES = ("float32", "bfloat16", "float16", "int8")
"""What ``--dtype`` accepts for the thinkfast backend: a float cast, or int8 weight-only."""

INT8_KERNELS = ("reference", "int8pack", "dynamic")


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float -> (q (N, K) int8 in [-127, 127], scale (N,) float32), ``w ~ q * scale[:, None]``.

    Symmetric per output channel: the largest |w| of a row maps to 127 exactly, so rounding is the
    only error, at most ``scale / 2`` per weight. An all-zero row gets scale 1 (and q 0)."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-d weight (out, in), got shape {tuple(w.shape)}")
    w32 = w.detach().float()
    amax = w32.abs().amax(dim=1)  # (N,)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (N, K)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q (N, K) int8, scale (N,) -> the float weight (N, K) they stand for."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float -> (xq (M, K) int8, sx (M,) float32): per-row symmetric, for the dynamic kernel."""
    x32 = x.float()
    amax = x32.abs().amax(dim=1)
    sx = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return torch.round(x32 / sx[:, None]).clamp_(-127, 127).to(torch.int8), sx


class Int8Linear(nn.Module):
    """``y = x @ (qweight * scale[:, None]).T + bias``: an ``nn.Linear`` with an int8 weight.

    qweight (out, in) int8 and scale (out,) float32 are buffers (not parameters: nothing trains them);
    bias keeps the float dtype of the Linear it came from. x (..., in) -> y (..., out) in x's dtype."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 kernel: str = "int8pack"):
        super().__init__()
        if kernel not in INT8_KERNELS:
            raise ValueError(f"unknown int8 kernel {kernel!r}; choose from {INT8_KERNELS}")
        if qweight.dtype != torch.int8 or qweight.dim() != 2 or scale.shape != qweight.shape[:1]:
            raise ValueError(f"expected qweight (out, in) int8 and scale (out,), got {qweight.dtype} "
                             f"{tuple(qweight.shape)} and {tuple(scale.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.kernel = kernel
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._scale_as: dict[torch.dtype, torch.Tensor] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "int8pack") -> "Int8Linear":
        q, s = quantize_per_channel(linear.weight)
        return cls(q.to(linear.weight.device), s.to(linear.weight.device), linear.bias, kernel)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.qweight, self.scale, dtype)

    def _scale_for(self, dtype: torch.dtype) -> torch.Tensor:
        if self.scale.dtype == dtype:
            return self.scale
        s = self._scale_as.get(dtype)
        if s is None or s.device != self.scale.device:
            s = self._scale_as[dtype] = self.scale.to(dtype)
        return s

    def _apply(self, fn, recurse=True):  # .to(device) / .cuda(): the cached scales follow
        self._scale_as = {}
        return super()._apply(fn, recurse)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantize, then the float product: the definition every kernel is tested against."""
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "reference" or x.device.type != "cpu" or not x.dtype.is_floating_point:
            return self.forward_reference(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if self.kernel == "int8pack":
            # PyTorch's CPU kernel is fast for bf16 inputs only (fp32 inputs take a path tens of
            # times slower at batch > 1): activations are rounded to bf16 for the product.
            xb = x2.to(torch.bfloat16).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(xb, self.qweight, self._scale_for(torch.bfloat16)).to(x.dtype)
        else:  # dynamic: per-row int8 activations, int32 accumulation
            xq, sx = _quantize_rows(x2)
            acc = torch._int_mm(xq, self.qweight.t())  # (M, N) int32
            y = (acc.float() * sx[:, None] * self.scale.float()[None, :]).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")


def quantize_for_inference(model: nn.Module, dtype: str, lm_head: bool = True, kernel: str = "int8pack",
                           skip: tuple[str, ...] = ()) -> nn.Module:
    """``model`` with lower-precision weights for inference, changed in place and returned.

    ``dtype``: "float32" / "bfloat16" / "float16" cast the whole model; "int8" replaces every
    ``nn.Linear`` (whatever it is: q, k, v, fused qkv, gate|up, Mamba in/out projections) by an
    ``Int8Linear`` with per-output-channel scales, leaving everything else in its float dtype.
    ``lm_head=False`` keeps the LM head (named ``lm_head``) in float; ``skip`` names other modules
    (qualified names, e.g. "layers.0.mlp.down_proj") to keep in float."""
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"unknown inference dtype {dtype!r}; choose from {', '.join(INFERENCE_DTYPES)}")
    if dtype != "int8":
        return model.to(getattr(torch, dtype))
    keep = set(skip) | (set() if lm_head else {"lm_head"})
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in keep]
    with torch.no_grad():
        for name, linear in targets:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, Int8Linear.from_linear(linear, kernel))
    model.eval()
    return model


def inference_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """The float dtype a model is loaded in for ``--dtype name``: int8 loads float32, then quantizes."""
    if name is None:
        return None
    if name not in INFERENCE_DTYPES:
        raise ValueError(f"unknown inference dtype {name!r}; choose from {', '.join(INFERENCE_DTYPES)}")
    return torch.float32 if name == "int8" else getattr(torch, name)


def weight_dtype_name(model: nn.Module) -> str:
    """"int8" when any Linear of ``model`` is an ``Int8Linear``, else its float dtype's name."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        return "int8"
    p = next(model.parameters(), None)
    return "float32" if p is None else str(p.dtype).replace("torch.", "")
