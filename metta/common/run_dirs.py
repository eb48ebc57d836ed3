"""The run directory: its name, where it lives, and the folders inside it (the one layout every loop writes).

    {data_dir}/{run_name}/
        config.yaml, run_config.json   the settings the run used
        metrics.jsonl, index.html      one row per epoch, the run report
        checkpoints/                   model_XXXX.pt + trainer_state_XXXX.ckpt
        replays/  stats/  torch_traces/

``run_name`` defaults to ``$METTA_RUN``, else ``run_YYYYmmdd_HHMMSS``; ``data_dir`` to ``$DATA_DIR``, else
``./train_dir``. A trainer config may place checkpoints, replays and traces elsewhere
(``TrainerConfig.with_run_dir`` fills in only the folders it leaves unset).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metta.common.config_cli import plain, write_yaml
from metta.common.distributed import is_master

__all__ = [
    "RunDirectories",
    "RunFolders",
    "resolve_run_name",
    "run_directories",
    "run_folders",
    "save_experiment_config",
    "setup_run_directories",
]

# A run name becomes a directory name and a wandb run id: keep it to characters both accept.
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


@dataclass(frozen=True)
class RunDirectories:
    run_dir: str
    checkpoint_dir: str
    replay_dir: str
    stats_dir: str
    run_name: str


@dataclass(frozen=True)
class RunFolders:
    checkpoint_dir: str
    replay_dir: str
    stats_dir: str
    profile_dir: str


def run_folders(run_dir: str | os.PathLike) -> RunFolders:
    """The folders of the run directory ``run_dir`` (not created)."""
    run_dir = os.fspath(run_dir)
    return RunFolders(
        checkpoint_dir=os.path.join(run_dir, "checkpoints"),
        replay_dir=os.path.join(run_dir, "replays"),
        stats_dir=os.path.join(run_dir, "stats"),
        profile_dir=os.path.join(run_dir, "torch_traces"),
    )


def check_run_name(run_name: str, field: str = "run_name") -> str:
    """``run_name`` when it can name a directory and a wandb run; else a ``ValueError`` naming ``field``."""
    if not isinstance(run_name, str) or not _RUN_NAME_RE.match(run_name):
        raise ValueError(
            f"{field}={run_name!r} must be 1-128 characters of letters, digits, '.', '_', '=' or '-', starting with "
            "a letter or digit (it names a directory and a wandb run), e.g. 'nav_lr3e-4'"
        )
    return run_name


def resolve_run_name(run_name: str | None = None) -> str:
    """``run_name``, else ``$METTA_RUN``, else ``run_YYYYmmdd_HHMMSS`` (checked by ``check_run_name``)."""
    return check_run_name(run_name or os.environ.get("METTA_RUN") or time.strftime("run_%Y%m%d_%H%M%S"))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """``data_dir``, else ``$DATA_DIR``, else ``./train_dir``."""
    data_dir = data_dir or os.environ.get("DATA_DIR") or "./train_dir"
    if not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"data_dir={data_dir!r} must be a directory path, e.g. './train_dir'")
    return os.fspath(data_dir)


def run_directories(run_name: str | None = None, data_dir: str | os.PathLike | None = None) -> RunDirectories:
    """The paths of ``{data_dir}/{run_name}/`` and its folders (defaults: see the module docstring); nothing is
    created (``setup_run_directories`` creates them)."""
    run_name = resolve_run_name(run_name)
    run_dir = os.path.join(resolve_data_dir(data_dir), run_name)
    folders = run_folders(run_dir)
    return RunDirectories(run_dir, folders.checkpoint_dir, folders.replay_dir, folders.stats_dir, run_name)


def setup_run_directories(run_name: str | None = None, data_dir: str | os.PathLike | None = None) -> RunDirectories:
    """Create ``{data_dir}/{run_name}/`` with ``checkpoints/``, ``replays/`` and ``stats/`` (defaults: see the
    module docstring). An existing run directory is reused: that is how a run resumes."""
    dirs = run_directories(run_name, data_dir)
    for path in (dirs.checkpoint_dir, dirs.replay_dir, dirs.stats_dir):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create run directory {path}: {e}; choose another data_dir (or $DATA_DIR)") from e
    return dirs


def save_experiment_config(
    dirs: RunDirectories, device: Any, trainer_config: Any, extra: Mapping[str, Any] | None = None
) -> str | None:
    """Write ``{run_dir}/config.yaml`` (run, run_dir, data_dir, device, trainer, and ``extra``'s keys, such as
    the agent and the envs the run used); rank 0 only.

    ``trainer_config`` is a ``TrainerConfig`` (or any pydantic model, dict or DictConfig). Returns the file path
    on rank 0 and None elsewhere. The write is atomic, so a crash never leaves half a config.
    """
    if not isinstance(dirs, RunDirectories):
        raise TypeError(f"dirs is a {type(dirs).__name__}; pass the RunDirectories from setup_run_directories()")
    trainer = plain(trainer_config)
    if not isinstance(trainer, Mapping):
        raise TypeError(f"trainer_config is a {type(trainer_config).__name__}; pass a TrainerConfig")
    if not is_master():
        return None
    config = {
        "run": dirs.run_name,
        "run_dir": dirs.run_dir,
        "data_dir": os.path.dirname(dirs.run_dir),
        "device": str(device),
        "trainer": dict(trainer),
        **dict(extra or {}),
    }
    path = os.path.join(dirs.run_dir, "config.yaml")
    write_yaml(path, config)
    return path
