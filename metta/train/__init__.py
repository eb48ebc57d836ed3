"""Structured configs for whole training runs: ``TrainingConfig``, presets and YAML loading (see train_config)."""

from metta.train.train_config import (
    PRESETS,
    ConfigFileError,
    TrainingConfig,
    WandbConfig,
    cpu_smoke_config,
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
    "gpu_full_config",
    "load_yaml_config",
    "small_fast_config",
]
