"""Seed 001 (modular RL components): every code block as written, with sizes shrunk and the names the seed
leaves undefined filled in (a tiny env, its policy and buffer, custom losses, ``state``).

Not run: the "Old:" migration block (``MettaTrainer(cfg, ...)``), the Hydra trainer this seed migrates away
from, which metta does not have. The examples the seed lists run in tests/test_examples_components.py and
tests/test_demo_and_structured_example.py.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
import yaml

from seed_helpers import all_finite, changed, parameters_of


def tiny_curriculum():
    from metta.interface.environment import default_env_config
    from metta.mettagrid.curriculum.core import SingleTaskCurriculum

    return SingleTaskCurriculum("tiny", default_env_config(num_agents=2, width=8, height=8))


def tiny_trainer_config(tmp_path, **overrides):
    from metta.rl.trainer_config import TrainerConfig

    fields = dict(
        total_timesteps=64,
        batch_size=64,
        minibatch_size=32,
        bptt_horizon=8,
        forward_pass_minibatch_target_size=8,
        async_factor=1,  # 4 envs of 2 agents, in this process
        checkpoint={
            "checkpoint_interval": 1,
            "wandb_checkpoint_interval": 0,
            "checkpoint_dir": str(tmp_path / "run" / "checkpoints"),
        },
        simulation={"evaluate_interval": 0},
    )
    fields.update(overrides)
    return TrainerConfig(**fields)


@pytest.fixture
def parts(tmp_path):
    """The names the seed's blocks take as given: a vecenv, its policy, a buffer, an optimizer, a policy store."""
    from metta.agent.policy_store import PolicyStore
    from metta.interface import Agent, Optimizer
    from metta.rl.experience import make_experience
    from metta.rl.vecenv import make_vecenv

    torch.manual_seed(0)
    vecenv = make_vecenv(tiny_curriculum(), "serial", num_envs=2, is_training=True, seed=0)
    vecenv.async_reset(0)
    policy = Agent(vecenv, config="fast", device="cpu")
    config = tiny_trainer_config(tmp_path)
    experience = make_experience(vecenv, policy, config, "cpu")
    optimizer = Optimizer("adam", policy, learning_rate=1e-3)
    policy_store = PolicyStore(
        {"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(tmp_path / "run" / "checkpoints")}}}
    )
    yield vecenv, policy, experience, optimizer, policy_store, "cpu"
    vecenv.close()


def curiosity_loss(policy, obs, actions, rewards, values, advantages):
    """Custom loss for exploration."""
    # Your implementation (filled in: small values where the critic was surprised)
    loss_tensor = 0.01 * (advantages.abs().detach() * values).mean()
    return loss_tensor


def diversity_loss(policy, obs, actions, rewards, values, advantages):
    return 0.001 * values.pow(2).mean()


def test_structured_configs_and_migration_from_legacy_yaml():
    from metta.agent.agent_config import AgentConfig
    from metta.rl.trainer_config import TrainerConfig
    from metta.train.train_config import TrainingConfig, small_fast_config

    # Use preset
    config = small_fast_config()
    assert config.agent.name == "fast_cpu"  # the CPU default agent

    # Or create custom
    config = TrainingConfig(
        experiment_name="my_experiment",
        agent=AgentConfig(name="simple_cnn", hidden_size=512),
        trainer=TrainerConfig(total_timesteps=1_000_000),
    )
    assert config.agent.hidden_size == 512 and config.trainer.total_timesteps == 1_000_000

    # Old YAML config
    yaml_config = {
        "agent": {"name": "simple_cnn"},
        "trainer": {"total_timesteps": 10_000_000},
    }

    # Convert to structured config
    config = TrainingConfig.from_dict(yaml_config)
    assert config.agent.name == "simple_cnn" and config.trainer.total_timesteps == 10_000_000
    assert TrainingConfig.from_yaml(_write(config.to_yaml())) == config  # and back through YAML


def _write(text: str) -> str:
    with open("migrated.yaml", "w") as f:
        f.write(text)
    return "migrated.yaml"


def test_functional_training_loop_with_custom_step_and_losses_sizes_its_envs_to_the_batch(tmp_path, parts, caplog):
    """The call as written, without num_envs: the trainer config's forward-pass target (TrainerConfig's 4096
    agents, in 2 async batches) is more than its batch holds, so the envs are sized to fit and a warning says so."""
    from metta.rl.functional_trainer import default_training_step, functional_training_loop
    from metta.rl.trainer_config import PPOConfig, TrainerConfig

    _, agent, _, _, policy_store, _ = parts
    curriculum = tiny_curriculum()
    # Filled in: a config of the seed's kind at a tiny size (the forward-pass target left at its default).
    trainer_config = TrainerConfig(
        total_timesteps=128,
        batch_size=64,
        minibatch_size=32,
        bptt_horizon=8,
        checkpoint={"checkpoint_dir": str(tmp_path / "run" / "checkpoints")},
    )
    ppo_config = PPOConfig(ent_coef=0.02)
    steps_seen = []

    def custom_training_step(state, components, config, experience):
        steps_seen.append(state.agent_step)
        return default_training_step(state, components, config, experience)

    before = parameters_of(agent)
    with caplog.at_level(logging.WARNING):
        state = functional_training_loop(
            config=trainer_config,
            ppo_config=ppo_config,
            policy=agent,
            curriculum=curriculum,
            policy_store=policy_store,
            step_fn=custom_training_step,  # Optional custom step
            custom_losses=[curiosity_loss, diversity_loss],  # Optional custom losses
        )
    assert "envs sized to fit the batch: trainer.forward_pass_minibatch_target_size=4096" in caplog.text
    assert steps_seen == [0, 64] and (state.agent_step, state.epoch) == (128, 2) and changed(before, agent)
    assert all_finite(state.metrics) and "losses/custom/curiosity_loss" in state.metrics
    config_yaml = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())  # the run directory holds them
    assert (config_yaml["env"]["num_envs"], config_yaml["env"]["agents"]) == (4, 8)  # 8 agents x 8 steps = 64


