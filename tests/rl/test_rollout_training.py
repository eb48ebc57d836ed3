"""Rollout and PPO update with the real MettaAgent and the real vecenv; kickstarter with a saved teacher."""

import contextlib
import logging

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from metta.agent.metta_agent import make_policy
from metta.agent.policy_state import PolicyState
from metta.agent.policy_store import PolicyStore
from metta.common.profiling.stopwatch import Stopwatch
from metta.interface.environment import Environment, default_env_config
from metta.mettagrid.config import MettaGridConfig
from metta.rl.advantage import compute_advantage
from metta.rl.experience import Experience
from metta.rl.kickstarter import Kickstarter
from metta.rl.losses import Losses, process_minibatch_update
from metta.rl.optimizer import Optimizer
from metta.rl.rollout import perform_rollout_step
from metta.rl.trainer_config import KickstartConfig, TrainerConfig


def short_episode_env(max_steps=6):
    """2 envs x 2 agents; recv alternates between the two envs (async_factor=2)."""
    data = default_env_config(num_agents=2, width=8, height=8).model_dump()
    data["game"]["max_steps"] = max_steps
    cfg = MettaGridConfig.model_validate(data)
    return Environment(env_config=cfg, num_envs=2, async_factor=2, num_workers=2, seed=3)


def experience_for(env, agent, batch_size, bptt=4, minibatch_size=16):
    return Experience(
        total_agents=env.num_agents,
        batch_size=batch_size,
        bptt_horizon=bptt,
        minibatch_size=minibatch_size,
        obs_space=env.single_observation_space,
        atn_space=env.single_action_space,
        device="cpu",
        hidden_size=agent.hidden_size,
        num_lstm_layers=agent.core_num_layers,
        agents_per_batch=env.agents_per_batch,
    )


def test_lstm_state_is_zeroed_at_episode_starts():
    torch.manual_seed(0)
    env = short_episode_env()  # 2 envs x 2 agents, recv returns one env (2 agents) at a time
    agent = make_policy(env)
    exp = experience_for(env, agent, batch_size=4 * 4 * 8)
    timer = Stopwatch()
    checked_done = checked_carry = 0
    for _ in range(40):
        # Which rows the next batch (round robin) writes, and the state it starts from.
        g = env._next_batch
        sl = slice(g * env.agents_per_batch, (g + 1) * env.agents_per_batch)
        rows, steps = exp.ep_indices[sl].clone(), exp.ep_lengths[sl].clone()
        h0, c0 = (x.clone() for x in exp.get_lstm_state(sl))
        n, _ = perform_rollout_step(agent, env, exp, "cpu", timer)
        assert n == env.agents_per_batch
        obs, done = exp.obs[rows, steps], exp.dones[rows, steps].bool()
        with torch.no_grad():
            fresh = PolicyState()
            agent(obs, fresh)
            carried = PolicyState(lstm_h=h0, lstm_c=c0)
            agent(obs, carried)
        h_new = exp.lstm_h[:, sl]
        for i in range(len(done)):
            expected = fresh.lstm_h[:, i] if done[i] else carried.lstm_h[:, i]
            assert torch.allclose(h_new[:, i], expected, atol=1e-6)
            if done[i]:
                checked_done += 1
                assert not torch.allclose(h_new[:, i], carried.lstm_h[:, i], atol=1e-6)
            elif h0[:, i].abs().sum() > 0:
                checked_carry += 1
    assert checked_done >= 4 and checked_carry >= 20
    assert timer.get_elapsed("_rollout.env") > 0
    env.close()


