"""The code paths that differ on an accelerator, checked on the device ``METTA_TEST_DEVICE`` names.

The suite runs them on the CPU (the default), where the device side and the CPU side are the same code;
``benchmarks/gpu_check.py`` runs this file with ``METTA_TEST_DEVICE=cuda`` on a GPU, where they are not:
the torch advantage path against the CPU's compiled kernel, the LSTM with episode starts inside a row under
cuDNN, a rollout into an Experience on the device (packed pinned upload, positions tracked on the device),
the bag form of the first convolution, a checkpoint saved on the device and loaded on the CPU, the
compiled policy against the eager one, and (CUDA only) the rollout step as a CUDA graph against the eager step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rl"))
from test_advantage import random_chains  # noqa: E402  (next_rows as Experience builds them)

from metta.agent.metta_agent import make_policy
from metta.agent.policy_state import PolicyState
from metta.interface import Environment, Optimizer, TrainerConfig, load_checkpoint, save_checkpoint
from metta.rl.advantage import compute_advantage
from metta.rl.experience import make_experience
from metta.rl.functional_trainer import rollout, train_ppo
from metta.rl.host_transfer import HostUpload
from metta.rl.losses import Losses
from metta.rl.policy_management import compile_policy
from metta.rl.rollout import get_observation

DEVICE = torch.device(os.environ.get("METTA_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip(f"METTA_TEST_DEVICE={DEVICE} but CUDA is not available", allow_module_level=True)

SMALL = {
    "game": {
        "num_agents": 2,
        "max_steps": 24,  # episodes end inside rows of 16 steps
        "map_builder": {"type": "random", "width": 10, "height": 10, "agents": 2, "objects": {"altar": 2}},
    }
}


@pytest.fixture(scope="module")
def env():
    vec = Environment(env_config=SMALL, num_envs=4, device=str(DEVICE), seed=0)
    yield vec
    vec.close()


def test_advantage_on_the_device_equals_the_cpu_kernel():
    rng = np.random.default_rng(0)
    S, H = 64, 16
    values, rewards = (torch.from_numpy(rng.normal(size=(S, H)).astype(np.float32)) for _ in range(2))
    dones = torch.from_numpy((rng.random((S, H)) < 0.1).astype(np.float32))
    truncations = dones * torch.from_numpy(rng.random((S, H)) < 0.5)  # half of the episode ends are time limits
    ratio = torch.from_numpy(np.exp(rng.normal(scale=0.3, size=(S, H))).astype(np.float32))
    next_rows = torch.from_numpy(random_chains(rng, S, 8))
    args = (0.97, 0.9, 1.2, 0.9)
    for links in (None, next_rows):
        for trunc in (None, truncations):
            on_cpu = compute_advantage(
                values, rewards, dones, ratio, torch.zeros(S, H), *args, next_rows=links, truncations=trunc
            )
            dev = [x.to(DEVICE) for x in (values, rewards, dones, ratio)]
            on_device = compute_advantage(
                *dev,
                torch.zeros(S, H, device=DEVICE),
                *args,
                next_rows=links,
                truncations=None if trunc is None else trunc.to(DEVICE),
            )
            assert on_device.device.type == DEVICE.type
            torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=1e-5, atol=1e-5)


def test_lstm_with_episode_starts_inside_rows_matches_the_cpu(env):
    """Training's sequence pass (rows cut at episode starts, one padded LSTM call) on the device equals the
    CPU's, and equals stepping the same observations one at a time as a rollout does."""
    torch.manual_seed(0)
    cpu_agent = make_policy(env, device="cpu")
    dev_agent = make_policy(env, device=DEVICE)
    dev_agent.load_state_dict(cpu_agent.state_dict())
    B, T = 6, 16
    obs, *_ = env.reset(seed=3)[:1]
    tokens = torch.from_numpy(np.asarray(obs)).repeat(B * T // len(obs) + 1, 1, 1)[: B * T].view(B, T, *obs.shape[1:])
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[0, 5] = starts[1, 9] = starts[3, 5] = starts[4, 15] = True
    actions = torch.randint(0, 2, (B, T, 2), dtype=torch.int32)
    h0 = torch.randn(cpu_agent.core_num_layers, B, cpu_agent.hidden_size)
    c0 = torch.randn_like(h0)

    def sequence(agent, device):
        state = PolicyState(lstm_h=h0.to(device), lstm_c=c0.to(device), episode_starts=starts.to(device))
        _, logprob, entropy, value, _ = agent(tokens.to(device), state, action=actions.to(device))
        assert state.lstm_h is None and state.lstm_c is None  # a replay with starts inside hands on no state
        return [x.detach().cpu() for x in (logprob, entropy, value.view(-1))]

    on_cpu, on_device = sequence(cpu_agent, "cpu"), sequence(dev_agent, DEVICE)
    for a, b in zip(on_cpu, on_device):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)

    # Step by step, resetting the state where an episode starts, as the rollout does.
    h, c = h0.to(DEVICE), c0.to(DEVICE)
    stepped = []
    with torch.no_grad():
        for t in range(T):
            keep = (~starts[:, t]).to(DEVICE).float().view(1, B, 1) if t > 0 else torch.ones(1, B, 1, device=DEVICE)
            state = PolicyState(lstm_h=h * keep, lstm_c=c * keep)
            _, logprob, _, _, _ = dev_agent(tokens[:, t].to(DEVICE), state, action=actions[:, t].to(DEVICE))
            h, c = state.lstm_h, state.lstm_c
            stepped.append(logprob.cpu())
    torch.testing.assert_close(torch.stack(stepped, 1).reshape(-1), on_device[0], rtol=1e-4, atol=1e-4)


