"""Seed 001's training loop over the components, and seed 000's two functions under their import path.

    state = functional_training_loop(trainer_config, ppo_config, policy, curriculum, policy_store,
                                     step_fn=None, custom_losses=[curiosity_loss], run_dir="train_dir/x")

``create_training_components`` builds the components (``metta.rl.components``), ``default_training_step`` is
one rollout and one update through them, and ``TrainingState`` carries the counters; a custom
``step_fn(state, components, config, experience) -> metrics`` replaces the default step. The loop keeps
run.py's rules: periodic tasks fire when the epoch counter crosses a multiple of their interval
(``metta.rl.intervals``), the last iteration checkpoints and evaluates, a run directory resumes from its
newest good checkpoint, and one process at a time trains into it.

``rollout()`` and ``train_ppo()`` live in ``metta.rl.training`` (the loop's two functions, which run.py and the
components call too); seed 000 imports them from here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from metta.common.device import parse_device
from metta.common.distributed import get_world_size, is_master, unwrap_agent
from metta.common.evaluation_db import database_path
from metta.common.graceful_stop import GracefulStop
from metta.common.profiling.stopwatch import Stopwatch
from metta.common.run_lock import acquire_run_lock
from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.curriculum.loader import curriculum_from_any
from metta.mettagrid.vecenv import envs_for_target_batch, make_vecenv, resolve_batching
from metta.rl.checkpoint import DEFAULT_KEEP_LAST_N, config_differences
from metta.rl.components import PolicyEvaluator, PPOOptimizer, RolloutCollector, StatsLogger, TrainingCheckpointer
from metta.rl.epoch_metrics import epoch_metrics, interval_metrics
from metta.rl.experience import Experience, make_experience
from metta.rl.initial_policy import check_initial_policy_uri, load_initial_policy
from metta.rl.intervals import crossed
from metta.rl.kickstarter import Kickstarter
from metta.rl.losses import CustomLossFn, custom_loss_names
from metta.rl.optimizer import Optimizer
from metta.rl.policy_management import compile_policy, update_l2_init_at_interval
from metta.rl.torch_profiler import TorchProfiler
from metta.rl.trainer_config import TrainerConfig, resolve_trainer_config, scale_by_world_size
from metta.rl.training import as_metta_optimizer, rollout, train_ppo
from metta.sim.evaluation import live_policy_record

if TYPE_CHECKING:
    from metta.agent.policy_record import PolicyRecord
    from metta.agent.policy_store import PolicyStore
    from metta.rl.trainer_config import PPOConfig
    from metta.sim.simulation_config import SimulationSuiteConfig

logger = logging.getLogger(__name__)

__all__ = [
    "TrainingState",
    "TrainingComponents",
    "create_training_components",
    "resume_training_state",
    "default_training_step",
    "functional_training_loop",
    "resolve_trainer_config",
    "rollout",
    "train_ppo",
    "as_metta_optimizer",
]


@dataclass
class TrainingState:
    """The counters of a run; ``metrics`` are the last step's, ``policy_record`` the last saved policy."""

    agent_step: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    eval_scores: dict[str, float] = field(default_factory=dict)
    policy_record: PolicyRecord | None = None
    start_time: float = field(default_factory=time.time)
    initial_policy: str | None = None  # the uri a fresh run started from (config.initial_policy), if any
    stopped_by: str | None = None  # the signal that stopped the run early ("SIGTERM", "SIGINT"); None: it finished

    @property
    def agent_steps(self) -> int:
        """``agent_step`` under the name seed 001's migration example uses."""
        return self.agent_step


@dataclass
class TrainingComponents:
    """What ``create_training_components`` returns; ``evaluator`` is None without an evaluation suite."""

    collector: RolloutCollector
    ppo: PPOOptimizer
    checkpointer: TrainingCheckpointer
    stats_logger: StatsLogger
    optimizer: Any
    evaluator: PolicyEvaluator | None = None
    custom_loss_fns: list[CustomLossFn] = field(default_factory=list)
    run_dir: str = ""
    timer: Any = None


StepFn = Callable[[TrainingState, TrainingComponents, "TrainerConfig", Experience], Mapping[str, float]]


