"""Bad input gets a clear error before any work starts (naming the field, the value and what is allowed), a
refused launch of an existing run changes none of its files, and out-of-range action values of any integer dtype
are counted as invalid actions, never wrapped to valid ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import BaseModel, ValidationError
from run_helpers import refused_in_process

from metta.agent.agent_config import fast_agent_config
from metta.common.config_cli import ConfigCliError, parse_config
from metta.interface import Environment
from metta.mettagrid import MettaGridConfig, MettaGridEnv
from metta.mettagrid.vecenv import make_vecenv

ROOT = Path(__file__).resolve().parents[2]
TINY = (
    "num_envs=4 trainer.batch_size=1024 trainer.minibatch_size=256 trainer.bptt_horizon=8 trainer.update_epochs=1 "
    "evaluate=false device=cpu torch_threads=1"
).split()
TOO_MANY_AGENTS = [
    "trainer.curriculum=/env/mettagrid/curriculum/simple",
    "num_envs=50",
    "trainer.batch_size=1024",
    "trainer.minibatch_size=256",
    "trainer.bptt_horizon=8",
]
TOO_MANY_AGENTS_MESSAGE = "total_agents=200 is more than segments = batch_size / bptt_horizon = 1024 / 8 = 128"


def unsafe_policy_file(tmp_path: Path) -> Path:
    """A .pt file whose unpickling would run a command: a weights-only load refuses it."""
    path = tmp_path / "unsafe.pt"
    torch.save({"payload": _RunsCode()}, path)
    return path


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def start_run_py(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("METTA_RUN", "DATA_DIR")}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
    )


# --------------------------------------------------------------------------------------------------------
# Command line


class Small(BaseModel):
    run: str | None = None
    epochs: int = 1


@pytest.mark.parametrize(
    "text, where",
    [
        ("run: a\nepochs: [1,\n", "line 3, column 1"),
        ("run: a\n  epochs: 2\n", "line 2, column 9"),
        ("run: 'unterminated\n", "line 2, column 1"),
    ],
)
def test_broken_yaml_config_names_the_file_and_the_place(tmp_path, text, where):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigCliError, match=rf"--config {path}: not valid YAML at {where}") as err:
        parse_config(Small, ["--config", str(path)])
    assert "<unicode string>" not in str(err.value)


def test_run_py_rejects_bad_input_before_creating_a_run_directory(tmp_path, monkeypatch, capfd):
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: {total_timesteps: 10\n")
    unsafe = unsafe_policy_file(tmp_path)
    for i, (args, message) in enumerate(
        (
            ([f"--config={broken}"], f"--config {broken}: not valid YAML at line 2"),
            (["torch_threads=-1"], "torch_threads=-1: Input should be greater than or equal to 1"),
            (
                ["trainer.initial_policy.uri=/nonexistent/policy.pt"],
                "initial_policy.uri='/nonexistent/policy.pt' does not exist",
            ),
            (
                ["trainer.env_overrides={game.agent.rewards.inventory.heart: .nan}"],
                "rewards.inventory['heart']=nan is not allowed",
            ),
            (
                ["trainer.env_overrides={game.num_agents: 0}"],
                "game.num_agents: Input should be greater than or equal to 1 (got 0)",
            ),
            (["seed=-1"], "seed=-1: Input should be greater than or equal to 0"),
            (
                ["trainer.kickstart.teacher_uri=/nonexistent/teacher.pt"],
                "trainer.kickstart.teacher_uri='/nonexistent/teacher.pt' does not exist",
            ),
            ([f"trainer.kickstart.teacher_uri={unsafe}"], "holds objects other than tensors and plain values"),
            (TOO_MANY_AGENTS, TOO_MANY_AGENTS_MESSAGE),
            (["agent=bogus"], "agent name='bogus' is unknown"),
            (["device=bogus"], "device='bogus' is not a torch device; use 'cpu', 'cuda' or 'cuda:N'"),
            # A run configured for a GPU never trains on the CPU instead.
            (["device=cuda"], "device='cuda' but CUDA is not available on this machine")
            if not torch.cuda.is_available()
            else (["device=cuda:64"], "device='cuda:64' but only"),
        )
    ):
        data_dir = tmp_path / f"runs{i}"
        assert message in refused_in_process([*args, f"data_dir={data_dir}", "run=bad_input"], monkeypatch)
        assert not data_dir.exists(), message
    out, err = capfd.readouterr()
    assert "this must never run" not in out + err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------------
# Refused launches of an existing run


@pytest.fixture(scope="module")
def small_embedding_run(tmp_path_factory) -> Path:
    """One epoch of a run whose agent has action embeddings for the navigation actions alone (8 of them, and 1
    to spare), resumed below with launches that must be refused."""
    data_dir = tmp_path_factory.mktemp("refused")
    proc = start_run_py([*small_embedding_launch(data_dir), "trainer.total_timesteps=1024"], data_dir)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    return data_dir / "existing"


def small_embedding_launch(data_dir: Path) -> list[str]:
    """run.py's arguments for the run ``existing`` under ``data_dir`` (its agent in a config file there)."""
    config = data_dir / "small_embeddings.yaml"
    if not config.exists():
        agent = fast_agent_config().model_dump(mode="json", by_alias=True)
        agent["components"]["_action_embeds_"]["nn_params"]["num_embeddings"] = 9
        config.write_text(yaml.safe_dump({"agent": agent}))
    return [f"--config={config}", f"data_dir={data_dir}", "run=existing", *TINY]


