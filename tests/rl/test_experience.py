"""Experience: layout errors, store/ready bookkeeping, prioritized sampling, iter_minibatches (seed 002)."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from metta.rl.experience import Experience, calculate_anneal_beta, calculate_batch_sizes

OBS = spaces.Box(0, 255, (4, 3), dtype=np.uint8)
ATN = spaces.MultiDiscrete([3, 4])


def make(total_agents=4, batch_size=64, bptt=4, minibatch_size=16, **kw):
    return Experience(
        total_agents=total_agents,
        batch_size=batch_size,
        bptt_horizon=bptt,
        minibatch_size=minibatch_size,
        obs_space=OBS,
        atn_space=ATN,
        device="cpu",
        hidden_size=8,
        num_lstm_layers=2,
        **kw,
    )


def store_step(exp, env_id, step, n, mask=None):
    """Observation token 0 encodes (agent, step) so rows can be checked afterwards."""
    agents = torch.arange(env_id.start, env_id.stop)
    obs = torch.zeros(n, 4, 3, dtype=torch.uint8)
    obs[:, 0, 0] = agents.to(torch.uint8)
    obs[:, 0, 1] = step
    z = torch.zeros(n)
    exp.store(
        obs,
        torch.zeros(n, 2, dtype=torch.int32),
        z,
        z,
        torch.zeros(n, dtype=torch.bool),
        torch.zeros(n, dtype=torch.bool),
        z,
        env_id,
        mask,
    )


def test_layout_and_errors_name_numbers():
    exp = make()
    assert (exp.segments, exp.minibatch_segments, exp.num_minibatches, exp.accumulate_minibatches) == (16, 4, 4, 1)
    assert exp.obs.shape == (16, 4, 4, 3) and exp.obs.dtype == torch.uint8 and exp.actions.dtype == torch.int32
    assert exp.lstm_h.shape == (2, 4, 8)
    with pytest.raises(ValueError, match=r"total_agents=20 is more than segments .* 64 / 4 = 16.*batch_size >= .*80"):
        make(total_agents=20)
    with pytest.raises(ValueError, match=r"minibatch_size=6 must be a multiple of bptt_horizon=4"):
        make(minibatch_size=6)
    with pytest.raises(ValueError, match=r"batch_size=66 must be a multiple of bptt_horizon=4"):
        make(batch_size=66)
    acc = make(minibatch_size=32, max_minibatch_size=16)
    assert (acc.minibatch_size, acc.accumulate_minibatches) == (16, 2)


@pytest.mark.parametrize("total_agents,batches", [(4, 1), (4, 2), (6, 2), (5, 1)])
def test_rows_are_whole_and_ready_exactly_when_full(total_agents, batches):
    # 6 and 5 agents do not divide 16 rows: agents without a free row stop writing instead of overwriting.
    exp = make(total_agents=total_agents)
    per = total_agents // batches
    step = stepped = 0
    while not exp.ready_for_training:
        for g in range(batches):
            store_step(exp, slice(g * per, (g + 1) * per), step, per)
            stepped += per
            if exp.ready_for_training:
                break
        step += 1
        assert step < 100
    assert exp.full_rows == exp.segments
    # What a rollout adds to agent_step: exact when all agents step together, at most that in batches.
    assert stepped == exp.agent_steps_per_rollout if batches == 1 else stepped <= exp.agent_steps_per_rollout
    agent, t = exp.obs[:, :, 0, 0].long(), exp.obs[:, :, 0, 1].long()
    assert (agent == agent[:, :1]).all(), "a row mixes agents"
    assert (t == t[:, :1] + torch.arange(4)).all(), "a row's steps are not consecutive"
    # next_rows chains each agent's rows in time: the next row is the same agent, one step after the last.
    linked = (exp.next_rows >= 0).nonzero().flatten()
    nxt = exp.next_rows[linked]
    assert (agent[nxt, 0] == agent[linked, 0]).all() and (t[nxt, 0] == t[linked, -1] + 1).all()
    assert (nxt > linked).all()
    # Every agent's chain ends once (its last row of the rollout), so rows without a successor = agents with rows.
    assert int((exp.next_rows < 0).sum()) == len(set(agent[:, 0].tolist()))
    exp.reset_for_rollout()
    assert not exp.ready_for_training and exp.ep_indices.tolist() == list(range(total_agents))
    assert (exp.next_rows == -1).all()


def test_lstm_state_views_and_reset():
    exp = make()
    h, c = exp.get_lstm_state(slice(1, 3))
    assert h.shape == (2, 2, 8)
    exp.set_lstm_state(slice(0, 4), torch.ones(2, 4, 8), torch.full((2, 4, 8), 2.0))
    exp.reset_lstm_state(slice(0, 4), torch.tensor([False, True, False, True]))
    assert exp.lstm_h[:, [0, 2]].eq(1).all() and exp.lstm_h[:, [1, 3]].eq(0).all()
    assert exp.lstm_c[:, [0, 2]].eq(2).all() and exp.lstm_c[:, [1, 3]].eq(0).all()
    assert exp.get_lstm_state(0)[0].shape == (2, 4, 8)  # a start index covers agents_per_batch agents


def test_prioritized_distribution_and_weights():
    torch.manual_seed(0)
    exp = make(total_agents=4, batch_size=32, bptt=4, minibatch_size=8)  # 8 rows, 2 per minibatch
    adv = torch.zeros(8, 4)
    adv[:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, float("nan"), 6.0])
    probs = exp.sampling_probs(adv, prio_alpha=1.0)
    expected = torch.tensor([1, 2, 3, 4, 0, 0, 0, 6.0]) / 16
    assert torch.allclose(probs, expected) and probs.sum().item() == pytest.approx(1.0)
    counts = torch.zeros(8)
    for _ in range(4000):
        mb = exp.sample_minibatch(adv, prio_alpha=1.0, prio_beta=0.5)
        counts += torch.bincount(mb["indices"], minlength=8)
        w = (8 * expected[mb["indices"]]).pow(-0.5).unsqueeze(1)
        assert torch.allclose(mb["prio_weights"], w)
    freq = counts / counts.sum()
    assert torch.allclose(freq, expected, atol=0.01)  # 8000 draws: std of a frequency < 0.006
    assert exp.sampling_probs(adv, prio_alpha=0.0).eq(1 / 8).all()
    assert exp.sampling_probs(torch.zeros(8, 4), prio_alpha=1.0).eq(1 / 8).all()
    # Upstream's place of the draw in its epoch: checked against the buffer's minibatches, nothing else.
    assert exp.sample_minibatch(adv, 1.0, 0.5, 3, 4)["indices"].shape == (2,)
    with pytest.raises(ValueError, match=r"total_minibatches=2 but .* num_minibatches=4 of 8 steps"):
        exp.sample_minibatch(adv, 1.0, 0.5, 0, 2)
    with pytest.raises(ValueError, match=r"minibatch_idx=4 is outside range\(num_minibatches=4\)"):
        exp.sample_minibatch(adv, 1.0, 0.5, 4, 4)


def test_iter_minibatches_as_seed_002_writes_it():
    exp = make()
    exp.values.copy_(torch.arange(64.0).view(16, 4))
    seen = []
    for minibatch in exp.iter_minibatches():
        assert minibatch["obs"].shape == (4, 4, 4, 3) and minibatch["prio_weights"].eq(1).all()
        assert "advantages" not in minibatch
        assert torch.equal(minibatch["values"], exp.values[minibatch["indices"]])
        seen += minibatch["indices"].tolist()
    assert sorted(seen) == list(range(16)), "every row once per epoch"
    adv = torch.randn(16, 4)
    mbs = list(exp.iter_minibatches(adv))
    assert len(mbs) == 4 and torch.equal(mbs[0]["returns"], adv[mbs[0]["indices"]] + exp.values[mbs[0]["indices"]])
    assert len(list(exp.iter_minibatches(adv, prio_alpha=0.6, prio_beta=0.4))) == 4
    with pytest.raises(ValueError, match="prio_alpha=0.6 samples by advantage"):
        list(exp.iter_minibatches(prio_alpha=0.6))


def test_update_values_and_ratio():
    exp = make()
    idx = torch.tensor([3, 7])
    exp.update_values(idx, torch.ones(8, 1))
    exp.update_ratio(idx, torch.full((2, 4), 2.0, requires_grad=True))
    assert exp.values[idx].eq(1).all() and exp.values.sum() == 8
    assert exp.ratio[idx].eq(2).all() and not exp.ratio.requires_grad
    exp.reset_importance_sampling_ratios()
    assert exp.ratio.eq(1).all()
    assert set(exp.stats()) >= {"rewards", "values", "ratio", "actions_mean", "actions_std", "ep_lengths"}


def test_batch_sizes_and_beta():
    # upstream-facts 2.6: navigation, 4 agents per env, target 4096, 4 workers, async 2
    assert calculate_batch_sizes(4096, 4, 4, 2) == (1024, 1024, 2048)
    assert calculate_batch_sizes(4, 4, 3, 1) == (3, 3, 3)
    assert calculate_anneal_beta(0, 1000, 100, 0.5, 0.6) == pytest.approx(0.6)
    assert calculate_anneal_beta(5, 1000, 100, 0.5, 0.6) == pytest.approx(0.6 + 0.4 * 0.5 * 0.5)
    assert calculate_anneal_beta(50, 1000, 100, 1.0, 0.6) == 1.0


def test_a_trained_on_buffer_starts_a_new_rollout_at_the_next_store():
    exp = make()
    for step in range(exp.bptt_horizon * exp.segments // exp.total_agents):
        store_step(exp, slice(0, 4), step, 4)
    assert exp.full and exp.ready_for_training
    next(exp.iter_minibatches())  # trained on: no longer ready, but the data is still there
    assert exp.full and not exp.ready_for_training and exp.full_rows == exp.segments
    store_step(exp, slice(0, 4), 99, 4)  # a new rollout: row i again from step 0, chains cleared
    assert exp.full_rows == 0 and (exp.obs[:4, 0, 0, 1] == 99).all() and (exp.next_rows == -1).all()
    exp.reset_for_rollout()  # still allowed at any time
    assert exp.full_rows == 0 and not exp.ready_for_training


def test_store_takes_an_all_true_mask_and_rejects_an_inactive_agent():
    exp = make()
    store_step(exp, slice(0, 4), 0, 4, mask=np.ones(4, dtype=bool))  # the vecenv's mask
    store_step(exp, slice(0, 4), 1, 4, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask has 1 False entries of 4: .*pass mask=None or the vecenv's all-true"):
        store_step(exp, slice(0, 4), 2, 4, mask=np.array([True, False, True, True]))
    assert (exp.obs[:4, :2, 0, 1] == torch.tensor([0, 1], dtype=torch.uint8)).all() and exp._steps.tolist() == [2] * 4


def test_sizes_default_and_the_lstm_state_is_sized_from_the_policy():
    exp = Experience(total_agents=8, batch_size=256, obs_space=OBS, atn_space=ATN)
    assert (exp.bptt_horizon, exp.minibatch_size, exp.hidden_size) == (32, 256, None)  # 64 leaves 4 rows for 8 agents
    assert Experience(total_agents=2, batch_size=65536, obs_space=OBS, atn_space=ATN).minibatch_size == 16384

    class Policy(torch.nn.Module):
        hidden_size, core_num_layers = 8, 2

    exp.match_policy(Policy())
    assert exp.lstm_h.shape == (2, 8, 8) and exp.row_lstm_h.shape == (2, 8, 8)
    sized = Experience(total_agents=8, batch_size=256, obs_space=OBS, atn_space=ATN, hidden_size=512, num_lstm_layers=1)
    with pytest.raises(
        ValueError,
        match=r"hidden_size=512, num_lstm_layers=1\) does not fit the policy's LSTM \(hidden_size=8, 2 layers\)"
        r".*hidden_size=8, num_lstm_layers=2",
    ):
        sized.match_policy(Policy())
    with pytest.raises(ValueError, match=r"num_lstm_layers=1\) does not fit"):
        Experience(total_agents=8, batch_size=256, obs_space=OBS, atn_space=ATN, num_lstm_layers=1).match_policy(
            Policy()
        )