def _run_dirs(config: TrainerConfig, run_dir: str | os.PathLike | None) -> tuple[str, str]:
    """``(run_dir, checkpoint_dir)``: ``config.checkpoint.checkpoint_dir`` when set, else ``{run_dir}/checkpoints``;
    without ``run_dir`` the run directory is the folder above the checkpoints (default ``train_dir/``)."""
    configured = config.checkpoint.checkpoint_dir
    if run_dir is None:
        checkpoint_dir = os.path.abspath(configured or os.path.join("train_dir", "checkpoints"))
        return os.path.dirname(checkpoint_dir), checkpoint_dir
    run_dir = os.path.abspath(os.fspath(run_dir))
    return run_dir, os.path.abspath(configured) if configured else os.path.join(run_dir, "checkpoints")


def create_training_components(
    config: Any,
    ppo_config: PPOConfig | None,
    policy: torch.nn.Module,
    vecenv: Any,
    experience: Experience,
    policy_store: PolicyStore,
    *,
    optimizer: Any = None,
    device: torch.device | str = "cpu",
    run_dir: str | os.PathLike | None = None,
    wandb_run: Any = None,
    evaluation_suite: SimulationSuiteConfig | None = None,
    custom_loss_fns: Sequence[CustomLossFn] | None = None,
    kickstarter: Any = None,
    timer: Any = None,
    console: bool | None = None,
    keep_checkpoints: int | None = None,
) -> TrainingComponents:
    """The components of a run, wired to the same policy, buffer and optimizer, from ``config`` as run.py reads it.

    ``optimizer`` defaults to metta's ``Optimizer`` from ``config.optimizer`` and ``ppo.max_grad_norm`` (a plain
    torch optimizer is wrapped once, so every component steps the same one); ``kickstarter`` defaults to the one
    ``config.kickstart`` describes (inactive without teachers); ``console`` defaults to ``config.verbose``; with
    ``config.compile`` the policy is compiled (``compile_mode``). Metrics go to ``{run_dir}/metrics.jsonl``,
    checkpoints to ``config.checkpoint.checkpoint_dir`` or ``{run_dir}/checkpoints`` (``run_dir`` defaults to the
    folder above ``config.checkpoint.checkpoint_dir``), and the evaluation's episodes (with an
    ``evaluation_suite``) to ``{run_dir}/stats`` with their replays in ``config.simulation.replay_dir`` (default
    ``{run_dir}/replays``); the newest ``keep_checkpoints`` checkpoints are kept (default 5).
    """
    trainer_cfg = resolve_trainer_config(config, ppo_config)
    losses = list(custom_loss_fns or [])
    custom_loss_names(losses)  # a non-callable is reported now, not at the first minibatch
    if optimizer is None:
        optimizer = Optimizer.from_config(policy, trainer_cfg)
    optimizer = as_metta_optimizer(optimizer, policy, trainer_cfg.ppo.max_grad_norm)
    if console is None:
        console = trainer_cfg.verbose
    run_dir, checkpoint_dir = _run_dirs(trainer_cfg, run_dir)
    trainer_cfg = trainer_cfg.with_run_dir(run_dir)
    if kickstarter is None:
        kickstarter = Kickstarter(trainer_cfg.kickstart, device, policy_store, vecenv)
    if trainer_cfg.compile:
        compile_policy(policy, trainer_cfg.compile_mode)
    evaluator = None
    if evaluation_suite is not None:
        evaluator = PolicyEvaluator(
            evaluation_suite,
            policy_store,
            device,
            stats_dir=os.path.join(run_dir, "stats"),
            replay_dir=trainer_cfg.simulation.replay_dir,
            database=database_path(os.path.dirname(run_dir)),
        )
    return TrainingComponents(
        collector=RolloutCollector(vecenv, policy, experience, device, timer),
        ppo=PPOOptimizer(policy, optimizer, device, trainer_cfg, kickstarter=kickstarter, timer=timer),
        checkpointer=TrainingCheckpointer(
            checkpoint_dir,
            policy_store,
            wandb_run,
            keep_last_n=keep_checkpoints or DEFAULT_KEEP_LAST_N,
            trainer_config=trainer_cfg,
            vecenv=vecenv,
            stopwatch=timer,
        ),
        stats_logger=StatsLogger(run_dir, trainer_cfg.total_timesteps, wandb_run=wandb_run, console=console),
        optimizer=optimizer,
        evaluator=evaluator,
        custom_loss_fns=losses,
        run_dir=run_dir,
        timer=timer,
    )


