"""The documented import path of the run config: ``TrainingConfig``, its presets and YAML loading.

    from metta.train.train_config import TrainingConfig, small_fast_config, load_yaml_config

The config lives in ``metta.rl.run_config`` (beside the trainer that reads it) and the YAML reader in
``metta.common.config_cli``; see those modules.
"""

from metta.common.config_cli import ConfigFileError, load_yaml_config
from metta.rl.run_config import (
    PRESETS,
    TrainingConfig,
    WandbConfig,
    cpu_smoke_config,
    cpu_trainer_config,
    gpu_full_config,
    small_fast_config,
)

__all__ = [
    "PRESETS",
    "ConfigFileError",
    "TrainingConfig",
    "WandbConfig",
    "cpu_smoke_config",
    "cpu_trainer_config",
    "gpu_full_config",
    "load_yaml_config",
    "small_fast_config",
]