def test_rollout_fills_buffer_and_ppo_update_runs():
    torch.manual_seed(1)
    env = Environment(num_agents=2, width=8, height=8, num_envs=2, seed=1)
    agent = make_policy(env)
    cfg = TrainerConfig(batch_size=64, minibatch_size=16, bptt_horizon=4)
    exp = experience_for(env, agent, batch_size=cfg.batch_size)
    steps = 0
    while not exp.ready_for_training:
        n, _ = perform_rollout_step(agent, env, exp, "cpu")
        steps += n
    assert steps == cfg.batch_size and exp.full_rows == exp.segments
    assert exp.actions.dtype == torch.int32 and (exp.logprobs < 0).all()
    old_values = exp.values.clone()

    advantages = compute_advantage(
        exp.values,
        exp.rewards,
        exp.dones,
        torch.ones_like(exp.values),
        torch.zeros_like(exp.values),
        cfg.ppo.gamma,
        cfg.ppo.gae_lambda,
        cfg.vtrace.vtrace_rho_clip,
        cfg.vtrace.vtrace_c_clip,
        "cpu",
    )
    optimizer = Optimizer("adam", agent, learning_rate=1e-3)
    losses = Losses()
    params0 = [p.detach().clone() for p in agent.parameters()]
    for epoch in range(cfg.update_epochs):
        for minibatch in exp.iter_minibatches():
            loss = process_minibatch_update(agent, exp, minibatch, advantages, cfg, None, steps, losses, "cpu")
            assert loss.requires_grad and torch.isfinite(loss)
            optimizer.step(loss, epoch)
    assert losses.minibatches_processed == exp.num_minibatches
    stats = losses.stats()
    assert stats["entropy"] > 0 and stats["importance"] == pytest.approx(1.0, abs=0.05)
    assert not torch.equal(exp.values, old_values), "update_values wrote the new values"
    assert any(not torch.equal(a, b) for a, b in zip(params0, agent.parameters()))
    env.close()


def test_update_replays_rows_from_the_rollout_state():
    """Before any weight change, the training forward of every minibatch reproduces the rollout's
    log-probabilities and values exactly: rows start from the stored LSTM state and reset where episodes did."""
    torch.manual_seed(4)
    env = short_episode_env(max_steps=7)  # episodes end inside rows
    agent = make_policy(env)
    cfg = TrainerConfig(batch_size=4 * 4 * 8, minibatch_size=16, bptt_horizon=4, ppo={"norm_adv": False})
    exp = experience_for(env, agent, batch_size=cfg.batch_size)
    for _ in range(3):  # later rollouts start rows from carried, non-zero states
        exp.reset_for_rollout()
        while not exp.ready_for_training:
            perform_rollout_step(agent, env, exp, "cpu")
    assert exp.row_lstm_h.abs().sum(dim=(0, 2)).gt(0).float().mean() > 0.5
    assert exp.dones[:, 1:].any(), "some row crosses an episode boundary"
    ppo, vtrace = cfg.ppo, cfg.vtrace
    adv = compute_advantage(
        exp.values,
        exp.rewards,
        exp.dones,
        torch.ones_like(exp.values),
        torch.zeros_like(exp.values),
        ppo.gamma,
        ppo.gae_lambda,
        vtrace.vtrace_rho_clip,
        vtrace.vtrace_c_clip,
        "cpu",
        next_rows=exp.next_rows,
    )
    assert (exp.next_rows >= 0).sum() == exp.segments - env.num_agents, "each agent's rows form one chain"
    losses = Losses()
    seen = []  # the minibatch's V-trace advantages, as the loss uses them (no normalisation here)
    for mb in exp.iter_minibatches():
        ratio_before = mb["logprobs"].clone()
        with torch.no_grad():
            process_minibatch_update(
                agent, exp, mb, adv, cfg, None, 0, losses, "cpu", [lambda *a: seen.append(a[5]) or a[5].sum() * 0]
            )
        torch.testing.assert_close(exp.ratio[mb["indices"]], torch.ones_like(ratio_before), atol=1e-5, rtol=0)
        # Ratio 1: recomputed from the minibatch's rows and their tails, they equal the whole buffer's, row ends too.
        torch.testing.assert_close(seen[-1], adv[mb["indices"]], atol=1e-5, rtol=1e-4)
    assert losses.stats()["approx_kl"] == pytest.approx(0.0, abs=1e-9)
    assert adv[exp.next_rows >= 0, -1].abs().sum() > 0, "row ends bootstrap from the next row"
    env.close()


