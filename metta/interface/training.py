"""Training helpers of the interface: the optimizer, wandb, checkpoints, distributed cleanup (re-exported).

    record = save_checkpoint(epoch, agent_step, agent, optimizer, policy_store, dirs.checkpoint_dir,
                             checkpoint_interval=10, trainer_config=cfg, vecenv=env, stopwatch=timer)
    agent_step, epoch, policy_path = load_checkpoint(dirs.checkpoint_dir, agent, optimizer, policy_store,
                                                     vecenv=env, stopwatch=timer)

Each name lives in its one implementation: ``metta.rl.optimizer``, ``metta.common.wandb_context``,
``metta.rl.checkpoint``, ``metta.common.distributed``.
"""

from metta.common.distributed import cleanup_distributed
from metta.common.wandb_context import cleanup_wandb, initialize_wandb
from metta.rl.checkpoint import TrainerCheckpoint, ensure_initial_policy, load_checkpoint, save_checkpoint
from metta.rl.optimizer import Optimizer

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
