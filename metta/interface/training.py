"""Training helpers of the interface: the optimizer, wandb, checkpoints, distributed cleanup.

Each is a thin call into the one implementation (``metta.rl.optimizer``, ``metta.common.wandb_context``,
``metta.rl.checkpoint``, ``metta.common.distributed``) that checks its arguments first.

    record = save_checkpoint(epoch, agent_step, agent, optimizer, policy_store, dirs.checkpoint_dir,
                             checkpoint_interval=10, trainer_config=cfg, vecenv=env, stopwatch=timer)
    agent_step, epoch, policy_path = load_checkpoint(dirs.checkpoint_dir, agent, optimizer, policy_store,
                                                     vecenv=env, stopwatch=timer)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from metta.agent.policy_record import PolicyRecord
from metta.common.distributed import barrier, cleanup_distributed, is_distributed, is_master
from metta.common.wandb_context import WandbContext
from metta.rl import checkpoint as _checkpoint
from metta.rl.checkpoint import DEFAULT_KEEP_LAST_N, TrainerCheckpoint
from metta.rl.optimizer import Optimizer
from metta.rl.policy_management import unwrap_agent

__all__ = [
    "Optimizer",
    "TrainerCheckpoint",
    "initialize_wandb",
    "cleanup_wandb",
    "cleanup_distributed",
    "save_checkpoint",
    "load_checkpoint",
    "ensure_initial_policy",
]


# ----------------------------------------------------------------------------------------------------
# Weights & Biases
def initialize_wandb(
    run_name: str,
    run_dir: str | None = None,
    enabled: bool | None = None,
    project: str | None = None,
    entity: str | None = None,
    config: Any = None,
    job_type: str = "train",
    tags: list[str] | None = None,
    notes: str | None = None,
) -> tuple[Any, WandbContext]:
    """Start a wandb run on rank 0: ``(wandb_run or None, context)``; pass the context to ``cleanup_wandb``.

    ``enabled=None`` (the default) turns wandb on only with an API key or ``WANDB_MODE=offline`` (no network
    needed) and off with ``WANDB_DISABLED=true``; see ``metta.common.wandb_context``. ``config`` may be a
    ``TrainerConfig``, a dict or a DictConfig. Other ranks get ``(None, context)`` and log nothing.
    """
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json", by_alias=True)
    elif config is not None and type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=True)
    elif config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config is a {type(config).__name__}; pass a TrainerConfig, a dict or a DictConfig")
    ctx = WandbContext(
        run_name,
        run_dir,
        enabled=enabled if is_master() else False,
        project=project,
        entity=entity,
        config=config,
        job_type=job_type,
        tags=tags,
        notes=notes,
    )
    return ctx.__enter__(), ctx


def cleanup_wandb(wandb_ctx: WandbContext | None) -> None:
    """Finish the wandb run started by ``initialize_wandb`` (a no-op when wandb was off)."""
    if wandb_ctx is not None:
        wandb_ctx.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------------
# Checkpoints
def _check_agent(agent: Any) -> None:
    if not isinstance(agent, torch.nn.Module):
        raise TypeError(f"agent is a {type(agent).__name__}; pass the policy from Agent(env) (an nn.Module)")


def _check_optimizer(optimizer: Any) -> None:
    if optimizer is not None and not (hasattr(optimizer, "state_dict") and hasattr(optimizer, "load_state_dict")):
        raise TypeError(f"optimizer is a {type(optimizer).__name__}; pass metta's Optimizer, a torch optimizer or None")


def _check_dir(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name}={value!r} must be a directory path, e.g. dirs.checkpoint_dir")
    return os.fspath(value)


def save_checkpoint(
    epoch: int,
    agent_step: int,
    agent: torch.nn.Module,
    optimizer: Any,
    policy_store: Any,
    checkpoint_path: str,
    checkpoint_interval: int,
    stats: Mapping[str, Any] | None = None,
    force_save: bool = False,
    *,
    trainer_config: Any = None,
    vecenv: Any = None,
    stopwatch: Any = None,
    keep_last_n: int | None = DEFAULT_KEEP_LAST_N,
    final: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> PolicyRecord | None:
    """Write a complete checkpoint on rank 0 when the epoch has crossed a multiple of ``checkpoint_interval``
    since the newest checkpoint in ``checkpoint_path`` (``metta.rl.intervals.crossed``), or with ``force_save``.

    Call it after every update: with ``update_epochs=2`` and ``checkpoint_interval=3`` it saves at epochs 4, 6,
    10, 12, ... (``epoch % 3 == 0`` would miss every odd multiple).

    The checkpoint holds the policy (``model_XXXX.pt``) and a trainer state (optimizer, agent_step, epoch,
    RNG, the curriculum state of ``vecenv``, ``trainer_config``, the ``stopwatch``); the newest
    ``keep_last_n`` are kept. Returns the saved policy's record, or None when nothing was saved.
    """
    if not isinstance(checkpoint_interval, int) or isinstance(checkpoint_interval, bool) or checkpoint_interval < 0:
        raise ValueError(
            f"checkpoint_interval={checkpoint_interval!r} must be an int >= 0 (epochs; 0 saves only with force_save)"
        )
    checkpoint_path = _check_dir("checkpoint_path", checkpoint_path)
    _check_agent(agent)
    _check_optimizer(optimizer)
    if not hasattr(policy_store, "create_empty_policy_record"):
        raise TypeError(f"policy_store is a {type(policy_store).__name__}; pass a metta.agent.policy_store.PolicyStore")
    if not _checkpoint.should_save(
        epoch, checkpoint_interval, force_save, _checkpoint.last_saved_epoch(checkpoint_path, epoch)
    ):
        return None
    return _checkpoint.save_checkpoint(
        checkpoint_path,
        epoch=epoch,
        agent_step=agent_step,
        agent=agent,
        optimizer=optimizer,
        policy_store=policy_store,
        stats=stats,
        trainer_config=trainer_config,
        vecenv=vecenv,
        stopwatch=stopwatch,
        keep_last_n=keep_last_n,
        final=final,
        metadata=metadata,
    )


def load_checkpoint(
    checkpoint_dir: str,
    agent: torch.nn.Module | None,
    optimizer: Any,
    policy_store: Any = None,
    device: torch.device | str | None = None,
    *,
    vecenv: Any = None,
    stopwatch: Any = None,
    restore_rng: bool = True,
    trainer_config: Any = None,
) -> tuple[int, int, str | None]:
    """Resume from the newest good checkpoint in ``checkpoint_dir``: ``(agent_step, epoch, policy_path)``.

    Loads the weights into ``agent`` in place, the optimizer state, and (when given) the curriculum state of
    ``vecenv``, the ``stopwatch`` and the RNG states. A checkpoint written at another torch.distributed world size
    resumes too; rank 0 then logs what that does to the batch sizes of ``trainer_config`` (this run's
    ``TrainerConfig``, per rank) and whether the curriculum state was restored or rebuilt. A checkpoint that is
    corrupt, truncated, or whose policy file cannot be loaded into ``agent`` is skipped with a warning naming its
    files, and the previous one is used. Returns ``(0, 0, None)`` when the directory is missing or holds no checkpoint. Raises
    ``UnloadableCheckpointsError`` when it holds checkpoints and none can be loaded (nothing is changed), and
    ``ValueError`` when ``checkpoint_dir`` is a file or a run directory.
    ``policy_store`` and ``device`` are accepted for upstream's signature; the agent's own device is used.
    """
    del policy_store, device
    checkpoint_dir = _check_dir("checkpoint_dir", checkpoint_dir)
    if agent is not None:
        _check_agent(agent)
    _check_optimizer(optimizer)
    ckpt = _checkpoint.load_latest_checkpoint(checkpoint_dir, agent)
    if ckpt is None:
        return 0, 0, None
    _checkpoint.restore_checkpoint(
        ckpt,
        agent,
        optimizer,
        vecenv=vecenv,
        stopwatch=stopwatch,
        restore_rng=restore_rng,
        trainer_config=trainer_config,
    )
    return ckpt.agent_step, ckpt.epoch, ckpt.policy_path


def ensure_initial_policy(
    agent: torch.nn.Module,
    policy_store: Any,
    checkpoint_path: str,
    loaded_policy_path: str | None,
    device: torch.device | str | None = None,
) -> str | None:
    """Make every rank start from the same weights; returns the policy file they start from (or None).

    After ``load_checkpoint`` every rank already holds the checkpoint's weights. A fresh distributed run has
    rank 0 write its initial weights to ``model_0000.pt`` and the other ranks load them, so the ranks agree
    even before DDP's own broadcast. A single process has nothing to agree on.
    """
    del device
    _check_agent(agent)
    checkpoint_path = _check_dir("checkpoint_path", checkpoint_path)
    if loaded_policy_path is not None or not is_distributed():
        barrier()
        return loaded_policy_path
    path = os.path.join(os.path.abspath(checkpoint_path), _checkpoint.policy_file_name(0))
    if is_master():
        _checkpoint.write_policy(
            checkpoint_path, 0, agent, policy_store, {"agent_step": 0, "epoch": 0, "initial": True}
        )
    barrier()
    if not is_master():
        from metta.agent.policy_store import read_policy_file

        unwrap_agent(agent).load_state_dict(read_policy_file(path)["state_dict"])
    return path
