"""Truncation as Gymnasium defines it: a time limit bootstraps from the value of the final observation (here
``V(s_{T-1})``, the last observation before the limit: see metta.rl.advantage), a terminal does not.

Tiny MDPs with returns known in closed form, on every implementation (the CPU's kernel, the GPU's closed form
run eagerly, rows chained by ``next_rows`` and rows recomputed from their ``RowTail``), then a real env whose
episodes end by a time limit, through both forms of the rollout step.
"""

import contextlib

import numpy as np
import pytest
import torch

from metta.agent.metta_agent import make_policy
from metta.common.code_paths import gpu_forms_everywhere
from metta.interface.environment import Environment, default_env_config
from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.constants import EPISODE_COMPLETION_PCT
from metta.rl.advantage import RowTail, compute_advantage
from metta.rl.experience import Experience
from metta.rl.rollout import perform_rollout_step

GAMMA, LAM = 0.9, 0.8
H = 5  # steps per row; two agents fill rows 0 -> 2 and 1 -> 3
NEXT_ROWS = np.array([2, 3, -1, -1])
CHAINS = ((0, 2), (1, 3))
L = 2 * H  # each agent's steps, laid end to end
# Where each agent's episodes end (the index of the first observation of the next episode). Agent 0's
# episode ends at the first step of its second row: the step before it is the previous row's last.
ENDS = ((5,), (3, 8))


def to_rows(per_agent: np.ndarray) -> np.ndarray:
    """``[agents, L]`` laid out as the buffer's ``[4, H]`` rows."""
    rows = np.zeros((4, H), dtype=np.float64)
    for agent, chain in enumerate(CHAINS):
        for i, row in enumerate(chain):
            rows[row] = per_agent[agent, i * H : (i + 1) * H]
    return rows


def flags() -> np.ndarray:
    """``dones`` per agent: 1 where an observation starts a new episode."""
    dones = np.zeros((2, L))
    for agent, ends in enumerate(ENDS):
        dones[agent, list(ends)] = 1.0
    return dones


def advantages_every_way(values, rewards, dones, truncations, ratio, rho_clip=1.0, c_clip=1.0, lam=LAM):
    """The advantages of the four rows by every implementation; each must match the others' closed form."""
    args = [torch.from_numpy(to_rows(x)).float() for x in (values, rewards, dones, ratio)]
    trunc = None if truncations is None else torch.from_numpy(to_rows(truncations)).float()
    results = {}
    for impl in ("numba", "torch"):
        with gpu_forms_everywhere() if impl == "torch" else contextlib.nullcontext():
            full = compute_advantage(
                *args,
                torch.zeros(4, H),
                GAMMA,
                lam,
                rho_clip,
                c_clip,
                next_rows=torch.from_numpy(NEXT_ROWS),
                truncations=trunc,
            )
            # A minibatch of single rows, each recomputed from its RowTail (the V-trace recompute's form).
            following = torch.from_numpy(NEXT_ROWS).clamp(min=0)
            tail = RowTail(
                args[1][following, 0],
                args[0][following, 0],
                args[2][following, 0],
                full[following, 0],
                torch.from_numpy(NEXT_ROWS >= 0),
                None if trunc is None else trunc[following, 0],
            )
            recomputed = compute_advantage(
                *args, torch.zeros(4, H), GAMMA, lam, rho_clip, c_clip, tail=tail, truncations=trunc
            )
        results[f"{impl}/chained"] = full.double().numpy()
        results[f"{impl}/tail"] = recomputed.double().numpy()
    return results


@pytest.mark.parametrize("ratio,rho_clip,c_clip", [(1.0, 1.0, 1.0), (0.8, 1.0, 1.0), (1.5, 1.2, 0.9)])
def test_a_continuing_task_cut_by_time_limits(ratio, rho_clip, c_clip):
    """One state, reward 1 every step, no end but the clock: the true value is ``V* = 1 / (1 - gamma)`` at every
    step. Taken as truncations the time limits leave every advantage (GAE and V-trace, clipped or not) at
    exactly 0, the returns at ``V*``. Taken as terminals they pull the steps before each limit down by the
    closed form ``rho * (gamma * lambda * c)^(n - 1) * (1 - V*)``, ``n`` steps before the limit."""
    v_star = 1.0 / (1.0 - GAMMA)
    values, rewards, ratios = np.full((2, L), v_star), np.ones((2, L)), np.full((2, L), ratio)
    dones = flags()
    truncations = dones.copy()  # every end is the time limit
    for name, adv in advantages_every_way(values, rewards, dones, truncations, ratios, rho_clip, c_clip).items():
        np.testing.assert_allclose(adv, 0.0, atol=1e-4, err_msg=name)

    rho, c = min(ratio, rho_clip), min(ratio, c_clip)
    expected = np.zeros((2, L))
    for agent, ends in enumerate(ENDS):
        for t in range(L):
            end = next((e for e in ends if e > t), None)
            if end is not None:
                expected[agent, t] = rho * (GAMMA * LAM * c) ** (end - t - 1) * (1.0 - v_star)
    for name, adv in advantages_every_way(values, rewards, dones, None, ratios, rho_clip, c_clip).items():
        np.testing.assert_allclose(adv, to_rows(expected), rtol=1e-5, atol=1e-5, err_msg=name)