def test_l2_init_and_prioritized_path():
    torch.manual_seed(2)
    env = Environment(num_agents=2, width=8, height=8, num_envs=2, seed=2)
    agent = make_policy(env)
    cfg = TrainerConfig.from_dict(
        {"batch_size": 64, "minibatch_size": 32, "bptt_horizon": 4, "ppo": {"l2_init_loss_coef": 1.0}}
    )
    exp = experience_for(env, agent, batch_size=64, minibatch_size=32)
    while not exp.ready_for_training:
        perform_rollout_step(agent, env, exp, "cpu")
    exp.rewards.normal_()
    adv = compute_advantage(
        exp.values,
        exp.rewards,
        exp.dones,
        torch.ones_like(exp.values),
        torch.zeros_like(exp.values),
        0.99,
        0.95,
        1,
        1,
        "cpu",
    )
    losses = Losses()
    for mb in exp.iter_minibatches(adv, prio_alpha=0.5, prio_beta=0.6):
        loss = process_minibatch_update(agent, exp, mb, adv, cfg, None, 0, losses, "cpu")
        loss.backward()
    assert losses.minibatches_processed == 2
    env.close()


def test_kickstarter_with_saved_teacher(tmp_path):
    torch.manual_seed(3)
    env = Environment(num_agents=2, width=8, height=8, num_envs=1, seed=3)
    teacher = make_policy(env)
    store = PolicyStore(DictConfig({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(tmp_path)}}}))
    record = store.create_empty_policy_record(store.make_model_name(1))
    record.policy = teacher
    store.save(record)

    assert not Kickstarter(KickstartConfig(), "cpu", None, env).enabled
    ks = Kickstarter(
        KickstartConfig(teacher_uri=record.uri, kickstart_steps=1000, anneal_ratio=0.5, value_loss_coef=2.0),
        "cpu",
        store,
        env,
    )
    assert ks.enabled and len(ks.teachers) == 1
    assert [ks.annealing(s) for s in (0, 500, 750, 1000, 1001)] == [1.0, 1.0, 0.5, 0.0, 0.0]

    obs = torch.from_numpy(env.recv()[0]).unsqueeze(0).repeat(1, 3, 1, 1)  # [B=1, T=3, tokens, 3]
    actions = torch.zeros(1, 3, 2, dtype=torch.int32)
    # The teacher distilled into itself: the action loss is the teacher's entropy, the value loss 0.
    _, _, entropy, value, logp = teacher(obs, PolicyState(), action=actions)
    ks_action, ks_value = ks.loss(0, logp.detach(), value.detach(), obs, actions=actions)
    assert ks_action.item() == pytest.approx(entropy.mean().item(), rel=1e-4)
    assert ks_value.item() == pytest.approx(0.0, abs=1e-8)
    student_value = value.detach() + 1.0
    ks_action, ks_value = ks.loss(750, logp.detach(), student_value, obs, actions=actions)
    assert ks_value.item() == pytest.approx(2.0 * 0.5 * 1.0, rel=1e-4)
    assert ks.loss(1001, logp, value, obs, actions=actions)[0].item() == 0.0

    # A given starting state (one per teacher) is the teacher's: distilled into itself from that state, the
    # value loss is 0 again, while from zeros it is not. The state handed in is left as it was.
    h = torch.randn(teacher.core_num_layers, 1, teacher.hidden_size)
    start = PolicyState(lstm_h=h, lstm_c=torch.randn_like(h))
    _, _, entropy, value, logp = teacher(obs, PolicyState(lstm_h=start.lstm_h, lstm_c=start.lstm_c), action=actions)
    for given in ([start], [(start.lstm_h, start.lstm_c)]):
        ks_action, ks_value = ks.loss(0, logp.detach(), value.detach(), obs, teacher_lstm_state=given, actions=actions)
        assert ks_action.item() == pytest.approx(entropy.mean().item(), rel=1e-4)
        assert ks_value.item() == pytest.approx(0.0, abs=1e-8)
    assert start.lstm_h is h
    for zeros in (None, [], [None]):
        assert ks.loss(0, logp.detach(), value.detach(), obs, teacher_lstm_state=zeros, actions=actions)[1] > 1e-8
    with pytest.raises(ValueError, match=r"teacher_lstm_state has 2 states for 1 teachers; pass one per teacher"):
        ks.loss(0, logp, value, obs, teacher_lstm_state=[start, start], actions=actions)
    env.close()


