"""What a recipe will need, per stage, before anything is trained: parameters, tokens per step and
per-device memory (``thinkfast distill --plan``).

Pure functions of configs: no weights are loaded, no tensors are made and nothing is read here
(the command reads the teacher's config.json and passes a ``ModelConfig``). Every figure is in
bytes and comes from a formula written out below, so a reader can check it by hand.

Memory per device, for one stage:
  weights      the student in fp32 (it is its own fp32 master: the optimizer steps the fp32
               parameters, bf16 is only the compute dtype); FSDP2 shards it over N devices and
               all-gathers bf16 (or fp32) copies of the root and of two blocks (the current one
               and the prefetched next one); under autocast (single process or DDP) the bf16 casts
               of the matmul weights are kept for backward
  teacher      frozen, outside the wrapped module: a full copy on every device in the teacher
               dtype (``train.teacher_dtype``; auto = bf16 on an accelerator when bf16 is on)
  gradients    fp32, trainable parameters only; FSDP2 reduce-scatters (1/N), DDP keeps a full copy
               plus its flat all-reduce buckets (another full copy)
  optimizer    AdamW: two fp32 moments per trainable parameter (1/N under FSDP2), plus the
               foreach step's temporary (one fp32 copy of the moments, on an accelerator)
  activations  what autograd keeps for backward, per Block (see ``block_activations``), and
               with activation checkpointing only each Block's input plus one Block recomputed
  loss         the logit loss: the chunked KD loss (``loss.chunk_size`` > 0) keeps the gathered
               final hidden states and about four fp32 (chunk, V) tensors; the reference path
               holds eight (B, T, V) tensors at its peak (five of the student, three of the teacher)

The peak is the larger of the forward/backward phase (weights, teacher, optimizer state, the
activations and the loss buffers, the gradients too when micro-batches accumulate, only the
LM head's first gradient otherwise) and the optimizer step (weights, teacher, gradients, state,
temporary). Allocator slack, the CUDA context and NCCL buffers are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import ModelConfig
from ..convert.from_attention import attention_layers, student_config
from .config import DistillConfig, StageConfig, TrainConfig, resolve_train

GiB = 1024**3
MATRIX_PARAMS = ("in_proj", "conv1d", "dt_bias", "A_log", "a_bias")  # as stages.MATRIX_PARAMS


# --- parameters -----------------------------------------------------------------------------------
def attention_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one attention mixer by projection."""
    D, H, G, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    b = cfg.attention_bias
    return {"q_proj": D * H * hd + (H * hd if b else 0), "k_proj": D * G * hd + (G * hd if b else 0),
            "v_proj": D * G * hd + (G * hd if b else 0), "o_proj": H * hd * D + (D if b else 0)}