def _legacy_config():
    """Seed 001's migration: the legacy dict converted; filled in: sizes shrunk, a run name (so that a second call
    continues the first) and no evaluation (the terrain suite takes a minute)."""
    from metta.train.train_config import TrainingConfig

    # Old YAML config
    yaml_config = {
        "run": "migrated",
        "agent": {"name": "simple_cnn"},
        "trainer": {"total_timesteps": 128, "batch_size": 64, "minibatch_size": 32, "bptt_horizon": 8},
        "evaluate": False,
    }

    # Convert to structured config
    config = TrainingConfig.from_dict(yaml_config)
    return config


def test_migration_option_1_functional_loop_on_a_converted_config_continues(tmp_path, parts):
    from metta.rl.functional_trainer import functional_training_loop
    from metta.rl.trainer_config import PPOConfig

    _, policy, _, _, policy_store, _ = parts
    config, ppo_config, curriculum = _legacy_config(), PPOConfig(), tiny_curriculum()

    # Option 1: Use functional trainer with same interface
    state = functional_training_loop(config, ppo_config, policy, curriculum, policy_store)

    assert (state.agent_step, state.epoch) == (128, 4)  # the CPU defaults' two update passes per batch
    config.trainer.total_timesteps = 192  # a larger budget on the same run directory: it continues
    state = functional_training_loop(config, ppo_config, policy, curriculum, policy_store)
    assert (state.agent_step, state.epoch) == (192, 6)
    names = sorted(os.listdir(tmp_path / "train_dir" / "migrated" / "checkpoints"))
    assert names[-2:] == ["trainer_state_0004.ckpt", "trainer_state_0006.ckpt"]