def test_train_ppo_follows_the_lr_schedule():
    from metta.rl.experience import make_experience
    from metta.rl.functional_trainer import rollout, train_ppo

    torch.manual_seed(2)
    env = Environment(num_agents=2, width=8, height=8, num_envs=2, seed=2)
    agent = make_policy(env)
    cfg = TrainerConfig(
        total_timesteps=128,
        batch_size=64,
        minibatch_size=16,
        bptt_horizon=4,
        optimizer={"learning_rate": 0.002},
        lr_scheduler={"enabled": True, "schedule_type": "linear"},
    )
    exp = make_experience(env, agent, cfg)
    optimizer = Optimizer("adam", agent, learning_rate=cfg.optimizer.learning_rate)
    losses, agent_step, epoch, rates = Losses(), 0, 0, []
    while agent_step < cfg.total_timesteps:
        agent_step, _ = rollout(agent, env, exp, "cpu", agent_step)
        epoch = train_ppo(agent, optimizer, exp, "cpu", losses, epoch, cfg, agent_step=agent_step)
        rates.append(optimizer.param_groups[0]["lr"])
    # Each batch trains at the rate for the progress where its rollout began: 0 and 64 of 128 steps.
    assert rates == pytest.approx([0.002, 0.001])
    env.close()


def test_train_ppo_runs_the_buffers_sizes_and_says_so_once(caplog):
    """The Experience holds the batch and cuts the minibatches: where the trainer config's sizes differ, the
    buffer's run and one warning names both values (seed 000's loop sizes its buffer by hand)."""
    from metta.rl.training import rollout, sized_to_buffer, train_ppo

    torch.manual_seed(0)
    env = Environment(env_config=default_env_config(num_agents=2, width=8, height=8), num_envs=2, seed=1)
    agent = make_policy(env)
    exp = experience_for(env, agent, batch_size=32, bptt=4, minibatch_size=16)
    optimizer = Optimizer("adam", agent, learning_rate=1e-3)
    _, _ = rollout(agent, env, exp, "cpu", 0, Stopwatch())

    matching = TrainerConfig(batch_size=32, minibatch_size=16, bptt_horizon=4)
    assert sized_to_buffer(exp, matching) is matching  # nothing to change, nothing said
    explicit = TrainerConfig(batch_size=32, minibatch_size=8, bptt_horizon=4)
    with caplog.at_level(logging.WARNING, logger="metta.rl.training"):
        for _ in range(2):
            losses = Losses()
            assert train_ppo(agent, optimizer, exp, "cpu", losses, 0, explicit, agent_step=32) == 1
            assert losses.minibatches_processed == 2  # the buffer's 2 minibatches of 16, not 4 of 8
    said = [r.getMessage() for r in caplog.records if "sizes run" in r.getMessage()]
    assert len(said) == 1 and "minibatch_size=16 (trainer_cfg.minibatch_size=8)" in said[0]
    defaults = TrainerConfig()  # upstream's sizes: all three differ, the buffer's are used
    adopted = sized_to_buffer(exp, defaults)
    assert (adopted.batch_size, adopted.minibatch_size, adopted.bptt_horizon) == (32, 16, 4)
    env.close()


