"""Process group setup under torchrun, model wrapping (DDP or FSDP2), and small collectives.

Started by torchrun (RANK/WORLD_SIZE/LOCAL_RANK set), `setup()` initialises the process group:
NCCL when the device is CUDA, gloo on CPU. A plain `python -m dmas_repro train` runs as world 1
without any process group.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import UserError
from ..core.runtime import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # this process group was created by us

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistInfo:
    """Join the torchrun job if there is one; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world == 1:
        return DistInfo(0, 0, 1, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        created = True
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), dev, created)


def teardown(info: DistInfo) -> None:
    if info.initialized and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, info: DistInfo, parallel: str = "ddp") -> torch.nn.Module:
    """DDP (default) or FSDP2 (`fully_shard` per block, then the root) across the job; identity at world 1."""
    if not info.enabled:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "layers", []):
            fully_shard(block)
        fully_shard(model)
        return model
    raise UserError(f"unknown parallel mode {parallel!r}; choose ddp or fsdp")


def no_sync(model: torch.nn.Module, active: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (DDP `no_sync`; FSDP2: defer reduce-scatter)."""
    if active and hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(not active)
    return contextlib.nullcontext()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / info.world_size
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """rank 0's object on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list | None:
    """Every rank's object on rank 0 (None elsewhere)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def rank() -> int:
    """This process's global rank under torchrun (0 outside it), before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The job's world size under torchrun (1 outside it), before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))
