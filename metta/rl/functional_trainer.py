"""The training loop as plain functions (seeds 000 and 001).

Two functions are the loop itself: ``rollout()`` fills the buffer, ``train_ppo()`` learns.

    while agent_step < trainer_cfg.total_timesteps:
        agent_step, stats = rollout(policy, vecenv, experience, device, agent_step, timer)
        epoch = train_ppo(policy, optimizer, experience, device, losses, epoch, trainer_cfg, agent_step=agent_step)

Both are thin: the step of a rollout is ``perform_rollout_step`` and the loss of a minibatch is
``process_minibatch_update``, the same functions ``run.py`` calls.

On top of them, seed 001's loop over the components of ``metta.rl.components``:

    state = functional_training_loop(trainer_config, ppo_config, policy, curriculum, policy_store,
                                     step_fn=None, custom_losses=[curiosity_loss], run_dir="train_dir/x")

``create_training_components`` builds the components, ``resume_training_state`` restores the newest good
checkpoint of their directory (or starts fresh), ``default_training_step`` is one rollout and one update
through them, and ``TrainingState`` carries the counters; a custom ``step_fn(state, components, config,
experience) -> metrics`` replaces the default step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from metta.common.distributed import get_world_size
from metta.rl.advantage import compute_advantage
from metta.rl.epoch_metrics import epoch_metrics
from metta.rl.experience import Experience, calculate_anneal_beta
from metta.rl.intervals import crossed
from metta.rl.losses import (
    CustomLossFn,
    Losses,
    compute_explained_variance,
    process_minibatch_update,
    should_stop_early,
)
from metta.rl.optimizer import Optimizer, apply_lr_schedule
from metta.rl.rollout import _timed, perform_rollout_step
from metta.stats import accumulate_rollout_stats

if TYPE_CHECKING:
    from metta.agent.policy_record import PolicyRecord
    from metta.agent.policy_store import PolicyStore
    from metta.rl.components import PolicyEvaluator, PPOOptimizer, RolloutCollector, StatsLogger, TrainingCheckpointer
    from metta.rl.trainer_config import PPOConfig, TrainerConfig
    from metta.sim.simulation_config import SimulationSuiteConfig


def rollout(
    policy: torch.nn.Module,
    vecenv: Any,
    experience: Experience,
    device: torch.device | str,
    agent_step: int,
    timer: Any = None,
    world_size: int | None = None,
) -> tuple[int, dict[str, list]]:
    """Collect steps until ``experience`` is full. Returns the new ``agent_step`` and the episodes' stats
    (``{key: [value per finished episode]}``, keys flattened with "/").

    ``agent_step`` counts the steps of every rank: each step adds ``num_steps * world_size`` (default: the
    torch.distributed world size, 1 without it), since every rank collects as many.
    """
    if world_size is None:
        world_size = get_world_size()
    experience.reset_for_rollout()
    raw_infos: list[dict] = []
    with _timed(timer, "_rollout"):
        while not experience.ready_for_training:
            num_steps, infos = perform_rollout_step(policy, vecenv, experience, device, timer)
            agent_step += num_steps * world_size
            if infos:
                raw_infos.extend(infos)
    stats: dict[str, list] = {}
    accumulate_rollout_stats(raw_infos, stats)
    return agent_step, stats


def train_ppo(
    policy: torch.nn.Module,
    optimizer: Any,
    experience: Experience,
    device: torch.device | str,
    losses: Losses,
    epoch: int,
    trainer_cfg: Any,
    kickstarter: Any = None,
    agent_step: int = 0,
    timer: Any = None,
    custom_loss_fns: Sequence[CustomLossFn] | None = None,
    batch_start_step: int | None = None,
) -> int:
    """PPO on the full buffer: advantages once, then ``update_epochs`` passes over its minibatches.

    Returns the new epoch (one per update pass, as upstream counts; fewer when ``target_kl`` stops early).
    ``losses`` holds the means afterwards. ``custom_loss_fns`` are added to every minibatch's loss (see
    ``metta.rl.losses``). The learning rate follows ``trainer_cfg.lr_scheduler`` at ``batch_start_step``, the
    agent step at which this batch's rollout began (default: ``agent_step`` minus one batch of every rank).
    """
    ppo = trainer_cfg.ppo
    optimizer = as_metta_optimizer(optimizer, policy, ppo.max_grad_norm)
    prio = trainer_cfg.prioritized_experience_replay
    if batch_start_step is None:
        batch_start_step = max(agent_step - experience.batch_size * get_world_size(), 0)
    apply_lr_schedule(optimizer, trainer_cfg, batch_start_step)
    with _timed(timer, "_train"):
        losses.zero()
        experience.reset_importance_sampling_ratios()
        anneal_beta = calculate_anneal_beta(
            epoch, trainer_cfg.total_timesteps, trainer_cfg.batch_size, prio.prio_alpha, prio.prio_beta0
        )
        with _timed(timer, "_train.advantage"):
            advantages = torch.zeros_like(experience.values)
            compute_advantage(
                experience.values, experience.rewards, experience.dones, torch.ones_like(experience.values),
                advantages, ppo.gamma, ppo.gae_lambda, trainer_cfg.vtrace.vtrace_rho_clip,
                trainer_cfg.vtrace.vtrace_c_clip, device, next_rows=experience.next_rows,
            )  # fmt: skip
        for _ in range(trainer_cfg.update_epochs):
            for minibatch in experience.iter_minibatches(advantages, prio.prio_alpha, anneal_beta):
                with _timed(timer, "_train.learn"):
                    loss = process_minibatch_update(
                        policy, experience, minibatch, advantages, trainer_cfg, kickstarter, agent_step, losses, device,
                        custom_loss_fns,
                    )
                    optimizer.step(loss, epoch, experience.accumulate_minibatches)
            epoch += 1
            if should_stop_early(losses, ppo.target_kl):
                break
        if timer is not None and torch.device(device).type == "cuda":
            with _timed(timer, "_train.learn"):  # the device finishes the update inside the learn phase's time
                torch.cuda.synchronize(device)
        losses.explained_variance = compute_explained_variance(experience.values, advantages)
    return epoch


def as_metta_optimizer(optimizer: Any, policy: torch.nn.Module, max_grad_norm: float) -> Any:
    """The optimizer ``train_ppo`` steps: a plain torch optimizer (seed 000 passes ``torch.optim.Adam``) gets
    metta's ``step(loss, epoch, accumulate_steps)`` via ``Optimizer.wrap``; anything else must have that step."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return Optimizer.wrap(optimizer, policy, max_grad_norm)
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(
            f"optimizer is a {type(optimizer).__name__}; train_ppo needs metta's Optimizer (step(loss, epoch, "
            "accumulate_steps) does backward, clipping and the step) or a torch.optim.Optimizer: "
            "Optimizer('adam', policy, learning_rate=3e-4)"
        )
    return optimizer


