from __future__ import annotations

import pytest
import torch

from metta.agent import MettaAgent, PolicyState, make_policy
from metta.agent.agent_config import AgentConfig, resolve_agent_config
from metta.agent.lib.metta_layer import AgentContext
from metta.agent.lib.obs_token_to_box_shaper import ObsTokenToBoxShaper


def test_inference_shapes_and_state(env, rollout_obs):
    agent = make_policy(env)
    n = env.num_agents
    state = PolicyState()
    action, logprob, entropy, value, full = agent(rollout_obs[0], state)
    assert action.shape == (n, 2) and action.dtype in (torch.int32, torch.int64)
    assert logprob.shape == (n,) and entropy.shape == (n,) and value.shape == (n, 1)
    assert full.shape == (n, agent.num_flat_actions) == (n, sum(m + 1 for m in env.max_action_args))
    assert state.lstm_h.shape == state.lstm_c.shape == (agent.core_num_layers, n, agent.hidden_size)
    assert not state.lstm_h.requires_grad
    # Sampled actions are valid env actions and their logprob is the full distribution's entry.
    assert torch.all(action[:, 1] <= torch.tensor(env.max_action_args)[action[:, 0].long()])
    torch.testing.assert_close(full.gather(1, agent.action_to_flat(action).unsqueeze(1)).squeeze(1), logprob)
    torch.testing.assert_close(full.exp().sum(1), torch.ones(n))


