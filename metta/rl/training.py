"""The two functions of the training loop: ``rollout()`` fills the buffer, ``train_ppo()`` learns.

    while agent_step < trainer_cfg.total_timesteps:
        agent_step, stats = rollout(policy, vecenv, experience, device, agent_step, timer)
        epoch = train_ppo(policy, optimizer, experience, device, losses, epoch, trainer_cfg, agent_step=agent_step)

Both are thin: the step of a rollout is ``perform_rollout_step`` and the loss of a minibatch is
``process_minibatch_update``. run.py, the trainer (``metta.rl.trainer``), the functional loop
(``metta.rl.functional_trainer``, which also exports them under their documented import path) and the components
(``metta.rl.components``) all run these two. ``accumulate_rollout_stats`` (also ``metta.stats``) turns the
episodes' infos into the rollout's stats.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
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

logger = logging.getLogger(__name__)


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
    The buffer's sizes are the ones that run (``sized_to_buffer``), and a plain torch optimizer is stepped through
    one metta ``Optimizer`` kept for it across calls (``as_metta_optimizer``).
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
                truncations=experience.truncateds,
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


# What train_ppo works out once, so that a loop calling it every epoch warns (or wraps) once: the size mismatches
# already reported for a buffer, and the metta Optimizer kept for a torch optimizer.
_WARNED_SIZES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sized_to_buffer(experience: Experience, trainer_cfg: Any) -> Any:
    """The trainer config with the sizes the buffer runs: the buffer holds the batch and cuts the minibatches.

    Where the config's ``batch_size``, ``minibatch_size`` (with its accumulated pieces) or ``bptt_horizon``
    differs from the buffer's, the buffer's value is used and a warning names both, once per buffer (a config
    that carries no sizes of its own, ``PPOOptimizer(policy, optimizer, device, PPOConfig())``, or a copied seed
    loop whose Experience was sized by hand, still runs). Nothing else of the config changes; with matching
    sizes (every loop that builds its buffer with ``make_experience``) the config itself is returned.
    """
    in_buffer = {
        "batch_size": experience.batch_size,
        "minibatch_size": experience.minibatch_size * experience.accumulate_minibatches,
        "bptt_horizon": experience.bptt_horizon,
    }
    differing = {k: v for k, v in in_buffer.items() if getattr(trainer_cfg, k, v) != v}
    if not differing:
        return trainer_cfg
    said = ", ".join(f"{k}={v} (trainer_cfg.{k}={getattr(trainer_cfg, k)})" for k, v in differing.items())
    if _WARNED_SIZES.get(experience) != said:
        _WARNED_SIZES[experience] = said
        logger.warning(
            "the Experience's sizes run, not the trainer config's: %s; build the buffer from the config "
            "(make_experience(env, policy, trainer_cfg, device)) to use the config's",
            said,
        )
    return trainer_cfg.model_copy(update=differing)


def as_metta_optimizer(optimizer: Any, policy: torch.nn.Module, max_grad_norm: float) -> Any:
    """The optimizer ``train_ppo`` steps: a plain torch optimizer (``torch.optim.Adam``, as hand-written loops
    pass) gets metta's ``step(loss, epoch, accumulate_steps)`` via ``Optimizer.wrap``, one wrapper per torch
    optimizer for its lifetime (so its step count and gradient statistics carry over); anything else must have
    that step."""
    if isinstance(optimizer, torch.optim.Optimizer):
        wrapped = _WRAPPED.get(optimizer)
        if wrapped is None or wrapped.policy is not policy or wrapped.max_grad_norm != float(max_grad_norm):
            wrapped = _WRAPPED[optimizer] = Optimizer.wrap(optimizer, policy, max_grad_norm)
        return wrapped
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(
            f"optimizer is a {type(optimizer).__name__}; train_ppo needs metta's Optimizer (step(loss, epoch, "
            "accumulate_steps) does backward, clipping and the step) or a torch.optim.Optimizer: "
            "Optimizer('adam', policy, learning_rate=3e-4)"
        )
    return optimizer


# ----------------------------------------------------------------------------------------------------
# Rollout statistics: episode infos flattened into ``{"a/b": [values...]}`` lists
def unroll_nested_dict(d: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``{"agent": {"action.move": 1}}`` -> ``("agent/action.move", 1)``, depth first."""
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from unroll_nested_dict(value, name + "/")
        else:
            yield name, value


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().item() if value.numel() == 1 else value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def accumulate_rollout_stats(raw_infos: list[dict[str, Any]], stats: dict[str, Any]) -> None:
    """Append every (flattened) info value to ``stats[key]``; a key seen for the first time gets a list.

    Values that are lists (e.g. ``episode_rewards`` per agent) are appended as a whole; numbers stay numbers.
    """
    for info in raw_infos:
        for key, value in unroll_nested_dict(info):
            value = _scalar(value)
            existing = stats.get(key)
            if existing is None:
                stats[key] = [value]
            elif isinstance(existing, list):
                existing.append(value)
            else:
                stats[key] = [existing, value]