def mamba_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one Mamba mixer (``cfg.mamba.kind``) by tensor group."""
    m, D = cfg.mamba, cfg.d_model
    H, P, N, K = m.n_heads, m.head_dim, m.d_state, m.conv_kernel
    d_inner = H * P
    if m.kind == "mamba2":
        G = m.n_kv_heads
        conv_dim = G * P + G * N + H * N
        in_width = d_inner + conv_dim + H  # z | x B C | dt
        return {"in_proj": D * in_width, "conv1d": conv_dim * K + conv_dim, "dt_bias": H, "A_log": H,
                "D": H, "norm": d_inner, "out_proj": d_inner * D}
    conv_dim = d_inner + 2 * H * N
    out = {"in_proj": D * (conv_dim + d_inner + H), "z_bias": d_inner, "conv1d": conv_dim * K + conv_dim,
           "D": H, "out_proj": d_inner * D}
    if m.decay_bias is not None:
        out["a_bias"] = H
    return out


def mlp_params(cfg: ModelConfig) -> int:
    D, F = cfg.d_model, cfg.d_ff
    return 3 * D * F + ((2 * F + D) if cfg.mlp_bias else 0)


def block_params(cfg: ModelConfig, kind: str) -> dict[str, int]:
    """{"mixer", "mlp", "norms", "matrix"} of one Block of ``kind`` "A" or "M" ("matrix": the
    mixer parameters MOHAWK stage 1 trains)."""
    mixer = attention_params(cfg) if kind == "A" else mamba_params(cfg)
    matrix = sum(v for k, v in mixer.items() if k in MATRIX_PARAMS) if kind == "M" else 0
    return {"mixer": sum(mixer.values()), "mlp": mlp_params(cfg), "norms": 2 * cfg.d_model, "matrix": matrix}


def model_params(cfg: ModelConfig) -> int:
    """All parameters of a LanguageModel of ``cfg`` (tied embeddings counted once)."""
    V, D = cfg.vocab_size, cfg.d_model
    per = {k: sum(v for n, v in block_params(cfg, k).items() if n != "matrix") for k in "AM"}
    return V * D * (1 if cfg.tie_embeddings else 2) + D + sum(per[c] for c in cfg.layer_pattern)


def trainable_params(cfg: ModelConfig, objective: str, trainable: str) -> int:
    """Parameters a stage trains (``stages.Objective.trainable_filter`` and its subclasses)."""
    mode = trainable
    if mode == "auto":
        mode = {"lm": "all", "kd": "all", "hidden": "mixers", "matrix": "matrix"}[objective]
    if objective == "matrix":
        mode = "matrix"
    if mode == "all":
        return model_params(cfg)
    total = 0
    for c in cfg.layer_pattern:
        p = block_params(cfg, c)
        if mode == "matrix":
            total += p["matrix"]
        elif mode == "mixers":
            total += p["mixer"] if c == "M" else 0
        elif mode == "mamba_layers":
            total += p["mixer"] + p["mlp"] + p["norms"] if c == "M" else 0
        elif mode == "no_mlp":
            total += p["mixer"] + p["norms"]
        else:
            raise ValueError(f"unknown trainable mode {trainable!r}")
    if mode == "no_mlp":
        V, D = cfg.vocab_size, cfg.d_model
        total += V * D * (1 if cfg.tie_embeddings else 2) + D
    return total


# --- activations ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockActivation:
    """Bytes autograd keeps for backward in one Block at (micro_batch, seq_len)."""

    kind: str  # "A" (attention) or "M" (Mamba)
    norms: int
    mixer: int
    mlp: int

    @property
    def total(self) -> int:
        return self.norms + self.mixer + self.mlp


def _mixer_elements(cfg: ModelConfig, kind: str) -> tuple[int, int, int]:
    """(elements per token, fp32 elements per token, elements per scanned token) a mixer saves
    for backward; the scan's tensors cover the sequence padded to a whole number of chunks.

    Attention: q and k before RoPE, their rotate_half, after RoPE; v; SDPA's output and its
    (B, H, T) log-sum-exp; the re-laid-out output o_proj reads. Mamba: the in_proj output (its
    z view is saved), the conv input (its K-1 left pad ignored) and output, the head-repeated x
    and B (mamba2) and x*dt; the reference chunked scan's contiguous copies of B and C, the
    (l, l) C B^T, its decay and their product per chunk, the copies of x, B*decay, C and the
    inter-chunk output; then the gate and norm of the output."""
    if kind == "A":
        H, G, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        return 5 * H * hd + 4 * G * hd, H, 0
    m = cfg.mamba
    H, P, N, l = m.n_heads, m.head_dim, m.d_state, m.chunk_size
    HP, HN = H * P, H * N
    scan = 4 * HN + 3 * H * l + 3 * HP
    if m.kind == "mamba2":
        G = m.n_kv_heads
        conv_dim = G * P + G * N + HN
        # in_proj out, conv in + out, repeated x and B, x*dt | output: y, silu z, gate, norm, out_proj in
        return (HP + conv_dim + H) + 2 * conv_dim + HP + HN + HP + 5 * HP, 0, scan
    conv_dim = HP + 2 * HN
    # in_proj out, conv in + out | output: y, z + z_bias, its silu, the product
    return (conv_dim + HP + H) + 2 * conv_dim + 4 * HP, 0, scan


def block_activations(cfg: ModelConfig, kind: str, micro_batch: int, seq_len: int, act_bytes: int,
                      resid_bytes: int) -> BlockActivation:
    """Saved-for-backward bytes of one Block: two RMSNorms (the fp32 input, the normalised
    tensor, the weighted output the next matmul reads), the mixer (``_mixer_elements``) and the
    SwiGLU MLP (gate, silu(gate), up, their product). ``act_bytes``: the matmul output dtype
    (2 under bf16); ``resid_bytes``: the residual stream (fp32 under autocast, whose linears
    return bf16 but whose residual adds and norms run in fp32)."""
    bt = micro_batch * seq_len
    el, fp32_el, scan_el = _mixer_elements(cfg, kind)
    l = cfg.mamba.chunk_size
    scanned = micro_batch * -(-seq_len // l) * l
    norms = 2 * bt * cfg.d_model * (4 + 2 * resid_bytes)
    if act_bytes != resid_bytes:  # autocast keeps the bf16 casts of the matmul inputs too
        norms += 2 * bt * cfg.d_model * act_bytes
    mixer = bt * (el * act_bytes + fp32_el * 4) + scanned * scan_el * 4  # the reference scan runs in fp32
    return BlockActivation(kind, norms, mixer, bt * 4 * cfg.d_ff * act_bytes)


def matrix_stage_activations(cfg: ModelConfig, micro_batch: int, seq_len: int) -> int:
    """MOHAWK stage 1 keeps every Mamba layer's graph until one backward: per layer and head
    about four fp32 (T, T) tensors of the student's materialised matrix (the decay, C B^T, their
    product, the difference with the target); the layer in flight holds six more per head (the
    teacher's scores, masked scores and softmax; segsum's masked, summed and masked tensors);
    plus the teacher's hidden states (no grad)."""
    H = cfg.mamba.n_heads
    n_m = cfg.layer_pattern.count("M")
    tt = micro_batch * H * seq_len * seq_len * 4  # one fp32 (T, T) per head
    # + the layer in flight: the teacher's scores, masked scores and softmax, and segsum's three
    in_flight = 6 * tt if n_m else 0
    return n_m * 4 * tt + in_flight + (cfg.n_layers + 1) * micro_batch * seq_len * cfg.d_model * 4