# ----------------------------------------------------------------------------------------------------------
# Seed 001: the loop over components
@dataclass
class TrainingState:
    """The counters of a run; ``metrics`` are the last step's, ``policy_record`` the last saved policy."""

    agent_step: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    eval_scores: dict[str, float] = field(default_factory=dict)
    policy_record: "PolicyRecord | None" = None
    start_time: float = field(default_factory=time.time)

    @property
    def agent_steps(self) -> int:
        """``agent_step`` under the name seed 001's migration example uses."""
        return self.agent_step


@dataclass
class TrainingComponents:
    """What ``create_training_components`` returns; ``evaluator`` is None without an evaluation suite."""

    collector: "RolloutCollector"
    ppo: "PPOOptimizer"
    checkpointer: "TrainingCheckpointer"
    stats_logger: "StatsLogger"
    optimizer: Any
    evaluator: "PolicyEvaluator | None" = None
    custom_loss_fns: list[CustomLossFn] = field(default_factory=list)
    run_dir: str = ""
    timer: Any = None


StepFn = Callable[[TrainingState, TrainingComponents, "TrainerConfig", Experience], Mapping[str, float]]


def resolve_trainer_config(config: Any, ppo_config: "PPOConfig | None" = None) -> "TrainerConfig":
    """``config`` as a TrainerConfig with ``ppo_config`` (when given) as its ``ppo`` section.

    ``config`` may be a TrainerConfig or any object with a TrainerConfig in ``.trainer`` (a training config).
    """
    from metta.rl.trainer_config import PPOConfig, TrainerConfig

    if not isinstance(config, TrainerConfig) and isinstance(getattr(config, "trainer", None), TrainerConfig):
        config = config.trainer
    if not isinstance(config, TrainerConfig):
        raise TypeError(
            f"config is a {type(config).__name__}; pass a TrainerConfig (metta.rl.trainer_config) or a TrainingConfig "
            "(metta.train.train_config)"
        )
    if ppo_config is None:
        return config
    if not isinstance(ppo_config, PPOConfig):
        raise TypeError(f"ppo_config is a {type(ppo_config).__name__}; pass a PPOConfig or None (use config.ppo)")
    return config.model_copy(update={"ppo": ppo_config})


