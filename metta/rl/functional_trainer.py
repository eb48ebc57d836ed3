"""The training loop as two plain functions (seed 000): ``rollout()`` fills the buffer, ``train_ppo()`` learns.

    while agent_step < trainer_cfg.total_timesteps:
        agent_step, stats = rollout(policy, vecenv, experience, device, agent_step, timer)
        epoch = train_ppo(policy, optimizer, experience, device, losses, epoch, trainer_cfg, agent_step=agent_step)

Both are thin: the step of a rollout is ``perform_rollout_step`` and the loss of a minibatch is
``process_minibatch_update``, the same functions ``run.py`` calls.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from metta.rl.advantage import compute_advantage
from metta.rl.experience import Experience, calculate_anneal_beta
from metta.rl.losses import (
    CustomLossFn,
    Losses,
    compute_explained_variance,
    process_minibatch_update,
    should_stop_early,
)
from metta.rl.rollout import _timed, perform_rollout_step
from metta.stats import accumulate_rollout_stats


def rollout(
    policy: torch.nn.Module,
    vecenv: Any,
    experience: Experience,
    device: torch.device | str,
    agent_step: int,
    timer: Any = None,
) -> tuple[int, dict[str, list]]:
    """Collect steps until ``experience`` is full. Returns the new ``agent_step`` and the episodes' stats
    (``{key: [value per finished episode]}``, keys flattened with "/")."""
    experience.reset_for_rollout()
    raw_infos: list[dict] = []
    with _timed(timer, "_rollout"):
        while not experience.ready_for_training:
            num_steps, infos = perform_rollout_step(policy, vecenv, experience, device, timer)
            agent_step += num_steps
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
) -> int:
    """PPO on the full buffer: advantages once, then ``update_epochs`` passes over its minibatches.

    Returns the new epoch (one per update pass, as upstream counts). ``losses`` holds the means afterwards.
    ``custom_loss_fns`` are added to every minibatch's loss (see ``metta.rl.losses``).
    """
    _check_optimizer(optimizer)
    ppo = trainer_cfg.ppo
    prio = trainer_cfg.prioritized_experience_replay
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
                trainer_cfg.vtrace.vtrace_c_clip, device,
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
        losses.explained_variance = compute_explained_variance(experience.values, advantages)
    return epoch


def _check_optimizer(optimizer: Any) -> None:
    # A torch optimizer's step(closure) would call the loss tensor and fail with a confusing message.
    if isinstance(optimizer, torch.optim.Optimizer) or not callable(getattr(optimizer, "step", None)):
        raise TypeError(
            f"optimizer is a {type(optimizer).__name__}; train_ppo needs metta's Optimizer (step(loss, epoch, "
            "accumulate_steps) does backward, clipping and the step): Optimizer('adam', policy, learning_rate=3e-4)"
        )
