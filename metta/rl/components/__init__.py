"""Composable training components, each a thin class over the functions of ``metta.rl``:

- ``RolloutCollector``: fills the ``Experience`` buffer (``functional_trainer.rollout``);
- ``PPOOptimizer``: PPO updates, custom losses, the loss terms on given data (``train_ppo``,
  ``compute_ppo_losses``);
- ``PolicyEvaluator``: scores on a simulation suite (``metta.sim.SimulationSuite``);
- ``TrainingCheckpointer``: policies and trainer state (``metta.rl.checkpoint``, ``PolicyStore``);
- ``StatsLogger``: metrics to a file, wandb, TensorBoard and the console (``metta.common.stats_logger``).
"""

from metta.rl.components.policy_evaluator import PolicyEvaluator
from metta.rl.components.ppo_optimizer import PPOOptimizer
from metta.rl.components.rollout_collector import RolloutCollector
from metta.rl.components.stats_logger import StatsLogger
from metta.rl.components.training_checkpointer import TrainingCheckpointer

__all__ = ["PPOOptimizer", "PolicyEvaluator", "RolloutCollector", "StatsLogger", "TrainingCheckpointer"]
