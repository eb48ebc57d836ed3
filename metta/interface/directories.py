"""Run directories, the saved experiment config, and device/distributed setup.

dirs = setup_run_directories()                  # ./train_dir/<run>/{checkpoints,replays,stats}
device, is_master, world_size, rank = setup_device_and_distributed("cuda")
save_experiment_config(dirs, device, trainer_config)   # {run_dir}/config.yaml, rank 0 only
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from metta.common.distributed import (
    cleanup_distributed,
    is_master,
    setup_device_and_distributed,
    setup_distributed_vars,
)
from metta.common.fs import atomic_write_text

__all__ = [
    "RunDirectories",
    "setup_run_directories",
    "save_experiment_config",
    "setup_device_and_distributed",
    "setup_distributed_vars",
    "cleanup_distributed",
]

# A run name becomes a directory name and a wandb run id: keep it to characters both accept.
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


@dataclass(frozen=True)
class RunDirectories:
    run_dir: str
    checkpoint_dir: str
    replay_dir: str
    stats_dir: str
    run_name: str


def setup_run_directories(run_name: str | None = None, data_dir: str | None = None) -> RunDirectories:
    """Create ``{data_dir}/{run_name}/`` with ``checkpoints/``, ``replays/`` and ``stats/``.

    ``run_name`` defaults to ``$METTA_RUN``, else ``run_YYYYmmdd_HHMMSS``; ``data_dir`` to ``$DATA_DIR``, else
    ``./train_dir``. An existing run directory is reused: that is how a run resumes.
    """
    run_name = run_name or os.environ.get("METTA_RUN") or time.strftime("run_%Y%m%d_%H%M%S")
    if not isinstance(run_name, str) or not _RUN_NAME_RE.match(run_name) or len(run_name) > 128:
        raise ValueError(
            f"run_name={run_name!r} must be 1-128 characters of letters, digits, '.', '_', '=' or '-', starting with "
            "a letter or digit (it names a directory and a wandb run), e.g. 'nav_lr3e-4'"
        )
    data_dir = data_dir or os.environ.get("DATA_DIR") or "./train_dir"
    if not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"data_dir={data_dir!r} must be a directory path, e.g. './train_dir'")
    run_dir = os.path.join(os.fspath(data_dir), run_name)
    dirs = RunDirectories(
        run_dir=run_dir,
        checkpoint_dir=os.path.join(run_dir, "checkpoints"),
        replay_dir=os.path.join(run_dir, "replays"),
        stats_dir=os.path.join(run_dir, "stats"),
        run_name=run_name,
    )
    for path in (dirs.checkpoint_dir, dirs.replay_dir, dirs.stats_dir):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create run directory {path}: {e}; choose another data_dir (or $DATA_DIR)") from e
    return dirs


def save_experiment_config(
    dirs: RunDirectories, device: torch.device | str, trainer_config: Any, extra: Mapping[str, Any] | None = None
) -> str | None:
    """Write ``{run_dir}/config.yaml`` (run, run_dir, data_dir, device, trainer, and ``extra``'s keys, such as
    the agent and the envs the run used); rank 0 only.

    ``trainer_config`` is a ``TrainerConfig`` (or any pydantic model / dict). Returns the file path on rank 0
    and None elsewhere. The write is atomic, so a crash never leaves half a config.
    """
    if not isinstance(dirs, RunDirectories):
        raise TypeError(f"dirs is a {type(dirs).__name__}; pass the RunDirectories from setup_run_directories()")
    if hasattr(trainer_config, "model_dump"):
        trainer = trainer_config.model_dump(mode="json", by_alias=True)
    elif isinstance(trainer_config, dict) or OmegaConf.is_config(trainer_config):
        trainer = OmegaConf.to_container(OmegaConf.create(trainer_config), resolve=True)
    else:
        raise TypeError(f"trainer_config is a {type(trainer_config).__name__}; pass a TrainerConfig")
    if not is_master():
        return None
    config = {
        "run": dirs.run_name,
        "run_dir": dirs.run_dir,
        "data_dir": os.path.dirname(dirs.run_dir),
        "device": str(device),
        "trainer": trainer,
        **dict(extra or {}),
    }
    path = os.path.join(dirs.run_dir, "config.yaml")
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(config)))
    return path
