"""Run directories, the saved experiment config, and device/distributed setup (re-exported).

dirs = setup_run_directories()                  # ./train_dir/<run>/{checkpoints,replays,stats}
device, is_master, world_size, rank = setup_device_and_distributed("cuda")
save_experiment_config(dirs, device, trainer_config)   # {run_dir}/config.yaml, rank 0 only

They live in ``metta.common.run_dirs`` (the run-directory layout) and ``metta.common.distributed``.
"""

from metta.common.distributed import (
    cleanup_distributed,
    setup_device_and_distributed,
    setup_distributed_vars,
)
from metta.common.run_dirs import RunDirectories, save_experiment_config, setup_run_directories

__all__ = [
    "RunDirectories",
    "setup_run_directories",
    "save_experiment_config",
    "setup_device_and_distributed",
    "setup_distributed_vars",
    "cleanup_distributed",
]
