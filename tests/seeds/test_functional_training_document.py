"""Seed 000 (functional training): every code block as written, with sizes shrunk and the names the seed leaves
undefined filled in. Its Quick Start (``python demo.py``) is run by tests/test_demo_and_structured_example.py."""

from __future__ import annotations

import time

import numpy as np
import torch

from seed_helpers import all_finite, changed, parameters_of


def test_pydantic_configs_from_code_and_yaml(tmp_path):
    from pydantic import BaseModel

    from metta.rl.trainer_config import PPOConfig as MettaPPOConfig
    from metta.train.train_config import load_yaml_config  # filled in: the seed's loader

    (tmp_path / "config.yaml").write_text("gamma: 0.95\ngae_lambda: 0.9\nclip_coef: 0.15\n")

    class PPOConfig(BaseModel):
        gamma: float = 0.977
        gae_lambda: float = 0.916
        clip_coef: float = 0.1
        # ... etc

    # Create config directly
    ppo_config = PPOConfig(gamma=0.99, clip_coef=0.2)
    assert (ppo_config.gamma, ppo_config.gae_lambda, ppo_config.clip_coef) == (0.99, 0.916, 0.2)

    # Or load from YAML
    ppo_config = load_yaml_config("config.yaml", PPOConfig)
    assert (ppo_config.gamma, ppo_config.gae_lambda, ppo_config.clip_coef) == (0.95, 0.9, 0.15)
    # The same file loads into metta's own PPOConfig, whose defaults are the seed's.
    assert load_yaml_config("config.yaml", MettaPPOConfig).clip_coef == 0.15
    assert (MettaPPOConfig().gamma, MettaPPOConfig().gae_lambda, MettaPPOConfig().clip_coef) == (0.977, 0.916, 0.1)


def _objects_as_the_seed_creates_them():
    """The "Direct Object Creation" block; returns what it made."""
    from metta.agent.metta_agent import MettaAgent
    from metta.mettagrid.curriculum.loader import curriculum_from_config_path
    from metta.rl.experience import Experience
    from metta.rl.vecenv import make_vecenv

    # Filled in: the curriculum, the device and the sizes the seed names.
    curriculum = curriculum_from_config_path("/env/mettagrid/curriculum/simple")
    device = torch.device("cpu")
    batch_size = 512

    # Create environment
    vecenv = make_vecenv(curriculum, "serial", num_envs=4)
    vecenv.async_reset(0)
    env = vecenv.driver_env
    num_agents, obs_space, atn_space = vecenv.num_agents, vecenv.single_observation_space, vecenv.single_action_space
    action_names, max_params = env.action_names, env.max_action_args

    # Create agent
    policy = MettaAgent(
        obs_shape=obs_space.shape,
        obs_width=env.obs_width,
        obs_height=env.obs_height,
        feature_normalizations=env.feature_normalizations,
    ).to(device)
    policy.activate_actions(action_names, max_params, device)

    # Create experience buffer
    experience = Experience(
        total_agents=num_agents,
        batch_size=batch_size,
        obs_space=obs_space,
        atn_space=atn_space,
        device=device,
    )

    # Create optimizer
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-4)
    return vecenv, policy, experience, optimizer, device


def test_direct_object_creation_has_sensible_defaults():
    vecenv, policy, experience, optimizer, device = _objects_as_the_seed_creates_them()
    vecenv.close()
    # Experience(total_agents, batch_size, obs_space, atn_space, device): the rest defaults sensibly.
    assert (experience.bptt_horizon, experience.segments, experience.minibatch_size) == (32, 16, 512)
    assert experience.hidden_size is None  # sized from the policy at the first rollout step
    assert isinstance(optimizer, torch.optim.Adam) and device.type == "cpu"


