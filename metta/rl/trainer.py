"""``Trainer``: one training run's setup and release, the state that resumes, and the periodic tasks.

    with Trainer(config) as t:                # lock, envs, agent, buffer, optimizer, wandb, monitors; resumed
        while t.training():
            with t.iteration() as it:         # timing, gradient statistics, a profiler trace at its interval
                t.state.agent_step, it.episode_stats = rollout(t.agent, t.env, t.experience, ...)
                t.state.epoch = train_ppo(t.agent, t.optimizer, t.experience, ...)
            for task in t.periodic_tasks:     # metrics, evaluation and replay, the row, checkpoint, upload, L2-init
                task(it)

run.py writes this loop out; ``functional_training_loop`` runs it with a step function in place of the two calls
(``Trainer.run``); the components of ``create_training_components`` are this object's parts (``collector``,
``ppo``, ``checkpointer``, ``stats_logger``, ``evaluator``), so every face trains, logs, evaluates and saves alike.

Setup (``__enter__``) acquires, in order, each released in reverse by one ``ExitStack`` however the run ends: the stop
signals (SIGTERM/SIGINT finish the iteration in progress, checkpoint and return; under torchrun the launcher's death
does too, ``GracefulStop.watch_launcher``), the device (``device=cuda`` without CUDA is an error) and the process group
under torchrun, an existing run directory's lock, the seeds, the envs, the policy, store, optimizer, buffer and teachers
(or the ones given), a new run's directory and lock, the resume (else the initial policy), the records, compilation, the
DDP wrapper, the monitors, wandb, the metrics logger and the profiler. Every periodic task fires when the epoch counter
crosses a multiple of its interval (``metta.rl.intervals.crossed``); the last iteration (steps done, or a stop) always
checkpoints and evaluates (a stopped run only when its previous evaluation took at most
``trainer.simulation.evaluate_on_stop_s``, ``Trainer.evaluate_on_stop``); the epoch's row is logged before its
checkpoint, so a run killed in between resumes from the previous checkpoint and drops the row.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metta.agent.agent_config import AgentConfig
from metta.agent.metta_agent import make_policy
from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_store import PolicyStore
from metta.common.cpus import torch_threads_for
from metta.common.device import require_device
from metta.common.distributed import cleanup_distributed, is_distributed, seed_process, setup_device_and_distributed
from metta.common.evaluation_db import database_path
from metta.common.fault_points import fault_point
from metta.common.graceful_stop import GracefulStop
from metta.common.profiling.memory_monitor import MemoryMonitor
from metta.common.profiling.stopwatch import Stopwatch
from metta.common.run_dirs import (
    RunDirectories,
    resolve_data_dir,
    resolve_run_name,
    run_directories,
    save_experiment_config,
    setup_run_directories,
)
from metta.common.run_lock import acquire_run_lock
from metta.common.run_report import write_run_report
from metta.common.stats_logger import StatsLogger
from metta.common.system_monitor import SystemMonitor
from metta.common.wandb_context import cleanup_wandb, initialize_wandb
from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.curriculum.loader import curriculum_from_any
from metta.mettagrid.replay import write_viewer_page
from metta.mettagrid.vecenv import MultiprocessingVecEnv
from metta.mettagrid.vecenv_factory import build_vecenv
from metta.rl.checkpoint import (
    UnloadableCheckpointsError,
    config_differences,
    load_latest_checkpoint,
    restore_checkpoint,
    set_aside_checkpoints,
)
from metta.rl.components import PolicyEvaluator, PPOOptimizer, RolloutCollector, TrainingCheckpointer
from metta.rl.epoch_metrics import epoch_metrics, interval_metrics
from metta.rl.experience import Experience, make_experience
from metta.rl.initial_policy import check_policy_uri, load_initial_policy
from metta.rl.intervals import crossed
from metta.rl.kickstarter import Kickstarter
from metta.rl.losses import CustomLossFn, custom_loss_names
from metta.rl.optimizer import Optimizer
from metta.rl.policy_management import compile_policy, unwrap_agent, update_l2_init_at_interval, wrap_agent_distributed
from metta.rl.run_config import TrainingConfig
from metta.rl.torch_profiler import TorchProfiler
from metta.rl.trainer_config import PPOConfig, resolve_trainer_config, scale_by_world_size
from metta.rl.training import as_metta_optimizer
from metta.sim.evaluation import create_replay_config, format_scores, generate_replay_simple, live_policy_record
from metta.sim.suites import suite_config

logger = logging.getLogger(__name__)

__all__ = ["Iteration", "Trainer", "TrainingState", "default_training_step"]


@dataclass
class TrainingState:
    """What a run has done: the counters a checkpoint resumes, the last row of metrics and scores, the last saved
    policy; ``stopped_by`` is the signal that ended it early (None: it reached ``total_timesteps``)."""

    agent_step: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    eval_scores: dict[str, float] = field(default_factory=dict)
    policy_record: PolicyRecord | None = None
    start_time: float = field(default_factory=time.time)
    initial_policy: str | None = None  # the policy a fresh run started from (trainer.initial_policy), if any
    stopped_by: str | None = None

    @property
    def agent_steps(self) -> int:
        """``agent_step`` under the name the component API's loops use."""
        return self.agent_step


