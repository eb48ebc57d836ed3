"""The seed documents' snippets, adapted to tiny sizes (002's Quick Start is in tests/interface/test_api.py)."""

from __future__ import annotations

import torch

from metta.rl.experience import Experience, calculate_batch_sizes
from metta.rl.trainer_config import TrainerConfig


def test_seed_003_pipeline_numbers():
    # Slide 3: 4,096 agents per forward pass / 3 agents = 1,365 envs, rounded to 16 workers = 1,360; x2 async.
    target, batch_envs, num_envs = calculate_batch_sizes(4096, num_agents=3, num_workers=16, async_factor=2)
    assert (target, batch_envs, num_envs) == (1365, 1360, 2720)
    assert num_envs // 16 == 170  # envs per worker
    # Slides 4 and 7: 524,288 steps in segments of 64; minibatches of 16,384 steps.
    cfg = TrainerConfig(batch_size=524_288, minibatch_size=16_384, bptt_horizon=64)
    segments = cfg.batch_size // cfg.bptt_horizon
    assert segments == 8192 and cfg.minibatch_size // cfg.bptt_horizon == 256
    assert segments // (cfg.minibatch_size // cfg.bptt_horizon) == 32  # gradient updates per batch
    # The same arithmetic inside Experience, at a size a test can allocate.
    from gymnasium import spaces

    exp = Experience(
        total_agents=3, batch_size=512, bptt_horizon=64, minibatch_size=128, obs_space=spaces.Box(0, 255, (200, 3), "uint8"),
        atn_space=spaces.MultiDiscrete([4, 4]), device="cpu", hidden_size=8,
    )  # fmt: skip
    assert (exp.segments, exp.minibatch_segments, exp.num_minibatches) == (8, 2, 4)


def test_seed_004_interface_snippets(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    from metta.agent.policy_store import PolicyStore
    from metta.interface.agent import Agent
    from metta.interface.directories import setup_device_and_distributed, setup_run_directories
    from metta.interface.environment import Environment
    from metta.interface.training import Optimizer, load_checkpoint, save_checkpoint
    from metta.rl.experience import Experience
    from metta.rl.policy_management import wrap_agent_distributed
    from metta.rl.trainer_config import PPOConfig
    from metta.interface import setup_distributed_vars

    dirs = setup_run_directories("seed004", str(tmp_path))
    device = setup_device_and_distributed("cuda" if torch.cuda.is_available() else "cpu")[0]
    is_master, world_size, rank = setup_distributed_vars()
    assert (is_master, world_size, rank) == (True, 1, 0)
    env = Environment(curriculum_path="/env/mettagrid/curriculum/navigation/bucketed", num_envs=2, device=str(device))
    agent = wrap_agent_distributed(Agent(env, device=str(device)), device)
    optimizer = Optimizer(optimizer_type="adam", policy=agent, learning_rate=3e-4)
    trainer_config = TrainerConfig(
        total_timesteps=1024, batch_size=1024, minibatch_size=256, bptt_horizon=8, ppo=PPOConfig(gamma=0.99, gae_lambda=0.95)
    )
    experience = Experience(
        total_agents=env.num_agents, batch_size=trainer_config.batch_size, bptt_horizon=trainer_config.bptt_horizon,
        minibatch_size=trainer_config.minibatch_size, obs_space=env.single_observation_space,
        atn_space=env.single_action_space, device=device, hidden_size=agent.hidden_size,
        num_lstm_layers=agent.core_num_layers,
    )  # fmt: skip
    from metta.rl.rollout import perform_rollout_step
    from metta.common.profiling.stopwatch import Stopwatch

    timer = Stopwatch()
    agent_step = 0
    while not experience.ready_for_training:
        num_steps, info = perform_rollout_step(agent, env, experience, device, timer)
        agent_step += num_steps
    policy_store = PolicyStore(
        {"device": str(device), "policy_cache_size": 10, "trainer": {"checkpoint": {"checkpoint_dir": dirs.checkpoint_dir}}},
        wandb_run=None,
    )
    saved = save_checkpoint(
        epoch=1, agent_step=agent_step, agent=agent, optimizer=optimizer, policy_store=policy_store,
        checkpoint_path=dirs.checkpoint_dir, checkpoint_interval=1,
    )  # fmt: skip
    assert saved is not None
    loaded_step, epoch, policy_path = load_checkpoint(
        checkpoint_dir=dirs.checkpoint_dir, agent=agent, optimizer=optimizer, policy_store=policy_store
    )
    assert (loaded_step, epoch) == (agent_step, 1) and policy_path
    env.close()