def test_simple_training_loop_makes_progress(capsys, caplog):
    """The loop as written, its "... PPO parameters" filled in with a plain TrainerConfig: the config's sizes
    (upstream's) are not the buffer's, so the buffer's run and one warning says so."""
    from metta.common.profiling.stopwatch import Stopwatch
    from metta.rl.functional_trainer import rollout, train_ppo
    from metta.rl.losses import Losses
    from metta.rl.trainer_config import TrainerConfig

    torch.manual_seed(0)
    vecenv, policy, experience, optimizer, device = _objects_as_the_seed_creates_them()
    # Filled in: the counters, the timer, the losses, and the PPO parameters train_ppo reads.
    total_timesteps, agent_step, epoch, timer, losses = 1024, 0, 0, Stopwatch(), Losses()
    trainer_cfg = TrainerConfig()
    before = parameters_of(policy)

    while agent_step < total_timesteps:
        start = time.perf_counter()
        # Collect experience
        agent_step, stats = rollout(policy, vecenv, experience, device, agent_step, timer)

        # Update policy
        epoch = train_ppo(
            policy=policy,
            optimizer=optimizer,
            experience=experience,
            device=device,
            losses=losses,
            epoch=epoch,
            # ... PPO parameters
            trainer_cfg=trainer_cfg,
            agent_step=agent_step,
        )
        steps_per_sec = experience.batch_size / (time.perf_counter() - start)

        # Log metrics and save checkpoints
        print(f"Epoch {epoch}: {steps_per_sec} SPS")

    vecenv.close()
    assert (agent_step, epoch) == (1024, 2) and experience.hidden_size == policy.hidden_size
    assert losses.minibatches_processed == 1 and all_finite(losses.stats()) and changed(before, policy)
    assert "Epoch 2:" in capsys.readouterr().out
    said = [r.getMessage() for r in caplog.records if "sizes run" in r.getMessage()]
    assert len(said) == 1 and "batch_size=512 (trainer_cfg.batch_size=524288)" in said[0]


def test_custom_training_step_makes_progress():
    """The "Custom Training Step" block, its helpers written with metta's functions: a rollout, advantages (the
    seed 002 way, without next_rows), a PPO update over the minibatches, and a log line."""
    from metta.common.profiling.stopwatch import Stopwatch
    from metta.rl.advantage import compute_advantage
    from metta.rl.losses import Losses, process_minibatch_update
    from metta.rl.optimizer import Optimizer
    from metta.rl.rollout import perform_rollout_step
    from metta.rl.trainer_config import TrainerConfig

    torch.manual_seed(0)
    vecenv, policy, experience, optimizer, device = _objects_as_the_seed_creates_them()
    cfg = TrainerConfig(batch_size=512, minibatch_size=256, bptt_horizon=32)
    optimizer = Optimizer.wrap(optimizer, policy, cfg.ppo.max_grad_norm)
    logged: list[dict[str, float]] = []
    progress = {"agent_step": 0}

    def custom_rollout(policy, vecenv, experience):
        steps = 0
        while not experience.ready_for_training:
            num_steps, _ = perform_rollout_step(policy, vecenv, experience, device, Stopwatch())
            steps += num_steps
        progress["agent_step"] += steps
        return progress["agent_step"], {}

    def compute_custom_advantages(experience):
        return compute_advantage(
            experience.values,
            experience.rewards,
            experience.dones,
            torch.ones_like(experience.values),
            torch.zeros_like(experience.values),
            cfg.ppo.gamma,
            cfg.ppo.gae_lambda,
            cfg.vtrace.vtrace_rho_clip,
            cfg.vtrace.vtrace_c_clip,
            device,
        )

    def custom_ppo_update(policy, experience, advantages, optimizer, epoch):
        losses = Losses()
        for minibatch in experience.iter_minibatches(advantages):
            loss = process_minibatch_update(policy, experience, minibatch, advantages, cfg, None, 0, losses, device)
            optimizer.step(loss, epoch)
        return losses

    def log_custom_metrics(epoch, agent_step, losses):
        logged.append({"epoch": epoch, "agent_step": agent_step, **losses.stats()})

    before = parameters_of(policy)

    def my_training_loop(policy, vecenv, experience, optimizer):
        for epoch in range(2):
            # Custom rollout logic
            agent_step, stats = custom_rollout(policy, vecenv, experience)

            # Custom advantage computation
            advantages = compute_custom_advantages(experience)

            # Custom PPO update
            losses = custom_ppo_update(policy, experience, advantages, optimizer, epoch)

            # Your metrics
            log_custom_metrics(epoch, agent_step, losses)

    my_training_loop(policy, vecenv, experience, optimizer)
    vecenv.close()
    assert [m["agent_step"] for m in logged] == [512, 1024]  # each rollout a fresh one, without reset_for_rollout()
    assert all(all_finite(m) and np.isfinite(m["policy_loss"]) for m in logged) and changed(before, policy)