def test_an_episodic_task_ended_by_terminals():
    """A corridor with reward 1 a step into an absorbing end: ``V*(k) = (1 - gamma^k) / (1 - gamma)`` with ``k``
    steps left. Its terminals do not bootstrap (every advantage 0); the same ends taken as truncations would
    add ``gamma * V(s_{T-1})`` at each end, so the advantages are not 0."""
    dones = flags()
    values = np.zeros((2, L))
    for agent, ends in enumerate(ENDS):
        for t in range(L):
            k = next((e for e in ends if e > t), L) - t  # the last episode ends just after the buffer
            values[agent, t] = (1.0 - GAMMA**k) / (1.0 - GAMMA)
    rewards, ratio = np.ones((2, L)), np.ones((2, L))
    for truncations in (None, np.zeros((2, L))):
        for name, adv in advantages_every_way(values, rewards, dones, truncations, ratio).items():
            np.testing.assert_allclose(adv, 0.0, atol=1e-5, err_msg=name)
    as_truncations = advantages_every_way(values, rewards, dones, dones, ratio)
    assert all(np.abs(adv).max() > 0.5 for adv in as_truncations.values())


def test_lambda_returns_bootstrap_from_the_last_value_before_the_limit():
    """lambda = 1, any values: the return of step ``t`` is ``sum_{k<n} gamma^k + gamma^n * B`` with ``n`` steps to
    the episode's end and ``B = V(s_{T-1})`` (the value stored one step before the end) at a truncation, ``B = 0``
    at a terminal, ``B = V`` of the buffer's last step where the episode goes on. Agent 1's first end is a
    terminal, every other end a truncation."""
    values = np.random.default_rng(0).normal(size=(2, L)) * 3
    dones = flags()
    truncations = dones.copy()
    truncations[1, 3] = 0.0
    expected = np.zeros((2, L))
    for agent, ends in enumerate(ENDS):
        for t in range(L):
            end = next((e for e in ends if e > t), None)
            n = (end if end is not None else L - 1) - t
            bootstrap = values[agent, L - 1] if end is None else values[agent, end - 1] * truncations[agent, end]
            expected[agent, t] = (1.0 - GAMMA**n) / (1.0 - GAMMA) + GAMMA**n * bootstrap
    results = advantages_every_way(values, np.ones((2, L)), dones, truncations, np.ones((2, L)), lam=1.0)
    for name, adv in results.items():
        np.testing.assert_allclose(adv + to_rows(values), to_rows(expected), rtol=1e-5, atol=1e-4, err_msg=name)


def truncating_env(max_steps=9):
    """2 envs x 2 agents whose episodes end by a time limit reported as a truncation."""
    data = default_env_config(num_agents=2, width=8, height=8).model_dump()
    data["game"].update(max_steps=max_steps, episode_truncates=True)
    cfg = MettaGridConfig.model_validate(data)
    return Environment(env_config=cfg, num_envs=2, async_factor=2, num_workers=2, seed=3, is_training=False)


def completion(obs: torch.Tensor) -> torch.Tensor:
    """The episode_completion_pct token's value in each observation ``[..., tokens, 3]``."""
    return torch.where(obs[..., 1] == EPISODE_COMPLETION_PCT, obs[..., 2].long(), 0).sum(-1)


@pytest.mark.parametrize("gpu", [False, True])
def test_a_real_rollout_bootstraps_time_limits_from_the_last_observation_before_them(gpu):
    """A rollout of the real env through the CPU or the GPU form of the step: the time limits are stored as
    truncations (dones too), each truncation's bootstrap value ``values[t - 1]`` is the value of the ended
    episode's last observation (its completion token reads ``(T - 1) / T``, while the observation at ``t`` is the
    next episode's first, reading 0), and the buffer's advantages are the recursion over each agent's steps in
    time with that bootstrap, by the form's own advantage implementation."""
    max_steps, bptt = 9, 4
    torch.manual_seed(1)
    env = truncating_env(max_steps)
    agent = make_policy(env)
    agent.token_conv.product = "dense"
    exp = Experience(
        total_agents=env.num_agents,
        batch_size=4 * bptt * 6,
        bptt_horizon=bptt,
        minibatch_size=4 * bptt,
        obs_space=env.single_observation_space,
        atn_space=env.single_action_space,
        hidden_size=agent.hidden_size,
        num_lstm_layers=agent.core_num_layers,
        agents_per_batch=env.agents_per_batch,
    )
    with gpu_forms_everywhere() if gpu else contextlib.nullcontext():
        while not exp.ready_for_training:
            perform_rollout_step(agent, env, exp, "cpu")
        advantages = exp.rollout_advantages(GAMMA, LAM, 1.0, 1.0)
    env.close()

    truncated = exp.truncateds.bool()
    assert truncated.sum() >= 8 and torch.equal(truncated, exp.dones.bool())  # every end is the time limit
    expected_last = round(255 * (max_steps - 1) / max_steps)
    checked = 0
    for first in range(env.num_agents):
        chain = [first]
        while exp.next_rows[chain[-1]] >= 0:
            chain.append(int(exp.next_rows[chain[-1]]))
        steps = {name: torch.cat([getattr(exp, name)[r] for r in chain]).double() for name in ("values", "rewards")}
        obs = torch.cat([exp.obs[r] for r in chain])
        ends = torch.cat([truncated[r] for r in chain])
        pct = completion(obs)
        expected = np.zeros(len(chain) * bptt)
        for t in range(len(expected) - 2, -1, -1):
            v, r = steps["values"], steps["rewards"]
            if ends[t + 1]:  # the time limit: bootstrap from this step, the ended episode's last observation
                assert pct[t] == expected_last and pct[t + 1] == 0
                checked += 1
                expected[t] = r[t + 1] + GAMMA * v[t] - v[t]
            else:
                expected[t] = r[t + 1] + GAMMA * v[t + 1] - v[t] + GAMMA * LAM * expected[t + 1]
        got = torch.cat([advantages[r] for r in chain]).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert checked >= 8