def _run_dirs(config: "TrainerConfig", run_dir: str | os.PathLike | None) -> tuple[str, str]:
    """``(run_dir, checkpoint_dir)``: checkpoints under ``run_dir`` when it is given, else the config's folder."""
    if run_dir is None:
        checkpoint_dir = os.path.abspath(config.checkpoint.checkpoint_dir or os.path.join("train_dir", "checkpoints"))
        return os.path.dirname(checkpoint_dir), checkpoint_dir
    run_dir = os.path.abspath(os.fspath(run_dir))
    return run_dir, os.path.join(run_dir, "checkpoints")


def create_training_components(
    config: Any,
    ppo_config: "PPOConfig | None",
    policy: torch.nn.Module,
    vecenv: Any,
    experience: Experience,
    policy_store: "PolicyStore",
    *,
    optimizer: Any = None,
    device: torch.device | str = "cpu",
    run_dir: str | os.PathLike | None = None,
    wandb_run: Any = None,
    evaluation_suite: "SimulationSuiteConfig | None" = None,
    custom_loss_fns: Sequence[CustomLossFn] | None = None,
    kickstarter: Any = None,
    timer: Any = None,
    console: bool = True,
) -> TrainingComponents:
    """The components of a run, wired to the same policy, buffer and optimizer.

    ``optimizer`` defaults to metta's ``Optimizer`` from ``config.optimizer`` and ``ppo.max_grad_norm``.
    Metrics go to ``{run_dir}/metrics.jsonl`` and checkpoints to ``{run_dir}/checkpoints`` (``run_dir``
    defaults to the folder above ``config.checkpoint.checkpoint_dir``, which is then used as is).
    """
    from metta.rl.components import PolicyEvaluator, PPOOptimizer, RolloutCollector, StatsLogger, TrainingCheckpointer
    from metta.rl.losses import custom_loss_names

    trainer_cfg = resolve_trainer_config(config, ppo_config)
    losses = list(custom_loss_fns or [])
    custom_loss_names(losses)  # a non-callable is reported now, not at the first minibatch
    if optimizer is None:
        opt = trainer_cfg.optimizer
        optimizer = Optimizer(
            opt.type, policy, learning_rate=opt.learning_rate, betas=(opt.beta1, opt.beta2), eps=opt.eps,
            weight_decay=opt.weight_decay, max_grad_norm=trainer_cfg.ppo.max_grad_norm,
        )  # fmt: skip
    run_dir, checkpoint_dir = _run_dirs(trainer_cfg, run_dir)
    evaluator = None
    if evaluation_suite is not None:
        evaluator = PolicyEvaluator(evaluation_suite, policy_store, device, stats_dir=os.path.join(run_dir, "stats"))
    return TrainingComponents(
        collector=RolloutCollector(vecenv, policy, experience, device, timer),
        ppo=PPOOptimizer(policy, optimizer, device, trainer_cfg, kickstarter=kickstarter, timer=timer),
        checkpointer=TrainingCheckpointer(
            checkpoint_dir, policy_store, wandb_run, trainer_config=trainer_cfg, vecenv=vecenv, stopwatch=timer
        ),
        stats_logger=StatsLogger(run_dir, trainer_cfg.total_timesteps, wandb_run=wandb_run, console=console),
        optimizer=optimizer,
        evaluator=evaluator,
        custom_loss_fns=losses,
        run_dir=run_dir,
        timer=timer,
    )