@dataclass
class Iteration:
    """One pass of the loop, as the periodic tasks read it. ``episode_stats`` is the rollout's; ``metrics`` the
    epoch's row (a step function may supply it; else the first task computes it)."""

    agent_step_before: int
    epoch_before: int
    started: float
    phase_before: dict[str, float]
    episode_stats: dict[str, list] = field(default_factory=dict)
    metrics: dict[str, float] | None = None
    stopping: bool = False  # a stop was asked for: the last iteration, checkpointed, evaluated if that is quick
    last: bool = False  # the steps are done or a stop was asked for
    evaluated: bool = False


StepFn = Callable[[TrainingState, "Trainer", Any, Experience], Mapping[str, float]]


class Trainer:
    """One training run of ``config`` (a ``TrainingConfig``). Parts given here are used instead of built (and are
    not closed by the trainer): ``policy`` (else built from ``config.agent``), ``curriculum`` (a Curriculum, an env
    config or a path; else ``config.trainer.curriculum``), ``vecenv``, ``experience``, ``policy_store``,
    ``optimizer`` (a torch optimizer is wrapped once), ``kickstarter``, ``timer``, ``wandb_run``.
    ``custom_loss_fns`` join every minibatch's loss; ``evaluation_suite`` is what ``config.evaluate`` scores
    (default the suite ``trainer.simulation.suite`` names); ``ppo_config`` replaces ``config.trainer.ppo``;
    ``console`` prints the run's messages instead of logging them; ``graceful_stop=False`` leaves the signals alone
    (for a loop of the caller's own, which would not look at the stop flag)."""

    def __init__(
        self,
        config: TrainingConfig,
        *,
        policy: torch.nn.Module | None = None,
        curriculum: Any = None,
        vecenv: Any = None,
        experience: Experience | None = None,
        policy_store: PolicyStore | None = None,
        optimizer: Any = None,
        kickstarter: Any = None,
        timer: Stopwatch | None = None,
        custom_loss_fns: Sequence[CustomLossFn] | None = None,
        evaluation_suite: Any = None,
        wandb_run: Any = None,
        ppo_config: PPOConfig | None = None,
        console: bool = False,
        graceful_stop: bool = True,
    ):
        if not isinstance(config, TrainingConfig):
            raise TypeError(f"config is a {type(config).__name__}; pass a TrainingConfig (metta.train.train_config)")
        if policy is not None and not isinstance(policy, torch.nn.Module):
            raise TypeError(f"policy is a {type(policy).__name__}; pass the agent (an nn.Module), e.g. Agent(env)")
        if experience is not None and not isinstance(experience, Experience):
            raise TypeError(f"experience is a {type(experience).__name__}; pass an Experience (make_experience)")
        if policy_store is not None and not isinstance(policy_store, PolicyStore):
            raise TypeError(f"policy_store is a {type(policy_store).__name__}; pass a metta PolicyStore")
        if isinstance(curriculum, Curriculum) and config.trainer.env_overrides:
            raise ValueError(
                f"trainer.env_overrides={dict(config.trainer.env_overrides)} cannot be applied to an already built "
                "Curriculum; pass its env config or curriculum path as curriculum, or build it with them"
            )
        if ppo_config is not None:
            config = config.model_copy(update={"trainer": resolve_trainer_config(config, ppo_config)})
        self.config = config
        self.ppo_config = ppo_config  # kept: a step given another config still updates with this ppo section
        self.custom_loss_fns = list(custom_loss_fns or [])
        custom_loss_names(self.custom_loss_fns)  # a non-callable is reported now, not at the first minibatch
        self.console = console
        self._given = {
            "policy": policy,
            "curriculum": curriculum,
            "vecenv": vecenv,
            "experience": experience,
            "policy_store": policy_store,
            "optimizer": optimizer,
            "kickstarter": kickstarter,
            "timer": timer,
            "evaluation_suite": evaluation_suite,
            "wandb_run": wandb_run,
        }
        self._graceful_stop = graceful_stop and threading.current_thread() is threading.main_thread()
        self._stack: ExitStack | None = None
        self._stopped = False
        self.last_evaluation_s: float | None = None  # how long this process's last evaluation took (with replay)
        self.state = TrainingState()
        self.periodic_tasks = [
            self.record_metrics,
            self.evaluate,
            self.log_metrics,
            self.save_checkpoint,
            self.refresh_l2_init,
        ]

    # ------------------------------------------------------------------------------------------------
    # Setup and release
    def __enter__(self) -> Trainer:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> Trainer:
        """Acquire everything (see the module docstring); on an error, release what was acquired and re-raise."""
        if self._stack is not None:
            return self
        with ExitStack() as stack:
            self._setup(stack)
            self._stack = stack.pop_all()
        return self

    def close(self) -> None:
        """Release everything in reverse order: the end of the run (final report, ``done`` message), the logger,
        wandb, monitors, envs, lock, process group and signal handlers. Safe to call twice."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _setup(self, stack: ExitStack) -> None:
        cfg = self.config
        given = self._given
        trainer_cfg = cfg.trainer
        # Inputs only their files can validate come first, before anything is created.
        check_policy_uri(trainer_cfg.initial_policy.uri, "trainer.initial_policy.uri")
        check_policy_uri(trainer_cfg.kickstart.teacher_uri, "trainer.kickstart.teacher_uri")
        for i, teacher in enumerate(trainer_cfg.kickstart.additional_teachers or []):
            check_policy_uri(teacher.teacher_uri, f"trainer.kickstart.additional_teachers[{i}].teacher_uri")
        curriculum = None
        if given["vecenv"] is None:
            source = given["curriculum"] if given["curriculum"] is not None else trainer_cfg.curriculum
            curriculum = curriculum_from_any(source, trainer_cfg.env_overrides or None)

        self.stop = GracefulStop()
        if self._graceful_stop:
            self.stop.install()
            stack.callback(self.stop.uninstall)
            self.stop.watch_launcher(trainer_cfg.worker_timeout_s)  # under torchrun: no orphan ranks if it dies
        self.device, self.is_master, self.world_size, self.rank = self._device_and_process_group(stack)
        trainer_cfg = scale_by_world_size(trainer_cfg, self.world_size)  # per-rank sizes
        # A launch is checked whole before it changes the run directory: a new run's directory is made, and an
        # existing one's records written, only once the envs, policy, buffer, teachers and checkpoint fit.
        self.dirs, existing = self._run_directory()
        if existing:  # one writer per run directory, before its checkpoints are read (see _lock_run_directory)
            self._lock_run_directory(stack)
        env_seed = seed_process(cfg.seed, self.rank)  # torch and numpy: seed + rank; the envs: seed + 1000 x rank
        self.trainer_cfg = trainer_cfg = trainer_cfg.with_run_dir(self.dirs.run_dir)

        fault_point("setup", "env")  # a test hook (metta.common.fault_points); nothing unless its env var is set
        self.env = given["vecenv"]
        if self.env is None:
            kwargs = cfg.model_copy(update={"trainer": trainer_cfg}).env_kwargs(curriculum)
            self.env = build_vecenv(curriculum, seed=env_seed, **kwargs)
            stack.callback(self.env.close)
        self.torch_threads_reason = self._set_torch_threads()
        self.policy = _given_or(given["policy"], lambda: make_policy(self.env, cfg.agent, self.device))
        agent_config = getattr(self.policy, "config", None)  # what was built, when the caller brought the policy
        self.resolved = cfg.model_copy(
            update={
                "experiment_name": self.dirs.run_name,
                "data_dir": os.path.dirname(self.dirs.run_dir),
                "num_envs": self.env.num_envs,
                "agent": agent_config if isinstance(agent_config, AgentConfig) else cfg.agent,
                # The sizes as given (totals when scale_batches_by_world_size), so a relaunch splits them again.
                "trainer": cfg.trainer.with_run_dir(self.dirs.run_dir),
            }
        )
        self.policy_store = _given_or(
            given["policy_store"],
            lambda: PolicyStore(
                device=str(self.device),
                checkpoint_dir=trainer_cfg.checkpoint.checkpoint_dir,
                run_name=self.dirs.run_name,
                run_dir=self.dirs.run_dir,
            ),
        )
        if given["optimizer"] is None:  # trainer.optimizer, clipped at trainer.ppo.max_grad_norm
            self.optimizer = Optimizer.from_config(self.policy, trainer_cfg)
        else:
            self.optimizer = as_metta_optimizer(given["optimizer"], self.policy, trainer_cfg.ppo.max_grad_norm)
        self.experience = _given_or(
            given["experience"], lambda: make_experience(self.env, self.policy, trainer_cfg, self.device)
        )
        self.kickstarter = _given_or(
            given["kickstarter"], lambda: Kickstarter(trainer_cfg.kickstart, self.device, self.policy_store, self.env)
        )
        self.timer = _given_or(given["timer"], Stopwatch)
        if not existing:
            setup_run_directories(self.dirs.run_name, os.path.dirname(self.dirs.run_dir))
            self._lock_run_directory(stack)
        self._resume()
        # The launch is accepted: the folders (a copied run directory may lack some) and the run's records.
        setup_run_directories(self.dirs.run_name, os.path.dirname(self.dirs.run_dir))
        self._write_run_records()
        if trainer_cfg.compile:
            compile_policy(self.policy, trainer_cfg.compile_mode)
            self.say(f"policy compiled with torch.compile (mode {trainer_cfg.compile_mode})")
        self.say(self.experience.describe())
        if self.is_master:
            self.say(self._start_line())
        self.agent = wrap_agent_distributed(self.policy, self.device)  # after the resume: every rank starts alike

        self.system_monitor = SystemMonitor(auto_start=self.is_master)
        stack.callback(self.system_monitor.stop)
        self.memory_monitor = MemoryMonitor()
        self.memory_monitor.add(self.experience, name="experience")
        self.wandb_run = given["wandb_run"]
        if self.wandb_run is None:
            self.wandb_run, wandb_ctx = initialize_wandb(
                self.dirs.run_name,
                self.dirs.run_dir,
                enabled=cfg.wandb.enabled,
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                config=self.resolved,
                tags=cfg.wandb.tags,
            )
            stack.callback(cleanup_wandb, wandb_ctx)
        if self._graceful_stop:
            self.stop.install()  # again, in case wandb's setup replaced the signal handlers
        # The rows a killed run logged after the checkpoint it resumes from are dropped first.
        self.stats_logger = (
            StatsLogger(
                self.dirs.run_dir,
                trainer_cfg.total_timesteps,
                wandb_run=self.wandb_run,
                console=trainer_cfg.verbose,
                resume_epoch=self.state.epoch,
                clock=self.timer.get_elapsed,  # the run's training seconds, restored with a checkpoint
                start_agent_step=self.state.agent_step,
            )
            if self.is_master
            else None
        )
        if self.stats_logger is not None:
            stack.callback(self.stats_logger.close)
        # Rank 0 traces; the other ranks get a profiler that never fires.
        self.profiler = TorchProfiler(
            trainer_cfg.profiler.interval_epochs if self.is_master else 0, trainer_cfg.profiler.profile_dir, self.device
        )
        self._build_components()
        if not self.timer.get_summary()["is_running"]:  # a resumed stopwatch is already running
            self.timer.start()
        # A stop during the setup ends the run here, before any training (every rank agrees).
        self._stopped = self.stop.should_stop(self.device)
        stack.push(self._finish)  # the first release: the end of the run, while everything still exists

    def _device_and_process_group(self, stack: ExitStack) -> tuple[torch.device, bool, int, int]:
        """The training device (the given policy's, which must agree with ``config.device``; a ``config.device``
        this machine lacks is an error), joining the process group under torchrun; the trainer leaves it at the end
        only when it joined it."""
        joined_before = is_distributed()
        policy = self._given["policy"]
        wanted = self.config.device
        # A device the machine lacks is an error (device=cuda without CUDA never trains on the CPU instead).
        asked = None if wanted is None else require_device(wanted)
        if policy is not None:
            on = next(policy.parameters()).device
            if asked is not None and (asked.type != on.type or (asked.index is not None and asked != on)):
                raise ValueError(f"the policy is on {on} but device={wanted!r}; move it first: policy.to({wanted!r})")
            wanted = str(on)
        setup = setup_device_and_distributed(wanted or _default_device())
        if is_distributed() and not joined_before:
            stack.callback(cleanup_distributed)
        device = setup.device if policy is None else next(policy.parameters()).device
        return device, setup.is_master, setup.world_size, setup.rank

    def _run_directory(self) -> tuple[RunDirectories, bool]:
        """The paths of ``{data_dir}/{experiment_name}`` (absolute, so the records resume from any directory) and
        whether it exists; nothing is created. Under torchrun every rank uses rank 0's (possibly timestamped) name
        and rank 0's answer."""
        data_dir = os.path.abspath(resolve_data_dir(self.config.data_dir))
        name = resolve_run_name(self.config.experiment_name)
        found = [name, os.path.isdir(os.path.join(data_dir, name))]
        if self.world_size > 1:
            torch.distributed.broadcast_object_list(found, src=0)
        return run_directories(found[0], data_dir), found[1]

    def _lock_run_directory(self, stack: ExitStack) -> None:
        """One writer per run directory: rank 0 holds ``run.lock`` (every rank learns the outcome), and the OS drops
        it if the process dies."""
        stack.callback(acquire_run_lock(self.dirs.run_dir).release)

    def _write_run_records(self) -> None:
        """``config.yaml`` and ``run_config.json`` (rank 0): the settings this launch runs with, sizes resolved,
        written once the launch is accepted; ``python run.py --config {run_dir}/run_config.json`` resumes it."""
        save_experiment_config(self.dirs, self.device, self.trainer_cfg, extra=self._run_record())
        if self.is_master:
            Path(self.dirs.run_dir, "run_config.json").write_text(
                self.resolved.model_dump_json(indent=2, by_alias=True)
            )

    def _set_torch_threads(self) -> str:
        """``torch_threads``, else ``OMP_NUM_THREADS`` when the environment sets it (torch started with it), else
        the CPUs this process may use (shared with the other ranks on this machine) less one per env worker process
        (``metta.common.cpus.torch_threads_for``); returns why, for the start line."""
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
            return "set by torch_threads"
        if os.environ.get("OMP_NUM_THREADS", "").strip():  # a choice made for this process (a job script, a test)
            return f"set by OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS'].strip()}"
        workers = self.env.num_workers if isinstance(self.env, MultiprocessingVecEnv) else 0
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's ranks on this machine
        threads, why = torch_threads_for(workers, ranks_here)
        torch.set_num_threads(threads)
        return why

    def _run_record(self) -> dict[str, Any]:
        """What config.yaml records beside the trainer: the run's settings, the agent and the envs this process
        runs."""
        env = self.env
        run_level = self.resolved.model_dump(
            mode="json", by_alias=True, exclude={"trainer", "experiment_name", "data_dir", "device"}
        )
        return {
            **run_level,
            "world_size": self.world_size,
            "env": {
                "curriculum": self.trainer_cfg.curriculum,
                "env_overrides": dict(self.trainer_cfg.env_overrides),
                "num_envs": env.num_envs,
                "agents": env.num_agents,
                "agents_per_batch": env.agents_per_batch,
                "num_workers": env.num_workers,
                "async_factor": env.num_envs // env.batch_size,
                "vectorization": self.config.vectorization,
                "zero_copy": env.zero_copy,
                "seed": env.seed,
                "worker_timeout_s": env.worker_timeout_s,
                "curriculum_type": type(env.driver_env.curriculum).__name__,
            },
        }

    def _resume(self) -> None:
        """Continue from the newest good checkpoint (weights, optimizer, curriculum, stopwatch, RNG), else start
        from ``trainer.initial_policy`` when it names one. Checkpoints of which none loads stop the run (nothing is
        changed) unless ``restart_if_unloadable`` moves them aside."""
        cfg, trainer_cfg = self.config, self.trainer_cfg
        checkpoint_dir = trainer_cfg.checkpoint.checkpoint_dir
        try:
            ckpt = load_latest_checkpoint(checkpoint_dir, self.policy)
        except UnloadableCheckpointsError as err:  # never restart silently over a run's files
            if not cfg.restart_if_unloadable:
                err.args = (
                    f"{err}.\nPick a new run name (run=... / experiment_name), or set restart_if_unloadable=true to "
                    f"move them to {self.dirs.run_dir}/unloadable_<time>/ and train from scratch here",
                )
                raise
            aside = set_aside_checkpoints(checkpoint_dir, [os.path.join(self.dirs.run_dir, "metrics.jsonl")])
            if self.is_master:
                logger.warning(
                    "restart_if_unloadable: moved the unloadable checkpoints and metrics to %s; starting over", aside
                )
            ckpt = None
        if ckpt is not None:
            restore_checkpoint(
                ckpt, self.policy, self.optimizer, vecenv=self.env, stopwatch=self.timer, trainer_config=trainer_cfg
            )
            self.state.agent_step, self.state.epoch = ckpt.agent_step, ckpt.epoch
            self.say(f"resumed from {ckpt.policy_path}: epoch {ckpt.epoch}, agent_step {ckpt.agent_step}")
            changed = config_differences(ckpt.trainer_config, trainer_cfg)
            if changed:
                logger.warning(
                    "resuming %s, whose checkpoint was written with other trainer settings (%s); this run goes on "
                    "with its own (a new run name starts over)",
                    checkpoint_dir,
                    ", ".join(changed[:8]),
                )
        elif trainer_cfg.initial_policy.uri:
            self.state.initial_policy = load_initial_policy(
                unwrap_agent(self.policy), self.policy_store, trainer_cfg.initial_policy, seed=cfg.seed
            )
            self.say(f"starting from the initial policy {self.state.initial_policy}")

    def _build_components(self) -> None:
        """The components (``metta.rl.components``) over this run's parts: what ``create_training_components``
        hands out and what ``default_training_step`` runs."""
        cfg, trainer_cfg = self.config, self.trainer_cfg
        self.collector = RolloutCollector(self.env, self.agent, self.experience, self.device, self.timer)
        self.ppo = PPOOptimizer(self.agent, self.optimizer, self.device, trainer_cfg, self.kickstarter, self.timer)
        self.ppo.epoch = self.state.epoch
        self.losses = self.ppo.losses
        self.checkpointer = TrainingCheckpointer(
            trainer_cfg.checkpoint.checkpoint_dir,
            self.policy_store,
            self.wandb_run,
            keep_last_n=cfg.keep_checkpoints,
            trainer_config=trainer_cfg,
            vecenv=self.env,
            stopwatch=self.timer,
        )
        self.evaluator = None
        if cfg.evaluate and self.is_master:  # every episode also goes to {data_dir}/evaluations.sqlite
            suite = _given_or(self._given["evaluation_suite"], lambda: suite_config(trainer_cfg.simulation.suite))
            self.evaluator = PolicyEvaluator(
                suite,
                self.policy_store,
                self.device,
                stats_dir=self.dirs.stats_dir,
                database=database_path(os.path.dirname(self.dirs.run_dir)),
            )

    def _finish(self, error_type: type[BaseException] | None, *_: Any) -> bool:
        """The end of the run: the timer, the weights dump, the last rows and the report, and how it ended."""
        self.timer.stop()
        if self.config.debug_dump_weights:  # lets a test check that every rank ends with the same weights
            torch.save(self.policy.state_dict(), Path(self.dirs.run_dir, f"rank{self.rank}_weights.pt"))
        if self.stats_logger is not None:
            self.stats_logger.close()
            self.say(f"run report: {write_run_report(self.dirs.run_dir).resolve().as_uri()}")
        self.state.stopped_by = self.stop.signal_name  # None when the run reached total_timesteps
        if self.is_master:
            how = f"stopped by {self.stop.signal_name}" if self.stop.requested else "done"
            if error_type is not None:
                how = f"ended by {error_type.__name__}"
            elapsed = time.time() - self.state.start_time
            self.say(
                f"{how}: epoch {self.state.epoch}, agent_step {self.state.agent_step} in {elapsed:.1f} s; "
                f"run directory {self.dirs.run_dir}"
            )
        return False  # an error goes on up

    def _start_line(self) -> str:
        notes = f", batch {self.trainer_cfg.batch_size}"
        if self.state.agent_step:
            notes += f", resumed at epoch {self.state.epoch}, step {self.state.agent_step:,}"
        threads = torch.get_num_threads()
        return (
            f"run {self.dirs.run_name}: {self._planned_steps()} on {self.device} x{self.world_size}, "
            f"{self.env.num_envs} envs ({self.env.num_agents} agents, {self.config.vectorization}) per process{notes}, "
            f"{threads} torch thread{'s' * (threads != 1)} ({self.torch_threads_reason}); metrics, checkpoints and "
            f"replays in {self.dirs.run_dir}"
        )

    def _planned_steps(self) -> str:
        """``total_timesteps``, and what the run trains when that is not a whole number of batches (an iteration
        collects a whole batch on every rank; ``training()`` stops after the first that reaches the total)."""
        total, done = self.trainer_cfg.total_timesteps, self.state.agent_step
        per_iteration = self.experience.agent_steps_per_rollout * self.world_size
        iterations = -(-max(0, total - done) // per_iteration)  # rounded up
        planned = done + iterations * per_iteration
        if planned == max(total, done):
            return f"{total:,} agent steps"
        # With fewer agents per env batch than agents (async envs), a rollout may stop a step short of its bound.
        up_to = "up to " if self.experience.agents_per_batch < self.experience.total_agents else ""
        return f"{total:,} agent steps, rounded up to whole batches of {per_iteration:,}: {up_to}{planned:,}"

    def say(self, message: str) -> None:
        """A message about the run: printed with ``console``, else logged."""
        if self.console:
            print(message, flush=True)
        else:
            logger.info(message)

    @property
    def run_dir(self) -> str:
        return self.dirs.run_dir

    # ------------------------------------------------------------------------------------------------
    # The loop
    def training(self) -> bool:
        """Whether to run another iteration: steps remain and no stop was asked for."""
        return not self._stopped and self.state.agent_step < self.trainer_cfg.total_timesteps

    @contextmanager
    def iteration(self) -> Iterator[Iteration]:
        """One iteration's frame around the rollout and update: its start, gradient statistics at their interval,
        a profiler trace at its interval; on the way out, whether a stop came (every rank agrees) and whether
        this was the last iteration."""
        state, trainer_cfg = self.state, self.trainer_cfg
        it = Iteration(state.agent_step, state.epoch, time.time(), self.timer.get_all_elapsed())
        expected = state.epoch + trainer_cfg.update_epochs  # fewer if target_kl stops the update early
        self.optimizer.record_grad_stats = crossed(trainer_cfg.grad_mean_variance_interval, state.epoch, expected)
        with self.profiler.trace(state.epoch, expected) as traced:
            yield it
            traced.epoch = state.epoch
        if state.agent_step <= it.agent_step_before:
            raise RuntimeError(
                "the iteration did not advance state.agent_step; add the steps it collected, or the loop never ends"
            )
        it.stopping = self.stop.should_stop(self.device)
        it.last = it.stopping or state.agent_step >= trainer_cfg.total_timesteps
        self._stopped = it.stopping

    def run(self, step_fn: StepFn | None = None, step_config: Any = None) -> TrainingState:
        """The loop to the end, with ``step_fn(state, trainer, config, experience) -> metrics`` as each iteration's
        rollout and update (default: ``default_training_step``); ``step_config`` is the ``config`` it gets
        (default: the run's per-rank ``TrainerConfig``, ``trainer_cfg``)."""
        step = step_fn or default_training_step
        step_config = self.trainer_cfg if step_config is None else step_config
        while self.training():
            with self.iteration() as it:
                metrics = step(self.state, self, step_config, self.experience)
                if not isinstance(metrics, Mapping):
                    raise TypeError(f"step_fn returned a {type(metrics).__name__}; it must return a dict of metrics")
                it.metrics = dict(metrics)
            for task in self.periodic_tasks:
                task(it)
        return self.state

    def epoch_metrics(
        self, episode_stats: Mapping[str, list], steps: int, seconds: float, phase_before: Mapping[str, float]
    ) -> dict[str, float]:
        """The epoch's row in the shared vocabulary (``metta.rl.epoch_metrics``) with the monitors' keys."""
        return epoch_metrics(
            episode_stats,
            self.losses,
            self.experience,
            self.optimizer,
            steps,
            seconds,
            timer=self.timer,
            phase_before=phase_before,
            system_monitor=self.system_monitor if self.is_master else None,
            memory_monitor=self.memory_monitor,
        )

    # ------------------------------------------------------------------------------------------------
    # The periodic tasks, in the order they run
    def record_metrics(self, it: Iteration) -> None:
        """The epoch's row (rank 0): the step's metrics, else the rollout's and update's; then ``grad/`` and
        ``weights/`` at their intervals."""
        with self.timer("_process_stats"):
            if it.metrics is None:
                it.metrics = (
                    self.epoch_metrics(
                        it.episode_stats,
                        self.state.agent_step - it.agent_step_before,
                        time.time() - it.started,
                        it.phase_before,
                    )
                    if self.is_master
                    else {}
                )
            it.metrics.update(
                interval_metrics(self.agent, self.optimizer, self.trainer_cfg, it.epoch_before, self.state.epoch)
            )

    def evaluate(self, it: Iteration) -> None:
        """Score the policy on ``trainer.simulation.suite`` (rank 0, ``config.evaluate``) every
        ``trainer.simulation.evaluate_interval`` epochs and in the last iteration, with a replay and its viewer page
        (``config.replay``); the scores join the row as ``eval/*`` and the checkpoint's metadata, the episodes the
        evaluation database (``{data_dir}/evaluations.sqlite``). A stopped run's last iteration evaluates only when
        that takes seconds (``evaluate_on_stop``)."""
        interval = self.trainer_cfg.simulation.evaluate_interval
        due = it.last or crossed(interval, it.epoch_before, self.state.epoch)
        if self.evaluator is None or not due or (it.stopping and not self.evaluate_on_stop()):
            return
        fault_point("evaluate", str(self.state.epoch))  # a test hook: a second Ctrl-C during a stop's evaluation
        started = time.monotonic()
        policy, state = unwrap_agent(self.agent), self.state
        # The live agent under the name of this epoch's checkpoint file, as the database rows and the report name it.
        record = live_policy_record(
            policy,
            self.trainer_cfg.checkpoint.checkpoint_dir,
            state.epoch,
            state.agent_step,
            self.dirs.run_name,
            self.dirs.run_dir,
        )
        state.eval_scores = scores = self.evaluator.evaluate(record)
        self.say(f"evaluation at epoch {state.epoch}: {format_scores(scores)}")
        it.metrics.update({f"eval/{k}": v for k, v in scores.items()})
        it.evaluated = True
        if self.config.replay:
            path = generate_replay_simple(
                policy,
                self.policy_store,
                create_replay_config(),
                self.device,
                replay_dir=self.trainer_cfg.simulation.replay_dir,
                epoch=self.state.epoch,
            )
            if path is not None:
                self.say(f"replay: {write_viewer_page(path).resolve().as_uri()}")
        self.last_evaluation_s = time.monotonic() - started

    def evaluate_on_stop(self) -> bool:
        """Whether a stopped run evaluates before its final checkpoint: when this run's previous evaluation (in
        this process, with its replay) took at most ``trainer.simulation.evaluate_on_stop_s``, so the stop still
        ends in seconds. Either way the log says which and why; a skipped one says how to evaluate afterwards."""
        limit, took = self.trainer_cfg.simulation.evaluate_on_stop_s, self.last_evaluation_s
        setting = f"trainer.simulation.evaluate_on_stop_s={limit:g}"
        if took is not None and took <= limit:
            self.say(
                f"stopping: evaluating before the final checkpoint, as this run's last evaluation took {took:.1f} s "
                f"(at most {setting}); Ctrl-C again aborts without saving"
            )
            return True
        why = (
            "no evaluation has run in this process yet, so how long one takes is unknown"
            if took is None
            else f"this run's last evaluation took {took:.1f} s, more than {setting}"
        )
        # The suite by name (one given as an object has none) and the run's database, as the run would evaluate.
        suite = "" if self._given["evaluation_suite"] is not None else f" --suite {self.trainer_cfg.simulation.suite}"
        data_dir = os.path.dirname(self.dirs.run_dir)
        self.say(
            f"stopping: evaluation skipped ({why}); evaluate the final checkpoint with: "
            f"python -m metta.sim.evaluate {self.dirs.run_dir}{suite} --data-dir {data_dir}"
        )
        return False

    def log_metrics(self, it: Iteration) -> None:
        """The row to metrics.jsonl, the console and wandb (rank 0); after an evaluation the run report is
        rewritten (the last one is written at the end)."""
        self.state.metrics = it.metrics
        if self.stats_logger is None:
            return
        self.stats_logger.log(self.state.epoch, self.state.agent_step, it.metrics)
        if it.evaluated and not it.last:
            self.say(f"run report: {write_run_report(self.dirs.run_dir).resolve().as_uri()}")

    def save_checkpoint(self, it: Iteration) -> None:
        """A complete checkpoint every ``trainer.checkpoint.checkpoint_interval`` epochs and in the last iteration,
        uploaded to wandb as an artifact every ``wandb_checkpoint_interval`` epochs (and with the last)."""
        intervals, state = self.trainer_cfg.checkpoint, self.state
        upload = self.wandb_run is not None and (
            crossed(intervals.wandb_checkpoint_interval, it.epoch_before, state.epoch)
            or (it.last and intervals.wandb_checkpoint_interval > 0)
        )
        if not (upload or it.last or crossed(intervals.checkpoint_interval, it.epoch_before, state.epoch)):
            return
        record = self.checkpointer.save(
            unwrap_agent(self.agent),
            self.optimizer,
            state.agent_step,
            state.epoch,
            metadata={"eval_scores": dict(state.eval_scores)},
            final=it.last,
        )
        if record is not None:
            state.policy_record = record
            if upload:
                self.say(f"policy uploaded to wandb as {self.checkpointer.upload_policy(record)}")

    def refresh_l2_init(self, it: Iteration) -> None:
        """The L2-init reference weights, every ``l2_init_weight_update_interval`` epochs of the agent's config."""
        update_l2_init_at_interval(self.agent, it.epoch_before, self.state.epoch)


def default_training_step(
    state: TrainingState, components: Trainer, config: Any, experience: Experience
) -> dict[str, float]:
    """One rollout and one PPO update through the components (``components.collector``, ``components.ppo``, over
    ``rollout()`` and ``train_ppo()``); advances ``state`` and returns the epoch's metrics (``overview/sps``,
    ``losses/*``, ...). ``config`` (a ``TrainingConfig`` or ``TrainerConfig``) holds the update's settings, so a
    loop may change them between steps (the components' ``ppo_config``, when one was given, still replaces its
    ``ppo`` section); None or the run's own ``components.trainer_cfg`` keeps the components' settings."""
    if experience is not components.experience:
        raise ValueError(
            "experience is not the buffer the components' RolloutCollector fills; pass the same Experience"
        )
    ppo = components.ppo
    if config is not None and config is not components.trainer_cfg:
        update_cfg = resolve_trainer_config(config, components.ppo_config)
        ppo.trainer_cfg = scale_by_world_size(update_cfg, components.world_size)
    start = time.perf_counter()
    phase_before = components.timer.get_all_elapsed()
    episode_stats, steps = components.collector.collect()
    ppo.epoch = state.epoch  # the state is the source of truth (a resumed or custom loop may set it)
    ppo.update(experience, components.custom_loss_fns, state.agent_step + steps, batch_start_step=state.agent_step)
    state.agent_step += steps
    state.epoch = ppo.epoch
    state.metrics = components.epoch_metrics(episode_stats, steps, time.perf_counter() - start, phase_before)
    return state.metrics


def _given_or(value: Any, build: Callable[[], Any]) -> Any:
    return build() if value is None else value


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
