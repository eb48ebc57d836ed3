#!/usr/bin/env python
"""Train a MettaGrid policy: the complete production loop, readable top to bottom.

    python run.py                                           # CPU-sized defaults on the navigation curriculum
    python run.py run=smoke trainer.total_timesteps=20000 device=cpu
    python run.py --config my_run.yaml                      # the same keys as `python run.py --help`
    torchrun --nproc_per_node=2 run.py run=ddp              # one process per GPU (gloo on CPU, NCCL on GPU)

The settings are a ``TrainingConfig`` (metta.rl.run_config, also metta.train.train_config), the same config the
functional loop and the components take. Everything lands in `{data_dir}/{run}/`: `config.yaml` and
`run_config.json` (the settings the run used, sizes resolved), `metrics.jsonl` (one JSON object per epoch),
`checkpoints/` (complete, atomic checkpoints), `replays/` (with a viewer page per replay), `stats/` (evaluation
episodes, also rows of `{data_dir}/evaluations.sqlite`), `torch_traces/` (profiler traces), `index.html` (the run
report). Running again with the same `run` name resumes from the last good checkpoint; the last line printed is
the command that does (`--config {run_dir}/run_config.json`, which records the name and data_dir), or that trains
further once the steps are done. A launch that does not fit (a batch too small for the agents, a missing or unsafe
teacher file, an agent or action set the checkpoints do not fit) stops with a `run.py: ...` line before the run
directory is made or changed. wandb logs when an API key is configured or `WANDB_MODE=offline` is set
(`wandb.enabled=true|false` forces it).

The ``Trainer`` (metta.rl.trainer) holds what the loop works with and releases it at the end: the run directory
and its lock, the envs, the policy, the optimizer, the buffer, wandb, the monitors, the process group and the
stop signals (SIGTERM or Ctrl-C: finish the iteration, checkpoint, exit 0). The iteration is `rollout()` then
`train_ppo()` (metta.rl.training), the functions the functional loop and the components run too, followed by
the trainer's periodic tasks, each when the epoch counter crosses a multiple of its interval.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

from metta.common.config_cli import ConfigFileError, parse_config
from metta.common.fs import WriteError
from metta.common.run_lock import RunLockError
from metta.rl.checkpoint import CheckpointError
from metta.rl.run_config import TrainingConfig
from metta.rl.trainer import Trainer
from metta.rl.training import rollout, train_ppo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:  # a bad key, value or file: said before any work starts (nothing is created yet)
        config = parse_config(TrainingConfig, doc=__doc__)
        trainer = Trainer(config).open()
    except (ConfigFileError, ValueError, OSError, RunLockError, CheckpointError) as err:
        raise SystemExit(f"run.py: {err}") from None
    with trainer:  # released however the loop ends: the final checkpoint was written by its last iteration
        train(trainer)
    if trainer.is_master:
        print(next_command(trainer), flush=True)


def train(t: Trainer) -> None:
    """The production loop over a set-up trainer: rollout, update, then the periodic tasks, until the steps are
    done or a stop was asked for."""
    state = t.state
    while t.training():
        with t.iteration() as it:  # gradient statistics and a profiler trace at their intervals
            state.agent_step, it.episode_stats = rollout(
                t.agent, t.env, t.experience, t.device, state.agent_step, t.timer
            )
            state.epoch = train_ppo(
                t.agent,
                t.optimizer,
                t.experience,
                t.device,
                t.losses,
                state.epoch,
                t.trainer_cfg,
                t.kickstarter,
                state.agent_step,
                t.timer,
                t.custom_loss_fns,
                batch_start_step=it.agent_step_before,
            )
        # In order, each at its interval (the last iteration checkpoints and evaluates; a stopped run evaluates
        # only when its previous evaluation took at most trainer.simulation.evaluate_on_stop_s): the
        # epoch's metrics, evaluation and replay, the row to metrics.jsonl/console/wandb, a checkpoint and its
        # wandb upload, the L2-init reference weights.
        for task in t.periodic_tasks:
            task(it)


def next_command(t: Trainer) -> str:
    """The command that goes on with this run from its records: the same run, resumed, after a stop; with twice the
    steps after the end (any larger trainer.total_timesteps continues it). Printed by rank 0 as the run's last
    line."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", t.world_size))
    if t.world_size == 1:
        launcher = "python"
    elif local == t.world_size:
        launcher = f"torchrun --nproc_per_node={local}"
    else:
        launcher = f"torchrun --nnodes={t.world_size // local} --nproc_per_node={local} <rendezvous options>"
    config = os.path.join(t.run_dir, "run_config.json")
    command = f"{launcher} {shlex.quote(sys.argv[0])} --config {shlex.quote(config)}"
    if t.state.agent_step < t.trainer_cfg.total_timesteps:  # stopped early
        return f"resume with: {command}"
    return f"train further with: {command} trainer.total_timesteps={2 * t.trainer_cfg.total_timesteps}"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        main()
    except WriteError as err:  # a full disk, an unwritable directory: the file and the cause, no traceback
        raise SystemExit(f"run.py: {err}") from None
