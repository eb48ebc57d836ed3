"""``PPOOptimizer``: the PPO update as an object (seed 001), over ``train_ppo`` and ``compute_ppo_losses``.

    ppo = PPOOptimizer(policy, optimizer, device, PPOConfig())     # or a TrainerConfig
    stats = ppo.update(experience, custom_loss_fns=[my_loss])     # {"policy_loss": ..., "custom/my_loss": ...}
    parts = ppo.compute_ppo_loss(obs, actions, old_logprobs, advantages, returns, values)

No loss formula lives here: ``update`` runs ``train_ppo`` (hence ``process_minibatch_update``) and
``compute_ppo_loss`` runs the policy and hands the tensors to ``compute_ppo_losses``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from metta.agent.policy_state import PolicyState
from metta.rl.advantage import normalize_advantage_distributed
from metta.rl.experience import Experience
from metta.rl.functional_trainer import as_metta_optimizer, train_ppo
from metta.rl.losses import CustomLossFn, Losses, compute_ppo_losses
from metta.rl.trainer_config import PPOConfig, TrainerConfig


class PPOOptimizer:
    """PPO updates of ``policy`` with ``optimizer`` (metta's ``Optimizer``).

    ``config`` is a ``PPOConfig`` or a whole ``TrainerConfig``. With a ``PPOConfig`` the other update settings
    (``update_epochs``, V-trace clips, prioritized replay) are ``TrainerConfig``'s defaults; pass a
    ``TrainerConfig`` to set them. Minibatch sizes always come from the ``Experience``.
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
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config is a {type(config).__name__}; pass a PPOConfig or a TrainerConfig")
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
            raise TypeError(f"experience is a {type(experience).__name__}; pass the Experience a RolloutCollector filled")
        if not experience.ready_for_training:
            raise ValueError("experience is not full; fill it first (RolloutCollector.collect() or rollout(...))")
        self.epoch = train_ppo(
            self.policy, self.optimizer, experience, self.device, self.losses, self.epoch, self.trainer_cfg,
            self.kickstarter, agent_step, self.timer, custom_loss_fns=custom_loss_fns, batch_start_step=batch_start_step,
        )  # fmt: skip
        return self.losses.stats()

    def compute_ppo_loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        values: torch.Tensor,
        state: PolicyState | None = None,
    ) -> dict[str, torch.Tensor]:
        """The PPO loss terms of the current policy on given data, without touching any buffer or optimizer.

        Shapes: ``obs [B, T, tokens, 3]``, ``actions [B, T, 2]`` and ``[B, T]`` for the rest (or ``obs [N, tokens,
        3]`` with ``[N]``). ``state`` is the LSTM state the rows start from (default zeros). ``advantages`` are
        normalized when ``norm_adv`` is set, as in the update. Returns ``policy_loss``, ``value_loss``,
        ``entropy_loss`` (the mean entropy), ``total_loss`` (``policy - ent_coef * entropy + vf_coef * value``,
        differentiable), ``approx_kl`` and ``clipfrac``.
        """
        ppo = self.trainer_cfg.ppo
        _, new_logprobs, entropy, new_values, _ = self.policy(obs, state or PolicyState(), action=actions)
        new_logprobs = new_logprobs.view(old_logprobs.shape)
        ratio = (new_logprobs - old_logprobs).exp()
        adv = normalize_advantage_distributed(advantages, ppo.norm_adv)
        pg_loss, v_loss, entropy_loss, approx_kl, clipfrac = compute_ppo_losses(
            {"returns": returns, "values": values}, new_logprobs, entropy.view(old_logprobs.shape), new_values,
            ratio, adv, self.trainer_cfg,
        )  # fmt: skip
        total = pg_loss - ppo.ent_coef * entropy_loss + ppo.vf_coef * v_loss
        return {
            "policy_loss": pg_loss,
            "value_loss": v_loss,
            "entropy_loss": entropy_loss,
            "total_loss": total,
            "approx_kl": approx_kl,
            "clipfrac": clipfrac,
        }