@pytest.mark.parametrize("made_by", ["constructor", "from_dict"])
def test_direct_components_with_a_training_config(parts, made_by, caplog):
    """The Direct Component Usage block with the seed's structured configs, whose trainer sizes (upstream's, or the
    CPU defaults') are not the buffer's: the buffer's sizes run, with one warning, and the config's other
    settings (two update passes) are used."""
    from metta.agent.agent_config import AgentConfig
    from metta.rl.components import PPOOptimizer, RolloutCollector
    from metta.rl.trainer_config import TrainerConfig
    from metta.train.train_config import TrainingConfig

    vecenv, policy, experience, optimizer, _, device = parts
    if made_by == "constructor":
        config = TrainingConfig(
            experiment_name="my_experiment",
            agent=AgentConfig(name="simple_cnn"),
            trainer=TrainerConfig(total_timesteps=1_000_000, update_epochs=2),
        )
    else:
        config = TrainingConfig.from_dict({"agent": {"name": "simple_cnn"}, "trainer": {"total_timesteps": 10_000_000}})
    before = parameters_of(policy)
    history = []

    # Create components
    collector = RolloutCollector(vecenv, policy, experience, device)
    ppo = PPOOptimizer(policy, optimizer, device, config)

    # Training loop
    for epoch in range(2):
        # Collect data
        stats, steps = collector.collect()

        # Update policy
        losses = ppo.update(experience)

        # Your custom logic here
        history.append((steps, losses))

    assert ppo.trainer_cfg.update_epochs == 2 and ppo.epoch == 4  # the TrainingConfig's trainer settings are used
    assert [s for s, _ in history] == [64, 64] and all(all_finite(l) for _, l in history) and changed(before, policy)
    assert sum("sizes run, not the trainer config's" in r.getMessage() for r in caplog.records) == 1


def test_custom_losses_and_ppo_optimizer_details(parts):
    from metta.agent.policy_state import PolicyState
    from metta.rl.components import PPOOptimizer, RolloutCollector
    from metta.rl.trainer_config import PPOConfig

    vecenv, policy, experience, optimizer, _, device = parts
    collector = RolloutCollector(vecenv, policy, experience, device)
    stats, num_steps = collector.collect()  # Fills experience buffer
    assert num_steps == experience.batch_size and experience.ready_for_training

    ppo = PPOOptimizer(policy, optimizer, device, PPOConfig())

    # Get individual loss components (filled in: the first minibatch's data)
    cfg = ppo.trainer_cfg
    advantages = experience.rollout_advantages(
        cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.vtrace.vtrace_rho_clip, cfg.vtrace.vtrace_c_clip
    )
    minibatch = next(experience.iter_minibatches(advantages))
    obs, actions, old_logprobs = minibatch["obs"], minibatch["actions"], minibatch["logprobs"]
    advantages, returns, values = minibatch["advantages"], minibatch["returns"], minibatch["values"]
    losses = ppo.compute_ppo_loss(obs, actions, old_logprobs, advantages, returns, values)
    # Returns: policy_loss, value_loss, entropy_loss, total_loss, approx_kl, clipfrac
    policy_loss, value_loss, entropy_loss, total_loss, approx_kl, clipfrac = losses
    assert losses.total_loss is total_loss and total_loss.requires_grad
    assert all(torch.isfinite(t) for t in losses) and clipfrac.item() >= 0.0
    stateful = ppo.compute_ppo_loss(
        obs,
        actions,
        old_logprobs,
        advantages,
        returns,
        values,
        rewards=minibatch["rewards"],
        dones=minibatch["dones"],
        state=PolicyState(lstm_h=minibatch["lstm_h"], lstm_c=minibatch["lstm_c"]),
    )
    assert stateful.approx_kl.item() == pytest.approx(0.0, abs=1e-5)  # the rollout's own policy: ratio 1

    my_custom_loss = curiosity_loss
    before = parameters_of(policy)
    # Pass to PPO optimizer
    ppo_optimizer = ppo
    ppo_optimizer.update(experience, custom_loss_fns=[curiosity_loss])
    # Or run full update
    stats = ppo.update(experience, custom_loss_fns=[my_custom_loss])
    assert "custom/curiosity_loss" in stats and all_finite(stats) and changed(before, policy)


