"""The functional faces of the trainer: ``functional_training_loop`` and the components' loop, and the loop's two
functions under their documented import path.

    state = functional_training_loop(config, ppo_config, policy, curriculum, policy_store,
                                     step_fn=None, custom_losses=[curiosity_loss], run_dir="train_dir/x")

    components = create_training_components(config, ppo_config, policy, vecenv, experience, policy_store)
    state = resume_training_state(components)
    while state.agent_steps < config.total_timesteps:
        metrics = default_training_step(state, components, config, experience)

Both are the trainer (``metta.rl.trainer.Trainer``) run.py runs: the same setup, resume, periodic tasks, run
directory and files. ``functional_training_loop`` is ``Trainer(...).run(step_fn)``; the components
(``TrainingComponents``) are a ``Trainer`` whose parts the caller's loop drives (``collector``, ``ppo``,
``checkpointer``, ``stats_logger``, ``evaluator``; ``components.iteration()`` and ``components.periodic_tasks``
give it the loop's periodic tasks too). ``rollout()`` and ``train_ppo()`` live in ``metta.rl.training``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from metta.rl.experience import Experience
from metta.rl.losses import CustomLossFn
from metta.rl.run_config import TrainingConfig
from metta.rl.trainer import Trainer, TrainingState, default_training_step
from metta.rl.trainer_config import PPOConfig, TrainerConfig, resolve_trainer_config
from metta.rl.training import as_metta_optimizer, rollout, train_ppo

if TYPE_CHECKING:
    from metta.agent.policy_store import PolicyStore
    from metta.sim.simulation_config import SimulationSuiteConfig

__all__ = [
    "TrainingState",
    "TrainingComponents",
    "create_training_components",
    "resume_training_state",
    "default_training_step",
    "functional_training_loop",
    "training_config_for",
    "rollout",
    "train_ppo",
    "as_metta_optimizer",
]

# The components of a run are the trainer's parts: one object, under the name the component API uses.
TrainingComponents = Trainer


def training_config_for(
    config: TrainingConfig | TrainerConfig,
    ppo_config: PPOConfig | None = None,
    *,
    device: torch.device | str | None = None,
    num_envs: int | None = None,
    num_workers: int | None = None,
    vectorization: str | None = None,
    seed: int | None = None,
    run_dir: str | os.PathLike | None = None,
    checkpoint_interval: int | None = None,
    evaluate: bool | None = None,
    evaluate_interval: int | None = None,
    keep_checkpoints: int | None = None,
    console: bool | None = None,
) -> TrainingConfig:
    """The ``TrainingConfig`` the functional faces run: ``config`` itself (a ``TrainingConfig``) or one holding
    ``config`` (a ``TrainerConfig``) as its trainer, with ``ppo_config`` as the trainer's ``ppo`` and each argument
    that is given in place of its field.

    For a bare ``TrainerConfig``: nothing is evaluated unless ``evaluate``, wandb runs only through a ``wandb_run``
    the caller passes, ``vectorization`` defaults to serial for one worker and multiprocessing for more, and the
    run directory (``run_dir``, whose parent is ``data_dir`` and whose name is ``experiment_name``) defaults to
    the folder that holds ``config.checkpoint.checkpoint_dir`` when that is set, so a second call with the same
    config continues the first.
    """
    trainer = resolve_trainer_config(config, ppo_config)
    for name, value in (("checkpoint_interval", checkpoint_interval), ("evaluate_interval", evaluate_interval)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name}={value!r} must be an int >= 0 (epochs; 0 turns it off)")
    if isinstance(seed, bool) or (seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**31)):
        raise ValueError(f"seed={seed!r} must be an int in 0..2**31-1 (the envs' reset seed)")
    trainer_fields: dict[str, Any] = {}
    if checkpoint_interval is not None:
        trainer_fields["checkpoint"] = {**trainer.checkpoint.model_dump(), "checkpoint_interval": checkpoint_interval}
    if evaluate_interval is not None:
        trainer_fields["simulation"] = {**trainer.simulation.model_dump(), "evaluate_interval": evaluate_interval}
    if num_workers is not None:
        trainer_fields["num_workers"] = num_workers
    if console is not None:
        trainer_fields["verbose"] = console
    if trainer_fields:
        trainer = TrainerConfig.model_validate({**trainer.model_dump(by_alias=True), **trainer_fields})

    if isinstance(config, TrainingConfig):
        fields = config.model_dump(by_alias=True, exclude={"trainer"})
    else:
        fields = {"evaluate": False, "wandb": {"enabled": False}}
        if vectorization is None:
            vectorization = "serial" if trainer.num_workers == 1 else "multiprocessing"
        if run_dir is None and trainer.checkpoint.checkpoint_dir:
            run_dir = os.path.dirname(os.path.abspath(trainer.checkpoint.checkpoint_dir))
    given = {
        "device": None if device is None else str(device),
        "num_envs": num_envs,
        "vectorization": vectorization,
        "seed": seed,
        "evaluate": evaluate,
        "keep_checkpoints": keep_checkpoints,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    if run_dir is not None:
        run_dir = os.path.abspath(os.fspath(run_dir))
        fields["data_dir"], fields["experiment_name"] = os.path.dirname(run_dir), os.path.basename(run_dir)
    return TrainingConfig.model_validate({**fields, "trainer": trainer})


def create_training_components(
    config: TrainingConfig | TrainerConfig,
    ppo_config: PPOConfig | None,
    policy: torch.nn.Module,
    vecenv: Any,
    experience: Experience,
    policy_store: PolicyStore,
    *,
    optimizer: Any = None,
    device: torch.device | str | None = None,
    run_dir: str | os.PathLike | None = None,
    wandb_run: Any = None,
    evaluation_suite: SimulationSuiteConfig | None = None,
    custom_loss_fns: Sequence[CustomLossFn] | None = None,
    kickstarter: Any = None,
    timer: Any = None,
    console: bool | None = None,
    keep_checkpoints: int | None = None,
) -> TrainingComponents:
    """The components of a run over the caller's ``policy``, ``vecenv`` and ``experience``: a set-up ``Trainer``
    (``training_config_for`` turns the arguments into its config; ``device`` must be the policy's), resumed from
    the run directory's newest checkpoint. ``optimizer`` defaults to metta's ``Optimizer`` from
    ``config.optimizer`` (a torch optimizer is wrapped once); ``kickstarter`` to the one ``config.kickstart``
    describes; with an ``evaluation_suite`` ``components.evaluator`` scores it. The caller's loop owns the stop
    signals; ``components.close()`` (or ``with``) releases the run directory's lock, the logger and wandb."""
    run_config = training_config_for(
        config,
        ppo_config,
        device=device,
        run_dir=run_dir,
        evaluate=True if evaluation_suite is not None else None,
        keep_checkpoints=keep_checkpoints,
        console=console,
    )
    return Trainer(
        run_config,
        policy=policy,
        vecenv=vecenv,
        experience=experience,
        policy_store=policy_store,
        optimizer=optimizer,
        kickstarter=kickstarter,
        timer=timer,
        custom_loss_fns=custom_loss_fns,
        evaluation_suite=evaluation_suite,
        wandb_run=wandb_run,
        ppo_config=ppo_config,
        console=run_config.trainer.verbose,
        graceful_stop=False,
    ).open()


def resume_training_state(components: TrainingComponents) -> TrainingState:
    """The state the components' run continues from: set when they were created, from the run directory's newest
    good checkpoint (policy, optimizer, curriculum, timer and RNG restored, later metrics rows dropped), or a fresh
    state (from ``trainer.initial_policy`` when it names one)."""
    return components.state


def functional_training_loop(
    config: TrainingConfig | TrainerConfig,
    ppo_config: PPOConfig | None,
    policy: torch.nn.Module,
    curriculum: Any,
    policy_store: PolicyStore,
    step_fn: Any = None,
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
    """Train ``policy`` on ``curriculum`` (a Curriculum, an env config or a path; None: ``trainer.curriculum``)
    until ``total_timesteps`` agent steps, as run.py trains; returns the final state.

    ``config`` is a ``TrainingConfig`` or a ``TrainerConfig``; the keyword arguments replace its fields
    (``training_config_for``). ``step_fn(state, components, config, experience) -> metrics`` replaces
    ``default_training_step``; ``custom_losses`` join every minibatch's loss. ``evaluation_suite`` turns
    evaluation on (``trainer.simulation.evaluate_interval``, or ``evaluate_interval``). ``console`` (default
    ``trainer.verbose``) prints the run's messages and one line per epoch. ``wandb_run`` logs to a run the caller
    started (a ``TrainingConfig`` with ``wandb.enabled`` starts its own).

    Everything else is the ``Trainer``'s: the envs sized from the forward-pass target to fit the batch unless
    ``num_envs`` is given, the run directory and its lock, the resume from its newest checkpoint (calling this
    twice on one directory continues the first call's run), the periodic tasks, and SIGTERM or Ctrl-C (from the
    main thread) finishing the step in progress with a checkpoint (``state.stopped_by``).
    """
    if step_fn is not None and not callable(step_fn):
        raise TypeError(
            f"step_fn is a {type(step_fn).__name__}; pass a function (state, components, config, experience) -> metrics"
        )
    run_config = training_config_for(
        config,
        ppo_config,
        device=device,
        num_envs=num_envs,
        num_workers=num_workers,
        vectorization=vectorization,
        seed=seed,
        run_dir=run_dir,
        checkpoint_interval=checkpoint_interval,
        evaluate=True if evaluation_suite is not None else None,
        evaluate_interval=evaluate_interval,
        console=console,
    )
    trainer = Trainer(
        run_config,
        policy=policy,
        curriculum=curriculum,
        policy_store=policy_store,
        optimizer=optimizer,
        custom_loss_fns=custom_losses,
        evaluation_suite=evaluation_suite,
        wandb_run=wandb_run,
        ppo_config=ppo_config,
        console=run_config.trainer.verbose,
    )
    with trainer:
        trainer.run(step_fn)
    return trainer.state
