"""The process group and model wrapping: one code path for 1 process, DDP and FSDP.

Started by ``torchrun`` (WORLD_SIZE > 1 in the environment) the trainer joins a process group
(nccl on GPUs, gloo on CPU) and wraps the objective in PyTorch's own DistributedDataParallel or
FSDP2 (``fully_shard``). Alone, nothing is wrapped and every collective is a no-op.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the torchrun process group when there is one (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world <= 1:
        return DistEnv(device=dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, dev)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Elementwise sum over processes of a short list of numbers (float64 on the wire)."""
    if not env.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The module's own forward, its activations recomputed in backward (non-reentrant
    ``torch.utils.checkpoint``) whenever autograd records; plain under no_grad (teacher, eval)."""
    forward = type(self).forward
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)


def checkpoint_activations(blocks: list[nn.Module]) -> int:
    """Make each of ``blocks`` recompute its activations in backward instead of keeping them.

    The block's ``forward`` is replaced on the instance (a bound method, so a deep copy of the
    module stays bound to the copy); parameters, state-dict keys and hooks are unchanged, and
    wrapping by DDP or ``fully_shard`` afterwards works as with any module: FSDP2's hooks run
    around the call and the recompute runs inside its backward, with the parameters gathered.
    Idempotent; returns how many blocks were newly wrapped."""
    import types

    n = 0
    for blk in blocks:
        bound = blk.__dict__.get("forward")
        if bound is not None and getattr(bound, "__func__", None) is _checkpointed_forward:
            continue
        blk.forward = types.MethodType(_checkpointed_forward, blk)
        n += 1
    return n


def is_checkpointed(block: nn.Module) -> bool:
    return getattr(block.__dict__.get("forward"), "__func__", None) is _checkpointed_forward


def mixed_precision_policy(bf16: bool):
    """FSDP2's policy for ``train.bf16``: parameters all-gathered and computed in bf16, gradients
    reduced in fp32 (the sharded fp32 parameters stay the optimizer's master weights); None = fp32."""
    if not bf16:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def wrap(module: nn.Module, env: DistEnv, mode: str, units: list[nn.Module], bf16: bool = False) -> nn.Module:
    """DDP or FSDP2 around ``module`` (no-op alone). FSDP shards each of ``units`` separately
    (the objective names the modules it calls through ``forward``), then the rest at the root,
    with ``mixed_precision_policy(bf16)``. DDP keeps fp32 parameters (bf16 is autocast only)."""
    if not env.enabled:
        return module
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        policy = mixed_precision_policy(bf16)
        kw = {"mp_policy": policy} if policy is not None else {}
        for unit in units:
            fully_shard(unit, **kw)
        fully_shard(module, **kw)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(module, device_ids=ids)


@contextmanager
def no_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps (DDP's no_sync / FSDP2's flag)."""
    if sync:
        yield
        return
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    with nullcontext():
        yield


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None):
    """(model, optimizer) full state dicts keyed by parameter name, on CPU, whatever the wrapper.
    Collective under FSDP: every rank must call it; only rank 0's copy is complete."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict) -> None:
    """Load a full optimizer state dict (every rank passes the whole dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module) else model


# --- sharded checkpoints (torch.distributed.checkpoint) ------------------------------------------
@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group: that is intended."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path) -> None:
    """Collective: write the model's and optimizer's state to the DCP directory ``path``, each
    rank its own shards (FSDP) or, for replicated tensors (DDP, one process), one copy in all."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path), no_dist=not dist.is_initialized())


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path) -> None:
    """Collective: read ``path`` (written by ``save_sharded`` on any number of ranks) into the
    model and optimizer as they are sharded now. Each rank reads only the pieces of the files
    its own shards need (DCP resharding); no rank loads the whole state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)  # the target layout (allocates the optimizer state)
    state = {"model": msd, "optim": osd}
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    except dcp.CheckpointException as e:  # a BaseException: re-raised as an ordinary error
        causes = [f"rank {r}: {type(err[0]).__name__}: {err[0]}" for r, err in sorted(e.failures.items())]
        raise RuntimeError("; ".join(causes)[:2000] or str(e)[:2000]) from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def all_reduce_tensor(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of ``t`` over processes (``t`` itself alone); stays on the device."""
    if env.enabled:
        t = t.clone()
        dist.all_reduce(t)
    return t


def synchronize(env: DistEnv) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
