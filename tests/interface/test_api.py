"""The facade: seed-named imports, Agent, run directories and config.yaml, device/distributed setup, errors."""

from __future__ import annotations

import importlib
import logging
import os
import socket

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

import metta.api
import metta.interface
from metta.interface import (
    Agent,
    Environment,
    Optimizer,
    RunDirectories,
    TrainerConfig,
    save_experiment_config,
    setup_device_and_distributed,
    setup_distributed_vars,
    setup_run_directories,
)
from metta.interface.directories import cleanup_distributed

SMALL = {
    "game": {
        "num_agents": 2,
        "max_steps": 50,
        "map_builder": {"type": "random", "width": 10, "height": 10, "agents": 2, "objects": {"altar": 2}},
    }
}

# Every name the seed documents import from the facade (002 Quick Start, 004 Key Exports) and upstream's list.
SEED_NAMES = [
    "Environment",
    "Agent",
    "Optimizer",
    "setup_run_directories",
    "save_experiment_config",
    "perform_rollout_step",
    "process_minibatch_update",
    "accumulate_rollout_stats",
    "compute_advantage",
    "calculate_anneal_beta",
    "setup_device_and_distributed",
    "setup_distributed_vars",
    "cleanup_distributed",
    "save_checkpoint",
    "load_checkpoint",
    "TrainerConfig",
    "PPOConfig",
    "OptimizerConfig",
    "CheckpointConfig",
    "Experience",
    "Kickstarter",
    "Losses",
    "Stopwatch",
    "create_evaluation_config_suite",
    "create_replay_config",
    "evaluate_policy_suite",
    "generate_replay_simple",
    "RunDirectories",
    "initialize_wandb",
    "cleanup_wandb",
    "wrap_agent_distributed",
    "MemoryMonitor",
    "SystemMonitor",
]

# Module paths the seeds import from, and the names they take from each.
SEED_MODULES = {
    "metta.interface.agent": ["Agent"],
    "metta.interface.environment": ["Environment"],
    "metta.interface.directories": ["setup_run_directories", "setup_device_and_distributed", "save_experiment_config"],
    "metta.interface.training": [
        "Optimizer",
        "save_checkpoint",
        "load_checkpoint",
        "initialize_wandb",
        "cleanup_wandb",
        "cleanup_distributed",
    ],
    "metta.interface.evaluation": ["create_evaluation_config_suite", "evaluate_policy_suite", "generate_replay_simple"],
    "metta.rl.policy_management": ["wrap_agent_distributed"],
    "metta.agent.policy_store": ["PolicyStore"],
    "metta.rl.experience": ["Experience"],
    "metta.rl.kickstarter": ["Kickstarter"],
    "metta.rl.losses": ["Losses", "process_minibatch_update"],
    "metta.rl.trainer_config": ["TrainerConfig", "PPOConfig"],
    "metta.common.profiling.stopwatch": ["Stopwatch"],
    "metta.rl.rollout": ["perform_rollout_step"],
    "metta.stats": ["accumulate_rollout_stats"],
    "metta.rl.advantage": ["compute_advantage"],
    "metta.common.profiling.memory_monitor": ["MemoryMonitor"],
    "metta.common.system_monitor": ["SystemMonitor"],
}


@pytest.fixture(scope="module")
def env():
    vec = Environment(env_config=SMALL, num_envs=2, device="cpu", seed=0)
    yield vec
    vec.close()


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seed_names_resolve_in_both_facades(name):
    assert name in metta.interface.__all__
    value = getattr(metta.interface, name)
    assert getattr(metta.api, name) is value


@pytest.mark.parametrize("module", sorted(SEED_MODULES))
def test_seed_module_paths_resolve(module):
    mod = importlib.import_module(module)
    for name in SEED_MODULES[module]:
        assert hasattr(mod, name), f"{module}.{name}"


def test_one_implementation_behind_each_name():
    from metta.common import distributed
    from metta.interface import directories, training
    from metta.rl import optimizer

    assert metta.interface.Optimizer is training.Optimizer is optimizer.Optimizer
    assert directories.setup_device_and_distributed is distributed.setup_device_and_distributed
    assert training.cleanup_distributed is directories.cleanup_distributed is distributed.cleanup_distributed
    assert set(metta.api.__all__) == set(metta.interface.__all__)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        metta.interface.Trainer  # noqa: B018
    with pytest.raises(AttributeError):
        metta.api.Trainer  # noqa: B018


# ----------------------------------------------------------------------------------------------------
# Agent
def test_agent_default_and_seed_configs(env):
    # As upstream's factory: with no config, the interface agent (LSTM 512, one layer; seed 002 sizes for it).
    agent = Agent(env, device="cpu")
    assert isinstance(agent, torch.nn.Module) and agent.device.type == "cpu"
    assert (agent.config.name, agent.hidden_size, agent.core_num_layers) == ("interface_default", 512, 1)
    fast = Agent(env, config="fast", device="cpu")
    assert (fast.hidden_size, fast.core_num_layers) == (128, 2)
    # Seed 002's form: {"device": ..., "agent": {...}} as a DictConfig, device taken from the config; knobs
    # without a graph keep the default graph.
    custom = Agent(env, config=DictConfig({"device": "cpu", "agent": {"clip_range": 0.2}}))
    assert custom.config.clip_range == 0.2 and custom.device.type == "cpu" and custom.hidden_size == 512
    named = Agent(env, config={"agent": {"name": "fast", "clip_range": 0.3}}, device="cpu")
    assert named.config.clip_range == 0.3 and named.hidden_size == 128


