"""``PPOOptimizer``: the PPO update as an object, over ``train_ppo`` and ``compute_ppo_losses``.

    ppo = PPOOptimizer(policy, optimizer, device, PPOConfig())     # or a TrainerConfig / TrainingConfig
    stats = ppo.update(experience, custom_loss_fns=[my_loss])     # {"policy_loss": ..., "custom/my_loss": ...}
    policy_loss, value_loss, entropy_loss, total_loss, approx_kl, clipfrac = ppo.compute_ppo_loss(
        obs, actions, old_logprobs, advantages, returns, values)  # a PPOLoss: also readable by name

No loss formula lives here: ``update`` runs ``train_ppo`` (hence ``process_minibatch_update``) and
``compute_ppo_loss`` runs ``minibatch_loss``, the function ``process_minibatch_update`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from metta.agent.policy_state import PolicyState
from metta.rl.advantage import RowTail
from metta.rl.experience import Experience
from metta.rl.losses import CustomLossFn, Losses, PPOLoss, minibatch_loss
from metta.rl.trainer_config import PPOConfig, TrainerConfig, resolve_trainer_config
from metta.rl.training import as_metta_optimizer, train_ppo


class PPOOptimizer:
    """PPO updates of ``policy`` with ``optimizer`` (metta's ``Optimizer``).

    ``config`` is a ``PPOConfig``, a ``TrainerConfig`` or a ``TrainingConfig`` (its ``trainer`` is used). With a
    ``PPOConfig`` the other update settings (``update_epochs``, V-trace clips, prioritized replay) are
    ``TrainerConfig``'s defaults. Minibatch sizes always come from the ``Experience``.
    ``epoch`` counts update passes (as ``train_ppo`` does) and ``losses`` holds the last update's statistics.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        optimizer: Any,
        device: torch.device | str,
        config: PPOConfig | TrainerConfig | None = None,
        kickstarter: Any = None,
        timer: Any = None,
    ):
        if not isinstance(policy, torch.nn.Module):
            raise TypeError(f"policy is a {type(policy).__name__}; pass the agent (an nn.Module), e.g. Agent(env)")
        if config is None:
            config = PPOConfig()
        if isinstance(config, PPOConfig):
            config = TrainerConfig(ppo=config)
        config = resolve_trainer_config(config)  # a TrainerConfig, or a TrainingConfig's .trainer
        self.policy = policy
        self.optimizer = as_metta_optimizer(optimizer, policy, config.ppo.max_grad_norm)
        self.device = device
        self.trainer_cfg = config
        self.kickstarter = kickstarter
        self.timer = timer
        self.losses = Losses()
        self.epoch = 0

    @property
    def ppo_config(self) -> PPOConfig:
        return self.trainer_cfg.ppo

    def update(
        self,
        experience: Experience,
        custom_loss_fns: Sequence[CustomLossFn] | None = None,
        agent_step: int = 0,
        batch_start_step: int | None = None,
    ) -> dict[str, float]:
        """One PPO update on the full buffer; returns ``Losses.stats()`` (custom losses as ``custom/<name>``).

        ``agent_step`` (the step count after this batch) matters for a kickstarter's annealing and, with
        ``batch_start_step`` (the count when the batch's rollout began), for the learning-rate schedule.
        """
        if not isinstance(experience, Experience):
            raise TypeError(
                f"experience is a {type(experience).__name__}; pass the Experience a RolloutCollector filled"
            )
        if not experience.full:
            raise ValueError("experience is not full; fill it first (RolloutCollector.collect() or rollout(...))")
        self.epoch = train_ppo(
            self.policy,
            self.optimizer,
            experience,
            self.device,
            self.losses,
            self.epoch,
            self.trainer_cfg,
            self.kickstarter,
            agent_step,
            self.timer,
            custom_loss_fns=custom_loss_fns,
            batch_start_step=batch_start_step,
        )
        return self.losses.stats()

    def compute_ppo_loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        values: torch.Tensor,
        *,
        rewards: torch.Tensor | None = None,
        dones: torch.Tensor | None = None,
        truncations: torch.Tensor | None = None,
        tail: RowTail | None = None,
        prio_weights: torch.Tensor | None = None,
        state: PolicyState | None = None,
        agent_step: int = 0,
    ) -> PPOLoss:
        """The loss of the current policy on given data (``metta.rl.losses.minibatch_loss``, the function every
        update runs), without touching any buffer or optimizer:

            policy_loss, value_loss, entropy_loss, total_loss, approx_kl, clipfrac = ppo.compute_ppo_loss(...)

        Shapes: ``obs [B, T, tokens, 3]``, ``actions [B, T, 2]`` and ``[B, T]`` for the rest (or ``obs [N,
        tokens, 3]`` with ``[N]``). ``total_loss`` holds every term of the update's loss, including L2-init and
        the kickstarter's. With ``rewards`` and ``dones`` (``[B, T]``) the advantages are recomputed with V-trace
        from the current ratios as in the update (``truncations``: which dones are truncations, which bootstrap;
        ``tail``: the steps after the rows, for rows of an Experience ``experience.row_tail(indices,
        advantages)``); without them they are used as given. ``prio_weights``
        (``[B, 1]``) scale the advantages as prioritized replay does; ``state`` is the LSTM state the rows start
        from (default zeros).
        """
        if (rewards is None) != (dones is None):
            raise ValueError("pass both rewards and dones (the V-trace recompute needs both) or neither")
        if truncations is not None and dones is None:
            raise ValueError("truncations mark which dones are truncations: pass rewards and dones with them")
        if rewards is not None and old_logprobs.dim() != 2:
            raise ValueError(f"rewards/dones need [B, T] data; old_logprobs has shape {list(old_logprobs.shape)}")
        state = state or PolicyState()
        minibatch = {
            "obs": obs,
            "actions": actions,
            "logprobs": old_logprobs,
            "values": values,
            "advantages": advantages,
            "returns": returns,
            "lstm_h": state.lstm_h,
            "lstm_c": state.lstm_c,
        }
        if rewards is not None:
            minibatch.update(rewards=rewards, dones=dones)
            if truncations is not None:
                minibatch["truncateds"] = truncations
        if prio_weights is not None:
            minibatch["prio_weights"] = prio_weights
        result = minibatch_loss(
            self.policy, minibatch, self.trainer_cfg, self.kickstarter, agent_step, self.device, tail=tail
        )
        return result.loss
