"""A width-reduced student over a frozen teacher (Low-Rank Clone / RED), and its merge.

The teacher's weights never train. Each student weight is the teacher's weight seen through a
trainable projection between the teacher's width D and the student's d = d_s:

  embedding, LM head   E_s = E @ P_emb                 (V, d)   one P when the teacher ties them
  q, k, v, gate, up    W_s = W @ P_x                   (out, d) input side
  o, down              W_s = P_x^T @ W, b_s = b @ P_x  (d, in)  output side
  every RMSNorm        a new weight (d,) that trains

Attention heads, head size and d_ff are the teacher's; only the residual width shrinks. The
forward pass builds those weights and runs the ordinary ``LanguageModel`` code on them
(``torch.func.functional_call``), so ``merge()`` -- the same weights written into a plain
LanguageModel with d_model = d -- gives the same logits, and the engine runs it unchanged.

Glossary: D teacher width, d student width, V vocabulary, L layers.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch.func import functional_call

from ..models.state import load_state_dict_strict
from ..config import ModelConfig
from ..models.layers import Attention, RMSNorm, rope_inv_freq
from ..models.lm import LanguageModel, ModelOutput
from ..runtime import UserError
from .init import INITS, check_width, make_projection, select_channels

IN_PROJ = {"q": "mixer.q_proj", "k": "mixer.k_proj", "v": "mixer.v_proj", "gate": "mlp.gate_proj",
           "up": "mlp.up_proj"}
OUT_PROJ = {"o": "mixer.o_proj", "down": "mlp.down_proj"}


def student_config(teacher_cfg: ModelConfig, d_s: int) -> ModelConfig:
    """The teacher's config at residual width ``d_s`` (heads, head size, d_ff kept)."""
    data = teacher_cfg.to_dict()
    data.update(d_model=d_s, head_dim=teacher_cfg.head_dim)
    return ModelConfig.from_dict(data)


class ProjectedLayer(nn.Module):
    """One block's projections (each (D, d)) and its two new norms (d,)."""

    def __init__(self, projections: dict[str, torch.Tensor], input_norm: torch.Tensor, post_norm: torch.Tensor,
                 eps: float):
        super().__init__()
        for name, p in projections.items():
            setattr(self, name, nn.Parameter(p))
        self.input_norm, self.post_norm = RMSNorm(input_norm.numel(), eps), RMSNorm(post_norm.numel(), eps)
        with torch.no_grad():
            self.input_norm.weight.copy_(input_norm)
            self.post_norm.weight.copy_(post_norm)


class ProjectedLM(nn.Module):
    """The student of width ``d_s``; the teacher stays outside the module tree (not trained, not saved).

    init: red (needs ``importance`` (D,)), gaussian or orthogonal; each projection of a random init is
    its own draw from ``seed``. RED starts the norms at the teacher's weights on the selected
    channels, the random inits at ones. ``allow_full`` admits d_s = D (an identity check).
    """

    def __init__(self, teacher: LanguageModel, d_s: int, init: str = "red",
                 importance: Optional[torch.Tensor] = None, seed: int = 0, allow_full: bool = False):
        super().__init__()
        tc = teacher.config
        if set(tc.layer_pattern) != {"A"}:
            raise UserError(f"width compression needs an all-attention teacher, got layer pattern {tc.layer_pattern}")
        if init not in INITS:
            raise UserError(f"unknown projection init {init!r}; choose from {INITS}")
        D = tc.d_model
        check_width(d_s, D, allow_full)
        if init == "red" and (importance is None or importance.numel() != D):
            raise UserError(f"the red init needs a channel importance of {D} values (channel_importance)")
        teacher.eval().requires_grad_(False)
        self._teacher = [teacher]
        self.config = student_config(tc, d_s)
        self.init = init
        channels = select_channels(importance, d_s) if init == "red" else None
        self.register_buffer("channels", channels if channels is not None else torch.empty(0, dtype=torch.long),
                             persistent=False)
        gen = torch.Generator().manual_seed(seed)

        def proj() -> torch.Tensor:
            return make_projection(D, d_s, init, gen, channels)

        def norm(w: torch.Tensor) -> torch.Tensor:
            return w.detach().float()[channels].clone() if channels is not None else torch.ones(d_s)

        self.embed = nn.Parameter(proj())
        self.head = None if tc.tie_embeddings else nn.Parameter(proj())
        self.layers = nn.ModuleList(
            ProjectedLayer({k: proj() for k in (*IN_PROJ, *OUT_PROJ)}, norm(blk.input_norm.weight),
                           norm(blk.post_norm.weight), tc.norm_eps)
            for blk in teacher.layers)
        self.norm = RMSNorm(d_s, tc.norm_eps)
        with torch.no_grad():
            self.norm.weight.copy_(norm(teacher.norm.weight))
        with torch.device("meta"):  # the code that runs the weights; its own parameters are never used
            self._template = [LanguageModel(self.config)]

    @property
    def teacher(self) -> LanguageModel:
        return self._teacher[0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def merged_state(self) -> dict[str, torch.Tensor]:
        """The student's LanguageModel state dict, as functions of the projections (differentiable)."""
        t = self.teacher
        sd = {"embed_tokens.weight": t.embed_tokens.weight @ self.embed,  # (V, d)
              "norm.weight": self.norm.weight}
        if self.head is not None:
            sd["lm_head.weight"] = t.lm_head.weight @ self.head  # (V, d)
        for i, (blk, pl) in enumerate(zip(t.layers, self.layers)):
            mods = dict(blk.named_modules())
            pre = f"layers.{i}."
            for key, name in IN_PROJ.items():
                lin = mods[name]
                sd[pre + name + ".weight"] = lin.weight @ getattr(pl, key)  # (out, d)
                if lin.bias is not None:
                    sd[pre + name + ".bias"] = lin.bias
            for key, name in OUT_PROJ.items():
                lin, p = mods[name], getattr(pl, key)
                sd[pre + name + ".weight"] = p.T @ lin.weight  # (d, in)
                if lin.bias is not None:
                    sd[pre + name + ".bias"] = lin.bias @ p  # (d,)
            sd[pre + "input_norm.weight"] = pl.input_norm.weight
            sd[pre + "post_norm.weight"] = pl.post_norm.weight
        return sd

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_hidden_states: bool = False, logits_to_keep: int = 0) -> ModelOutput:
        """input_ids (B, T) -> ModelOutput with logits (B, T, V) and hidden states (B, T, d)."""
        cfg = self.config
        params = self.merged_state()
        params["rotary.inv_freq"] = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).to(input_ids.device)
        return functional_call(self._template[0], params, (input_ids,),
                               {"attention_mask": attention_mask, "output_hidden_states": output_hidden_states,
                                "logits_to_keep": logits_to_keep}, strict=False)

    @torch.no_grad()
    def merge(self) -> LanguageModel:
        """An ordinary LanguageModel (d_model = d_s) with the projections folded into its weights."""
        model = LanguageModel(self.config)
        sd = {k: v.detach().clone() for k, v in self.merged_state().items()}
        load_state_dict_strict(model, sd, "the merged projections")
        return model.to(self.teacher.device).eval()


def check_teacher(teacher: LanguageModel) -> None:
    """Refuse teachers whose mixers are not attention (Mamba layers have no q/k/v/o to project)."""
    bad = [i for i, b in enumerate(teacher.layers) if not isinstance(b.mixer, Attention)]
    if bad:
        raise UserError(f"width compression needs attention layers; teacher layers {bad} are not attention")
