"""The PPO update for one minibatch: V-trace advantage recompute, clipped policy and value losses, entropy,
kickstarter distillation and L2-init, optional user losses, plus the running loss statistics (``Losses``).

``minibatch_loss`` is the one implementation of the PPO loss in metta: ``process_minibatch_update`` (every
trainer's minibatch step) and ``PPOOptimizer.compute_ppo_loss`` both call it.

Custom losses are plain functions ``fn(policy, obs, actions, rewards, values, advantages) ->
scalar tensor``, added to the minibatch's total loss and logged as ``custom/<fn.__name__>`` by
``Losses.stats()``. They receive the minibatch's ``obs [mb, bptt, ...]``, ``actions [mb, bptt, 2]`` and
``rewards [mb, bptt]``, the current policy's ``values [mb, bptt]`` (with gradient, from the same forward pass
as the PPO loss) and the ``advantages [mb, bptt]`` the policy loss uses (V-trace, normalized, detached).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from metta.rl.advantage import RowTail, compute_advantage, normalize_advantage_distributed

if TYPE_CHECKING:
    from metta.rl.experience import Experience
    from metta.rl.kickstarter import Kickstarter
    from metta.rl.trainer_config import TrainerConfig

# fn(policy, obs, actions, rewards, values, advantages) -> scalar tensor
CustomLossFn = Callable[..., torch.Tensor]


@dataclass
class Losses:
    """Sums over the minibatches of an update; ``stats()`` gives the means (explained_variance as is).

    ``custom_loss_sums`` holds one sum per custom loss name; ``stats()`` reports them as ``custom/<name>``
    (only when there are any, so the standard keys stay exactly as they are).

    ``add(stats_tensor, custom_names)`` keeps the sums on the device, so a minibatch costs no device-to-host
    synchronisation; ``flush()`` (called by ``stats()``, ``should_stop_early`` and ``zero()``) moves them into
    the float fields with one transfer.
    """

    policy_loss_sum: float = 0.0
    value_loss_sum: float = 0.0
    entropy_sum: float = 0.0
    approx_kl_sum: float = 0.0
    clipfrac_sum: float = 0.0
    l2_reg_loss_sum: float = 0.0
    l2_init_loss_sum: float = 0.0
    ks_action_loss_sum: float = 0.0
    ks_value_loss_sum: float = 0.0
    importance_sum: float = 0.0
    current_logprobs_sum: float = 0.0
    explained_variance: float = 0.0
    minibatches_processed: int = 0
    custom_loss_sums: dict[str, float] = field(default_factory=dict)
    _pending: Any = field(default=None, repr=False, compare=False)  # device sums not yet in the fields
    _pending_custom: list[str] = field(default_factory=list, repr=False, compare=False)

    def zero(self) -> None:
        for f in fields(self):
            if f.name == "custom_loss_sums":
                self.custom_loss_sums.clear()
            elif f.name == "_pending_custom":
                self._pending_custom = []
            elif f.name == "_pending":
                self._pending = None
            else:
                setattr(self, f.name, type(f.default)(0))

    def add(self, values: torch.Tensor, custom_names: Sequence[str] = ()) -> None:
        """Add one minibatch's statistics: ``values`` holds ``STAT_FIELDS`` in order, then one value per name
        in ``custom_names``."""
        values = values.detach()
        custom_names = list(custom_names)
        if self._pending is not None and (self._pending_custom != custom_names or self._pending.shape != values.shape):
            self.flush()
        self._pending = values.clone() if self._pending is None else self._pending.add_(values)
        self._pending_custom = custom_names
        self.minibatches_processed += 1

    def flush(self) -> None:
        if self._pending is None:
            return
        totals = self._pending.tolist()
        for name, total in zip(STAT_FIELDS, totals):
            setattr(self, name, getattr(self, name) + total)
        for name, total in zip(self._pending_custom, totals[len(STAT_FIELDS) :], strict=True):
            self.custom_loss_sums[name] = self.custom_loss_sums.get(name, 0.0) + total
        self._pending, self._pending_custom = None, []

    def stats(self) -> dict[str, float]:
        self.flush()
        n = max(1, self.minibatches_processed)
        out = {f.name[: -len("_sum")]: getattr(self, f.name) / n for f in fields(self) if f.name.endswith("_sum")}
        out["explained_variance"] = self.explained_variance
        for name, total in self.custom_loss_sums.items():
            out[f"custom/{name}"] = total / n
        return out


# The order of the statistics tensor process_minibatch_update hands to Losses.add.
STAT_FIELDS = (
    "policy_loss_sum",
    "value_loss_sum",
    "entropy_sum",
    "approx_kl_sum",
    "clipfrac_sum",
    "l2_reg_loss_sum",
    "l2_init_loss_sum",
    "ks_action_loss_sum",
    "ks_value_loss_sum",
    "importance_sum",
    "current_logprobs_sum",
)


def custom_loss_names(custom_loss_fns: Sequence[CustomLossFn]) -> list[str]:
    """The name each custom loss is logged under: its ``__name__`` (or its type's name for a callable object),
    with ``_2``, ``_3``, ... appended to repeats so two losses never share a log key."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for fn in custom_loss_fns:
        if not callable(fn):
            raise TypeError(
                f"custom loss {fn!r} is a {type(fn).__name__}, not a function; pass functions "
                "fn(policy, obs, actions, rewards, values, advantages) -> scalar tensor"
            )
        base = getattr(fn, "__name__", None) or type(fn).__name__
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def _check_custom_loss(name: str, value: Any) -> torch.Tensor:
    """``value`` as a 0-d tensor, or a ValueError that names the function and what it returned."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"custom loss {name!r} returned a {type(value).__name__} ({value!r}); it must return a scalar torch tensor"
        )
    if value.numel() != 1:
        raise ValueError(
            f"custom loss {name!r} returned a tensor of shape {list(value.shape)}; it must return a scalar "
            "(reduce it, e.g. with .mean())"
        )
    if not value.is_floating_point():
        raise ValueError(f"custom loss {name!r} returned a {value.dtype} tensor; it must be a floating-point scalar")
    return value.reshape(())


def compute_ppo_losses(
    minibatch: dict[str, torch.Tensor],
    new_logprobs: torch.Tensor,
    entropy: torch.Tensor,
    newvalue: torch.Tensor,
    importance_sampling_ratio: torch.Tensor,
    adv: torch.Tensor,
    trainer_cfg: TrainerConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pg_loss, v_loss, entropy_loss, approx_kl, clipfrac)`` for tensors shaped like ``minibatch["values"]``.

    - policy: ``max(-A * r, -A * clamp(r, 1 - clip, 1 + clip)).mean()``
    - value: ``0.5 * max((V - R)^2, (V_old + clamp(V - V_old, +-vf_clip) - R)^2).mean()`` with clip_vloss,
      else ``0.5 * ((V - R)^2).mean()``; ``R = minibatch["returns"]`` (initial advantages + old values)
    - ``approx_kl = mean((r - 1) - log r)`` (Schulman's k3 estimator, http://joschu.net/blog/kl-approx.html)
    """
    ppo = trainer_cfg.ppo
    ratio = importance_sampling_ratio
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1 - ppo.clip_coef, 1 + ppo.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    returns, old_values = minibatch["returns"], minibatch["values"]
    newvalue = newvalue.view(returns.shape)
    if ppo.clip_vloss:
        v_loss_unclipped = (newvalue - returns) ** 2
        v_clipped = old_values + torch.clamp(newvalue - old_values, -ppo.vf_clip_coef, ppo.vf_clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    else:
        v_loss = 0.5 * ((newvalue - returns) ** 2).mean()

    entropy_loss = entropy.mean()
    with torch.no_grad():
        logratio = torch.log(ratio)
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > ppo.clip_coef).float().mean()
    return pg_loss, v_loss, entropy_loss, approx_kl, clipfrac


class PPOLoss(NamedTuple):
    """The loss of one minibatch, the component API's six values in its order (``policy_loss, value_loss, entropy_loss,
    total_loss, approx_kl, clipfrac = ...``) and by name. ``total_loss`` is the differentiable loss the
    optimizer steps on: every term (policy, value, entropy, L2, L2-init, kickstarter, custom losses)."""

    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy_loss: torch.Tensor
    total_loss: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


class MinibatchLoss(NamedTuple):
    """What ``minibatch_loss`` computes: the ``loss`` terms, the statistics ``Losses.add`` takes (``STAT_FIELDS``
    then one per ``custom_names``), and the policy's new ``ratio`` and ``values`` (``[mb, bptt]``, with gradient)."""

    loss: PPOLoss
    stats: torch.Tensor
    custom_names: list[str]
    ratio: torch.Tensor
    values: torch.Tensor


def minibatch_loss(
    policy: torch.nn.Module,
    minibatch: dict[str, torch.Tensor],
    trainer_cfg: TrainerConfig,
    kickstarter: Kickstarter | None = None,
    agent_step: int = 0,
    device: torch.device | str | None = None,
    custom_loss_fns: Sequence[CustomLossFn] | None = None,
    tail: RowTail | None = None,
) -> MinibatchLoss:
    """The PPO loss of one minibatch (upstream-facts 4.2), touching no buffer: the one loss implementation.

    ``minibatch`` holds ``obs``, ``actions``, ``logprobs``, ``values``, ``advantages`` and ``returns``
    (``[mb, bptt, ...]``); optional ``rewards`` and ``dones`` (then the advantages are recomputed with V-trace
    from the current ratios, each row's last step bootstrapping from ``tail`` when given, and ``dones`` mark
    where the LSTM replay starts new episodes), ``truncateds`` (which of the dones are truncations, which
    bootstrap; default none), ``lstm_h``/``lstm_c`` (the rows' start states, default zeros) and ``prio_weights``
    (``[mb, 1]``, default 1).
    """
    from metta.agent.policy_state import PolicyState

    ppo = trainer_cfg.ppo
    obs, old_logprobs, dones = minibatch["obs"], minibatch["logprobs"], minibatch.get("dones")
    # Each row is replayed from the LSTM state the rollout entered it with, resetting where episodes began
    # inside it, so the replay sees what the rollout saw. The buffer hands the starts over on the host
    # ("episode_starts"), so planning the replay reads nothing back from the device.
    starts = minibatch.get("episode_starts")
    if starts is None and dones is not None:
        starts = dones.bool()
    state = PolicyState(lstm_h=minibatch.get("lstm_h"), lstm_c=minibatch.get("lstm_c"), episode_starts=starts)
    _, new_logprobs, entropy, newvalue, full_logprobs = policy(obs, state, action=minibatch["actions"])
    new_logprobs = new_logprobs.view(old_logprobs.shape)
    new_values = newvalue.view(old_logprobs.shape)
    ratio = (new_logprobs - old_logprobs).exp()

    adv = minibatch["advantages"]
    if "rewards" in minibatch and dones is not None:
        # V-trace: this minibatch's advantages again, with the current policy's (clipped) ratios.
        adv = compute_advantage(
            minibatch["values"],
            minibatch["rewards"],
            dones,
            ratio.detach(),
            torch.empty_like(adv),
            ppo.gamma,
            ppo.gae_lambda,
            trainer_cfg.vtrace.vtrace_rho_clip,
            trainer_cfg.vtrace.vtrace_c_clip,
            device,
            tail=tail,
            truncations=minibatch.get("truncateds"),
        )
    adv = normalize_advantage_distributed(adv, ppo.norm_adv)
    prio_weights = minibatch.get("prio_weights")
    if prio_weights is not None:
        adv = prio_weights * adv

    pg_loss, v_loss, entropy_loss, approx_kl, clipfrac = compute_ppo_losses(
        minibatch, new_logprobs, entropy.view(old_logprobs.shape), newvalue, ratio, adv, trainer_cfg
    )
    zero = torch.zeros((), device=pg_loss.device)
    ks_action_loss, ks_value_loss = zero, zero
    # Terms with a zero weight are left out of the loss altogether (their statistics are still reported).
    loss = pg_loss
    if ppo.ent_coef:
        loss = loss - ppo.ent_coef * entropy_loss
    if ppo.vf_coef:
        loss = loss + ppo.vf_coef * v_loss
    l2_reg_loss = ppo.l2_reg_loss_coef * _l2_reg_loss(policy) if ppo.l2_reg_loss_coef > 0 else zero
    l2_init_loss = ppo.l2_init_loss_coef * policy.l2_init_loss() if ppo.l2_init_loss_coef > 0 else zero
    if ppo.l2_reg_loss_coef > 0:
        loss = loss + l2_reg_loss
    if ppo.l2_init_loss_coef > 0:
        loss = loss + l2_init_loss
    if kickstarter is not None and kickstarter.enabled:
        ks_action_loss, ks_value_loss = kickstarter.loss(
            agent_step, full_logprobs, newvalue, obs, teacher_lstm_state=[], actions=minibatch["actions"]
        )
        loss = loss + ks_action_loss + ks_value_loss

    custom_names = custom_loss_names(custom_loss_fns or [])
    custom_values: list[torch.Tensor] = []
    for name, fn in zip(custom_names, custom_loss_fns or [], strict=True):
        value = _check_custom_loss(
            name, fn(policy, obs, minibatch["actions"], minibatch.get("rewards"), new_values, adv)
        )
        custom_values.append(value)
        loss = loss + value

    # The statistics stay on the device (Losses.add); custom losses are checked for NaN/inf here, which costs
    # one transfer per minibatch only when there are any.
    stats = torch.stack(
        [
            pg_loss,
            v_loss,
            entropy_loss,
            approx_kl,
            clipfrac,
            l2_reg_loss,
            l2_init_loss,
            ks_action_loss,
            ks_value_loss,
            ratio.mean(),
            new_logprobs.mean(),
            *(v.to(pg_loss.device, pg_loss.dtype) for v in custom_values),
        ]
    ).detach()
    if custom_values:
        for name, value in zip(custom_names, stats[len(STAT_FIELDS) :].tolist(), strict=True):
            if not math.isfinite(value):
                raise ValueError(
                    f"custom loss {name!r} returned {value}; it must be finite (check for log(0) or division by zero)"
                )
    terms = PPOLoss(pg_loss, v_loss, entropy_loss, loss, approx_kl, clipfrac)
    return MinibatchLoss(terms, stats, custom_names, ratio, new_values)


def process_minibatch_update(
    policy: torch.nn.Module,
    experience: Experience,
    minibatch: dict[str, torch.Tensor],
    advantages: torch.Tensor | None,
    trainer_cfg: TrainerConfig,
    kickstarter: Kickstarter | None,
    agent_step: int,
    losses: Losses,
    device: torch.device | str,
    custom_loss_fns: Sequence[CustomLossFn] | None = None,
) -> torch.Tensor:
    """The total loss of one minibatch of ``experience`` (``minibatch_loss``); also stores the new ratios and
    values in ``experience`` and adds this minibatch's statistics to ``losses``.

    ``advantages`` is the ``[segments, bptt]`` tensor from ``compute_advantage``; it is read when the minibatch
    does not carry its own (``experience.iter_minibatches()`` without advantages) and for the steps after the
    rows. None means this rollout's advantages as ``experience.rollout_advantages`` computes them.

    Each row's V-trace recompute treats the row's end as the given advantages did (see ``Experience.row_tail``):
    advantages from ``compute_advantage(..., next_rows=experience.next_rows)`` continue into the row's successor,
    advantages computed without ``next_rows`` stop at the row's end, so at ratio 1 the policy loss uses exactly
    the advantages it was given.

    ``custom_loss_fns``: functions ``fn(policy, obs, actions, rewards, values, advantages) -> scalar tensor``
    (see the module docstring) added to the loss. One that returns a non-tensor, a non-scalar, NaN or inf
    raises a ValueError naming it, before the loss reaches the optimizer.
    """
    if advantages is None:
        ppo, vtrace = trainer_cfg.ppo, trainer_cfg.vtrace
        advantages = experience.rollout_advantages(
            ppo.gamma, ppo.gae_lambda, vtrace.vtrace_rho_clip, vtrace.vtrace_c_clip
        )
    if "advantages" not in minibatch:
        minibatch["advantages"] = advantages[minibatch["indices"]]
        minibatch["returns"] = minibatch["advantages"] + minibatch["values"]
    tail = experience.row_tail(minibatch["indices"], advantages)
    result = minibatch_loss(policy, minibatch, trainer_cfg, kickstarter, agent_step, device, custom_loss_fns, tail)
    experience.update_ratio(minibatch["indices"], result.ratio)
    experience.update_values(minibatch["indices"], result.values)
    losses.add(result.stats, result.custom_names)
    return result.loss.total_loss


def _l2_reg_loss(policy: Any) -> torch.Tensor:
    """The policy's own L2 term if it has one, else the sum of squared parameters."""
    if hasattr(policy, "l2_reg_loss"):
        return policy.l2_reg_loss()
    return sum(p.pow(2).sum() for p in policy.parameters() if p.requires_grad)


def compute_explained_variance(values: torch.Tensor, advantages: torch.Tensor) -> float:
    """``1 - Var(y - y_hat) / Var(y)`` with ``y_hat = values`` and ``y = advantages + values``; NaN if Var(y) = 0."""
    y_pred = values.flatten()
    y_true = advantages.flatten() + y_pred
    var_y = y_true.var()
    # One read back from the device: the NaN case is chosen on the device too.
    return float(torch.where(var_y > 0, 1 - (y_true - y_pred).var() / var_y, float("nan")))


def should_stop_early(losses: Losses, target_kl: float | None) -> bool:
    """True when ``target_kl`` is set and the mean approx_kl so far exceeds it (stop the update epochs)."""
    if target_kl is None or losses.minibatches_processed == 0:
        return False
    losses.flush()
    return losses.approx_kl_sum / losses.minibatches_processed > target_kl