def test_a_batch_the_agents_cannot_fill_evenly_advances_agent_step_by_what_the_log_says(caplog):
    """16 rows of 4 steps over 6 agents: every agent steps 3 rows' worth, so a rollout steps 72 agent steps and
    trains on 64; agent_step, the buffer's description and its warning all say 72."""
    from metta.rl.training import rollout

    env = Environment(env_config=default_env_config(num_agents=2, width=8, height=8), num_envs=3, seed=4)
    agent = make_policy(env)
    with caplog.at_level("WARNING", logger="metta.rl.experience"):
        exp = experience_for(env, agent, batch_size=64, bptt=4, minibatch_size=16)
    assert exp.agent_steps_per_rollout == 72
    assert "(64 agent steps trained of the 72 each rollout steps)" in exp.describe()
    assert "batch_size=64 is 16 rows of 4 steps, which do not split evenly over 6 agents" in caplog.text
    assert "each rollout steps 72 agent steps" in caplog.text and "batch_size=48 or 72" in caplog.text
    agent_step, _ = rollout(agent, env, exp, "cpu", 0)
    assert agent_step == 72
    agent_step, _ = rollout(agent, env, exp, "cpu", agent_step)
    assert agent_step == 144
    env.close()


def test_the_gpu_form_of_the_rollout_step_stores_what_the_cpu_form_stores():
    """The GPU form of the step (DeviceStep: static device work a CUDA graph captures, run eagerly here) fills
    the buffer as the CPU form does: the same observations, rewards, episode starts and row chains, the same
    actions (one random draw each), log-probabilities and values up to the LSTM step's float rounding, and the
    states rows are replayed from. Its first minibatch then replays to the rollout's own log-probabilities."""
    from metta.common.code_paths import gpu_forms_everywhere

    filled = []
    for gpu in (False, True):
        torch.manual_seed(5)
        env = short_episode_env(max_steps=7)  # episodes end inside rows; two env batches take turns
        agent = make_policy(env)
        agent.token_conv.product = "dense"  # the same first convolution in both forms
        exp = experience_for(env, agent, batch_size=4 * 4 * 8)
        with gpu_forms_everywhere() if gpu else contextlib.nullcontext():
            for _ in range(2):  # the second rollout starts rows from carried states
                exp.reset_for_rollout()
                while not exp.ready_for_training:
                    perform_rollout_step(agent, env, exp, "cpu")
        assert (len(exp.device_steps) == 2) == gpu  # one DeviceStep per env batch
        filled.append(exp)
        env.close()
    cpu, dev = filled
    for name in ("obs", "actions", "rewards", "dones", "truncateds"):
        assert torch.equal(getattr(dev, name), getattr(cpu, name)), name
    assert torch.equal(dev.next_rows, cpu.next_rows) and np.array_equal(dev._host_starts, cpu._host_starts)
    assert np.array_equal(dev._host_starts[: dev.segments], dev.dones.bool().numpy())
    for name in ("logprobs", "values", "row_lstm_h", "row_lstm_c", "lstm_h"):
        torch.testing.assert_close(getattr(dev, name), getattr(cpu, name), rtol=1e-5, atol=1e-5, msg=name)
    assert dev.dones[:, 1:].any() and dev.row_lstm_h.abs().sum() > 0
    # The rows' stored states and episode starts replay the rollout exactly (first minibatch: ratio 1).
    torch.manual_seed(5)
    env = short_episode_env(max_steps=7)
    agent = make_policy(env)
    agent.token_conv.product = "dense"
    env.close()
    mb = next(dev.iter_minibatches())
    with torch.no_grad():
        state = PolicyState(lstm_h=mb["lstm_h"], lstm_c=mb["lstm_c"], episode_starts=mb["episode_starts"])
        _, logprob, _, value, _ = agent(mb["obs"], state, action=mb["actions"])
    torch.testing.assert_close(logprob.view_as(mb["logprobs"]), mb["logprobs"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(value.view_as(mb["values"]), mb["values"], rtol=1e-5, atol=1e-5)
