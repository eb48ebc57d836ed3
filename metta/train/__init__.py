"""Structured configs for whole training runs (the documented package): ``metta.train.train_config``."""

from metta.train.train_config import (
    PRESETS,
    ConfigFileError,
    TrainingConfig,
    WandbConfig,
    cpu_smoke_config,
    cpu_trainer_config,
    gpu_full_config,
    load_yaml_config,
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
