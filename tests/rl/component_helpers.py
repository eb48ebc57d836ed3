"""Tiny real setups shared by the component and functional-loop tests (2 envs x 2 agents, 8x8 rooms)."""

from __future__ import annotations

import copy

import torch

from metta.agent.metta_agent import MettaAgent, make_policy
from metta.agent.policy_store import PolicyStore
from metta.interface.environment import default_env_config
from metta.mettagrid.curriculum.core import SingleTaskCurriculum
from metta.mettagrid.vecenv import make_vecenv
from metta.rl.optimizer import Optimizer
from metta.rl.trainer_config import TrainerConfig

NUM_ENVS = 2
ENV_SEED = 5
# The trainer seeds torch with the run's seed (the envs' too), so the direct paths seed their rollouts alike.
ROLLOUT_SEED = ENV_SEED


def tiny_curriculum() -> SingleTaskCurriculum:
    return SingleTaskCurriculum("tiny", default_env_config(num_agents=2, width=8, height=8))


def tiny_config(**overrides) -> TrainerConfig:
    fields = dict(
        total_timesteps=64,
        batch_size=64,
        minibatch_size=16,
        bptt_horizon=4,
        # The loop's envs: NUM_ENVS x 2 agents in one forward pass, in this process.
        forward_pass_minibatch_target_size=NUM_ENVS * 2,
        async_factor=1,
        num_workers=1,
        checkpoint={"checkpoint_interval": 0, "wandb_checkpoint_interval": 0},
        simulation={"evaluate_interval": 0},
    )
    fields.update(overrides)
    return TrainerConfig(**fields)


def tiny_vecenv():
    """The vecenv exactly as functional_training_loop builds it from tiny_curriculum()."""
    vecenv = make_vecenv(tiny_curriculum(), "serial", num_envs=NUM_ENVS, num_workers=1, is_training=True, seed=ENV_SEED)
    vecenv.async_reset(ENV_SEED)
    return vecenv


_BASE: dict[str, MettaAgent] = {}


def fresh_policy() -> MettaAgent:
    """The same initial weights every call (one base policy, deep-copied)."""
    if "base" not in _BASE:
        env = tiny_vecenv()
        torch.manual_seed(0)
        _BASE["base"] = make_policy(env)
        env.close()
    return copy.deepcopy(_BASE["base"])


def optimizer_for(policy: torch.nn.Module, cfg: TrainerConfig) -> Optimizer:
    """The optimizer create_training_components builds by default."""
    return Optimizer.from_config(policy, cfg)


def policy_store(checkpoint_dir: str) -> PolicyStore:
    return PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": checkpoint_dir}}})


def value_regularizer(policy, obs, actions, rewards, values, advantages):
    """A custom loss with a gradient: keeps the value predictions small."""
    return 0.01 * values.pow(2).mean()
