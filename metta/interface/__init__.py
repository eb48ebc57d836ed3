"""The plain-Python API: factories and helpers over metta's internals (also importable as ``metta.api``).

    from metta.interface import Environment, Agent, Optimizer, setup_run_directories, save_checkpoint, ...

Every name is re-exported from the module that implements it; nothing here has logic of its own. The
evaluation helpers are imported on first use, so importing this package does not load the simulator.
See docs/API.md for each name's signature and an example.
"""

from importlib import import_module
from typing import Any

from metta.agent.policy_store import PolicyStore
from metta.common.distributed import cleanup_distributed, setup_device_and_distributed, setup_distributed_vars
from metta.common.profiling.memory_monitor import MemoryMonitor
from metta.common.profiling.stopwatch import Stopwatch
from metta.common.system_monitor import SystemMonitor
from metta.interface.agent import Agent
from metta.interface.directories import RunDirectories, save_experiment_config, setup_run_directories
from metta.interface.environment import Environment
from metta.interface.training import (
    TrainerCheckpoint,
    cleanup_wandb,
    ensure_initial_policy,
    initialize_wandb,
    load_checkpoint,
    save_checkpoint,
)
from metta.rl.advantage import compute_advantage
from metta.rl.experience import Experience, calculate_anneal_beta
from metta.rl.kickstarter import Kickstarter
from metta.rl.losses import Losses, process_minibatch_update
from metta.rl.optimizer import Optimizer, apply_lr_schedule, scheduled_learning_rate
from metta.rl.policy_management import wrap_agent_distributed
from metta.rl.rollout import perform_rollout_step
from metta.rl.trainer_config import CheckpointConfig, OptimizerConfig, PPOConfig, TrainerConfig
from metta.stats import accumulate_rollout_stats

# Evaluation and replays live in metta.interface.evaluation (over metta.sim); loaded when first used.
_LAZY_EXPORTS = {
    "create_evaluation_config_suite": "metta.interface.evaluation",
    "create_replay_config": "metta.interface.evaluation",
    "evaluate_policy_suite": "metta.interface.evaluation",
    "generate_replay_simple": "metta.interface.evaluation",
}

__all__ = [
    # Factories
    "Environment",
    "Agent",
    "Optimizer",
    "apply_lr_schedule",
    "scheduled_learning_rate",
    # Training
    "perform_rollout_step",
    "process_minibatch_update",
    "accumulate_rollout_stats",
    "compute_advantage",
    "calculate_anneal_beta",
    # Distributed
    "setup_device_and_distributed",
    "setup_distributed_vars",
    "cleanup_distributed",
    "wrap_agent_distributed",
    # Checkpointing
    "save_checkpoint",
    "load_checkpoint",
    "ensure_initial_policy",
    "TrainerCheckpoint",
    "PolicyStore",
    # Configuration
    "TrainerConfig",
    "PPOConfig",
    "OptimizerConfig",
    "CheckpointConfig",
    # Components
    "Experience",
    "Kickstarter",
    "Losses",
    "Stopwatch",
    "MemoryMonitor",
    "SystemMonitor",
    # Utilities
    "RunDirectories",
    "setup_run_directories",
    "save_experiment_config",
    "initialize_wandb",
    "cleanup_wandb",
    *_LAZY_EXPORTS,
]


def __getattr__(name: str) -> Any:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
