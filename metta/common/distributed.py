"""Small torch.distributed helpers; each works (as a no-op or identity) when distributed is not initialized."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_master() -> bool:
    """Rank 0 does logging, checkpoints and uploads."""
    return get_rank() == 0


def unwrap_agent(agent: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return getattr(agent, "module", agent)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place; returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


# ----------------------------------------------------------------------------------------------------------
# Process-group setup (torchrun sets LOCAL_RANK, RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)
DEFAULT_INIT_TIMEOUT_S = 30.0
DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0


class DistributedSetup(NamedTuple):
    """What ``setup_device_and_distributed`` returns: unpack it (``device, is_master, world_size, rank = ...``),
    index it (``[0]``) or read it by name. ``wrap_agent_distributed`` accepts it whole as its device, as the
    interface documentation writes ``device = setup_device_and_distributed("cuda")``."""

    device: torch.device
    is_master: bool
    world_size: int
    rank: int


def setup_device_and_distributed(
    base_device: str | torch.device = "cuda",
    init_timeout_s: float = DEFAULT_INIT_TIMEOUT_S,
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
) -> DistributedSetup:
    """``(device, is_master, world_size, rank)`` (a ``DistributedSetup``); joins the process group when launched
    by torchrun.

    Without ``LOCAL_RANK`` in the environment this is a single process on ``base_device`` (CUDA falls back
    to the CPU with a warning). Under torchrun each rank takes ``cuda:{LOCAL_RANK}`` with NCCL, or the CPU
    with gloo, and joins the group unless it already has.

    Joining gives up after ``init_timeout_s`` (30 s, upstream PR #2043) instead of hanging when a rank never
    arrives. The group's collectives then get ``collective_timeout_s``: rank 0 checkpoints and evaluates
    while the others wait in the next all-reduce, which easily takes longer than 30 s.
    """
    from metta.common.device import resolve_device

    device = resolve_device(base_device, "base_device")
    if "LOCAL_RANK" not in os.environ:
        if is_distributed():  # someone else set the group up
            return DistributedSetup(device, is_master(), get_world_size(), get_rank())
        return DistributedSetup(device, True, 1, 0)
    try:
        local_rank = int(os.environ["LOCAL_RANK"])
    except ValueError:
        raise ValueError(f"LOCAL_RANK={os.environ['LOCAL_RANK']!r} must be an int; launch with torchrun") from None
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL uses the current device for its communicators (upstream #1950)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not is_distributed():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=init_timeout_s))
        _set_collective_timeout(collective_timeout_s)
        logger.info(
            "joined the process group: rank %d of %d on %s (%s)",
            get_rank(),
            get_world_size(),
            device,
            dist.get_backend(),
        )
    return DistributedSetup(device, is_master(), get_world_size(), get_rank())


def _set_collective_timeout(seconds: float) -> None:
    # torch has no public way to give the rendezvous and the collectives different timeouts; this private
    # setter exists since torch 2.2. Without it the group keeps the init timeout.
    setter = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if setter is not None:
        try:
            setter(timedelta(seconds=seconds))
        except Exception:  # a backend that does not support changing it keeps the init timeout
            pass


def setup_distributed_vars() -> tuple[bool, int, int]:
    """``(is_master, world_size, rank)`` from torch.distributed, or ``(True, 1, 0)`` when not initialized."""
    return is_master(), get_world_size(), get_rank()


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined (call once, at the end of training)."""
    if is_distributed():
        dist.destroy_process_group()