def resume_training_state(components: TrainingComponents, seed: int = 0) -> TrainingState:
    """The state a run continues from: the newest good checkpoint of ``components.checkpointer.checkpoint_dir``
    restored into the policy, the optimizer, the curriculum, the timer and the RNG states
    (``TrainingCheckpointer.resume``, as run.py resumes), with the metrics rows logged after it dropped. A corrupt
    newest checkpoint is skipped with a warning naming it, and a checkpoint written with other trainer settings is
    resumed with a warning naming them. With no checkpoint: a fresh ``TrainingState``, the policy starting from
    ``config.initial_policy`` when it names one (``seed`` draws among its candidates)."""
    trainer_cfg = components.ppo.trainer_cfg
    ckpt = components.checkpointer.resume(components.collector.policy, components.optimizer)
    # Rows a killed run logged after its last checkpoint (or before its first) are about to be trained and
    # logged again.
    components.stats_logger.resume_from(ckpt.epoch if ckpt is not None else 0)
    if ckpt is None:
        state = TrainingState()
        if trainer_cfg.initial_policy.uri:
            state.initial_policy = load_initial_policy(
                unwrap_agent(components.collector.policy),
                components.checkpointer.policy_store,
                trainer_cfg.initial_policy,
                seed=seed,
            )
        return state
    changed = config_differences(ckpt.trainer_config, trainer_cfg)
    if changed:
        logger.warning(
            "resuming %s, whose checkpoint was written with other trainer settings (%s); this run goes on with its "
            "own (a new run directory starts over)",
            components.checkpointer.checkpoint_dir,
            ", ".join(changed[:8]),
        )
    components.ppo.epoch = ckpt.epoch
    return TrainingState(agent_step=ckpt.agent_step, epoch=ckpt.epoch)


def default_training_step(
    state: TrainingState, components: TrainingComponents, config: TrainerConfig, experience: Experience
) -> dict[str, float]:
    """One rollout and one PPO update through the components; advances ``state`` and returns the epoch's
    metrics (``metta.rl.epoch_metrics``: ``overview/sps``, ``overview/reward``, ``losses/*``, ...)."""
    del config  # part of the step signature so that custom steps can read it; the components hold their copy
    if experience is not components.collector.experience:
        raise ValueError(
            "experience is not the buffer the components' RolloutCollector fills; pass the same Experience"
        )
    start = time.perf_counter()
    timer = components.timer
    phase_before = timer.get_all_elapsed() if timer is not None else None
    episode_stats, steps = components.collector.collect()
    components.ppo.epoch = state.epoch  # the state is the source of truth (a resumed or custom loop may set it)
    components.ppo.update(
        experience, components.custom_loss_fns, state.agent_step + steps, batch_start_step=state.agent_step
    )
    state.agent_step += steps
    state.epoch = components.ppo.epoch
    metrics = epoch_metrics(
        episode_stats,
        components.ppo.losses,
        experience,
        components.ppo.optimizer,
        steps,
        time.perf_counter() - start,
        timer=timer,
        phase_before=phase_before,
    )
    state.metrics = metrics
    return metrics


