"""``metta.api``: the same names as ``metta.interface`` (upstream's module name for the API)."""

from typing import Any

from metta import interface as _interface
from metta.interface import (  # noqa: F401 - re-exports
    Agent,
    CheckpointConfig,
    Environment,
    Experience,
    Kickstarter,
    Losses,
    MemoryMonitor,
    Optimizer,
    OptimizerConfig,
    PolicyStore,
    PPOConfig,
    RunDirectories,
    Stopwatch,
    SystemMonitor,
    TrainerCheckpoint,
    TrainerConfig,
    accumulate_rollout_stats,
    apply_lr_schedule,
    calculate_anneal_beta,
    cleanup_distributed,
    cleanup_wandb,
    compute_advantage,
    ensure_initial_policy,
    initialize_wandb,
    load_checkpoint,
    perform_rollout_step,
    process_minibatch_update,
    save_checkpoint,
    save_experiment_config,
    scheduled_learning_rate,
    setup_device_and_distributed,
    setup_distributed_vars,
    setup_run_directories,
    wrap_agent_distributed,
)

__all__ = list(_interface.__all__)


def __getattr__(name: str) -> Any:
    # The evaluation helpers load lazily in metta.interface; forward to it.
    if name in _interface._LAZY_EXPORTS:
        return getattr(_interface, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