def resume_training_state(components: TrainingComponents) -> TrainingState:
    """The state a run continues from: the newest good checkpoint of ``components.checkpointer.checkpoint_dir``
    restored into the policy, the optimizer, the curriculum, the timer and the RNG states
    (``TrainingCheckpointer.resume``, as run.py resumes), with the metrics rows logged after it dropped; a fresh
    ``TrainingState`` when the directory has none. A corrupt newest checkpoint is skipped with a warning naming
    it."""
    ckpt = components.checkpointer.resume(components.collector.policy, components.optimizer)
    if ckpt is None:
        return TrainingState()
    components.ppo.epoch = ckpt.epoch
    # Rows a killed run logged after its last checkpoint are about to be trained and logged again.
    components.stats_logger.resume_from(ckpt.epoch)
    return TrainingState(agent_step=ckpt.agent_step, epoch=ckpt.epoch)


def default_training_step(
    state: TrainingState, components: TrainingComponents, config: "TrainerConfig", experience: Experience
) -> dict[str, float]:
    """One rollout and one PPO update through the components; advances ``state`` and returns the epoch's
    metrics (``metta.rl.epoch_metrics``: ``overview/sps``, ``overview/reward``, ``losses/*``, ...)."""
    del config  # part of the step signature so that custom steps can read it; the components hold their copy
    if experience is not components.collector.experience:
        raise ValueError("experience is not the buffer the components' RolloutCollector fills; pass the same Experience")
    start = time.perf_counter()
    timer = components.timer
    phase_before = timer.get_all_elapsed() if timer is not None else None
    episode_stats, steps = components.collector.collect()
    components.ppo.epoch = state.epoch  # the state is the source of truth (a resumed or custom loop may set it)
    components.ppo.update(experience, components.custom_loss_fns, state.agent_step + steps, batch_start_step=state.agent_step)
    state.agent_step += steps
    state.epoch = components.ppo.epoch
    metrics = epoch_metrics(
        episode_stats, components.ppo.losses, experience, components.ppo.optimizer, steps, time.perf_counter() - start,
        timer=timer, phase_before=phase_before,
    )  # fmt: skip
    state.metrics = metrics
    return metrics