# --- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Memory:
    """Per-device bytes of one stage (see the module docstring)."""

    weights: int
    teacher: int
    gradients: int
    optimizer: int
    activations_full: int
    activations_checkpointed: int
    activations: int  # the one the recipe uses (train.activation_checkpointing)
    loss_buffers: int
    loss_buffers_full_logits: int
    step_temporary: int
    peak_forward_backward: int
    peak_step: int

    @property
    def peak(self) -> int:
        return max(self.peak_forward_backward, self.peak_step)


@dataclass(frozen=True)
class StagePlan:
    name: str
    objective: str
    pattern: str
    seq_len: int
    steps: int
    batch_size: int
    micro_batch: int
    accumulation: int
    tokens_per_step: int
    student_params: int
    teacher_params: int
    trainable_params: int
    blocks: tuple[BlockActivation, ...]
    memory: Memory
    notes: tuple[str, ...] = ()

    @property
    def tokens(self) -> int:
        return self.tokens_per_step * self.steps


@dataclass(frozen=True)
class Plan:
    devices: int
    mode: str  # "single" | "ddp" | "fsdp"
    accelerator: bool
    shapes_from: str
    stages: tuple[StagePlan, ...] = field(default_factory=tuple)


def teacher_bytes_per_param(tc: TrainConfig, accelerator: bool) -> int:
    if tc.teacher_dtype == "bf16" or (tc.teacher_dtype == "auto" and tc.bf16 and accelerator):
        return 2
    return 4


def _stage_pattern(stage: StageConfig, student: ModelConfig) -> tuple[ModelConfig, Optional[str]]:
    """The student the stage's memory is planned for: after a hybrid schedule's last conversion
    (more Mamba layers keep more activations)."""
    if not stage.hybrid_schedule:
        return student, None
    keep = sorted(stage.hybrid_schedule, key=lambda e: e[0])[-1][1]
    kept = set(attention_layers(student.n_layers, keep))
    pattern = "".join("A" if i in kept else "M" for i in range(student.n_layers))
    return student.with_pattern(pattern), (f"hybrid_schedule: planned for the last pattern {pattern} "
                                           f"(it starts as {student.layer_pattern})")


