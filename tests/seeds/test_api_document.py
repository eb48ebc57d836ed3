"""Seed 002 (the Metta API documentation): every code block as written, with sizes shrunk and the names the seed
leaves undefined (``experience``, ``agent_step``, ``timer``, the ``...`` arguments) filled in.

Also the promise behind its loops: advantages a user computes without ``next_rows`` are the ones the policy loss
uses, as are the ``next_rows`` advantages of run.py's path.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from seed_helpers import all_finite, changed, parameters_of

SMALL = {
    "game": {
        "num_agents": 4,
        "max_steps": 40,
        "map_builder": {"type": "random", "width": 12, "height": 12, "agents": 4, "objects": {"altar": 3}},
    }
}


@pytest.mark.timeout(240)
def test_quick_start_trains_to_total_timesteps():
    """The Quick Start block. Its loop never calls reset_for_rollout(): the buffer starts a new rollout by itself
    once trained on, so agent_step reaches total_timesteps."""
    import torch
    from metta.api import (
        Environment,
        Agent,
        Optimizer,
        setup_run_directories,
        save_experiment_config,
        perform_rollout_step,
        process_minibatch_update,
        accumulate_rollout_stats,
        compute_advantage,
        calculate_anneal_beta,
    )
    from metta.agent.policy_store import PolicyStore
    from metta.rl.experience import Experience
    from metta.rl.kickstarter import Kickstarter
    from metta.rl.losses import Losses
    from metta.rl.trainer_config import TrainerConfig
    from metta.common.profiling.stopwatch import Stopwatch
    from omegaconf import DictConfig

    # Set up directories
    dirs = setup_run_directories()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # Create environment and agent
    env = Environment(num_agents=4, width=32, height=32, device=str(device))
    agent = Agent(env, device=str(device))

    # Create trainer config
    trainer_config = TrainerConfig(
        total_timesteps=512,
        batch_size=256,
        minibatch_size=64,
    )

    # Save experiment config
    save_experiment_config(dirs, device, trainer_config)

    # Create policy store
    policy_store = PolicyStore(
        DictConfig(
            {
                "device": str(device),
                "policy_cache_size": 10,
                "trainer": {
                    "checkpoint": {
                        "checkpoint_dir": dirs.checkpoint_dir,
                    }
                },
            }
        ),
        wandb_run=None,
    )

    # Create optimizer
    optimizer = Optimizer(
        optimizer_type="adam",
        policy=agent,
        learning_rate=3e-4,
    )

    # Filled in: the seed's "Experience Buffer" block (sizes shrunk), the counters, the timer and the losses.
    experience = Experience(
        total_agents=env.num_agents,
        batch_size=256,
        bptt_horizon=16,
        minibatch_size=64,
        obs_space=env.single_observation_space,
        atn_space=env.single_action_space,
        device=device,
        hidden_size=512,
        num_lstm_layers=1,
    )
    agent_step, timer, losses = 0, Stopwatch(), Losses()
    before = parameters_of(agent)
    rollouts = 0

    # Training loop
    while agent_step < trainer_config.total_timesteps:
        rollouts += 1
        # Rollout phase
        while not experience.ready_for_training:
            num_steps, info = perform_rollout_step(agent, env, experience, device, timer)
            agent_step += num_steps

        # Training phase
        for epoch in range(trainer_config.update_epochs):
            for minibatch in experience.iter_minibatches():
                loss = process_minibatch_update(
                    agent, experience, minibatch, None, trainer_config, None, agent_step, losses, device
                )
                optimizer.step(loss, epoch)

    assert agent_step == trainer_config.total_timesteps and rollouts == 2
    assert losses.minibatches_processed == 8 and all_finite(losses.stats()) and torch.isfinite(loss)
    assert changed(before, agent)
    assert os.path.isfile(os.path.join(dirs.run_dir, "config.yaml")) and policy_store is not None
    env.close()


def test_environment_agent_and_optimizer_blocks(caplog):
    from metta.agent.policy_state import PolicyState
    from metta.interface import Agent, Environment, Optimizer
    from omegaconf import DictConfig

    # Simple environment
    env = Environment(
        num_agents=4,
        width=32,
        height=32,
        device="cuda",
    )
    env.close()

    # With navigation curriculum
    env = Environment(
        curriculum_path="/env/mettagrid/curriculum/navigation/bucketed",
        num_agents=4,
        device="cuda",
    )
    env.close()
    env = Environment(env_config=SMALL, device="cpu", seed=0)

    # Default agent (CUDA falls back to the CPU with a warning on a machine without it)
    with caplog.at_level(logging.WARNING):
        agent = Agent(env, device="cuda")
    assert (agent.hidden_size, agent.core_num_layers) == (512, 1)  # upstream's interface agent

    # Custom agent config
    config = DictConfig(
        {
            "device": "cuda",
            "agent": {
                "clip_range": 0.2,
                "l2_init_weight_update_interval": 100,
                # ... component definitions ...
            },
        }
    )
    agent = Agent(env, config=config)
    assert agent.config.clip_range == 0.2 and agent.config.l2_init_weight_update_interval == 100

    optimizer = Optimizer(
        optimizer_type="adam",  # or "muon"
        policy=agent,
        learning_rate=3e-4,
        max_grad_norm=0.5,
    )

    # Filled in: compute_loss, epoch, accumulate_steps.
    def compute_loss():
        obs, _ = env.driver_env.reset(0)
        _, logprobs, entropy, value, _ = agent(torch.from_numpy(obs).to(agent.device), PolicyState())
        return value.pow(2).mean() - 0.01 * entropy.mean()

    epoch, accumulate_steps = 0, 2
    before = parameters_of(agent)
    # Training step
    loss = compute_loss()
    optimizer.step(loss, epoch, accumulate_steps)
    assert not changed(before, agent)  # the first of two accumulated parts: no step yet
    loss = compute_loss()
    optimizer.step(loss, epoch, accumulate_steps)
    assert changed(before, agent)
    env.close()


def test_policy_store_config_saving_and_checkpointing_blocks():
    from metta.agent.policy_store import PolicyStore
    from metta.api import save_experiment_config, setup_run_directories
    from metta.interface import Agent, Environment
    from metta.rl.trainer_config import TrainerConfig
    from omegaconf import DictConfig

    device = "cpu"
    env = Environment(env_config=SMALL, device=device, seed=0)
    agent = Agent(env, config="fast", device=device)

    # Configuration Saving
    dirs = setup_run_directories()
    trainer_config = TrainerConfig(
        total_timesteps=10_000_000,
        batch_size=16384,
        # ... other config ...
    )
    save_experiment_config(dirs, device, trainer_config)
    assert os.path.isfile(os.path.join(dirs.run_dir, "config.yaml"))

    # Policy Store, created directly with a minimal config
    policy_store = PolicyStore(
        DictConfig(
            {
                "device": "cpu",
                "policy_cache_size": 10,
                "trainer": {
                    "checkpoint": {
                        "checkpoint_dir": "./checkpoints",
                    }
                },
            }
        ),
        wandb_run=None,
    )

    # Checkpointing (filled in: epoch, agent_step)
    epoch, agent_step = 3, 1200
    name = policy_store.make_model_name(epoch)
    policy_record = policy_store.create_empty_policy_record(name)
    policy_record.metadata = {
        "agent_step": agent_step,
        "epoch": epoch,
        "score": 0.95,
        # any other metadata you want
    }
    policy_record.policy = agent

    saved_record = policy_store.save(policy_record)

    loaded_record = policy_store.policy_record(saved_record.file_path)
    assert loaded_record.metadata["score"] == 0.95 and loaded_record.metadata["agent_step"] == 1200
    for (key, mine), theirs in zip(agent.state_dict().items(), loaded_record.policy.state_dict().values()):
        if isinstance(mine, torch.Tensor):
            assert torch.equal(mine, theirs), key

    # The "Policy Store" block of Key Components: a record by name, saved and loaded back.
    policy_record = policy_store.create_empty_policy_record(name)
    policy_record.metadata = {"epoch": epoch, "score": 0.5}
    policy_record.policy = agent
    saved_record = policy_store.save(policy_record)
    assert policy_store.policy_record(saved_record.file_path).metadata["score"] == 0.5
    env.close()


def test_evaluation_config_block():
    from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig

    evaluation_config = SimulationSuiteConfig(
        name="evaluation",
        simulations={
            "navigation/terrain_small": SingleEnvSimulationConfig(
                env="/env/mettagrid/navigation/evals/terrain_small", num_episodes=1
            ),
            "navigation/terrain_medium": SingleEnvSimulationConfig(
                env="/env/mettagrid/navigation/evals/terrain_medium", num_episodes=1
            ),
            "navigation/terrain_large": SingleEnvSimulationConfig(
                env="/env/mettagrid/navigation/evals/terrain_large", num_episodes=1
            ),
        },
    )
    assert sorted(evaluation_config.simulations) == [
        "navigation/terrain_large",
        "navigation/terrain_medium",
        "navigation/terrain_small",
    ]


# ----------------------------------------------------------------------------------------------------------
# The advantages the policy loss uses are the ones the user computed (seed 002's way and run.py's way).
@pytest.fixture(scope="module")
def filled_buffer():
    """A buffer filled by one rollout of the fast agent, with norm_adv off so that the loss's advantages are
    visible as they are."""
    from metta.interface import Agent, Environment, TrainerConfig
    from metta.rl.experience import Experience
    from metta.rl.rollout import perform_rollout_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    env = Environment(env_config=SMALL, num_envs=2, device="cpu", seed=0)
    agent = Agent(env, config="fast", device="cpu")
    cfg = TrainerConfig(batch_size=512, minibatch_size=128, bptt_horizon=16, ppo={"norm_adv": False})
    experience = Experience(
        total_agents=env.num_agents,
        batch_size=512,
        bptt_horizon=16,
        minibatch_size=128,
        obs_space=env.single_observation_space,
        atn_space=env.single_action_space,
        device="cpu",
    )
    while not experience.ready_for_training:
        perform_rollout_step(agent, env, experience, "cpu")
    env.close()
    return agent, experience, cfg


def _advantages_the_loss_uses(agent, experience, cfg, advantages) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's advantages as the policy loss recomputes them at the start of an update (ratio 1),
    seen through a custom loss, next to the given ones."""
    from metta.rl.losses import Losses, process_minibatch_update

    used, given = [], []

    def capture(policy, obs, actions, rewards, values, advantages):
        used.append(advantages.detach().clone())
        return values.sum() * 0.0

    for minibatch in experience.iter_minibatches():
        process_minibatch_update(agent, experience, minibatch, advantages, cfg, None, 0, Losses(), "cpu", [capture])
        given.append(minibatch["advantages"])  # the rows' given advantages (filled in when the minibatch had none)
    return torch.cat(used), torch.cat(given)


