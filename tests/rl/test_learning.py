"""PPO with the default agent learns a small MettaGrid task on the CPU in well under a minute."""

from __future__ import annotations

import numpy as np
import torch

from metta.agent.metta_agent import make_policy
from metta.interface.environment import Environment
from metta.rl.experience import make_experience
from metta.rl.functional_trainer import rollout, train_ppo
from metta.rl.losses import Losses
from metta.rl.optimizer import Optimizer
from metta.rl.trainer_config import TrainerConfig

# One agent in a small room; an altar two steps away holds a heart (and makes one more a tick after it is
# emptied). Finding and using it within 24 steps is what the agent must learn.
LEARNED = 0.6  # mean episode reward over three rollouts (a random policy gets under 0.2)
ROOM = "#######\n#.....#\n#..@..#\n#.....#\n#...._#\n#######"


def room_config() -> dict:
    return {
        "game": {
            "num_agents": 1,
            "max_steps": 24,
            "inventory_item_names": ["heart"],
            "actions": {"attack": {"enabled": False}, "swap": {"enabled": False}, "put_items": {"enabled": False}},
            "objects": {
                "wall": {"type_id": 1},
                "altar": {
                    "type_id": 8,
                    "output_resources": {"heart": 1},
                    "initial_resource_count": 1,
                    "max_output": 1,
                    "cooldown": 1000,
                },
            },
            "agent": {"rewards": {"inventory": {"heart": 1}}, "resource_limits": {}},
            "map_builder": {"type": "ascii", "map_data": ROOM},
        }
    }


def random_policy_reward(num_episodes: int = 400) -> float:
    env = Environment(env_config=room_config(), num_envs=64, seed=1, is_training=False, device="cpu")
    rng = np.random.default_rng(1)
    max_args = np.array(env.max_action_args)
    rewards: list[float] = []
    while len(rewards) < num_episodes:
        _, _, _, _, infos, env_ids, _ = env.recv()
        types = rng.integers(0, len(max_args), len(env_ids))
        env.send(np.stack([types, rng.integers(0, max_args[types] + 1)], axis=1).astype(np.int32))
        rewards += [info["episode_reward"] for info in infos]
    env.close()
    return float(np.mean(rewards))


def test_ppo_learns_to_find_the_altar():
    torch.manual_seed(0)
    cfg = TrainerConfig(
        total_timesteps=120_000,
        batch_size=2048,
        minibatch_size=512,
        bptt_horizon=8,
        update_epochs=2,
        ppo={"ent_coef": 0.01, "gamma": 0.95, "gae_lambda": 0.9},
        optimizer={"learning_rate": 3e-3},
    )
    env = Environment(env_config=room_config(), num_envs=64, seed=0, is_training=True, device="cpu")
    policy = make_policy(env)
    experience = make_experience(env, policy, cfg, "cpu")
    optimizer = Optimizer(
        "adam", policy, learning_rate=cfg.optimizer.learning_rate, max_grad_norm=cfg.ppo.max_grad_norm
    )
    losses = Losses()
    agent_step, epoch = 0, 0
    curve: list[float] = []
    # Up to total_timesteps; stop as soon as the last three rollouts show the task learned.
    while agent_step < cfg.total_timesteps and not (len(curve) >= 3 and np.mean(curve[-3:]) > LEARNED):
        agent_step, stats = rollout(policy, env, experience, "cpu", agent_step)
        epoch = train_ppo(policy, optimizer, experience, "cpu", losses, epoch, cfg, agent_step=agent_step)
        curve.append(float(np.mean(stats["episode_reward"])))
    env.close()

    random_reward = random_policy_reward()
    final = float(np.mean(curve[-3:]))
    assert random_reward < 0.2, f"the task should be hard for a random policy (mean reward {random_reward:.3f})"
    assert final > max(LEARNED, 5 * random_reward), f"no learning: curve {np.round(curve, 3).tolist()}"
    assert epoch == 2 * len(curve)  # update_epochs per rollout
