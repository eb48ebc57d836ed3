#!/usr/bin/env python
"""Train a MettaGrid policy: the complete production loop, readable top to bottom.

    python run.py                                           # CPU-sized defaults on the navigation curriculum
    python run.py run=smoke trainer.total_timesteps=20000 device=cpu
    python run.py --config my_run.yaml                      # the same keys as `python run.py --help`
    torchrun --nproc_per_node=2 run.py run=ddp              # one process per GPU (gloo on CPU, NCCL on GPU)

Everything lands in `{data_dir}/{run}/`: `config.yaml`, `metrics.jsonl` (one JSON object per epoch),
`checkpoints/` (complete, atomic checkpoints), `replays/` (with a viewer page per replay), `stats/` (evaluation
episodes), `index.html` (the run report). Running again
with the same `run` name resumes from the last good checkpoint. wandb logs when an API key is configured or
`WANDB_MODE=offline` is set (`wandb.enabled=true|false` forces it).

SIGTERM or Ctrl-C stops after the iteration in progress with a checkpoint and exits 0 (a second Ctrl-C aborts
at once). One process writes a run directory at a time; a second one is refused.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from metta.agent.policy_store import PolicyStore
from metta.common.config_cli import ConfigCliError, parse_config
from metta.common.graceful_stop import GracefulStop
from metta.common.profiling.memory_monitor import MemoryMonitor
from metta.common.profiling.stopwatch import Stopwatch
from metta.common.run_lock import RunLockError, acquire_run_lock
from metta.common.run_report import write_run_report
from metta.common.stats_logger import StatsLogger
from metta.common.system_monitor import SystemMonitor
from metta.interface import (
    Agent,
    Environment,
    Optimizer,
    cleanup_distributed,
    cleanup_wandb,
    create_evaluation_config_suite,
    create_replay_config,
    evaluate_policy_suite,
    generate_replay_simple,
    initialize_wandb,
    load_checkpoint,
    save_checkpoint,
    save_experiment_config,
    setup_device_and_distributed,
    setup_run_directories,
)
from metta.mettagrid.replay import write_viewer_page
from metta.rl.advantage import compute_advantage
from metta.rl.checkpoint import UnloadableCheckpointsError, set_aside_checkpoints
from metta.rl.experience import calculate_anneal_beta, make_experience
from metta.rl.kickstarter import Kickstarter
from metta.rl.losses import Losses, compute_explained_variance, process_minibatch_update, should_stop_early
from metta.rl.policy_management import unwrap_agent, wrap_agent_distributed
from metta.rl.optimizer import apply_lr_schedule
from metta.rl.rollout import perform_rollout_step
from metta.rl.trainer_config import TrainerConfig, cpu_learning_settings
from metta.stats import accumulate_rollout_stats

logger = logging.getLogger("run")


def cpu_trainer_config() -> TrainerConfig:
    """Defaults that show learning in minutes on a laptop CPU; raise the sizes on a GPU.

    ``cpu_learning_settings()`` holds the update settings of the navigation sweep (two passes per batch, lr 1e-3,
    ent_coef 0.0005, gamma 0.99, gae_lambda 0.95; docs/training.md says why).
    """
    return TrainerConfig(
        total_timesteps=3_000_000,
        batch_size=32768,
        minibatch_size=2048,
        bptt_horizon=16,
        **cpu_learning_settings(),
        checkpoint={"checkpoint_interval": 20, "wandb_checkpoint_interval": 0},
        simulation={"evaluate_interval": 100},
    )


class WandbSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = Field(default=None, description="None: on with an API key or WANDB_MODE=offline")
    project: str | None = None
    entity: str | None = None


class RunConfig(BaseModel):
    """Everything run.py reads; `python run.py --help` lists every key."""

    model_config = ConfigDict(extra="forbid")
    run: str | None = Field(default=None, description="run name (default: METTA_RUN or a timestamp)")
    data_dir: str | None = Field(default=None, description="default: DATA_DIR or ./train_dir")
    device: str = Field(default="cuda" if torch.cuda.is_available() else "cpu")
    seed: int = 0
    curriculum: str = "/env/mettagrid/curriculum/navigation/bucketed"
    agent: str = Field(default="fast", description="fast (default) or interface_default")
    num_envs: int = Field(default=64, ge=1, description="envs per process")
    async_factor: int = Field(default=1, ge=1, description="env batches stepped while the learner works on one")
    num_workers: int = Field(default=1, ge=1)
    vectorization: Literal["serial", "multiprocessing"] = "serial"
    keep_checkpoints: int = Field(default=5, ge=1, description="checkpoints kept on disk (older ones pruned)")
    evaluate: bool = Field(default=True, description="evaluate on the terrain suite every evaluate_interval epochs")
    replay: bool = Field(default=True, description="write a replay with each evaluation")
    torch_threads: int | None = Field(default=None, ge=1, description="threads for torch ops (default: torch's choice)")
    debug_dump_weights: bool = Field(default=False, description="every rank saves its final weights to {run_dir}/rank{r}_weights.pt")
    restart_if_unloadable: bool = Field(
        default=False, description="when no checkpoint of the run can be loaded, move them to {run_dir}/unloadable_<time>/ and start over"
    )
    trainer: TrainerConfig = Field(default_factory=cpu_trainer_config)
    wandb: WandbSettings = Field(default_factory=WandbSettings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = parse_config(RunConfig, doc=__doc__)
    except ConfigCliError as err:  # a bad key or value: say so before any work starts
        raise SystemExit(f"run.py: {err}") from None
    trainer_cfg = cfg.trainer

    # ---------------------------------------------------------------- setup
    device, is_master, world_size, rank = setup_device_and_distributed(cfg.device)
    run_name = cfg.run
    if world_size > 1 and run_name is None:  # every rank must use rank 0's (timestamped) default name
        names = [setup_run_directories(None, cfg.data_dir).run_name if is_master else None]
        torch.distributed.broadcast_object_list(names, src=0)
        run_name = names[0]
    dirs = setup_run_directories(run_name, cfg.data_dir)
    try:  # reliability: one writer per run directory (rank 0 holds the lock; the OS drops it if we die)
        run_lock = acquire_run_lock(dirs.run_dir)
    except RunLockError as err:
        raise SystemExit(f"run.py: {err}") from None
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    trainer_cfg.checkpoint.checkpoint_dir = dirs.checkpoint_dir
    trainer_cfg.simulation.replay_dir = dirs.replay_dir
    save_experiment_config(dirs, device, trainer_cfg)
    if is_master:
        Path(dirs.run_dir, "run_config.json").write_text(cfg.model_dump_json(indent=2, by_alias=True))

    # ---------------------------------------------------------------- components
    env = Environment(
        curriculum_path=cfg.curriculum, device=str(device), seed=cfg.seed + 1000 * rank, num_envs=cfg.num_envs,
        async_factor=cfg.async_factor, num_workers=cfg.num_workers, vectorization=cfg.vectorization,
        is_training=True,
    )  # fmt: skip
    agent = Agent(env, config=cfg.agent, device=str(device))
    policy_store = PolicyStore(
        {"device": str(device), "policy_cache_size": 10, "run": dirs.run_name, "run_dir": dirs.run_dir,
         "trainer": {"checkpoint": {"checkpoint_dir": dirs.checkpoint_dir}}},
        wandb_run=None,
    )  # fmt: skip
    optimizer = Optimizer(
        trainer_cfg.optimizer.type, agent, learning_rate=trainer_cfg.optimizer.learning_rate,
        betas=(trainer_cfg.optimizer.beta1, trainer_cfg.optimizer.beta2), eps=trainer_cfg.optimizer.eps,
        weight_decay=trainer_cfg.optimizer.weight_decay, max_grad_norm=trainer_cfg.ppo.max_grad_norm,
    )  # fmt: skip
    experience = make_experience(env, agent, trainer_cfg, device)
    kickstarter = Kickstarter(trainer_cfg.kickstart, device, policy_store, env)
    timer = Stopwatch()
    try:
        agent_step, epoch, policy_path = load_checkpoint(dirs.checkpoint_dir, agent, optimizer, vecenv=env, stopwatch=timer)
    except UnloadableCheckpointsError as err:  # reliability: never restart silently over a run's files
        if not cfg.restart_if_unloadable:
            raise SystemExit(f"run.py: {err}.\nWith run.py: pick a new run name (run=...), or pass restart_if_unloadable=true "
                             f"to move them to {dirs.run_dir}/unloadable_<time>/ and train from scratch here") from None  # fmt: skip
        aside = set_aside_checkpoints(dirs.checkpoint_dir, [os.path.join(dirs.run_dir, "metrics.jsonl")])
        if is_master:
            logger.warning(f"restart_if_unloadable: moved the unloadable checkpoints and metrics to {aside}; starting over")
        agent_step, epoch, policy_path = 0, 0, None
    if policy_path:
        logger.info(f"resumed from {policy_path}: epoch {epoch}, agent_step {agent_step}")
    if is_master:
        logger.info(f"run {dirs.run_name}: {trainer_cfg.total_timesteps:,} agent steps on {device} x{world_size}; "
                    f"metrics, checkpoints and replays in {dirs.run_dir}")  # fmt: skip
    agent = wrap_agent_distributed(agent, device)
    losses = Losses()
    system_monitor = SystemMonitor(auto_start=is_master)
    memory_monitor = MemoryMonitor()
    memory_monitor.add(experience, name="experience")
    wandb_run, wandb_ctx = initialize_wandb(
        dirs.run_name, dirs.run_dir, enabled=cfg.wandb.enabled, project=cfg.wandb.project,
        entity=cfg.wandb.entity, config=trainer_cfg,
    )  # fmt: skip
    stats_logger = StatsLogger(dirs.run_dir, trainer_cfg.total_timesteps, wandb_run=wandb_run, console=is_master,
                               resume_epoch=epoch) if is_master else None  # drops rows logged after the checkpoint  # fmt: skip
    evaluation_suite = create_evaluation_config_suite()
    eval_scores: dict[str, float] = {}

    # ---------------------------------------------------------------- the loop
    if not timer.get_summary()["is_running"]:  # a resumed stopwatch is already running
        timer.start()
    stop = GracefulStop().install()  # reliability: SIGTERM/Ctrl-C end this iteration, checkpoint, exit 0
    while agent_step < trainer_cfg.total_timesteps:
        steps_before, t_epoch = agent_step, time.time()
        phase_before = timer.get_all_elapsed()

        # Rollout: fill the buffer.
        experience.reset_for_rollout()
        episode_infos: list[dict] = []
        with timer("_rollout"):
            while not experience.ready_for_training:
                num_steps, infos = perform_rollout_step(agent, env, experience, device, timer)
                agent_step += num_steps * world_size  # every rank collects as many steps
                episode_infos.extend(infos)

        # Train: advantages once, then PPO epochs over (prioritised) minibatches.
        with timer("_train"):
            apply_lr_schedule(optimizer, trainer_cfg, steps_before)  # the rate for the progress at this batch's start
            losses.zero()
            experience.reset_importance_sampling_ratios()
            prio = trainer_cfg.prioritized_experience_replay
            beta = calculate_anneal_beta(epoch, trainer_cfg.total_timesteps, trainer_cfg.batch_size, prio.prio_alpha, prio.prio_beta0)
            with timer("_train.advantage"):
                advantages = torch.zeros_like(experience.values)
                compute_advantage(
                    experience.values, experience.rewards, experience.dones, torch.ones_like(experience.values),
                    advantages, trainer_cfg.ppo.gamma, trainer_cfg.ppo.gae_lambda, trainer_cfg.vtrace.vtrace_rho_clip,
                    trainer_cfg.vtrace.vtrace_c_clip, device, next_rows=experience.next_rows,  # across row ends
                )  # fmt: skip
            for _ in range(trainer_cfg.update_epochs):
                for minibatch in experience.iter_minibatches(advantages, prio.prio_alpha, beta):
                    with timer("_train.learn"):
                        loss = process_minibatch_update(
                            agent, experience, minibatch, advantages, trainer_cfg, kickstarter, agent_step, losses, device
                        )
                        optimizer.step(loss, epoch, experience.accumulate_minibatches)
                epoch += 1
                if should_stop_early(losses, trainer_cfg.ppo.target_kl):
                    break
            losses.explained_variance = compute_explained_variance(experience.values, advantages)

        # Periodic tasks: stats, checkpoints, evaluation and replays, L2-init reference weights.
        with timer("_process_stats"):
            if is_master:
                metrics = epoch_metrics(episode_infos, losses, experience, optimizer, system_monitor, memory_monitor,
                                        timer, phase_before, agent_step - steps_before, time.time() - t_epoch)  # fmt: skip
                metrics.update({f"eval/{k}": v for k, v in eval_scores.items()})
                stats_logger.log(epoch, agent_step, metrics)
        if trainer_cfg.checkpoint.checkpoint_interval and epoch % trainer_cfg.checkpoint.checkpoint_interval == 0:
            save_checkpoint(
                epoch, agent_step, unwrap_agent(agent), optimizer, policy_store, dirs.checkpoint_dir,
                trainer_cfg.checkpoint.checkpoint_interval, force_save=True, trainer_config=trainer_cfg, vecenv=env,
                stopwatch=timer, keep_last_n=cfg.keep_checkpoints, metadata={"eval_scores": eval_scores},
            )  # fmt: skip
        interval = trainer_cfg.simulation.evaluate_interval
        if cfg.evaluate and is_master and interval and epoch % interval == 0:
            eval_scores = evaluate_and_replay(unwrap_agent(agent), policy_store, evaluation_suite, device, dirs, epoch, cfg.replay)
        l2_interval = unwrap_agent(agent).config.l2_init_weight_update_interval
        if l2_interval and epoch % l2_interval == 0:
            unwrap_agent(agent).update_l2_init_weight_copy()
        if stop.should_stop(device):  # reliability: all ranks agree to stop after this iteration
            break

    # ---------------------------------------------------------------- cleanup
    timer.stop()
    save_checkpoint(
        epoch, agent_step, unwrap_agent(agent), optimizer, policy_store, dirs.checkpoint_dir,
        trainer_cfg.checkpoint.checkpoint_interval, force_save=True, trainer_config=trainer_cfg, vecenv=env,
        stopwatch=timer, keep_last_n=cfg.keep_checkpoints, final=True, metadata={"eval_scores": eval_scores},
    )  # fmt: skip
    if cfg.debug_dump_weights:  # lets a test check that every rank ends with the same weights
        torch.save(unwrap_agent(agent).state_dict(), Path(dirs.run_dir, f"rank{rank}_weights.pt"))
    if cfg.evaluate and is_master and not stop.requested:  # a stop skips the final evaluation: exit in seconds
        eval_scores = evaluate_and_replay(unwrap_agent(agent), policy_store, evaluation_suite, device, dirs, epoch, cfg.replay)
        stats_logger.log(epoch, agent_step, {f"eval/{k}": v for k, v in eval_scores.items()})
    if stats_logger is not None:
        stats_logger.close()
        logger.info("run report: %s", write_run_report(dirs.run_dir).resolve().as_uri())
    system_monitor.stop()
    env.close()
    cleanup_wandb(wandb_ctx)
    cleanup_distributed()
    stop.uninstall()
    run_lock.release()
    if is_master:
        how = f"stopped by {stop.signal_name}" if stop.requested else "done"
        logger.info(f"{how}: epoch {epoch}, agent_step {agent_step}; run directory {dirs.run_dir}")


def epoch_metrics(episode_infos, losses, experience, optimizer, system_monitor, memory_monitor, timer, phase_before,
                  steps, seconds) -> dict[str, float]:  # fmt: skip
    """The metrics of one epoch, in the shared vocabulary (overview/, losses/, env_*, timing/, monitor/)."""
    env_stats: dict[str, list] = {}
    accumulate_rollout_stats(episode_infos, env_stats)
    metrics: dict[str, float] = {"overview/sps": steps / max(seconds, 1e-9)}
    rewards = env_stats.get("episode_reward", [])
    if rewards:
        metrics["overview/reward"] = float(np.mean(rewards))
        metrics["overview/episodes"] = len(rewards)
    metrics.update({f"env_{k}": float(np.mean(v)) for k, v in env_stats.items() if v and isinstance(v[0], (int, float))})
    metrics.update({f"losses/{k}": v for k, v in losses.stats().items()})
    metrics.update({f"experience/{k}": v for k, v in experience.stats().items()})
    metrics["parameters/learning_rate"] = optimizer.param_groups[0]["lr"]
    metrics["grad/norm"] = float(optimizer.last_grad_norm)
    now = timer.get_all_elapsed()
    spent = {k: now.get(k, 0.0) - phase_before.get(k, 0.0) for k in now}
    total = max(spent.get("_rollout", 0.0) + spent.get("_train", 0.0) + spent.get("_process_stats", 0.0), 1e-9)
    phases = {
        "env": spent.get("_rollout.env", 0.0),
        "forward": spent.get("_rollout.forward", 0.0),
        "advantage": spent.get("_train.advantage", 0.0),
        "learn": spent.get("_train.learn", 0.0),
    }
    phases["other"] = max(0.0, total - sum(phases.values()))
    metrics.update({f"timing/frac/{k}": v / total for k, v in phases.items()})
    metrics.update({f"monitor/{k}": v for k, v in system_monitor.stats().items()})
    metrics.update(memory_monitor.stats())
    return metrics


def evaluate_and_replay(agent, policy_store, suite, device, dirs, epoch, replay: bool) -> dict[str, float]:
    """Score the policy on the terrain suite, (optionally) write one replay with its viewer page, and refresh the
    run report; logs where they are."""
    scores = evaluate_policy_suite(agent, policy_store, suite, device, stats_dir=dirs.stats_dir)
    logger.info("evaluation at epoch %d: %s", epoch, ", ".join(f"{k} {v:.3f}" for k, v in sorted(scores.items())))
    if replay:
        path = generate_replay_simple(agent, policy_store, create_replay_config(), device, replay_dir=dirs.replay_dir, epoch=epoch)
        if path is not None:
            logger.info("replay: %s", write_viewer_page(path).resolve().as_uri())
    logger.info("run report: %s", write_run_report(dirs.run_dir).resolve().as_uri())
    return scores


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
