#!/usr/bin/env python
"""Train a MettaGrid policy: the complete production loop, readable top to bottom.

    python run.py                                           # CPU-sized defaults on the navigation curriculum
    python run.py run=smoke trainer.total_timesteps=20000 device=cpu
    python run.py --config my_run.yaml                      # the same keys as `python run.py --help`
    torchrun --nproc_per_node=2 run.py run=ddp              # one process per GPU (gloo on CPU, NCCL on GPU)

Everything lands in `{data_dir}/{run}/`: `config.yaml` and `run_config.json` (the settings the run used, sizes
resolved), `metrics.jsonl` (one JSON object per epoch), `checkpoints/` (complete, atomic checkpoints),
`replays/` (with a viewer page per replay), `stats/` (evaluation episodes), `torch_traces/` (profiler traces),
`index.html` (the run report). Running again with the same `run` name resumes from the last good checkpoint.
wandb logs when an API key is configured or `WANDB_MODE=offline` is set (`wandb.enabled=true|false` forces it).

The iteration is `rollout()` then `train_ppo()` (metta.rl.functional_trainer), the same functions the functional
trainer and the components call; periodic tasks fire when the epoch counter crosses a multiple of their
interval (metta.rl.intervals.crossed).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from metta.agent.agent_config import canonical_agent_name
from metta.agent.policy_store import PolicyStore
from metta.common.config_cli import ConfigCliError, parse_config
from metta.common.device import require_device
from metta.common.distributed import seed_process
from metta.common.evaluation_db import database_path
from metta.common.fault_points import fault_point
from metta.common.fs import WriteError
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
from metta.mettagrid.curriculum.loader import build_curriculum
from metta.mettagrid.replay import write_viewer_page
from metta.rl.checkpoint import UnloadableCheckpointsError, set_aside_checkpoints
from metta.rl.epoch_metrics import epoch_metrics, interval_metrics
from metta.rl.experience import make_experience
from metta.rl.functional_trainer import rollout, train_ppo
from metta.rl.initial_policy import check_initial_policy_uri, load_initial_policy
from metta.rl.intervals import crossed
from metta.rl.kickstarter import Kickstarter
from metta.rl.losses import Losses
from metta.rl.policy_management import compile_policy, unwrap_agent, update_l2_init_at_interval, wrap_agent_distributed
from metta.rl.torch_profiler import TorchProfiler
from metta.rl.trainer_config import TrainerConfig, cpu_learning_settings, scale_by_world_size
from metta.sim.evaluation import format_scores, live_policy_record
from metta.sim.suites import suite_config

logger = logging.getLogger("run")


def cpu_trainer_config() -> TrainerConfig:
    """Defaults that show learning in minutes on a laptop CPU; raise the sizes on a GPU.

    64 envs of the navigation curriculum (256 agents per forward pass) in this process; ``cpu_learning_settings()``
    holds the update settings of the navigation sweep (two passes per batch, lr 1e-3, ent_coef 0.0005, gamma
    0.99, gae_lambda 0.95; docs/training.md says why).
    """
    return TrainerConfig(
        total_timesteps=3_000_000,
        batch_size=32768,
        minibatch_size=2048,
        bptt_horizon=16,
        curriculum="/env/mettagrid/curriculum/navigation/bucketed",
        forward_pass_minibatch_target_size=256,
        async_factor=1,
        num_workers=1,
        **cpu_learning_settings(),
        checkpoint={"checkpoint_interval": 20, "wandb_checkpoint_interval": 0},
        simulation={"evaluate_interval": 50},  # 3M steps are 184 epochs: evaluations at 50, 100, 150 and the end
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
    device: str = Field(default="cuda" if torch.cuda.is_available() else "cpu", description="cpu, cuda or cuda:N")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="seeds torch, numpy (plus the rank) and the envs")
    agent: str = Field(default="fast", description="fast (default) or interface_default")
    num_envs: int | None = Field(
        default=None, ge=1, description="envs per process (default: from trainer.forward_pass_minibatch_target_size)"
    )
    vectorization: Literal["serial", "multiprocessing"] = "serial"
    keep_checkpoints: int = Field(default=5, ge=1, description="checkpoints kept on disk (older ones pruned)")
    evaluate: bool = Field(
        default=True, description="evaluate on trainer.simulation.suite every evaluate_interval epochs"
    )
    replay: bool = Field(default=True, description="write a replay with each evaluation")
    torch_threads: int | None = Field(default=None, ge=1, description="threads for torch ops (default: torch's choice)")
    debug_dump_weights: bool = Field(
        default=False, description="every rank saves its final weights to {run_dir}/rank{r}_weights.pt"
    )
    restart_if_unloadable: bool = Field(
        default=False,
        description="when no checkpoint of the run can be loaded, move them to {run_dir}/unloadable_<time>/ and start over",
    )
    trainer: TrainerConfig = Field(default_factory=cpu_trainer_config)
    wandb: WandbSettings = Field(default_factory=WandbSettings)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        require_device(value)  # device=cuda without CUDA is an error, not a CPU run
        return value

    @field_validator("agent")
    @classmethod
    def _check_agent(cls, value: str) -> str:
        canonical_agent_name(value)  # a ValueError listing the ready agents
        return value

    @model_validator(mode="after")
    def _check_vectorization(self) -> RunConfig:
        t = self.trainer
        if self.vectorization == "serial" and (t.async_factor > 1 or t.num_workers > 1):
            raise ValueError(
                f"trainer.async_factor={t.async_factor} and trainer.num_workers={t.num_workers} need "
                "vectorization=multiprocessing (serial steps every env in this process); set both to 1 or use "
                "vectorization=multiprocessing"
            )
        return self


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = parse_config(RunConfig, doc=__doc__)
    except ConfigCliError as err:  # a bad key or value: say so before any work starts
        raise SystemExit(f"run.py: {err}") from None
    try:  # inputs that only their files can validate, also before any work (nothing is created yet)
        check_initial_policy_uri(cfg.trainer.initial_policy.uri)
        build_curriculum(cfg.trainer.curriculum, cfg.trainer.env_overrides or None, None, None, None)
    except (ValueError, OSError) as err:
        raise SystemExit(f"run.py: {err}") from None

    # ---------------------------------------------------------------- setup
    # SIGTERM or Ctrl-C from here on: finish what is in progress, checkpoint what was trained, exit 0.
    stop = GracefulStop().install()
    stop.watch_launcher(cfg.trainer.worker_timeout_s)  # under torchrun: no orphan ranks if the launcher dies
    device, is_master, world_size, rank = setup_device_and_distributed(cfg.device)
    trainer_cfg = scale_by_world_size(cfg.trainer, world_size)  # per-rank sizes
    run_name = cfg.run
    if world_size > 1 and run_name is None:  # every rank must use rank 0's (timestamped) default name
        names = [setup_run_directories(None, cfg.data_dir).run_name if is_master else None]
        torch.distributed.broadcast_object_list(names, src=0)
        run_name = names[0]
    dirs = setup_run_directories(run_name, cfg.data_dir)
    try:  # one writer per run directory: rank 0 holds the lock, and the OS drops it if the process dies
        run_lock = acquire_run_lock(dirs.run_dir)
    except RunLockError as err:
        raise SystemExit(f"run.py: {err}") from None
    env_seed = seed_process(cfg.seed, rank)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    trainer_cfg = trainer_cfg.with_run_dir(dirs.run_dir)  # folders not set go into the run directory
    checkpoint_dir = trainer_cfg.checkpoint.checkpoint_dir

    # ---------------------------------------------------------------- components
    fault_point("setup", "env")  # a test hook (metta.common.fault_points); nothing unless its env var is set
    env = Environment(
        curriculum_path=trainer_cfg.curriculum,
        env_config=trainer_cfg.env_overrides or None,
        device=str(device),
        seed=env_seed,
        num_envs=cfg.num_envs or 1,
        num_workers=trainer_cfg.num_workers,
        async_factor=trainer_cfg.async_factor,
        vectorization=cfg.vectorization,
        zero_copy=trainer_cfg.zero_copy,
        worker_timeout_s=trainer_cfg.worker_timeout_s,
        is_training=True,
        forward_pass_minibatch_target_size=None if cfg.num_envs else trainer_cfg.forward_pass_minibatch_target_size,
    )
    resolved = cfg.model_copy(update={"num_envs": env.num_envs, "trainer": trainer_cfg})
    save_experiment_config(dirs, device, trainer_cfg, extra=run_record(resolved, env, world_size))
    if is_master:
        Path(dirs.run_dir, "run_config.json").write_text(resolved.model_dump_json(indent=2, by_alias=True))
    agent = Agent(env, config=cfg.agent, device=str(device))
    policy_store = PolicyStore(
        device=str(device), checkpoint_dir=checkpoint_dir, run_name=dirs.run_name, run_dir=dirs.run_dir
    )
    optimizer = Optimizer.from_config(agent, trainer_cfg)  # trainer.optimizer, clipped at trainer.ppo.max_grad_norm
    experience = make_experience(env, agent, trainer_cfg, device)
    kickstarter = Kickstarter(trainer_cfg.kickstart, device, policy_store, env)
    timer = Stopwatch()
    try:
        agent_step, epoch, policy_path = load_checkpoint(
            checkpoint_dir, agent, optimizer, vecenv=env, stopwatch=timer, trainer_config=trainer_cfg
        )
    except UnloadableCheckpointsError as err:  # never restart silently over a run's files
        if not cfg.restart_if_unloadable:
            raise SystemExit(
                f"run.py: {err}.\nWith run.py: pick a new run name (run=...), or pass restart_if_unloadable=true "
                f"to move them to {dirs.run_dir}/unloadable_<time>/ and train from scratch here"
            ) from None
        aside = set_aside_checkpoints(checkpoint_dir, [os.path.join(dirs.run_dir, "metrics.jsonl")])
        if is_master:
            logger.warning(
                f"restart_if_unloadable: moved the unloadable checkpoints and metrics to {aside}; starting over"
            )
        agent_step, epoch, policy_path = 0, 0, None
    if policy_path:
        logger.info(f"resumed from {policy_path}: epoch {epoch}, agent_step {agent_step}")
    elif trainer_cfg.initial_policy.uri:
        try:
            start = load_initial_policy(unwrap_agent(agent), policy_store, trainer_cfg.initial_policy, seed=cfg.seed)
        except (ValueError, OSError) as err:  # no policy matches, or it does not fit the agent
            raise SystemExit(f"run.py: {err}") from None
        logger.info(f"starting from the initial policy {start}")
    if trainer_cfg.compile:
        compile_policy(agent, trainer_cfg.compile_mode)
        logger.info(f"policy compiled with torch.compile (mode {trainer_cfg.compile_mode})")
    logger.info(experience.describe())
    if is_master:
        logger.info(
            f"run {dirs.run_name}: {trainer_cfg.total_timesteps:,} agent steps on {device} x{world_size}, "
            f"{env.num_envs} envs ({env.num_agents} agents) per process, {torch.get_num_threads()} torch "
            f"threads; metrics, checkpoints and replays in {dirs.run_dir}"
        )
    agent = wrap_agent_distributed(agent, device)
    losses = Losses()
    system_monitor = SystemMonitor(auto_start=is_master)
    memory_monitor = MemoryMonitor()
    memory_monitor.add(experience, name="experience")
    wandb_run, wandb_ctx = initialize_wandb(
        dirs.run_name,
        dirs.run_dir,
        enabled=cfg.wandb.enabled,
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        config=resolved.model_dump(mode="json", by_alias=True),
    )
    policy_store.wandb_run = wandb_run
    stop.install()  # again, in case wandb's setup replaced the signal handlers
    stats_logger = (
        StatsLogger(
            dirs.run_dir,
            trainer_cfg.total_timesteps,
            wandb_run=wandb_run,
            console=trainer_cfg.verbose,
            resume_epoch=epoch,
        )
        if is_master
        else None
    )  # a resumed run drops the rows logged after its checkpoint
    # Rank 0 traces; the other ranks get a profiler that never fires.
    profiler = TorchProfiler(
        trainer_cfg.profiler.interval_epochs if is_master else 0, trainer_cfg.profiler.profile_dir, device
    )
    evaluation_suite = suite_config(trainer_cfg.simulation.suite)
    eval_scores: dict[str, float] = {}  # the last evaluation's, kept in each checkpoint's metadata
    intervals = trainer_cfg.checkpoint

    def checkpoint(upload: bool, final: bool = False) -> None:
        """A complete checkpoint of this moment; ``upload``: also the policy to wandb as an artifact."""
        record = save_checkpoint(
            epoch,
            agent_step,
            unwrap_agent(agent),
            optimizer,
            policy_store,
            checkpoint_dir,
            intervals.checkpoint_interval,
            force_save=True,
            trainer_config=trainer_cfg,
            vecenv=env,
            stopwatch=timer,
            keep_last_n=cfg.keep_checkpoints,
            final=final,
            metadata={"eval_scores": eval_scores},
        )
        if upload and wandb_run is not None and record is not None:
            logger.info("policy uploaded to wandb as %s", policy_store.add_to_wandb_run(dirs.run_name, record))

    # ---------------------------------------------------------------- the loop
    if not timer.get_summary()["is_running"]:  # a resumed stopwatch is already running
        timer.start()
    # A stop during setup ends the run here, before any training (every rank agrees).
    stopped_in_setup = stop.should_stop(device)
    while agent_step < trainer_cfg.total_timesteps and not stopped_in_setup:
        steps_before, epoch_before, t_epoch = agent_step, epoch, time.time()
        phase_before = timer.get_all_elapsed()
        expected_epoch = epoch + trainer_cfg.update_epochs  # fewer if target_kl stops the update early
        optimizer.record_grad_stats = crossed(trainer_cfg.grad_mean_variance_interval, epoch, expected_epoch)

        with profiler.trace(epoch, expected_epoch) as traced:  # a torch profiler trace at its interval
            agent_step, episode_stats = rollout(agent, env, experience, device, agent_step, timer)
            epoch = traced.epoch = train_ppo(
                agent,
                optimizer,
                experience,
                device,
                losses,
                epoch,
                trainer_cfg,
                kickstarter,
                agent_step,
                timer,
                batch_start_step=steps_before,
            )

        # The periodic tasks whose interval the epoch counter crossed; the last iteration checkpoints and
        # evaluates in any case (a stop skips the evaluation, to exit in seconds). The epoch's row (with the
        # evaluation's scores when there was one) is logged before the checkpoint: a run killed in between
        # resumes from the previous checkpoint and drops that row, so no epoch is ever missing or doubled.
        with timer("_process_stats"):
            metrics = (
                epoch_metrics(
                    episode_stats,
                    losses,
                    experience,
                    optimizer,
                    agent_step - steps_before,
                    time.time() - t_epoch,
                    timer=timer,
                    phase_before=phase_before,
                    system_monitor=system_monitor,
                    memory_monitor=memory_monitor,
                )
                if is_master
                else {}
            )
        stopping = stop.should_stop(device)  # every rank agrees to stop after the same iteration
        last = stopping or agent_step >= trainer_cfg.total_timesteps
        evaluated = (
            is_master
            and cfg.evaluate
            and not stopping
            and (last or crossed(trainer_cfg.simulation.evaluate_interval, epoch_before, epoch))
        )
        if evaluated:
            eval_scores = evaluate_and_replay(
                unwrap_agent(agent),
                policy_store,
                evaluation_suite,
                device,
                dirs,
                trainer_cfg,
                epoch,
                agent_step,
                cfg.replay,
            )
            metrics.update({f"eval/{k}": v for k, v in eval_scores.items()})
        if is_master:
            metrics.update(interval_metrics(agent, optimizer, trainer_cfg, epoch_before, epoch))  # grad/, weights/
            stats_logger.log(epoch, agent_step, metrics)
            if evaluated and not last:  # the report shows this evaluation's row (the last one is written below)
                logger.info("run report: %s", write_run_report(dirs.run_dir).resolve().as_uri())
        upload = crossed(intervals.wandb_checkpoint_interval, epoch_before, epoch) or (
            last and intervals.wandb_checkpoint_interval > 0
        )
        if upload or last or crossed(intervals.checkpoint_interval, epoch_before, epoch):
            checkpoint(upload, final=last)
        update_l2_init_at_interval(agent, epoch_before, epoch)
        if stopping:
            break

    # ---------------------------------------------------------------- cleanup
    timer.stop()
    if cfg.debug_dump_weights:  # lets a test check that every rank ends with the same weights
        torch.save(unwrap_agent(agent).state_dict(), Path(dirs.run_dir, f"rank{rank}_weights.pt"))
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


def run_record(cfg: RunConfig, env, world_size: int) -> dict:
    """What config.yaml records beside the trainer: the agent and the envs this process ran."""
    return {
        "agent": cfg.agent,
        "world_size": world_size,
        "env": {
            "curriculum": cfg.trainer.curriculum,
            "env_overrides": dict(cfg.trainer.env_overrides),
            "num_envs": env.num_envs,
            "agents": env.num_agents,
            "agents_per_batch": env.agents_per_batch,
            "num_workers": env.num_workers,
            "async_factor": env.num_envs // env.batch_size,
            "vectorization": cfg.vectorization,
            "zero_copy": env.zero_copy,
            "seed": env.seed,
            "worker_timeout_s": env.worker_timeout_s,
            "curriculum_type": type(env.driver_env.curriculum).__name__,
        },
    }


def evaluate_and_replay(
    agent, policy_store, suite, device, dirs, trainer_cfg, epoch, agent_step, replay: bool
) -> dict[str, float]:
    """Score the policy on the suite (its episodes also go to {data_dir}/evaluations.sqlite) and (optionally) write
    one replay with its viewer page; logs where."""
    record = live_policy_record(
        agent, trainer_cfg.checkpoint.checkpoint_dir, epoch, agent_step, dirs.run_name, dirs.run_dir
    )
    database = database_path(Path(dirs.run_dir).parent)
    scores = evaluate_policy_suite(record, policy_store, suite, device, stats_dir=dirs.stats_dir, database=database)
    logger.info("evaluation at epoch %d: %s", epoch, format_scores(scores))
    if replay:
        path = generate_replay_simple(
            agent,
            policy_store,
            create_replay_config(),
            device,
            replay_dir=trainer_cfg.simulation.replay_dir,
            epoch=epoch,
        )
        if path is not None:
            logger.info("replay: %s", write_viewer_page(path).resolve().as_uri())
    return scores


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        main()
    except WriteError as err:  # a full disk, an unwritable directory: the file and the cause, no traceback
        raise SystemExit(f"run.py: {err}") from None
