"""PPO loss formulas on fixed tensors, Losses bookkeeping, explained variance, target_kl early stop."""

import math

import pytest
import torch

from metta.rl.losses import Losses, compute_explained_variance, compute_ppo_losses, should_stop_early
from metta.rl.run_config import cpu_trainer_config
from metta.rl.trainer_config import PPOConfig, TrainerConfig


def cfg(**ppo):
    return TrainerConfig(ppo=PPOConfig(**ppo))


def test_ppo_losses_by_hand():
    ratio = torch.tensor([[0.5, 1.05, 1.5]])
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    mb = {"returns": torch.tensor([[1.0, 0.0, 2.0]]), "values": torch.tensor([[0.5, 0.0, 2.5]])}
    newvalue = torch.tensor([[1.5], [0.05], [2.0]])
    entropy = torch.tensor([1.0, 2.0, 3.0])
    pg, v, ent, kl, clipfrac = compute_ppo_losses(
        mb, torch.log(ratio), entropy, newvalue, ratio, adv, cfg(clip_coef=0.2, vf_clip_coef=0.1, clip_vloss=True)
    )
    # policy: max(-A r, -A clip(r, 0.8, 1.2)) per element
    pg_terms = [max(-1 * 0.5, -1 * 0.8), max(2 * 1.05, 2 * 1.05), max(-3 * 1.5, -3 * 1.2)]
    assert pg.item() == pytest.approx(sum(pg_terms) / 3)
    # value: unclipped (V-R)^2 vs clipped (V_old + clip(V - V_old, +-0.1) - R)^2
    unclipped = [(1.5 - 1) ** 2, (0.05 - 0) ** 2, (2.0 - 2) ** 2]
    clipped = [(0.6 - 1) ** 2, (0.05 - 0) ** 2, (2.4 - 2) ** 2]
    assert v.item() == pytest.approx(0.5 * sum(max(a, b) for a, b in zip(unclipped, clipped)) / 3)
    assert ent.item() == pytest.approx(2.0)
    assert kl.item() == pytest.approx(sum((r - 1) - math.log(r) for r in (0.5, 1.05, 1.5)) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)


def test_value_loss_without_clipping():
    mb = {"returns": torch.tensor([[1.0, 3.0]]), "values": torch.tensor([[0.0, 0.0]])}
    _, v, _, _, _ = compute_ppo_losses(
        mb,
        torch.zeros(1, 2),
        torch.zeros(2),
        torch.tensor([2.0, 1.0]),
        torch.ones(1, 2),
        torch.zeros(1, 2),
        cfg(clip_vloss=False),
    )
    assert v.item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_the_cpu_defaults_move_the_value_past_the_clip():
    """run.py's CPU defaults (cpu_learning_settings) train the value unclipped: a value already more than
    vf_clip_coef from the rollout's still gets a gradient towards its return, where the clipped loss gives none."""
    mb = {"returns": torch.tensor([[3.0]]), "values": torch.tensor([[0.0]])}

    def value_grad(config: TrainerConfig) -> float:
        newvalue = torch.tensor([1.0], requires_grad=True)  # 1.0 from the rollout's value, past the 0.1 clip
        _, v, _, _, _ = compute_ppo_losses(
            mb, torch.zeros(1, 1), torch.zeros(1), newvalue, torch.ones(1, 1), torch.zeros(1, 1), config
        )
        v.backward()
        return newvalue.grad.item()

    assert cpu_trainer_config().ppo.clip_vloss is False
    assert value_grad(cpu_trainer_config()) == pytest.approx(-2.0)  # d/dV 0.5 (V - 3)^2 at V = 1
    assert value_grad(cfg(clip_vloss=True)) == 0.0


def test_losses_stats_and_zero():
    losses = Losses()
    losses.policy_loss_sum, losses.approx_kl_sum, losses.minibatches_processed = 3.0, 0.5, 2
    losses.explained_variance = 0.7
    stats = losses.stats()
    assert stats["policy_loss"] == 1.5 and stats["approx_kl"] == 0.25 and stats["explained_variance"] == 0.7
    assert set(stats) == {
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "clipfrac",
        "l2_reg_loss",
        "l2_init_loss",
        "ks_action_loss",
        "ks_value_loss",
        "importance",
        "current_logprobs",
        "explained_variance",
    }
    assert should_stop_early(losses, 0.2) and not should_stop_early(losses, 0.3) and not should_stop_early(losses, None)
    losses.zero()
    assert losses.minibatches_processed == 0 and losses.policy_loss_sum == 0.0


def test_explained_variance():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert compute_explained_variance(values, torch.zeros_like(values)) == pytest.approx(1.0)
    adv = torch.tensor([[0.5, -0.5, 0.5, -0.5]])
    y = values + adv
    assert compute_explained_variance(values, adv) == pytest.approx(1 - adv.var().item() / y.var().item())
    assert math.isnan(compute_explained_variance(torch.ones(1, 3), torch.zeros(1, 3)))


def test_terms_with_zero_weight_are_left_out_of_the_loss():
    """With ent_coef and vf_coef at 0 the loss is the policy loss alone, the same number, with fewer ops in its
    graph; the statistics still report the entropy and the value loss."""
    from metta.agent.metta_agent import make_policy
    from metta.common.profiling.dispatch_counter import DispatchCounter
    from metta.mettagrid.default_env import default_env_config
    from metta.mettagrid.env import MettaGridEnv
    from metta.rl.losses import minibatch_loss

    env = MettaGridEnv(default_env_config(num_agents=2, width=8, height=8), num_envs=1, seed=0)
    torch.manual_seed(0)
    policy = make_policy(env)
    obs = torch.from_numpy(env.reset(0)[0]).unsqueeze(1)  # [B=2, T=1, tokens, 3]
    minibatch = {
        "obs": obs,
        "actions": torch.zeros(2, 1, 2, dtype=torch.int32),
        "logprobs": torch.full((2, 1), -2.0),
        "values": torch.zeros(2, 1),
        "advantages": torch.tensor([[1.0], [-0.5]]),
        "returns": torch.tensor([[1.0], [-0.5]]),
    }
    results, ops = [], []
    for weights in ({}, {"ent_coef": 0.0, "vf_coef": 0.0}):
        counter = DispatchCounter()
        with counter:
            result = minibatch_loss(policy, dict(minibatch), cfg(**weights))
            result.loss.total_loss.backward()
        results.append(result)
        ops.append(counter.totals()["ops"])
    full, lean = results
    assert lean.loss.total_loss.item() == lean.loss.policy_loss.item()
    assert full.loss.total_loss.item() != full.loss.policy_loss.item()
    assert lean.loss.entropy_loss.item() > 0 and lean.loss.value_loss.item() > 0  # still reported
    assert ops[1] < ops[0]
