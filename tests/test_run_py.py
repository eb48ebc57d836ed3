"""run.py end to end: every invocation is a real subprocess with tiny sizes on the CPU.

One epoch is 4 envs x 32 agents x 8 steps = 1024 agent steps (batch_size=1024, 4 minibatches of 256), so
total_timesteps=3000 gives 3 epochs. The whole file takes about a minute on a 2-core machine.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metta.rl.checkpoint import list_trainer_states, load_latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
RUN_PY = str(REPO / "run.py")
STEPS_PER_EPOCH = 1024
MINIBATCHES_PER_EPOCH = 4
TINY = [
    "num_envs=4",
    "trainer.batch_size=1024",
    "trainer.minibatch_size=256",
    "trainer.bptt_horizon=8",
    "trainer.update_epochs=1",  # one epoch per rollout keeps the counts below simple
    "evaluate=false",
    "trainer.checkpoint.checkpoint_interval=1",
    "device=cpu",
]
RESUMED_RE = re.compile(r"resumed from (\S+): epoch (\d+), agent_step (\d+)")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("METTA_RUN", "DATA_DIR", "WANDB_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["WANDB_MODE"] = "disabled"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_py(
    data_dir: Path,
    run: str,
    total: int,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    launcher: list[str] | None = None,
) -> subprocess.CompletedProcess:
    args = [f"data_dir={data_dir}", f"run={run}", f"trainer.total_timesteps={total}", *TINY, *extra]
    cmd = (launcher or [sys.executable]) + [RUN_PY, *args]
    return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def assert_ok(proc: subprocess.CompletedProcess) -> str:
    out = output(proc)
    assert proc.returncode == 0, f"run.py exited {proc.returncode}:\n{out[-4000:]}"
    return out


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def resumed(out: str) -> tuple[str, int, int]:
    m = RESUMED_RE.search(out)
    assert m, f"no 'resumed from' line in the log:\n{out[-3000:]}"
    return m.group(1), int(m.group(2)), int(m.group(3))


def adam_steps(ckpt) -> float:
    """The Adam step count of the first parameter: it only keeps growing across a resume if the state was restored."""
    state = ckpt.optimizer_state_dict["state"]
    return float(state[min(state)]["step"])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """One completed 3-epoch run, logged to wandb offline (under its data directory); tests that change it work on
    a copy."""
    data_dir = tmp_path_factory.mktemp("base")
    wandb_dir = data_dir / "wandb_dir"
    wandb_dir.mkdir()
    env = _env(WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    assert_ok(run_py(data_dir, "base", 3000, env=env))
    return data_dir / "base"


def copy_run(run_dir: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(run_dir, dest)
    return tmp_path


# -------------------------------------------------------------------------------------------------------- 1
def test_smoke_run_writes_run_directory(base_run: Path):
    assert (base_run / "config.yaml").is_file()
    assert (base_run / "checkpoints").is_dir()
    rows = metrics_rows(base_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["agent_step"] for r in rows] == [1024, 2048, 3072]
    for row in rows:
        assert row["overview/sps"] > 0
        doubled = [k for k in row if "/" in k and k.split("/")[0] == k.split("/")[1]]
        assert not doubled, f"metric keys with a doubled prefix: {doubled}"
    states = list_trainer_states(str(base_run / "checkpoints"))
    assert [epoch for epoch, _ in states] == [3, 2, 1]
    ckpt = load_latest_checkpoint(str(base_run / "checkpoints"))
    assert (ckpt.epoch, ckpt.agent_step) == (3, 3072)
    assert os.path.isfile(ckpt.policy_path)
    report = (base_run / "index.html").read_text()  # the run report, written at the end
    assert 'data-metric="overview/sps"' in report and "run_config.json" in report


# -------------------------------------------------------------------------------------------------------- 2
def test_resume_falls_back_past_a_corrupt_checkpoint_and_goes_on(base_run: Path, tmp_path: Path):
    """The finished 3-epoch run resumed to 5,000 steps with its newest trainer state cut in half: run.py warns,
    resumes from epoch 2's complete checkpoint with its optimizer state, and metrics.jsonl ends with every epoch
    once."""
    data_dir = copy_run(base_run, tmp_path, "base")
    run_dir = data_dir / "base"
    before = load_latest_checkpoint(str(run_dir / "checkpoints"))
    assert (before.epoch, before.agent_step) == (3, 3072)
    newest = run_dir / "checkpoints" / "trainer_state_0003.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])

    out = assert_ok(run_py(data_dir, "base", 5000))
    warning = [line for line in out.splitlines() if "WARNING" in line and "trainer_state_0003.ckpt" in line]
    assert warning, f"no warning naming the truncated file:\n{out[-3000:]}"
    path, epoch, agent_step = resumed(out)
    assert Path(path).name == "model_0002.pt"
    assert (epoch, agent_step) == (2, 2048)
    assert "timer 'global' is already running" not in out
    # run.py's last word (on stdout): the run's own records, with twice the steps (the stop's form: the signal tests).
    further = f"python {RUN_PY} --config {run_dir}/run_config.json trainer.total_timesteps=10000"
    assert f"train further with: {further}" in out.splitlines()
    # The start line says what the run will train; the epoch line its time and the time left.
    assert "run base: 5,000 agent steps, rounded up to whole batches of 1,024: 5,120 on cpu" in out
    assert re.search(r"epoch +5 .* elapsed \d+s +eta 0s\n", out), out[-2000:]

    rows = metrics_rows(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]  # epoch 3 again, once
    assert [r["agent_step"] for r in rows] == [1024 * e for e in range(1, 6)]
    times = [r["time"] for r in rows]
    assert all(a < b for a, b in zip(times, times[1:])), times  # the training time goes on from the checkpoint's

    after = load_latest_checkpoint(str(run_dir / "checkpoints"))
    assert (after.epoch, after.agent_step) == (5, 5120)
    # Adam's step counter carried over: 3 epochs' worth before, 5 epochs' worth after (a fresh optimizer: 3).
    per_epoch = adam_steps(before) / before.epoch
    assert per_epoch > 0
    assert adam_steps(after) == pytest.approx(per_epoch * after.epoch)


# -------------------------------------------------------------------------------------------------------- 5
@pytest.mark.parametrize(
    "override, names",
    [("trainer.totl_timesteps=5", "trainer.totl_timesteps"), ("trainer.minibatch_size=500", "minibatch_size")],
)
def test_bad_override_fails_before_work(tmp_path: Path, override: str, names: str):
    cmd = [sys.executable, RUN_PY, f"data_dir={tmp_path}", "run=bad", override]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert names in output(proc)
    assert not (tmp_path / "bad").exists()
    assert "Traceback" not in output(proc)


# -------------------------------------------------------------------------------------------------------- 6
def test_help_lists_keys():
    proc = subprocess.run(
        [sys.executable, RUN_PY, "--help"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, output(proc)
    for key in ("trainer.ppo.clip_coef", "trainer.total_timesteps", "num_envs", "wandb.enabled", "debug_dump_weights"):
        assert key in proc.stdout


# -------------------------------------------------------------------------------------------------------- 7
def assert_same(a, b, where: str) -> None:
    """Equal state dicts, tensors compared exactly (a state dict may also carry plain values, e.g. feature maps)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"differs at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"keys differ at {where}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, f"differs at {where}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------------------------------------------- 8