def test_training_checkpointer_four_methods(tmp_path, parts, caplog):
    from metta.rl.components import TrainingCheckpointer

    vecenv, policy, _, optimizer, policy_store, _ = parts
    env = vecenv
    # Filled in: where the checkpoints go, the counters, metadata and wandb.
    run_dir = str(tmp_path / "run")
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    epoch, agent_step, metadata, wandb_run = 4, 256, {"agent_step": 256, "note": "seed 001"}, None

    checkpointer = TrainingCheckpointer(checkpoint_dir, policy_store, wandb_run)

    # Save
    with caplog.at_level(logging.WARNING):
        policy_record = checkpointer.save_policy(policy, epoch, metadata)
        checkpointer.save_trainer_state(agent_step, epoch, optimizer.state_dict(), run_dir)
    # Told nothing about the run, it keeps its own clock and says what a resumed run will lack and how to supply it.
    assert "without trainer_config, vecenv, so" in caplog.text

    # Load
    checkpoint = checkpointer.load_trainer_state(run_dir)
    policy_record = checkpointer.load_policy(checkpoint, env)

    assert (checkpoint.agent_step, checkpoint.epoch) == (256, 4) and checkpoint.optimizer_state_dict is not None
    assert checkpoint.stopwatch_state["global"]["total_elapsed"] > 0 and checkpoint.curriculum_state is None
    # load_policy bound it to the env: later trainer states hold the curriculum too.
    checkpointer.save_policy(policy, epoch + 1, metadata)
    checkpointer.save_trainer_state(agent_step + 64, epoch + 1, optimizer.state_dict(), run_dir)
    assert checkpointer.load_trainer_state(run_dir).curriculum_state == env.get_curriculum_state()
    assert policy_record.metadata["note"] == "seed 001" and checkpoint.rng_state is not None
    for key, value in policy.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, policy_record.policy.state_dict()[key]), key


def test_migration_option_2_components_over_a_converted_config(parts, caplog):
    """Option 2 as written (``state`` filled in from the components), with the converted TrainingConfig, whose
    ``total_timesteps`` the loop reads at the top; then a new set of components on the same run continues it."""
    from metta.rl.functional_trainer import create_training_components, default_training_step, resume_training_state

    vecenv, policy, experience, _, policy_store, _ = parts
    config, ppo_config = _legacy_config(), None

    # Option 2: Use components directly for full control
    components = create_training_components(config, ppo_config, policy, vecenv, experience, policy_store)
    state = resume_training_state(components)  # filled in: the state the components resumed
    while state.agent_steps < config.total_timesteps:
        metrics = default_training_step(state, components, config, experience)

    assert (state.agent_steps, state.epoch) == (128, 4) and all_finite(metrics)
    components.checkpointer.save(policy, components.optimizer, state.agent_step, state.epoch)
    components.close()  # releases the run directory for the next process

    # A new process would build everything anew; here: fresh weights, then the components resume them.
    trained = {k: v.clone() for k, v in policy.state_dict().items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        for p in policy.parameters():
            p.zero_()
    config.trainer.total_timesteps = 192
    with create_training_components(config, ppo_config, policy, vecenv, experience, policy_store) as components:
        state = resume_training_state(components)
        assert (state.agent_steps, state.epoch, components.ppo.epoch) == (128, 4, 4)
        assert all(torch.equal(policy.state_dict()[k], v) for k, v in trained.items())
        while state.agent_steps < config.total_timesteps:
            metrics = default_training_step(state, components, config, experience)
    assert (state.agent_steps, state.epoch) == (192, 6)