def functional_training_loop(
    config: Any,
    ppo_config: "PPOConfig | None",
    policy: torch.nn.Module,
    curriculum: Any,
    policy_store: "PolicyStore",
    step_fn: StepFn | None = None,
    custom_losses: Sequence[CustomLossFn] | None = None,
    *,
    device: torch.device | str | None = None,
    num_envs: int = 4,
    num_workers: int = 1,
    vectorization: str = "serial",
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    optimizer: Any = None,
    checkpoint_interval: int | None = None,
    evaluation_suite: "SimulationSuiteConfig | None" = None,
    evaluate_interval: int | None = None,
    wandb_run: Any = None,
    console: bool = True,
) -> TrainingState:
    """Train ``policy`` on ``curriculum`` until ``config.total_timesteps`` agent steps; returns the final state.

    ``config`` is a TrainerConfig (sizes, optimizer, intervals); ``ppo_config`` (or None) replaces its ``ppo``.
    ``device`` defaults to the device of the policy's parameters.
    ``curriculum`` is a Curriculum, an env config or a curriculum path; the vecenv (``num_envs`` envs, reset
    with ``seed``) and the Experience are built here and closed at the end. ``step_fn`` defaults to
    ``default_training_step``; ``custom_losses`` are added to every minibatch's PPO loss. Every step's metrics
    go to the console and ``{run_dir}/metrics.jsonl``; a complete checkpoint is written every
    ``checkpoint_interval`` epochs (default ``config.checkpoint.checkpoint_interval``, 0 for none) and at the
    end; with an ``evaluation_suite`` the policy is scored every ``evaluate_interval`` epochs (default
    ``config.simulation.evaluate_interval``) and at the end.

    A run directory that holds a checkpoint resumes (``resume_training_state``): the policy, optimizer,
    curriculum, timer and RNG continue from its newest good checkpoint, and training goes on to
    ``total_timesteps`` from there, so calling this twice on one directory trains once and then continues
    (a run already at ``total_timesteps`` trains no further and rewrites nothing). While it runs it holds the
    run directory's lock (``metta.common.run_lock``): another process training into the same directory gets a
    ``RunLockError`` instead of writing over this one's files.
    """
    from metta.common.profiling.stopwatch import Stopwatch
    from metta.common.run_lock import acquire_run_lock
    from metta.rl.experience import make_experience
    from metta.rl.vecenv import make_vecenv

    trainer_cfg = resolve_trainer_config(config, ppo_config)
    if not isinstance(policy, torch.nn.Module):
        raise TypeError(f"policy is a {type(policy).__name__}; pass the agent (an nn.Module), e.g. Agent(env)")
    if step_fn is not None and not callable(step_fn):
        raise TypeError(f"step_fn is a {type(step_fn).__name__}; pass a function (state, components, config, experience) -> metrics")
    step = step_fn or default_training_step
    if device is None:
        device = next(policy.parameters()).device
    if checkpoint_interval is None:
        checkpoint_interval = trainer_cfg.checkpoint.checkpoint_interval
    if evaluate_interval is None:
        evaluate_interval = trainer_cfg.simulation.evaluate_interval
    for name, value in (("checkpoint_interval", checkpoint_interval), ("evaluate_interval", evaluate_interval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an int >= 0 (epochs; 0 turns it off)")

    lock_dir = _run_dirs(trainer_cfg, run_dir)[0]
    os.makedirs(lock_dir, exist_ok=True)
    run_lock = acquire_run_lock(lock_dir)  # one writer per run directory, as run.py: a second process is refused
    try:
        vecenv = make_vecenv(
            curriculum, vectorization, num_envs=num_envs, num_workers=num_workers, is_training=True, seed=seed
        )
    except BaseException:
        run_lock.release()
        raise
    components: TrainingComponents | None = None
    try:
        vecenv.async_reset(seed)
        experience = make_experience(vecenv, policy, trainer_cfg, device)
        timer = Stopwatch()
        components = create_training_components(
            trainer_cfg, None, policy, vecenv, experience, policy_store, optimizer=optimizer, device=device,
            run_dir=run_dir, wandb_run=wandb_run, evaluation_suite=evaluation_suite, custom_loss_fns=custom_losses,
            timer=timer, console=console,
        )  # fmt: skip
        state = resume_training_state(components)
        if not timer.get_summary()["is_running"]:  # a resumed stopwatch is already running
            timer.start()
        if console:
            resumed = f", resumed at epoch {state.epoch}, step {state.agent_step:,}" if state.agent_step else ""
            print(
                f"functional training: {trainer_cfg.total_timesteps:,} agent steps, {vecenv.num_agents} agents, "
                f"batch {trainer_cfg.batch_size}, run dir {components.run_dir}{resumed}",
                flush=True,
            )
        saved_epoch = evaluated_epoch = None
        while state.agent_step < trainer_cfg.total_timesteps:
            steps_before, epoch_before = state.agent_step, state.epoch
            metrics = step(state, components, trainer_cfg, experience)
            if not isinstance(metrics, Mapping):
                raise TypeError(f"step_fn returned a {type(metrics).__name__}; it must return a dict of metrics")
            if state.agent_step <= steps_before:
                raise RuntimeError("step_fn did not advance state.agent_step; add the steps it collected, or the loop never ends")
            components.stats_logger.log(state.epoch, state.agent_step, dict(metrics))
            if crossed(checkpoint_interval, epoch_before, state.epoch):
                _save(state, components)
                saved_epoch = state.epoch
            if components.evaluator is not None and crossed(evaluate_interval, epoch_before, state.epoch):
                _evaluate(state, components, policy)
                evaluated_epoch = state.epoch
        timer.stop()
        if saved_epoch != state.epoch:  # the final checkpoint and evaluation never repeat the last ones
            _save(state, components, final=True)
        if components.evaluator is not None and evaluated_epoch != state.epoch:
            _evaluate(state, components, policy)
        if console:
            elapsed = time.time() - state.start_time
            print(f"done: epoch {state.epoch}, {state.agent_step:,} agent steps in {elapsed:.1f} s", flush=True)
        return state
    finally:
        if components is not None:
            components.stats_logger.close()
        vecenv.close()
        run_lock.release()


def _save(state: TrainingState, components: TrainingComponents, final: bool = False) -> None:
    record = components.checkpointer.save(
        components.collector.policy, components.optimizer, state.agent_step, state.epoch,
        metadata={"eval_scores": dict(state.eval_scores)}, final=final,
    )  # fmt: skip
    if record is not None:
        state.policy_record = record


def _evaluate(state: TrainingState, components: TrainingComponents, policy: torch.nn.Module) -> None:
    assert components.evaluator is not None
    state.eval_scores = components.evaluator.evaluate(policy)
    components.stats_logger.log(state.epoch, state.agent_step, {f"eval/{k}": v for k, v in state.eval_scores.items()})