def snapshot(run_dir: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under ``run_dir``."""
    return {str(p.relative_to(run_dir)): None if p.is_dir() else p.read_bytes() for p in sorted(run_dir.rglob("*"))}


def corrupt_every_checkpoint(run_dir: Path) -> None:
    for path in (run_dir / "checkpoints").iterdir():
        path.write_bytes(path.read_bytes()[:100])


def test_a_refused_launch_of_an_existing_run_changes_nothing(small_embedding_run: Path, tmp_path: Path, monkeypatch):
    """Each launch resumes a copy of the run with one thing that does not fit; each is refused with a one-line
    message, and every file of the run is as it was."""
    cases = [
        # (the launch's own settings, what the run directory's copy has done to it, the message)
        (["agent=interface_default"], None, "fits this agent"),
        (  # one action more than the checkpoint's embeddings hold beside its own 8
            ["trainer.env_overrides={game.actions.get_items.enabled: false, game.actions.swap.enabled: true}"],
            None,
            "action 'swap_0' needs embedding 9 but num_embeddings=9",
        ),
        ([], corrupt_every_checkpoint, "can be loaded"),
        (["trainer.kickstart.teacher_uri=/nonexistent/teacher.pt"], None, "teacher_uri='/nonexistent/teacher.pt'"),
        (  # the run's 16 agents in a batch of 8 rows
            ["trainer.batch_size=64", "trainer.minibatch_size=64"],
            None,
            "total_agents=16 is more than segments = batch_size / bptt_horizon = 64 / 8 = 8",
        ),
    ]
    for i, (args, damage, message) in enumerate(cases):
        data_dir = tmp_path / f"copy{i}"
        run_dir = data_dir / "existing"
        shutil.copytree(small_embedding_run, run_dir)
        if damage is not None:
            damage(run_dir)
        before = snapshot(run_dir)
        launch = [*small_embedding_launch(data_dir), "trainer.total_timesteps=4096", *args]
        assert message in refused_in_process(launch, monkeypatch)
        assert snapshot(run_dir) == before, message


# --------------------------------------------------------------------------------------------------------
# Env configs


@pytest.mark.parametrize(
    "builder, field",
    [
        ({"type": "random", "width": 9, "height": 9, "agents": 4, "objects": {"altar": -3}}, "objects.altar"),
        ({"type": "random", "width": 9, "height": 9, "agents": -1}, "agents"),
        ({"type": "random", "width": 9, "height": 9, "agents": {"agent": -2}}, "agents.*agent"),
        ({"type": "terrain", "agents": 4, "objects": {"altar": -3}}, "objects.altar"),
        ({"type": "varied_terrain", "agents": 4, "objects": {"altar": -1}}, "objects.altar"),
        ({"type": "maze", "width": 11, "height": 11, "agents": 4, "objects": {"altar": -3}}, "objects.altar"),
        (
            {"type": "multi_room", "num_rooms": 4, "room": {"type": "random", "agents": 1, "objects": {"altar": -3}}},
            "objects.altar",
        ),
    ],
)
def test_negative_map_counts_are_rejected_naming_field_and_value(builder, field):
    with pytest.raises(ValidationError, match=rf"(?s){field}.*greater than or equal to 0.*input_value=-\d"):
        MettaGridConfig.model_validate({"game": {"map_builder": builder}})


@pytest.mark.parametrize(
    "game, message",
    [
        ({"agent": {"rewards": {"inventory": {"heart": float("nan")}}}}, r"rewards.inventory\['heart'\]=nan"),
        ({"agent": {"rewards": {"heart": float("nan")}}}, r"rewards.inventory\['heart'\]=nan"),  # the old flat form
        ({"agent": {"rewards": {"inventory": {"heart": float("inf")}}}}, r"rewards.inventory\['heart'\]=inf"),
        ({"agent": {"rewards": {"stats": {"action.move.success": float("nan")}}}}, r"rewards.stats"),
        ({"agent": {"action_failure_penalty": float("nan")}}, "action_failure_penalty"),
        (
            {"groups": {"agent": {"id": 0, "props": {"rewards": {"inventory": {"heart": float("nan")}}}}}},
            r"groups.agent.props: .*rewards.inventory\['heart'\]=nan",
        ),
        ({"groups": {"agent": {"id": 0, "props": {"freeze_duration": -1}}}}, "groups.agent.props: freeze_duration=-1"),
        ({"groups": {"agent": {"id": 0, "props": {"rewards": {"inventory": {"gold": 1}}}}}}, "'gold'"),
    ],
)
def test_non_finite_rewards_and_bad_group_props_are_rejected(game, message):
    with pytest.raises(ValidationError, match=message):
        MettaGridConfig.model_validate({"game": game})


def test_an_infinite_reward_cap_means_no_cap_and_is_accepted():
    cfg = MettaGridConfig.model_validate(
        {"game": {"agent": {"rewards": {"inventory": {"heart": 1, "heart_max": float("inf")}}}}}
    )
    assert cfg.game.agent.rewards.inventory["heart_max"] == float("inf")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_agents": 0}, "num_agents=0 is not allowed"),
        ({"num_agents": -2}, "num_agents=-2 is not allowed"),
        ({"num_agents": True}, "num_agents=True is not allowed"),
        ({"width": 0}, "width=0 is not allowed"),
        ({"height": 0}, "height=0 is not allowed"),
        ({"num_agents": 0, "env_config": {"game": {"num_agents": 2}}}, "num_agents=0 is not allowed"),
        ({"num_agents": 0, "curriculum_path": "/env/mettagrid/curriculum/simple"}, "num_agents=0 is not allowed"),
        ({"worker_timeout_s": 0}, "worker_timeout_s=0 must be a positive number"),
        ({"worker_timeout_s": float("nan")}, "worker_timeout_s=nan must be a positive number"),
    ],
)
def test_environment_rejects_bad_sizes_instead_of_using_defaults(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Environment(**kwargs)


# --------------------------------------------------------------------------------------------------------
# Actions of any integer dtype

ONE_AGENT = {
    "game": {
        "num_agents": 1,
        "max_steps": 3,
        "map_builder": {"type": "ascii", "map_data": "#####\n#.@.#\n#...#\n#####"},
    }
}


def out_of_range_actions(names: list[str]) -> list[tuple[np.ndarray, str]]:
    """(action, the stat it must count) pairs; each value would wrap to a valid action under a plain cast."""
    noop, move = names.index("noop"), names.index("move")
    return [
        (np.array([2**33 + noop, 0], np.int64), "action.invalid_type"),  # wraps to noop
        (np.array([2**63, 0], np.uint64), "action.invalid_type"),  # wraps to action 0
        (np.array([2**64 - 1, 0], np.uint64), "action.invalid_type"),
        (np.array([2**32 + move, 0], np.int64), "action.invalid_type"),  # wraps to move
        (np.array([-(2**32) + noop, 0], np.int64), "action.invalid_type"),  # wraps to noop
        (np.array([-1, 0], np.int8), "action.invalid_type"),
        (np.array([noop, 2**32], np.int64), "action.invalid_arg"),  # wraps to argument 0
        (np.array([move, 2**63 + 1], np.uint64), "action.invalid_arg"),  # wraps to argument 1
        (np.array([move, -(2**40)], np.int64), "action.invalid_arg"),
        (np.array([noop, 2**32 - 1], np.uint32), "action.invalid_arg"),
    ]


def episode_stats(step, names: list[str], action: np.ndarray) -> dict:
    for _ in range(3):
        infos = step(action)
    assert len(infos) == 1
    return infos[0]["agent"]


def assert_counted_invalid(stats: dict, stat: str) -> None:
    assert stats.get(stat) == 3.0, stats
    assert not any(key.endswith((".success", ".failed")) for key in stats), stats  # nothing ran


def test_out_of_range_actions_are_invalid_in_the_env():
    env = MettaGridEnv(ONE_AGENT)
    for action, stat in out_of_range_actions(env.action_names):
        env.reset(seed=0)
        stats = episode_stats(lambda a: env.step(a.reshape(1, 2))[4], env.action_names, action)
        assert_counted_invalid(stats, stat)
        assert env.actions.dtype == np.int32


def test_out_of_range_actions_are_invalid_through_the_vecenv():
    vec = make_vecenv(ONE_AGENT, "serial", num_envs=1)
    for action, stat in out_of_range_actions(vec.action_names):
        vec.async_reset(0)
        vec.recv()

        def step(a):
            vec.send(a.reshape(1, 2))
            return vec.recv()[4]

        assert_counted_invalid(episode_stats(step, vec.action_names, action), stat)
    vec.close()


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.uint32, np.int16, np.uint8])
def test_in_range_actions_of_any_integer_dtype_still_run(dtype):
    env = MettaGridEnv(ONE_AGENT)
    env.reset(seed=0)
    rotate = env.action_names.index("rotate")
    stats = episode_stats(lambda a: env.step(a.reshape(1, 2))[4], env.action_names, np.array([rotate, 3], dtype))
    assert stats["action.rotate.success"] == 3.0
    assert "action.invalid_type" not in stats and "action.invalid_arg" not in stats
