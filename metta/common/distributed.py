"""Small torch.distributed helpers; each works (as a no-op or identity) when distributed is not initialized."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import NamedTuple

import numpy as np
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


def shared_store_restart_warning(environ: Mapping[str, str] | None = None) -> str | None:
    """Why this torchrun launch's restarts may fail to connect, or None: when torchrun restarts workers
    (``--max-restarts`` > 0) and shares its rendezvous store with them.

    With ``--rdzv-backend=c10d`` (and ``--standalone``) torchrun keeps one store for every worker group it starts
    unless ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, and the keys through which the ranks of a group find each
    other have the same names in every group: a restarted rank can read the address of a rank that died with the
    previous group and fail to connect (pytorch/pytorch#135712), using up the restarts. With the variable set,
    rank 0 of each group serves a fresh store. The static rendezvous (``--master_port``) shares its store too but
    restarts fine; a worker cannot tell the two apart, hence a warning rather than an error.
    """
    env = os.environ if environ is None else environ
    try:
        restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        restarts = 0
    if restarts <= 0 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    return (
        f"torchrun --max-restarts={restarts} shares its rendezvous store with the workers: under "
        "--rdzv-backend=c10d or --standalone a restarted rank can find the addresses of the ranks that died there "
        "and fail to connect (pytorch/pytorch#135712); export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun "
        "to give each restart a fresh store (README.md, 'Several machines, restarts and lost ranks')"
    )


def seed_process(seed: int, rank: int) -> int:
    """Seed torch and NumPy with ``seed + rank``, so every global rank draws its own streams, and return the seed
    of this rank's envs, ``seed + 1000 * rank``."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    env_seed = seed + 1000 * rank
    logger.info("rank %d: torch and numpy seeded with %d, the envs with %d", rank, seed + rank, env_seed)
    return env_seed


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
    while the others wait in the next all-reduce, which easily takes longer than 30 s. Rank 0 warns when
    torchrun's restarts may not connect (``shared_store_restart_warning``).
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
    if os.environ.get("RANK") == "0" and (warning := shared_store_restart_warning()):
        logger.warning(warning)
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
            "joined the process group: rank %d of %d (local rank %d) on %s (%s)",
            get_rank(),
            get_world_size(),
            local_rank,
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