def plan_stage(cfg: DistillConfig, index: int, student: ModelConfig, teacher: Optional[ModelConfig],
               devices: int = 1, accelerator: bool = True) -> StagePlan:
    """The plan of stage ``index`` of ``cfg`` for ``student`` (its config at that stage)."""
    stage = cfg.stages[index]
    tc = resolve_train(cfg, index)
    T = stage.seq_len or cfg.data.seq_len
    W = max(1, devices)
    mode = "single" if W == 1 else tc.distributed
    micro = tc.micro_batch_size or max(1, tc.batch_size // W)
    accum = max(1, tc.batch_size // (micro * W))
    notes = []
    if tc.batch_size % (micro * W):
        notes.append(f"train.batch_size {tc.batch_size} is not a multiple of micro_batch_size {micro} x {W} "
                     f"devices: the trainer will refuse it")
    s_cfg, note = _stage_pattern(stage, student)
    if note:
        notes.append(note)
    ps = model_params(s_cfg)
    pt = model_params(teacher) if teacher is not None else 0
    ptrain = trainable_params(s_cfg, stage.objective, stage.trainable)
    V, D = s_cfg.vocab_size, s_cfg.d_model
    shard = W if mode == "fsdp" else 1
    bf16 = tc.bf16
    # FSDP2's MixedPrecisionPolicy makes the whole forward bf16; autocast keeps an fp32 residual.
    act_b = 2 if bf16 else 4
    resid_b = 2 if (bf16 and mode == "fsdp") else 4

    # weights
    head = V * D
    root = head * (1 if s_cfg.tie_embeddings else 2) + D
    weights = 4 * ps // shard
    if mode == "fsdp" and stage.objective == "matrix":
        weights += act_b * ps  # stage 1 shards only at the root: the whole student is gathered
    elif mode == "fsdp":
        largest = max(sum(v for n, v in block_params(s_cfg, c).items() if n != "matrix")
                      for c in set(s_cfg.layer_pattern))
        weights += act_b * (root + 2 * largest)
    elif bf16:
        weights += 2 * (ps - (0 if s_cfg.tie_embeddings else head))  # autocast's casts (not the embedding)
    teacher_b = pt * teacher_bytes_per_param(tc, accelerator)

    grads = 4 * ptrain // shard
    if mode == "ddp":
        grads += 4 * ptrain  # DDP's flat all-reduce buckets
    optim = 8 * ptrain // shard
    embed_trains = _embedding_trains(stage.objective, stage.trainable)
    if accelerator:  # foreach AdamW: one fp32 copy of the second moments (sqrt), then in place
        step_tmp = 4 * ptrain // shard
    else:  # the per-tensor CPU step: sqrt and a division of the largest tensor at a time
        step_tmp = 2 * 4 * _largest_trainable(s_cfg, stage.objective, stage.trainable, embed_trains) // shard

    t_act = teacher_bytes_per_param(tc, accelerator)

    # activations
    blocks = tuple(block_activations(s_cfg, c, micro, T, act_b, resid_b) for c in sorted(set(s_cfg.layer_pattern)))
    per_kind = {b.kind: b.total for b in blocks}
    bt = micro * T
    top = bt * D * (3 * resid_b + 4)  # the final norm, as one of the Blocks' norms
    if stage.objective == "matrix":
        full = ckpt = matrix_stage_activations(s_cfg, micro, T)
        notes.append("matrix: every Mamba layer's (T, T) matrices live until backward; activation "
                     "checkpointing does not apply")
    elif stage.objective == "hidden":
        layers = [c for c in s_cfg.layer_pattern if c == "M"]
        teacher_h = (s_cfg.n_layers + 1) * bt * D * t_act
        full = sum(per_kind[c] for c in layers) + teacher_h
        ckpt = len(layers) * bt * D * resid_b + max(per_kind.values()) + teacher_h
    else:
        full = sum(per_kind[c] for c in s_cfg.layer_pattern) + top
        ckpt = s_cfg.n_layers * bt * D * resid_b + max(per_kind.values()) + top
        want_h = stage.objective == "kd" and stage.loss.hidden_weight > 0
        if want_h:  # the teacher's hidden states are kept for the MSE
            full += (s_cfg.n_layers + 1) * bt * D * 2 * resid_b
            ckpt += (s_cfg.n_layers + 1) * bt * D * 2 * resid_b
    acts = ckpt if tc.activation_checkpointing else full

    # loss buffers (objectives with logits)
    chunk = stage.loss.chunk_size
    two = stage.objective == "kd"  # KD projects both heads; lm only the student's
    chunked = full_logits = 0
    if stage.objective in ("kd", "lm"):
        c = min(chunk or 1024, bt)
        chunked = bt * D * (resid_b + (t_act if two else 0)) + (4 if two else 2) * c * V * 4 + bt * D * resid_b
        # reference path, at the forward's peak (inside the KL): the student's logits, tempered
        # logits, log-probabilities, the log-ratio and its product with p; the teacher's logits,
        # log-probabilities and p. CE alone: the logits, their fp32 copy and log-softmax.
        full_logits = (bt * V * (act_b + 4 * 4) + bt * V * (t_act + 4 * 2)) if two else bt * V * (act_b + 4 * 2)
    loss_b = (chunked if chunk else full_logits)

    head_grad = 4 * head  # the first gradient backward makes: the LM head's
    base = weights + teacher_b + optim
    fwd = base + acts + loss_b + (grads if accum > 1 else min(grads, head_grad))
    # the end of backward: every gradient is there, and a tied embedding sums its two (V, D) parts
    tied_sum = 4 * head // shard if (s_cfg.tie_embeddings and embed_trains) else 0
    fwd = max(fwd, base + grads + tied_sum)
    step = weights + teacher_b + grads + optim + step_tmp
    mem = Memory(weights, teacher_b, grads, optim, full, ckpt, acts, chunked, full_logits, step_tmp, fwd, step)
    return StagePlan(stage.name, stage.objective, s_cfg.layer_pattern, T, tc.steps, tc.batch_size, micro, accum,
                     tc.batch_size * T, ps, pt, ptrain, blocks, mem, tuple(notes))


def _mode(objective: str, trainable: str) -> str:
    if objective == "matrix":
        return "matrix"
    if trainable == "auto":
        return {"lm": "all", "kd": "all", "hidden": "mixers"}[objective]
    return trainable


def _embedding_trains(objective: str, trainable: str) -> bool:
    return _mode(objective, trainable) in ("all", "no_mlp")


def _largest_trainable(cfg: ModelConfig, objective: str, trainable: str, embed_trains: bool) -> int:
    """Elements of the largest trainable tensor (the per-tensor optimizer step's temporaries)."""
    if embed_trains:
        return cfg.vocab_size * cfg.d_model
    m = mamba_params(cfg) if "M" in cfg.layer_pattern else {}
    mode = _mode(objective, trainable)
    if mode == "matrix":
        return m.get("in_proj", 0)
    mixer = max(m.get("in_proj", 0), m.get("out_proj", 0))
    return max(mixer, cfg.d_model * cfg.d_ff) if mode == "mamba_layers" else mixer


def initial_student(cfg: DistillConfig, teacher: Optional[ModelConfig],
                    student_init: Optional[ModelConfig] = None) -> ModelConfig:
    """The student's config before the first stage: derived from the teacher (student.init=teacher),
    built from student.model (init=new) or ``student_init`` (the config of an init directory)."""
    s = cfg.student
    if s.init == "teacher":
        if teacher is None:
            raise ValueError("student.init=teacher needs the teacher's shapes")
        pattern = "".join("A" if i in set(attention_layers(teacher.n_layers, s.keep)) else "M"
                          for i in range(teacher.n_layers))
        return student_config(teacher, pattern, s.kind, s.mamba or None)
    if s.init == "new":
        spec = s.model
        if spec is None:
            raise ValueError("student.init=new needs student.model")
        data = {"preset": spec} if isinstance(spec, str) else dict(spec)
        base = ModelConfig.from_name(data.pop("preset")).to_dict() if "preset" in data else {}
        base.update(data)
        return ModelConfig.from_dict(base)
    if student_init is None:
        raise ValueError(f"student.init={s.init}: its config is needed")
    return student_init


def plan_recipe(cfg: DistillConfig, teacher: Optional[ModelConfig], devices: int = 1, accelerator: bool = True,
                student_init: Optional[ModelConfig] = None, shapes_from: str = "") -> Plan:
    """Every stage of ``cfg`` on ``devices`` devices (the stages share the student's shape)."""
    student = initial_student(cfg, teacher, student_init)
    stages = tuple(plan_stage(cfg, i, student, teacher, devices, accelerator) for i in range(len(cfg.stages)))
    mode = "single" if devices <= 1 else cfg.train.distributed
    return Plan(devices, mode, accelerator, shapes_from, stages)


# --- text -----------------------------------------------------------------------------------------
def _gib(n: int) -> str:
    return f"{n / GiB:8.2f} GiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _tokens(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_plan(plan: Plan) -> str:
    lines = [f"plan: {plan.devices} device(s), {plan.mode}"
             + ("" if plan.accelerator else " (CPU)") + (f"; shapes from {plan.shapes_from}" if plan.shapes_from else "")]
    for s in plan.stages:
        m = s.memory
        lines += [
            "",
            f"stage {s.name} ({s.objective}), pattern {s.pattern}",
            f"  parameters      student {_count(s.student_params)}, teacher {_count(s.teacher_params)}, "
            f"trainable {_count(s.trainable_params)}",
            f"  tokens/step     {s.tokens_per_step:,} ({s.batch_size} x {s.seq_len}; micro-batch {s.micro_batch} "
            f"x {s.accumulation} accumulation x {plan.devices} device(s)); {s.steps:,} steps = "
            f"{_tokens(s.tokens)} tokens",
            "  per device:",
            f"    weights       {_gib(m.weights)}",
            f"    teacher       {_gib(m.teacher)}",
            f"    gradients     {_gib(m.gradients)}",
            f"    optimizer     {_gib(m.optimizer)}  (+{m.step_temporary / GiB:.2f} GiB during the step)",
            f"    activations   {_gib(m.activations_full)}  without checkpointing",
            f"                  {_gib(m.activations_checkpointed)}  with checkpointing",
        ]
        for b in s.blocks:
            name = "attention" if b.kind == "A" else "Mamba"
            lines.append(f"      per {name:9s} Block {b.total / GiB:6.3f} GiB (norms {b.norms / GiB:.3f}, "
                         f"mixer {b.mixer / GiB:.3f}, MLP {b.mlp / GiB:.3f})")
        if s.objective in ("kd", "lm"):
            lines += [f"    loss buffers  {_gib(m.loss_buffers)}  chunked (loss.chunk_size)",
                      f"                  {_gib(m.loss_buffers_full_logits)}  full logits (chunk_size 0)"]
        lines.append(f"    peak          {_gib(m.peak)}  (forward/backward {m.peak_forward_backward / GiB:.2f}, "
                     f"optimizer step {m.peak_step / GiB:.2f}) with this recipe's settings")
        lines += [f"  note: {n}" for n in s.notes]
    return "\n".join(lines) + "\n"


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (for JSON)."""
    from dataclasses import asdict

    out = asdict(plan)
    for s, d in zip(plan.stages, out["stages"]):
        d["memory"]["peak"] = s.memory.peak
        d["tokens"] = s.tokens
    return out


def shapes_from_mapping(data: dict[str, Any], source: str = "") -> ModelConfig:
    """A ModelConfig from the JSON of a config file: a thinkfast model directory's config.json
    ({"format": "thinkfast", "model": {...}}), a bare ModelConfig mapping, or a Hugging Face
    Llama config.json (recognised by ``hidden_size``)."""
    if isinstance(data.get("model"), dict) and data.get("format") == "thinkfast":
        return ModelConfig.from_dict(data["model"], source=source, where="model")
    if "hidden_size" in data:
        from types import SimpleNamespace

        from ..convert.llama import config_from_hf

        return config_from_hf(SimpleNamespace(**data))
    return ModelConfig.from_dict(data, source=source)