def functional_training_loop(
    config: Any,
    ppo_config: PPOConfig | None,
    policy: torch.nn.Module,
    curriculum: Any,
    policy_store: PolicyStore,
    step_fn: StepFn | None = None,
    custom_losses: Sequence[CustomLossFn] | None = None,
    *,
    device: torch.device | str | None = None,
    num_envs: int | None = None,
    num_workers: int | None = None,
    vectorization: str | None = None,
    seed: int | None = None,
    run_dir: str | os.PathLike | None = None,
    optimizer: Any = None,
    checkpoint_interval: int | None = None,
    evaluation_suite: SimulationSuiteConfig | None = None,
    evaluate_interval: int | None = None,
    wandb_run: Any = None,
    console: bool | None = None,
) -> TrainingState:
    """Train ``policy`` on ``curriculum`` until ``config.total_timesteps`` agent steps; returns the final state.

    ``config`` is a TrainerConfig and every setting of it acts as in run.py; ``ppo_config`` (or None) replaces its
    ``ppo``. ``device`` defaults to the device of the policy's parameters; ``seed`` (default 0) seeds the envs.

    ``config`` may also be a ``TrainingConfig`` (``metta.train``): its ``trainer`` is the TrainerConfig, and its
    run-level fields are the defaults of the arguments here: ``seed``, ``device`` (the policy must be on it),
    ``num_envs`` and ``vectorization``, the run directory (``resolved_run_dir()``), ``keep_checkpoints``; with
    ``wandb.enabled=True`` a ``wandb_run`` must be passed (``metta.interface.initialize_wandb`` makes one). Its
    ``agent`` is what the caller built ``policy`` from.

    The envs: ``curriculum`` is a Curriculum, an env config or a curriculum path (None: ``config.curriculum``), with
    ``config.env_overrides`` applied to every task. ``num_envs`` defaults to seed 003's arithmetic over
    ``config.forward_pass_minibatch_target_size``, ``config.async_factor`` and ``num_workers`` (default
    ``config.num_workers``); ``vectorization`` defaults to "serial" for one worker (the ``async_factor`` batches are
    then stepped in turn in this process), else "multiprocessing"; ``config.zero_copy`` and ``config.worker_timeout_s`` are passed on. The vecenv (reset with ``seed``) and the Experience are
    built here and closed at the end.

    The loop: ``step_fn`` defaults to ``default_training_step``; ``custom_losses`` are added to every minibatch's
    PPO loss. Every step's metrics go to ``{run_dir}/metrics.jsonl`` and, with ``console`` (default
    ``config.verbose``), the console. As in run.py, each periodic task fires when the epoch counter crosses a
    multiple of its interval (``metta.rl.intervals``): a complete checkpoint every ``checkpoint_interval`` epochs
    (default ``config.checkpoint.checkpoint_interval``, 0 for none) and at the end; the policy uploaded to
    ``wandb_run`` as an artifact every ``config.checkpoint.wandb_checkpoint_interval``; with an
    ``evaluation_suite`` the policy scored every ``evaluate_interval`` epochs (default
    ``config.simulation.evaluate_interval``) and at the end; gradient and weight metrics, L2-init refreshes and
    torch profiler traces (``config.profiler``, into ``{run_dir}/torch_traces`` unless set) at theirs.
    ``config.compile`` compiles the policy (``compile_mode``); ``config.initial_policy`` gives a fresh run its
    starting weights; ``config.scale_batches_by_world_size`` divides the sizes across torch.distributed ranks.

    A run directory that holds a checkpoint resumes (``resume_training_state``): the policy, optimizer,
    curriculum, timer and RNG continue from its newest good checkpoint, and training goes on to
    ``total_timesteps`` from there, so calling this twice on one directory trains once and then continues
    (a run already at ``total_timesteps`` trains no further and rewrites nothing). While it runs it holds the
    run directory's lock (``metta.common.run_lock``): another process training into the same directory gets a
    ``RunLockError`` instead of writing over this one's files. SIGTERM or Ctrl-C (in the main thread) finishes the
    step in progress, writes a checkpoint and returns the state (``metta.common.graceful_stop``).
    """
    trainer_cfg = scale_by_world_size(resolve_trainer_config(config, ppo_config), get_world_size())
    if not isinstance(policy, torch.nn.Module):
        raise TypeError(f"policy is a {type(policy).__name__}; pass the agent (an nn.Module), e.g. Agent(env)")
    if step_fn is not None and not callable(step_fn):
        raise TypeError(
            f"step_fn is a {type(step_fn).__name__}; pass a function (state, components, config, experience) -> metrics"
        )
    step = step_fn or default_training_step
    keep_checkpoints = None
    if not isinstance(config, TrainerConfig) and hasattr(
        config, "resolved_run_dir"
    ):  # a TrainingConfig: its run-level fields are this call's defaults
        seed = config.seed if seed is None else seed
        device = device if device is not None else config.device
        num_envs = config.num_envs if num_envs is None else num_envs
        vectorization = vectorization or config.vectorization
        run_dir = run_dir if run_dir is not None else config.resolved_run_dir()
        keep_checkpoints = config.keep_checkpoints
        if config.wandb.enabled and wandb_run is None:
            raise ValueError(
                "config.wandb.enabled=True but no wandb_run was passed; pass wandb_run=run (metta.interface."
                "initialize_wandb makes one) or set config.wandb.enabled=False"
            )
    seed = 0 if seed is None else seed
    policy_device = next(policy.parameters()).device
    device = policy_device if device is None else parse_device(device)
    if device.type != policy_device.type or (device.index is not None and device != policy_device):
        raise ValueError(
            f"the policy is on {policy_device} but device={device}; move it first: policy.to({str(device)!r})"
        )
    if checkpoint_interval is None:
        checkpoint_interval = trainer_cfg.checkpoint.checkpoint_interval
    if evaluate_interval is None:
        evaluate_interval = trainer_cfg.simulation.evaluate_interval
    for name, value in (("checkpoint_interval", checkpoint_interval), ("evaluate_interval", evaluate_interval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an int >= 0 (epochs; 0 turns it off)")
    if console is None:
        console = trainer_cfg.verbose
    check_initial_policy_uri(trainer_cfg.initial_policy.uri)  # before anything is created
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"seed={seed!r} must be an int in 0..2**31-1 (the envs' reset seed)")
    envs = _plan_envs(trainer_cfg, curriculum, num_envs, num_workers, vectorization)

    lock_dir, _ = _run_dirs(trainer_cfg, run_dir)
    trainer_cfg = trainer_cfg.with_run_dir(lock_dir)  # replays and profiler traces go into the run directory
    # Everything acquired from here is released in reverse order however the call ends.
    with ExitStack() as cleanup:
        # SIGTERM or Ctrl-C from here on (when called from the main thread): finish the step in progress,
        # checkpoint what was trained, return the state with ``stopped_by`` set.
        stop = GracefulStop()
        if threading.current_thread() is threading.main_thread():
            stop.install()
        cleanup.callback(stop.uninstall)
        os.makedirs(lock_dir, exist_ok=True)
        # One writer per run directory, as run.py: a second process is refused.
        cleanup.callback(acquire_run_lock(lock_dir).release)
        vecenv = make_vecenv(
            envs.curriculum,
            envs.vectorization,
            num_envs=envs.num_envs,
            batch_size=envs.batch_envs,
            num_workers=envs.partitions,
            zero_copy=trainer_cfg.zero_copy,
            is_training=True,
            seed=seed,
            worker_timeout_s=trainer_cfg.worker_timeout_s,
        )
        cleanup.callback(vecenv.close)
        vecenv.async_reset(seed)
        experience = make_experience(vecenv, policy, trainer_cfg, device)
        timer = Stopwatch()
        components = create_training_components(
            trainer_cfg,
            None,
            policy,
            vecenv,
            experience,
            policy_store,
            optimizer=optimizer,
            device=device,
            run_dir=run_dir,
            wandb_run=wandb_run,
            evaluation_suite=evaluation_suite,
            custom_loss_fns=custom_losses,
            timer=timer,
            console=console,
            keep_checkpoints=keep_checkpoints,
        )
        cleanup.callback(components.stats_logger.close)
        state = resume_training_state(components, seed=seed)
        started_from = state.initial_policy
        profiler = TorchProfiler(
            trainer_cfg.profiler.interval_epochs if is_master() else 0, trainer_cfg.profiler.profile_dir, device
        )
        if not timer.get_summary()["is_running"]:  # a resumed stopwatch is already running
            timer.start()
        if console:
            notes = [f"resumed at epoch {state.epoch}, step {state.agent_step:,}"] if state.agent_step else []
            notes += [f"starting from the initial policy {started_from}"] if started_from else []
            notes += [f"policy compiled (mode {trainer_cfg.compile_mode})"] if trainer_cfg.compile else []
            print(
                f"functional training: {trainer_cfg.total_timesteps:,} agent steps, {vecenv.num_envs} envs "
                f"({vecenv.num_agents} agents, {envs.vectorization}), batch {trainer_cfg.batch_size}, run dir "
                f"{components.run_dir}" + "".join(f", {n}" for n in notes),
                flush=True,
            )
        if threading.current_thread() is threading.main_thread():
            stop.install()  # again, in case something in the setup replaced the handlers
        intervals = trainer_cfg.checkpoint
        stopped_in_setup = stop.should_stop(device)  # a stop during the setup ends the run before any training
        while state.agent_step < trainer_cfg.total_timesteps and not stopped_in_setup:
            steps_before, epoch_before = state.agent_step, state.epoch
            expected_epoch = state.epoch + trainer_cfg.update_epochs
            components.optimizer.record_grad_stats = crossed(
                trainer_cfg.grad_mean_variance_interval, state.epoch, expected_epoch
            )
            with profiler.trace(state.epoch, expected_epoch) as traced:
                metrics = step(state, components, trainer_cfg, experience)
                traced.epoch = state.epoch
            if not isinstance(metrics, Mapping):
                raise TypeError(f"step_fn returned a {type(metrics).__name__}; it must return a dict of metrics")
            if state.agent_step <= steps_before:
                raise RuntimeError(
                    "step_fn did not advance state.agent_step; add the steps it collected, or the loop never ends"
                )
            # As run.py: tasks at their intervals, the last iteration evaluates and checkpoints (a stop skips the
            # evaluation), the row goes before the checkpoint.
            metrics = {
                **metrics,
                **interval_metrics(policy, components.optimizer, trainer_cfg, epoch_before, state.epoch),
            }
            stopping = stop.should_stop(device)
            last = stopping or state.agent_step >= trainer_cfg.total_timesteps
            # A stop skips the evaluation, to return in seconds (as run.py).
            evaluate_now = not stopping and (last or crossed(evaluate_interval, epoch_before, state.epoch))
            if components.evaluator is not None and evaluate_now:
                state.eval_scores = components.evaluator.evaluate(
                    live_policy_record(
                        unwrap_agent(policy),
                        components.checkpointer.checkpoint_dir,
                        state.epoch,
                        state.agent_step,
                        run_dir=components.run_dir,
                    )
                )
                metrics.update({f"eval/{k}": v for k, v in state.eval_scores.items()})
            state.metrics = metrics  # the row as logged, interval metrics and evaluation scores included
            components.stats_logger.log(state.epoch, state.agent_step, metrics)
            upload = wandb_run is not None and (
                crossed(intervals.wandb_checkpoint_interval, epoch_before, state.epoch)
                or (last and intervals.wandb_checkpoint_interval > 0)
            )
            if upload or last or crossed(checkpoint_interval, epoch_before, state.epoch):
                _save(state, components, final=last)
                if upload and state.policy_record is not None:
                    components.checkpointer.upload_policy(state.policy_record)
            update_l2_init_at_interval(policy, epoch_before, state.epoch)
            if stopping:
                break
        timer.stop()
        state.stopped_by = stop.signal_name  # None when the run reached total_timesteps
        if console:
            elapsed = time.time() - state.start_time
            how = f"stopped by {stop.signal_name}" if stop.requested else "done"
            print(f"{how}: epoch {state.epoch}, {state.agent_step:,} agent steps in {elapsed:.1f} s", flush=True)
        return state


@dataclass
class _EnvPlan:
    """The vecenv ``functional_training_loop`` builds: what to step, how, and how many."""

    curriculum: Curriculum
    vectorization: str
    num_envs: int
    batch_envs: int  # envs per recv
    partitions: int  # worker processes (multiprocessing) or async batches stepped in turn (serial)


def _plan_envs(
    trainer_cfg: TrainerConfig,
    curriculum: Any,
    num_envs: int | None,
    num_workers: int | None,
    vectorization: str | None,
) -> _EnvPlan:
    """The loop's envs as run.py sizes them: ``curriculum`` (None: ``config.curriculum``) with ``env_overrides``;
    ``num_envs`` from the forward-pass target unless given; one worker means serial, whose ``async_factor``
    batches are stepped in turn (one partition of the envs per batch)."""
    if isinstance(curriculum, Curriculum) and trainer_cfg.env_overrides:
        raise ValueError(
            f"config.env_overrides={dict(trainer_cfg.env_overrides)} cannot be applied to an already built Curriculum; "
            "pass its env config or curriculum path as curriculum, or build the curriculum with them"
        )
    curriculum = curriculum_from_any(
        curriculum if curriculum is not None else trainer_cfg.curriculum, trainer_cfg.env_overrides or None
    )
    num_workers = trainer_cfg.num_workers if num_workers is None else num_workers
    async_factor = trainer_cfg.async_factor
    if vectorization is None:
        vectorization = "serial" if num_workers == 1 else "multiprocessing"
    if vectorization not in ("serial", "multiprocessing"):
        raise ValueError(
            f"vectorization={vectorization!r} is not allowed; use 'serial' or 'multiprocessing' (or None: from num_workers)"
        )
    serial = vectorization == "serial"
    partitions = async_factor if serial else num_workers
    if num_envs is None:
        target = trainer_cfg.forward_pass_minibatch_target_size
        num_envs, batch_envs = envs_for_target_batch(curriculum, target, 1 if serial else num_workers, async_factor)
    else:
        num_envs, batch_envs = resolve_batching(num_envs, 1, async_factor, partitions)
    return _EnvPlan(curriculum, vectorization, num_envs, batch_envs, partitions)


def _save(state: TrainingState, components: TrainingComponents, final: bool = False) -> None:
    record = components.checkpointer.save(
        components.collector.policy,
        components.optimizer,
        state.agent_step,
        state.epoch,
        metadata={"eval_scores": dict(state.eval_scores)},
        final=final,
    )
    if record is not None:
        state.policy_record = record