def test_wandb_offline_writes_run_directory(base_run: Path):
    found = glob.glob(str(base_run.parent / "**" / "offline-run-*"), recursive=True)
    assert found, f"no wandb offline run directory under {base_run.parent}"
    assert any(glob.glob(os.path.join(d, "*.wandb")) for d in found)


# -------------------------------------------------------------------------------------------------------- 9
def test_run_py_and_the_functional_trainer_give_the_same_losses(base_run: Path):
    """run.py's iteration is rollout()/train_ppo(), and what it records is enough to rebuild it: built from
    run_config.json and config.yaml the way run.py builds them (same seeds, order of construction), the first
    epoch has run.py's losses."""
    from omegaconf import OmegaConf

    from metta.interface import Agent, Environment
    from metta.rl.experience import make_experience
    from metta.rl.functional_trainer import rollout, train_ppo
    from metta.rl.losses import Losses
    from metta.rl.optimizer import Optimizer
    from metta.rl.trainer_config import TrainerConfig

    run_cfg = json.loads((base_run / "run_config.json").read_text())
    trainer_cfg = TrainerConfig.from_dict(OmegaConf.to_container(OmegaConf.load(base_run / "config.yaml").trainer))
    torch.manual_seed(run_cfg["seed"])
    np.random.seed(run_cfg["seed"])
    env = Environment(
        curriculum_path=trainer_cfg.curriculum,
        device="cpu",
        seed=run_cfg["seed"],
        num_envs=run_cfg["num_envs"],
        async_factor=trainer_cfg.async_factor,
        num_workers=trainer_cfg.num_workers,
        vectorization=run_cfg["vectorization"],
        is_training=True,
    )
    agent = Agent(env, config=run_cfg["agent"], device="cpu")
    optimizer = Optimizer.from_config(agent, trainer_cfg)
    experience = make_experience(env, agent, trainer_cfg, "cpu")
    losses = Losses()
    try:
        agent_step, _ = rollout(agent, env, experience, "cpu", 0)
        epoch = train_ppo(agent, optimizer, experience, "cpu", losses, 0, trainer_cfg, agent_step=agent_step)
    finally:
        env.close()
    first = metrics_rows(base_run)[0]
    assert (first["epoch"], first["agent_step"]) == (epoch, agent_step)
    ours = losses.stats()
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance"):
        assert ours[name] == pytest.approx(first[f"losses/{name}"], rel=1e-4, abs=1e-6), name
