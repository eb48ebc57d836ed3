"""``Kickstarter``: distill teacher policies into the student (action cross-entropy and value MSE).

The losses are on for the first ``kickstart_steps`` agent steps, at full weight until the last
``anneal_ratio * kickstart_steps`` steps, over which they fall linearly to 0. With no teacher it is disabled
and ``loss`` returns zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from metta.agent.policy_state import PolicyState
from metta.rl.trainer_config import KickstartConfig, KickstartTeacherConfig


class Kickstarter:
    def __init__(self, cfg: KickstartConfig, device: torch.device | str, policy_store: Any, metta_grid_env: Any):
        self.device = torch.device(device)
        self.teacher_cfgs: list[KickstartTeacherConfig] = []
        if cfg.teacher_uri is not None:
            self.teacher_cfgs.append(
                KickstartTeacherConfig(
                    teacher_uri=cfg.teacher_uri,
                    action_loss_coef=cfg.action_loss_coef,
                    value_loss_coef=cfg.value_loss_coef,
                )
            )
        self.teacher_cfgs += list(cfg.additional_teachers or [])
        self.enabled = bool(self.teacher_cfgs)
        self.kickstart_steps = cfg.kickstart_steps
        self.anneal_ratio = cfg.anneal_ratio
        self.anneal_duration = self.kickstart_steps * self.anneal_ratio
        self.ramp_down_start_step = self.kickstart_steps - self.anneal_duration
        self.anneal_factor = 1.0
        self.teachers: list[torch.nn.Module] = []
        if self.enabled:
            if policy_store is None:
                raise ValueError(
                    "kickstart teachers are configured but policy_store is None; pass the PolicyStore that loads them"
                )
            self._load_teachers(policy_store, metta_grid_env)

    def _load_teachers(self, policy_store: Any, env: Any) -> None:
        for teacher_cfg in self.teacher_cfgs:
            policy = policy_store.policy_record(teacher_cfg.teacher_uri).policy
            if hasattr(policy, "initialize_to_environment") and env is not None:
                policy.initialize_to_environment(
                    env.get_observation_features(), env.action_names, env.max_action_args, self.device
                )
            policy.to(self.device)
            policy.eval()
            for p in policy.parameters():
                p.requires_grad_(False)
            self.teachers.append(policy)

    def annealing(self, agent_step: int) -> float:
        """The weight of the teacher losses at ``agent_step``: 1, then linear to 0, then 0."""
        if agent_step > self.kickstart_steps:
            return 0.0
        if self.anneal_ratio > 0 and agent_step > self.ramp_down_start_step:
            return max(0.0, 1.0 - (agent_step - self.ramp_down_start_step) / self.anneal_duration)
        return 1.0

    def loss(
        self,
        agent_step: int,
        student_log_probs: torch.Tensor,
        student_value: torch.Tensor,
        obs: torch.Tensor,
        teacher_lstm_state: Sequence[PolicyState | tuple[torch.Tensor, torch.Tensor] | None] | None = None,
        actions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ks_action_loss, ks_value_loss)`` for the student's full log-probs ``[N, A]`` and values ``[N, 1]``.

        ``obs`` is the minibatch's ``[B, T, *obs]``. ``actions`` (the minibatch's ``[B, T, 2]``) selects the
        teachers' training path over sequences; without it each observation is fed as an independent inference
        step. ``teacher_lstm_state`` holds each teacher's starting LSTM state, one per teacher in
        ``self.teachers`` order: a ``PolicyState`` or ``(h, c)``, each ``[layers, B, hidden]`` (``B * T`` rows
        without ``actions``), or None for zeros; None or ``[]`` (upstream's default) starts every teacher from
        zeros. The given states are read, not changed.
        """
        zero = torch.zeros((), device=student_value.device)
        if not self.enabled or agent_step > self.kickstart_steps:
            return zero, zero
        states = list(teacher_lstm_state or [None] * len(self.teachers))
        if len(states) != len(self.teachers):
            raise ValueError(
                f"teacher_lstm_state has {len(states)} states for {len(self.teachers)} teachers; pass one per "
                "teacher (a PolicyState, (h, c) or None for zeros), or None / [] to start them all from zeros"
            )
        self.anneal_factor = self.annealing(agent_step)

        ks_action_loss, ks_value_loss = zero, zero
        for teacher, cfg, start in zip(self.teachers, self.teacher_cfgs, states):
            state = _starting_state(start)
            with torch.no_grad():
                if actions is not None:
                    _, _, _, teacher_value, teacher_log_probs = teacher(obs, state, action=actions)
                else:
                    flat_obs = obs.reshape(-1, *obs.shape[-2:])
                    _, _, _, teacher_value, teacher_log_probs = teacher(flat_obs, state)
            teacher_probs = teacher_log_probs.exp()
            action_loss = -(teacher_probs * student_log_probs).sum(dim=-1).mean()
            value_loss = F.mse_loss(student_value.view(-1), teacher_value.view(-1))
            ks_action_loss = ks_action_loss + action_loss * cfg.action_loss_coef * self.anneal_factor
            ks_value_loss = ks_value_loss + value_loss * cfg.value_loss_coef * self.anneal_factor
        return ks_action_loss, ks_value_loss


def _starting_state(start: PolicyState | tuple[torch.Tensor, torch.Tensor] | None) -> PolicyState:
    """A fresh ``PolicyState`` holding ``start``'s LSTM state (the teacher's forward overwrites its state)."""
    if start is None:
        return PolicyState()
    if isinstance(start, PolicyState):
        return PolicyState(lstm_h=start.lstm_h, lstm_c=start.lstm_c)
    if isinstance(start, (tuple, list)) and len(start) == 2:
        return PolicyState(lstm_h=start[0], lstm_c=start[1])
    raise TypeError(
        f"a teacher_lstm_state entry is a {type(start).__name__}; pass a PolicyState, (h, c) or None for zeros"
    )