def test_agent_falls_back_to_cpu_with_a_warning(env, caplog):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with caplog.at_level(logging.WARNING):
        agent = Agent(env, config="fast", device="cuda")
    assert agent.device.type == "cpu" and "CUDA is not available" in caplog.text


def test_agent_bad_arguments(env):
    with pytest.raises(TypeError, match="pass the vectorized env from Environment"):
        Agent(None)
    with pytest.raises(ValueError, match="device='gpu' is not a torch device"):
        Agent(env, device="gpu")
    with pytest.raises(ValueError, match="unknown"):
        Agent(env, config="no_such_agent", device="cpu")


# ----------------------------------------------------------------------------------------------------
# Directories and config.yaml
def test_run_directories_and_config_yaml(tmp_path):
    dirs = setup_run_directories("my_run", str(tmp_path))
    assert isinstance(dirs, RunDirectories) and dirs.run_name == "my_run"
    assert dirs.run_dir == os.path.join(str(tmp_path), "my_run")
    for sub, path in (("checkpoints", dirs.checkpoint_dir), ("replays", dirs.replay_dir), ("stats", dirs.stats_dir)):
        assert path == os.path.join(dirs.run_dir, sub) and os.path.isdir(path)
    cfg = TrainerConfig(total_timesteps=1000, batch_size=1024, minibatch_size=256, bptt_horizon=16)
    path = save_experiment_config(dirs, torch.device("cpu"), cfg)
    assert path == os.path.join(dirs.run_dir, "config.yaml")
    saved = OmegaConf.load(path)
    assert (saved.run, saved.run_dir, saved.data_dir, saved.device) == ("my_run", dirs.run_dir, str(tmp_path), "cpu")
    assert TrainerConfig.from_dict(saved.trainer) == cfg
    assert [f for f in os.listdir(dirs.run_dir) if ".tmp." in f] == []


def test_run_directories_defaults_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METTA_RUN", "from_env")
    assert setup_run_directories().run_dir == os.path.join(str(tmp_path), "from_env")
    monkeypatch.delenv("METTA_RUN")
    assert setup_run_directories().run_name.startswith("run_")


def test_directory_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="run_name='a/b'"):
        setup_run_directories("a/b", str(tmp_path))
    with pytest.raises(TypeError, match="RunDirectories from setup_run_directories"):
        save_experiment_config(str(tmp_path), "cpu", TrainerConfig())
    dirs = setup_run_directories("x", str(tmp_path))
    with pytest.raises(TypeError, match="pass a TrainerConfig"):
        save_experiment_config(dirs, "cpu", 42)


# ----------------------------------------------------------------------------------------------------
# Device and distributed
def test_single_process_device_setup(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert setup_device_and_distributed("cpu") == (torch.device("cpu"), True, 1, 0)
    assert setup_distributed_vars() == (True, 1, 0)
    if not torch.cuda.is_available():
        assert setup_device_and_distributed("cuda")[0] == torch.device("cpu")
    with pytest.raises(ValueError, match="base_device='tpu0'"):
        setup_device_and_distributed("tpu0")
    cleanup_distributed()  # a no-op without a group


def test_torchrun_style_single_rank_uses_gloo(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(key, value)
    try:
        device, is_master, world_size, rank = setup_device_and_distributed("cpu")
        assert (device, is_master, world_size, rank) == (torch.device("cpu"), True, 1, 0)
        assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
        assert setup_distributed_vars() == (True, 1, 0)
        # Calling again joins nothing new.
        assert setup_device_and_distributed("cpu")[2] == 1
    finally:
        cleanup_distributed()
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("LOCAL_RANK", "zero")
    with pytest.raises(ValueError, match="LOCAL_RANK='zero'"):
        setup_device_and_distributed("cpu")


def test_ensure_initial_policy_single_process(env, tmp_path):
    from metta.interface import ensure_initial_policy

    agent = Agent(env, config="fast", device="cpu")
    assert ensure_initial_policy(agent, None, str(tmp_path), None) is None
    assert ensure_initial_policy(agent, None, str(tmp_path), "/some/model_0003.pt") == "/some/model_0003.pt"


def test_validate_policy_environment_match(env):
    from metta.rl.policy_management import validate_policy_environment_match

    agent = Agent(env, config="fast", device="cpu")
    validate_policy_environment_match(agent, env)
    agent.obs_shape = (100, 3)
    with pytest.raises(ValueError, match=r"expects observations of shape \[100, 3\]"):
        validate_policy_environment_match(agent, env)


def test_optimizer_bad_arguments(env):
    agent = Agent(env, config="fast", device="cpu")
    with pytest.raises(ValueError, match="optimizer_type='sgd'"):
        Optimizer("sgd", agent, learning_rate=3e-4)
    with pytest.raises(ValueError, match="learning_rate=0"):
        Optimizer("adam", agent, learning_rate=0)
