"""The two functions of the training loop (seed 000): ``rollout()`` fills the buffer, ``train_ppo()`` learns.

    while agent_step < trainer_cfg.total_timesteps:
        agent_step, stats = rollout(policy, vecenv, experience, device, agent_step, timer)
        epoch = train_ppo(policy, optimizer, experience, device, losses, epoch, trainer_cfg, agent_step=agent_step)

Both are thin: the step of a rollout is ``perform_rollout_step`` and the loss of a minibatch is
``process_minibatch_update``. run.py, the functional trainer (``metta.rl.functional_trainer``, which also
exports them under seed 000's import path) and the components (``metta.rl.components``) all run these two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from metta.common.distributed import get_world_size
from metta.rl.advantage import compute_advantage
from metta.rl.experience import Experience, calculate_anneal_beta
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
    trainer_cfg = sized_to_buffer(experience, trainer_cfg)
    trainer_cfg.apply_tf32()
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
                experience.values,
                experience.rewards,
                experience.dones,
                torch.ones_like(experience.values),
                advantages,
                ppo.gamma,
                ppo.gae_lambda,
                trainer_cfg.vtrace.vtrace_rho_clip,
                trainer_cfg.vtrace.vtrace_c_clip,
                device,
                next_rows=experience.next_rows,
            )
        for _ in range(trainer_cfg.update_epochs):
            for minibatch in experience.iter_minibatches(advantages, prio.prio_alpha, anneal_beta):
                with _timed(timer, "_train.learn"):
                    loss = process_minibatch_update(
                        policy,
                        experience,
                        minibatch,
                        advantages,
                        trainer_cfg,
                        kickstarter,
                        agent_step,
                        losses,
                        device,
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


def sized_to_buffer(experience: Experience, trainer_cfg: Any) -> Any:
    """The trainer config with the sizes the buffer runs: the buffer holds the batch and cuts the minibatches.

    A size the config sets explicitly (``batch_size``, ``minibatch_size``, ``bptt_horizon``) must match the
    buffer's, or this raises ``ValueError`` naming both (a setting accepted and then ignored would be a lie); a
    size left at its default takes the buffer's value (``PPOOptimizer(policy, optimizer, device, PPOConfig())``
    carries no sizes at all)."""
    in_buffer = {
        "batch_size": experience.batch_size,
        "minibatch_size": experience.minibatch_size * experience.accumulate_minibatches,
        "bptt_horizon": experience.bptt_horizon,
    }
    explicit = getattr(trainer_cfg, "model_fields_set", None)
    differing = {k: v for k, v in in_buffer.items() if getattr(trainer_cfg, k, v) != v}
    for name, value in differing.items():
        if explicit is None or name in explicit:
            raise ValueError(
                f"trainer_cfg.{name}={getattr(trainer_cfg, name)} but the Experience was built with {name}={value}; "
                "the buffer's sizes are the ones that run: build it from the config (make_experience(env, policy, "
                f"trainer_cfg, device)) or set trainer_cfg.{name}={value}"
            )
    return trainer_cfg.model_copy(update=differing) if differing else trainer_cfg


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