def test_advantages_computed_without_next_rows_are_the_ones_the_loss_uses(filled_buffer):
    """Seed 002's compute_advantage block (no next_rows): the loss keeps each row's end unchained, as they are."""
    from metta.api import compute_advantage

    agent, experience, trainer_config = filled_buffer
    device = "cpu"
    # Create initial tensors
    advantages = torch.zeros(experience.values.shape, device=device)
    initial_importance_sampling_ratio = torch.ones_like(experience.values)

    # Compute advantages using GAE
    advantages = compute_advantage(
        experience.values,
        experience.rewards,
        experience.dones,
        initial_importance_sampling_ratio,
        advantages,
        trainer_config.ppo.gamma,
        trainer_config.ppo.gae_lambda,
        trainer_config.vtrace.vtrace_rho_clip,
        trainer_config.vtrace.vtrace_c_clip,
        device,
    )
    assert (advantages[:, -1] == 0).all()  # no next_rows: every row ends at its last step
    used, given = _advantages_the_loss_uses(agent, experience, trainer_config, advantages)
    torch.testing.assert_close(used, given, atol=1e-4, rtol=1e-4)


def test_next_rows_advantages_and_none_are_the_ones_the_loss_uses(filled_buffer):
    """run.py's way (next_rows) and advantages=None (the buffer's own, the same way) stay consistent too, and
    differ from the unchained ones where rows continue."""
    from metta.rl.advantage import compute_advantage

    agent, experience, cfg = filled_buffer
    args = (cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.vtrace.vtrace_rho_clip, cfg.vtrace.vtrace_c_clip)
    chained = compute_advantage(
        experience.values,
        experience.rewards,
        experience.dones,
        torch.ones_like(experience.values),
        torch.zeros_like(experience.values),
        *args,
        next_rows=experience.next_rows,
    )
    used, given = _advantages_the_loss_uses(agent, experience, cfg, chained)
    torch.testing.assert_close(used, given, atol=1e-4, rtol=1e-4)
    continues = experience.next_rows >= 0
    assert continues.any() and (chained[continues, -1] != 0).all()
    torch.testing.assert_close(experience.rollout_advantages(*args), chained)
    used_none, given_none = _advantages_the_loss_uses(agent, experience, cfg, None)
    torch.testing.assert_close(used_none, given_none, atol=1e-4, rtol=1e-4)