def test_host_upload_gives_the_vecenv_arrays_on_the_device(env):
    upload = HostUpload(DEVICE)
    env.async_reset(5)
    o, r, d, t, _, env_id, _, _ = get_observation(env, DEVICE, upload=upload)
    assert all(x.device.type == DEVICE.type for x in (o, r, d, t))
    assert o.dtype == torch.uint8 and r.dtype == torch.float32 and d.dtype == torch.bool and t.dtype == torch.bool
    rows = slice(env_id.start, env_id.stop)
    torch.testing.assert_close(o.cpu(), torch.from_numpy(env.observations[rows]))
    torch.testing.assert_close(r.cpu(), torch.from_numpy(env.rewards[rows]))
    assert torch.equal(d.cpu(), torch.from_numpy(env.terminals[rows])) and torch.equal(
        t.cpu(), torch.from_numpy(env.truncations[rows])
    )
    env.send(np.zeros((len(o), 2), dtype=np.int32))


def test_a_rollout_on_the_device_replays_to_its_own_logprobs(env):
    """Everything a rollout stores on the device (observations, actions, episode starts, each row's entering
    LSTM state, the positions tracked on the device) must let the policy reproduce the rollout's
    log-probabilities and values exactly; then one PPO update runs there."""
    torch.manual_seed(1)
    agent = make_policy(env, device=DEVICE)
    # 8 agents, 24 rows: agents fill rows in turn, episodes (24 steps) end inside rows.
    cfg = TrainerConfig(batch_size=384, minibatch_size=384, bptt_horizon=16, update_epochs=1)
    experience = make_experience(env, agent, cfg, DEVICE)
    env.async_reset(11)
    agent_step, _ = rollout(agent, env, experience, DEVICE, 0)
    assert agent_step >= cfg.batch_size and experience.ready_for_training
    assert experience.obs.device.type == DEVICE.type
    assert bool(experience.dones.any()), "episodes should start inside rows"
    # Every row was written: a row never written keeps all-zero observations (real ones hold 0xFF slots).
    assert bool((experience.obs.flatten(2).max(dim=2).values > 0).all())
    with torch.no_grad():
        state = PolicyState(
            lstm_h=experience.row_lstm_h, lstm_c=experience.row_lstm_c, episode_starts=experience.dones.bool()
        )
        _, logprob, _, value, _ = agent(experience.obs, state, action=experience.actions)
    torch.testing.assert_close(logprob.view_as(experience.logprobs), experience.logprobs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(value.view_as(experience.values), experience.values, rtol=1e-4, atol=1e-4)

    optimizer = Optimizer("adam", agent, learning_rate=1e-3)
    before = [p.detach().clone() for p in agent.parameters()]
    losses = Losses()
    train_ppo(agent, optimizer, experience, DEVICE, losses, 0, cfg, agent_step=agent_step)
    stats = losses.stats()
    assert losses.minibatches_processed == 1 and all(np.isfinite(v) for v in stats.values() if isinstance(v, float))
    assert abs(stats["importance"] - 1.0) < 1e-4  # the first minibatch replays the rollout exactly
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))