def test_training_path_matches_rollout_path(env, rollout_obs):
    torch.manual_seed(0)
    agent = make_policy(env)
    steps, n = rollout_obs.shape[:2]
    state = PolicyState()
    actions, logprobs, values = [], [], []
    with torch.no_grad():
        for t in range(steps):
            a, lp, _, v, _ = agent(rollout_obs[t], state)
            actions.append(a), logprobs.append(lp), values.append(v)
    # Experience layout: [B=agents, T=steps, ...].
    obs_bt = rollout_obs.transpose(0, 1)
    act_bt = torch.stack(actions, 1)
    _, lp_train, ent, v_train, full = agent(obs_bt, PolicyState(), act_bt)
    assert lp_train.shape == (n * steps,) and v_train.shape == (n * steps, 1) and full.shape[0] == n * steps
    torch.testing.assert_close(lp_train, torch.stack(logprobs, 1).reshape(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_train, torch.stack(values, 1).reshape(-1, 1), atol=1e-5, rtol=1e-5)
    assert lp_train.requires_grad


def test_training_path_resets_at_episode_starts_like_the_rollout(env, rollout_obs):
    """A [B, T] replay with episode starts inside equals a rollout that zeroes the state at those steps,
    starting from a carried (non-zero) state."""
    torch.manual_seed(1)
    agent = make_policy(env)
    steps, n = rollout_obs.shape[:2]
    starts = torch.zeros(n, steps, dtype=torch.bool)
    starts[0, 3] = True
    starts[1 % n, 5] = True
    with torch.no_grad():
        warm = PolicyState()
        agent(rollout_obs[0], warm)  # a non-zero state to start from
    h0, c0 = warm.lstm_h.clone(), warm.lstm_c.clone()
    state = PolicyState(lstm_h=h0.clone(), lstm_c=c0.clone())
    logprobs, actions = [], []
    with torch.no_grad():
        for t in range(steps):
            if t > 0:
                state.reset_done(starts[:, t])
            a, lp, _, _, _ = agent(rollout_obs[t], state)
            actions.append(a), logprobs.append(lp)
    replay = PolicyState(lstm_h=h0, lstm_c=c0, episode_starts=starts)
    _, lp_train, _, _, _ = agent(rollout_obs.transpose(0, 1), replay, torch.stack(actions, 1))
    torch.testing.assert_close(lp_train, torch.stack(logprobs, 1).reshape(-1), atol=1e-5, rtol=1e-5)
    # Ignoring the starts gives different log-probabilities after them (the test has teeth).
    _, lp_no_reset, _, _, _ = agent(
        rollout_obs.transpose(0, 1), PolicyState(lstm_h=h0, lstm_c=c0), torch.stack(actions, 1)
    )
    assert not torch.allclose(lp_no_reset, lp_train, atol=1e-4)


def test_zero_state_equals_fresh_state_and_reset_done(env, rollout_obs):
    agent = make_policy(env)
    obs = rollout_obs[0]
    n = obs.shape[0]
    zeros = torch.zeros(agent.core_num_layers, n, agent.hidden_size)
    fresh = agent(obs, PolicyState(), torch.zeros(n, 2, dtype=torch.int32))
    zeroed = agent(obs, PolicyState(zeros.clone(), zeros.clone()), torch.zeros(n, 2, dtype=torch.int32))
    for a, b in zip(fresh[1:], zeroed[1:]):
        torch.testing.assert_close(a, b)
    # reset_done zeroes exactly the rows of agents whose episode ended.
    state = PolicyState()
    agent(obs, state)
    done = torch.zeros(n, dtype=torch.bool)
    done[1] = True
    kept = state.lstm_h[:, 0].clone()
    state.reset_done(done)
    assert torch.all(state.lstm_h[:, 1] == 0) and torch.all(state.lstm_c[:, 1] == 0)
    torch.testing.assert_close(state.lstm_h[:, 0], kept)


def test_flat_action_index_round_trip(env):
    agent = make_policy(env)
    flat = torch.arange(agent.num_flat_actions)
    pairs = agent.flat_to_action(flat)
    torch.testing.assert_close(agent.action_to_flat(pairs), flat)
    expected = [(t, a) for t, m in enumerate(env.max_action_args) for a in range(m + 1)]
    assert pairs.tolist() == [list(p) for p in expected]


def test_embeddings_follow_action_names_not_order(env, rollout_obs):
    agent = make_policy(env)
    agent.eval()
    obs = rollout_obs[2]
    names, maxes = env.action_names, env.max_action_args
    *_, full = agent(obs, PolicyState())
    by_name = {
        f"{n}_{a}": full[:, i] for i, (n, a) in enumerate((n, a) for n, m in zip(names, maxes) for a in range(m + 1))
    }
    order = list(reversed(range(len(names))))
    agent.activate_actions([names[i] for i in order], [maxes[i] for i in order], "cpu")
    *_, full2 = agent(obs, PolicyState())
    flat_names = [f"{names[i]}_{a}" for i in order for a in range(maxes[i] + 1)]
    for j, name in enumerate(flat_names):
        torch.testing.assert_close(full2[:, j], by_name[name])
    # An action the policy never saw gets a new embedding index, after the known ones.
    table = agent.components["_action_embeds_"].name_to_index
    assert sorted(table.values()) == list(range(1, len(table) + 1))
    agent.activate_actions(names + ["dance"], maxes + [0], "cpu")
    assert table["dance_0"] == len(table)


def _shuffled_obs(obs: torch.Tensor, permutation: dict[int, int]) -> torch.Tensor:
    out = obs.clone()
    ids = out[..., 1].long()
    lookup = torch.arange(256)
    for old, new in permutation.items():
        lookup[old] = new
    valid = out[..., 0] != 255
    out[..., 1] = torch.where(valid, lookup[ids], ids).to(torch.uint8)
    return out


def test_feature_remapping_keeps_outputs(env, rollout_obs):
    agent = make_policy(env)
    agent.eval()
    obs = rollout_obs[3]
    features = env.get_observation_features()
    ids = [f["id"] for f in features.values()]
    shuffled_ids = ids[1:] + ids[:1]
    permutation = dict(zip(ids, shuffled_ids))
    moved = {name: {**info, "id": permutation[info["id"]]} for name, info in features.items()}
    n = obs.shape[0]
    act = torch.zeros(n, 2, dtype=torch.int32)
    expected = agent(obs, PolicyState(), act)
    agent.initialize_to_environment(moved, env.action_names, env.max_action_args, "cpu")
    got = agent(_shuffled_obs(obs, permutation), PolicyState(), act)
    for a, b in zip(expected[1:], got[1:]):
        torch.testing.assert_close(a, b)
    assert agent.original_feature_mapping == {name: info["id"] for name, info in features.items()}


def test_unknown_features_dropped_in_eval_and_learned_in_training(env):
    agent = make_policy(env)
    features = dict(env.get_observation_features())
    features["brand_new"] = {"id": 40, "normalization": 5.0}
    agent.eval()
    agent.initialize_to_environment(features, env.action_names, env.max_action_args, "cpu")
    assert agent.components["_obs_"].feature_remap[40] == 255
    assert "brand_new" not in agent.original_feature_mapping
    agent.train()
    agent.initialize_to_environment(features, env.action_names, env.max_action_args, "cpu")
    assert agent.original_feature_mapping["brand_new"] == 40
    assert agent.components["_obs_"].feature_remap[40] == 40


def test_token_to_box_scatter_and_invalid_tokens():
    context = AgentContext(obs_width=11, obs_height=11, feature_normalizations={0: 1.0, 4: 1.0}, clip_range=0)
    shaper = ObsTokenToBoxShaper("_obs_", [], context)
    shaper.setup([])
    tokens = torch.full((2, 4, 3), 255, dtype=torch.uint8)
    tokens[0, 0] = torch.tensor([(3 << 4) | 7, 4, 9])
    tokens[1, 1] = torch.tensor([(10 << 4) | 0, 0, 2])
    tokens[1, 2] = torch.tensor([255, 4, 77])  # empty slot with junk: skipped
    tokens[1, 3] = torch.tensor([(1 << 4) | 1, 200, 5])  # feature id beyond the box: skipped
    box = shaper.tokens_to_box(tokens)
    assert box.shape == (2, 5, 11, 11)
    assert box[0, 4, 3, 7] == 9 and box[1, 0, 10, 0] == 2
    assert box.sum() == 11


def test_clip_weights(env):
    agent = make_policy(env, {"clip_range": 0.5})
    layer = agent.components["fc1"]
    with torch.no_grad():
        layer.weight_net.weight.mul_(10)
    agent.clip_weights()
    limit = 0.5 * float(layer.largest_initial_weight)
    assert layer.weight_net.weight.abs().max() <= limit + 1e-6
    # clip_range=0 (the default) leaves weights alone.
    free = make_policy(env)
    with torch.no_grad():
        free.components["fc1"].weight_net.weight.mul_(10)
    before = free.components["fc1"].weight_net.weight.clone()
    free.clip_weights()
    torch.testing.assert_close(free.components["fc1"].weight_net.weight, before)


def test_l2_init_loss_and_weight_copy(env):
    agent = make_policy(env)
    assert agent.l2_init_loss().item() == 0.0
    layer = agent.components["fc1"]
    with torch.no_grad():
        layer.weight_net.weight.add_(0.1)
    loss = agent.l2_init_loss()
    assert loss.item() > 0
    loss.backward()
    assert layer.weight_net.weight.grad is not None and layer.weight_net.weight.grad.abs().sum() > 0
    init = layer.initial_weight.clone()
    agent.update_l2_init_weight_copy(alpha=0.9)
    torch.testing.assert_close(layer.initial_weight, 0.9 * init + 0.1 * layer.weight_net.weight.detach())


def test_weight_metrics(env):
    metrics = make_policy(env).compute_weight_metrics(delta=0.01)
    names = {m["name"] for m in metrics}
    assert {"cnn1", "cnn2", "fc1", "encoded_obs", "critic_1", "_value_", "actor_1"} <= names
    fc1 = next(m for m in metrics if m["name"] == "fc1")
    assert 1 <= fc1["effective_rank"] <= 64 and fc1["sv_max"] >= fc1["sv_min"] > 0


def test_configs_and_errors(env):
    big = make_policy(env, "interface_default")
    assert big.hidden_size == 512 and big.core_num_layers == 1
    fast = make_policy(env)
    assert fast.hidden_size == 128 and fast.core_num_layers == 2
    # fast_cpu: the fast graph with one LSTM layer and 256-wide heads, about half its FLOPs per agent step.
    fast_cpu = make_policy(env, "fast_cpu")
    assert fast_cpu.hidden_size == 128 and fast_cpu.core_num_layers == 1
    assert [fast_cpu.components[n].out_shape for n in ("critic_1", "actor_1")] == [(256,), (256,)]
    assert [fast.components[n].out_shape for n in ("critic_1", "actor_1")] == [(1024,), (512,)]
    assert sum(p.numel() for p in fast_cpu.parameters()) < 0.6 * sum(p.numel() for p in fast.parameters())
    # The seed documents' shape: {"device": ..., "agent": {knobs}} keeps the default graph.
    cfg = resolve_agent_config({"device": "cpu", "agent": {"clip_range": 0.2, "l2_init_weight_update_interval": 100}})
    assert cfg.clip_range == 0.2 and "critic_1" in cfg.components
    with pytest.raises(ValueError, match="_core_"):
        AgentConfig.model_validate({"components": {"_obs_": {"type": "ObsTokenToBoxShaper"}}})
    with pytest.raises(ValueError, match="clip_rang"):
        AgentConfig.model_validate({"clip_rang": 0.1})
    with pytest.raises(RuntimeError, match="initialize_to_environment"):
        MettaAgent((200, 3), 11, 11, env.feature_normalizations)(
            torch.zeros(1, 200, 3, dtype=torch.uint8), PolicyState()
        )


def _with_junk_tokens(obs: torch.Tensor) -> torch.Tensor:
    """Real observations plus the tokens both encoder paths must skip."""
    out = obs.clone()
    out[:, -1] = torch.tensor([255, 3, 77], dtype=torch.uint8)  # an empty slot with junk in it
    out[:, -2] = torch.tensor([(12 << 4) | 3, 0, 9], dtype=torch.uint8)  # row 12: off the 11x11 window
    out[:, -3] = torch.tensor([(2 << 4) | 2, 250, 9], dtype=torch.uint8)  # a feature beyond the channels
    return out


@pytest.mark.parametrize("product", ["sparse", "bag", "dense"])
@pytest.mark.parametrize("config", ["fast", "interface_default"])
def test_token_conv_equals_the_box_and_convolution_components(env, rollout_obs, config, product):
    """The first convolution computed from the tokens gives the components' outputs and gradients, by either
    product (sparse on CPUs by default, the components themselves ("dense") on GPUs, or the bag form)."""
    torch.manual_seed(3)
    agent = make_policy(env, config=config)
    fused = agent.token_conv
    assert fused is not None and fused.name == "cnn1"
    fused.product = product
    obs = _with_junk_tokens(rollout_obs.transpose(0, 1))  # [B=8, T=6, 200, 3]
    actions = torch.zeros(obs.shape[0], obs.shape[1], 2, dtype=torch.int32)

    def outputs_and_grads(token_conv):
        agent.token_conv = token_conv
        agent.zero_grad()
        _, logprob, entropy, value, _ = agent(obs, PolicyState(), action=actions)
        (logprob.sum() + entropy.sum() + value.sum()).backward()
        return [logprob, entropy, value], {n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None}

    dense_out, dense_grads = outputs_and_grads(None)
    fused_out, fused_grads = outputs_and_grads(fused)
    for a, b in zip(dense_out, fused_out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert dense_grads.keys() == fused_grads.keys() and "components.cnn1.weight_net.weight" in fused_grads
    for name in dense_grads:
        torch.testing.assert_close(dense_grads[name], fused_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def test_token_conv_rollout_table_follows_weight_changes(env, rollout_obs):
    """Without gradients the weight table is cached; an optimizer step (in-place update) must refresh it."""
    agent = make_policy(env)
    obs = rollout_obs[2]
    act = torch.zeros(obs.shape[0], 2, dtype=torch.int32)
    optimizer = torch.optim.SGD(agent.parameters(), lr=0.5)
    with torch.no_grad():
        before = agent(obs, PolicyState(), act)[3]
    _, logprob, _, value, _ = agent(obs, PolicyState(), act)
    (value.sum() + logprob.sum()).backward()
    optimizer.step()
    fused = agent.token_conv
    with torch.no_grad():
        after = agent(obs, PolicyState(), act)[3]
        agent.token_conv = None
        dense_after = agent(obs, PolicyState(), act)[3]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, dense_after, rtol=1e-4, atol=1e-5)
    assert fused is not None


def test_token_conv_only_when_nothing_else_reads_the_box(env):
    from metta.agent.lib.nn_layer_library import Flatten
    from metta.agent.lib.token_conv import TokenConv

    agent = make_policy(env)
    components = dict(agent.components)
    assert TokenConv.for_components(components) is not None
    context = agent.components["_obs_"].context
    components["box_reader"] = Flatten("box_reader", ["obs_normalizer"], context)
    assert TokenConv.for_components(components) is None
    components.pop("box_reader")
    components["raw_reader"] = Flatten("raw_reader", ["_obs_"], context)
    assert TokenConv.for_components(components) is None


def test_the_dense_first_convolution_runs_the_components_and_nothing_more(env, rollout_obs):
    """The dense form (a GPU's) goes straight to the box and the convolution: the same ops as the components
    themselves, no token decoding for the sparse forms first."""
    from metta.common.profiling.dispatch_counter import DispatchCounter

    agent = make_policy(env)
    fused = agent.token_conv
    fused.product = "dense"
    counts = []
    for token_conv in (fused, None):
        agent.token_conv = token_conv
        counter = DispatchCounter()
        with counter, torch.no_grad():
            agent(rollout_obs[0], PolicyState(), action=torch.zeros(rollout_obs.shape[1], 2, dtype=torch.int32))
        counts.append(counter.totals()["ops"])
    assert counts[0] == counts[1]


@pytest.mark.parametrize("bias", [True, False])
def test_a_convolution_covering_its_input_runs_as_a_matrix_product_with_the_same_results(bias):
    """cnn2 of the fast graphs (3x3 kernel over a 3x3 input) runs as one matrix product over the flattened input:
    the convolution's outputs and gradients, through the same parameters. Any other shape stays a convolution."""
    from metta.agent.lib.nn_layer_library import Conv2d

    torch.manual_seed(0)
    context = AgentContext(obs_width=11, obs_height=11, feature_normalizations={}, clip_range=0.0)
    layer = Conv2d("cnn2", ["cnn1"], context, nn_params={"out_channels": 8, "kernel_size": 3, "bias": bias})
    layer.setup([(4, 3, 3)])
    assert layer.covers_input and layer.out_shape == (8, 1, 1)
    x = torch.randn(5, 4, 3, 3, requires_grad=True)
    product = layer._forward(x)
    (product * torch.arange(8.0).view(1, 8, 1, 1)).sum().backward()
    product_grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    convolution = torch.relu(layer.weight_net(x))
    (convolution * torch.arange(8.0).view(1, 8, 1, 1)).sum().backward()
    torch.testing.assert_close(product, convolution)
    for a, b in zip(product_grads, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b)
    for nn_params, in_shape in (({"kernel_size": 3}, (4, 5, 5)), ({"kernel_size": 3, "padding": 1}, (4, 3, 3))):
        other = Conv2d("c", ["x"], context, nn_params={"out_channels": 8, **nn_params})
        other.setup([in_shape])
        assert not other.covers_input