def test_first_convolution_by_bag_equals_the_components_on_the_device(env):
    torch.manual_seed(2)
    agent = make_policy(env, device=DEVICE)
    obs = torch.from_numpy(np.asarray(env.reset(seed=4)[0])).to(DEVICE)
    actions = torch.zeros(len(obs), 2, dtype=torch.int32, device=DEVICE)
    fused = agent.token_conv
    fused.product = "bag"
    with_bag = agent(obs, PolicyState(), action=actions)[1]
    agent.token_conv = None
    with_components = agent(obs, PolicyState(), action=actions)[1]
    agent.token_conv = fused
    torch.testing.assert_close(with_bag, with_components, rtol=1e-4, atol=1e-5)


def test_checkpoint_saved_on_the_device_loads_on_the_cpu(env, tmp_path):
    from metta.agent.policy_store import PolicyStore

    torch.manual_seed(3)
    agent = make_policy(env, device=DEVICE)
    optimizer = Optimizer("adam", agent, learning_rate=1e-3)
    optimizer.step(sum((p.float() ** 2).sum() for p in agent.parameters()), 0)
    directory = str(tmp_path / "checkpoints")
    store = PolicyStore({"device": str(DEVICE), "trainer": {"checkpoint": {"checkpoint_dir": directory}}})
    save_checkpoint(3, 300, agent, optimizer, store, directory, checkpoint_interval=1, vecenv=env)

    cpu_agent = make_policy(env, device="cpu")
    cpu_optimizer = Optimizer("adam", cpu_agent, learning_rate=1e-3)
    agent_step, epoch, path = load_checkpoint(directory, cpu_agent, cpu_optimizer, vecenv=env)
    assert (agent_step, epoch) == (300, 3) and path
    for (name, a), b in zip(agent.state_dict().items(), cpu_agent.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert b.device.type == "cpu", name
            torch.testing.assert_close(b, a.cpu(), msg=name)
    exp_avg = next(iter(cpu_optimizer.optimizer.state.values()))["exp_avg"]
    assert exp_avg.device.type == "cpu"
    cpu_optimizer.step(sum((p.float() ** 2).sum() for p in cpu_agent.parameters()), 0)  # and it keeps training


def test_compiled_policy_gives_the_eager_outputs(env):
    """torch.compile (default mode) around the parts before and after the LSTM: same outputs and gradients."""
    torch.manual_seed(4)
    eager = make_policy(env, device=DEVICE)
    compiled = make_policy(env, device=DEVICE)
    compiled.load_state_dict(eager.state_dict())
    compile_policy(compiled, "default")
    obs = torch.from_numpy(np.asarray(env.reset(seed=6)[0])).to(DEVICE)
    B, T = 2, 4
    seq = obs[:B].unsqueeze(1).expand(B, T, *obs.shape[1:]).contiguous()
    actions = torch.ones(B, T, 2, dtype=torch.int32, device=DEVICE)
    outputs = []
    for agent in (eager, compiled):
        agent.zero_grad()
        _, logprob, entropy, value, _ = agent(seq, PolicyState(), action=actions)
        (logprob.sum() + entropy.sum() + value.sum()).backward()
        with torch.no_grad():
            step = agent(obs, PolicyState(), action=actions[:, 0].repeat(len(obs) // B + 1, 1)[: len(obs)])[1]
        outputs.append(
            ([logprob, entropy, value, step], {n: p.grad for n, p in agent.named_parameters() if p.grad is not None})
        )
    for a, b in zip(outputs[0][0], outputs[1][0]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert outputs[0][1].keys() == outputs[1][1].keys()
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)
    assert set(compiled.state_dict()) == set(eager.state_dict())  # checkpoints keep their keys


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a CUDA device (METTA_TEST_DEVICE=cuda)")
def test_the_rollout_step_as_a_cuda_graph_equals_the_eager_step(env):
    """With cuda_graphs each env batch's step is captured once and replayed; what the replays store is what the
    eager policy computes: the rows replay to the recorded log-probabilities and values, and a graph step and
    an eager step from the same state give the same values and next states."""
    torch.manual_seed(6)
    agent = make_policy(env, device=DEVICE)
    cfg = TrainerConfig(batch_size=384, minibatch_size=384, bptt_horizon=16, update_epochs=1)
    graphed = make_experience(env, agent, cfg, DEVICE)
    assert graphed.cuda_graphs
    env.async_reset(12)
    rollout(agent, env, graphed, DEVICE, 0)
    steps = list(graphed.device_steps.values())
    assert steps and all(step.graph is not None for step in steps)
    with torch.no_grad():
        state = PolicyState(
            lstm_h=graphed.row_lstm_h, lstm_c=graphed.row_lstm_c, episode_starts=graphed.dones.bool().cpu()
        )
        _, logprob, _, value, _ = agent(graphed.obs, state, action=graphed.actions)
    torch.testing.assert_close(logprob.view_as(graphed.logprobs), graphed.logprobs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(value.view_as(graphed.values), graphed.values, rtol=1e-4, atol=1e-4)

    # One more step both ways from the same state: values and next LSTM states agree (actions are random draws).
    eager = make_experience(env, agent, cfg.model_copy(update={"cuda_graphs": False}), DEVICE)
    assert not eager.cuda_graphs
    o, r, d, t, _, env_id, _ = env.recv()
    for experience in (graphed, eager):
        experience.match_policy(agent)
        experience.lstm_h.copy_(graphed.lstm_h)
        experience.lstm_c.copy_(graphed.lstm_c)
    from metta.rl.rollout import device_step

    sl = slice(int(env_id[0]), int(env_id[-1]) + 1)
    results = []
    for experience in (graphed, eager):
        device_step(agent, experience, sl, o)(o, r, d, t)
        results.append((experience.lstm_h[:, sl].clone(), experience.lstm_c[:, sl].clone()))
    env.send(np.zeros((len(o), 2), dtype=np.int32))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_rollout_with_observations_offloaded_to_the_host(env):
    """cpu_offload keeps the observations in (page-locked) host memory: on a GPU the rollout step writes them
    there from the host and minibatches gather them there and send them over; the update still replays the
    rollout exactly (ratio 1 at its first minibatch)."""
    torch.manual_seed(7)
    agent = make_policy(env, device=DEVICE)
    cfg = TrainerConfig(batch_size=384, minibatch_size=384, bptt_horizon=16, update_epochs=1, cpu_offload=True)
    experience = make_experience(env, agent, cfg, DEVICE)
    assert experience.obs.device.type == "cpu"
    env.async_reset(13)
    agent_step, _ = rollout(agent, env, experience, DEVICE, 0)
    assert bool((experience.obs.flatten(2).max(dim=2).values > 0).all())  # every step's observations written
    losses = Losses()
    train_ppo(
        agent, Optimizer("adam", agent, learning_rate=1e-3), experience, DEVICE, losses, 0, cfg, agent_step=agent_step
    )
    assert abs(losses.stats()["importance"] - 1.0) < 1e-4
