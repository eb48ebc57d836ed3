"""metta.rl.components and custom losses on the real env and policy: the components, the functional loop and a
direct process_minibatch_update call give the same losses; custom losses are summed, logged and checked;
TrainingCheckpointer round trip; PolicyEvaluator on a tiny suite."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from component_helpers import (
    ROLLOUT_SEED,
    fresh_policy,
    optimizer_for,
    policy_store,
    tiny_config,
    tiny_curriculum,
    tiny_vecenv,
    value_regularizer,
)

from metta.agent.policy_state import PolicyState
from metta.common.profiling.stopwatch import Stopwatch
from metta.rl.advantage import compute_advantage
from metta.rl.components import PolicyEvaluator, PPOOptimizer, RolloutCollector, StatsLogger, TrainingCheckpointer
from metta.rl.experience import calculate_anneal_beta, make_experience
from metta.rl.functional_trainer import functional_training_loop, rollout, train_ppo
from metta.rl.losses import Losses, compute_explained_variance, process_minibatch_update
from metta.rl.rollout import perform_rollout_step
from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig


def _advantages(experience, cfg):
    return compute_advantage(
        experience.values,
        experience.rewards,
        experience.dones,
        torch.ones_like(experience.values),
        torch.zeros_like(experience.values),
        cfg.ppo.gamma,
        cfg.ppo.gae_lambda,
        cfg.vtrace.vtrace_rho_clip,
        cfg.vtrace.vtrace_c_clip,
        "cpu",
        next_rows=experience.next_rows,
        truncations=experience.truncateds,
    )


def _direct_losses(cfg) -> dict[str, float]:
    """One rollout and one PPO update written out with the raw functions, as docs/API.md shows them."""
    policy, env = fresh_policy(), tiny_vecenv()
    experience = make_experience(env, policy, cfg, "cpu")
    optimizer = optimizer_for(policy, cfg)
    torch.manual_seed(ROLLOUT_SEED)
    while not experience.ready_for_training:
        perform_rollout_step(policy, env, experience, "cpu")
    env.close()
    losses = Losses()
    advantages = _advantages(experience, cfg)
    prio = cfg.prioritized_experience_replay
    beta = calculate_anneal_beta(0, cfg.total_timesteps, cfg.batch_size, prio.prio_alpha, prio.prio_beta0)
    for minibatch in experience.iter_minibatches(advantages, prio.prio_alpha, beta):
        loss = process_minibatch_update(
            policy, experience, minibatch, advantages, cfg, None, 0, losses, "cpu", [value_regularizer]
        )
        optimizer.step(loss, 0, experience.accumulate_minibatches)
    losses.explained_variance = compute_explained_variance(experience.values, advantages)
    return losses.stats()


def _component_losses(cfg) -> dict[str, float]:
    policy, env = fresh_policy(), tiny_vecenv()
    experience = make_experience(env, policy, cfg, "cpu")
    collector = RolloutCollector(env, policy, experience, "cpu")
    ppo = PPOOptimizer(policy, optimizer_for(policy, cfg), "cpu", cfg)
    torch.manual_seed(ROLLOUT_SEED)
    stats, steps = collector.collect()
    env.close()
    assert steps == cfg.batch_size and collector.total_steps == steps
    result = ppo.update(experience, custom_loss_fns=[value_regularizer])
    assert ppo.epoch == cfg.update_epochs
    return result


def _loop_losses(cfg, tmp_path) -> dict[str, float]:
    policy = fresh_policy()
    torch.manual_seed(ROLLOUT_SEED)
    state = functional_training_loop(
        cfg,
        None,
        policy,
        tiny_curriculum(),
        policy_store(str(tmp_path / "ckpt")),
        custom_losses=[value_regularizer],
        num_envs=2,
        seed=5,
        run_dir=tmp_path / "run",
        console=False,
    )
    assert state.agent_step == cfg.batch_size and state.epoch == 1
    return {k.removeprefix("losses/"): v for k, v in state.metrics.items() if k.startswith("losses/")}


def state_metrics(tmp_path) -> dict:
    import json

    return json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])


def test_components_functional_loop_and_direct_calls_give_the_same_losses(tmp_path):
    cfg = tiny_config()
    direct = _direct_losses(cfg)
    components = _component_losses(cfg)
    loop = _loop_losses(cfg, tmp_path)
    assert "custom/value_regularizer" in direct and direct["custom/value_regularizer"] > 0
    assert state_metrics(tmp_path)["parameters/minibatches"] == 4  # the epoch's row counts the update's passes
    assert set(direct) == set(components) == set(loop)
    for key in direct:
        if math.isnan(direct[key]):
            assert math.isnan(components[key]) and math.isnan(loop[key]), key
            continue
        assert components[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), key
        assert loop[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), key


@pytest.fixture(scope="module")
def filled():
    """A filled buffer (no update yet), its advantages and config; tests must not change it."""
    cfg = tiny_config()
    policy, env = fresh_policy(), tiny_vecenv()
    experience = make_experience(env, policy, cfg, "cpu")
    torch.manual_seed(ROLLOUT_SEED)
    rollout(policy, env, experience, "cpu", 0)
    env.close()
    return policy, experience, _advantages(experience, cfg), cfg


def _first_minibatch(experience, advantages):
    torch.manual_seed(7)
    return next(experience.iter_minibatches(advantages))


def test_custom_loss_is_added_to_the_loss_and_logged_per_name(filled):
    policy, experience, advantages, cfg = filled
    minibatch = _first_minibatch(experience, advantages)
    seen: list[torch.Tensor] = []

    def bonus(policy, obs, actions, rewards, values, advantages):
        assert obs.shape[:2] == actions.shape[:2] == rewards.shape == values.shape == advantages.shape
        assert values.requires_grad  # the current forward's values, so the loss can train the critic
        seen.append(values.pow(2).mean())
        return seen[-1]

    def twin():  # a second function with the same name
        def bonus(policy, obs, actions, rewards, values, advantages):
            return torch.tensor(0.25)

        return bonus

    plain, custom = Losses(), Losses()
    base = process_minibatch_update(policy, experience, dict(minibatch), advantages, cfg, None, 0, plain, "cpu")
    total = process_minibatch_update(
        policy, experience, dict(minibatch), advantages, cfg, None, 0, custom, "cpu", [bonus, twin()]
    )
    assert total.item() == pytest.approx(base.item() + seen[0].item() + 0.25, rel=1e-5)
    stats = custom.stats()
    assert stats["custom/bonus"] == pytest.approx(seen[0].item()) and stats["custom/bonus_2"] == pytest.approx(0.25)
    assert stats["policy_loss"] == pytest.approx(plain.stats()["policy_loss"])
    assert not any(k.startswith("custom/") for k in plain.stats())  # the standard keys are unchanged
    custom.zero()
    assert custom.custom_loss_sums == {} and "custom/bonus" not in custom.stats()


def _returns_vector(policy, obs, actions, rewards, values, advantages):
    return values


def _returns_nan(policy, obs, actions, rewards, values, advantages):
    return values.mean() * float("nan")


def _returns_float(policy, obs, actions, rewards, values, advantages):
    return 0.5


@pytest.mark.parametrize(
    "fn, message",
    [
        (_returns_vector, r"'_returns_vector' returned a tensor of shape \[4, 4\]"),
        (_returns_nan, r"'_returns_nan' returned nan"),
        (_returns_float, r"'_returns_float' returned a float \(0.5\)"),
    ],
)
def test_bad_custom_loss_raises_naming_the_function(filled, fn, message):
    policy, experience, advantages, cfg = filled
    minibatch = _first_minibatch(experience, advantages)
    with pytest.raises(ValueError, match=message):
        process_minibatch_update(policy, experience, minibatch, advantages, cfg, None, 0, Losses(), "cpu", [fn])
    with pytest.raises(TypeError, match="not a function"):
        process_minibatch_update(policy, experience, minibatch, advantages, cfg, None, 0, Losses(), "cpu", [3])


def test_compute_ppo_loss_is_the_update_loss_on_the_first_minibatch(filled):
    """compute_ppo_loss runs the update's loss function: the same six values with V-trace, prioritized weights
    and the L2 terms in total_loss, unpacked as seed 001 writes it and read by name."""
    policy, experience, advantages, cfg = filled
    cfg = cfg.model_copy(
        update={"ppo": cfg.ppo.model_copy(update={"l2_init_loss_coef": 0.5, "l2_reg_loss_coef": 0.01})}
    )
    policy = copy.deepcopy(policy)
    with torch.no_grad():  # moved away from its initial weights, so that the L2-init term is not 0
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    minibatch = _first_minibatch(experience, advantages)
    minibatch["prio_weights"] = torch.linspace(0.5, 1.5, minibatch["indices"].numel()).unsqueeze(1)
    ppo = PPOOptimizer(policy, optimizer_for(policy, cfg), "cpu", cfg)
    state = PolicyState(lstm_h=minibatch["lstm_h"], lstm_c=minibatch["lstm_c"])
    result = ppo.compute_ppo_loss(
        minibatch["obs"],
        minibatch["actions"],
        minibatch["logprobs"],
        minibatch["advantages"],
        minibatch["returns"],
        minibatch["values"],
        rewards=minibatch["rewards"],
        dones=minibatch["dones"],
        truncations=minibatch["truncateds"],
        tail=experience.row_tail(minibatch["indices"], advantages),
        prio_weights=minibatch["prio_weights"],
        state=state,
    )
    policy_loss, value_loss, entropy_loss, total_loss, approx_kl, clipfrac = result
    assert result.policy_loss is policy_loss and result._fields[3] == "total_loss"
    losses = Losses()
    total = process_minibatch_update(policy, experience, dict(minibatch), advantages, cfg, None, 0, losses, "cpu")
    stats = losses.stats()
    assert stats["l2_init_loss"] > 0 and stats["l2_reg_loss"] > 0
    for name, value in (
        ("policy_loss", policy_loss),
        ("value_loss", value_loss),
        ("entropy", entropy_loss),
        ("approx_kl", approx_kl),
        ("clipfrac", clipfrac),
    ):
        assert value.item() == pytest.approx(stats[name], abs=1e-6), name
    assert total_loss.item() == pytest.approx(total.item(), abs=1e-6) and total_loss.requires_grad
    bare = policy_loss - cfg.ppo.ent_coef * entropy_loss + cfg.ppo.vf_coef * value_loss
    assert total_loss.item() == pytest.approx(bare.item() + stats["l2_init_loss"] + stats["l2_reg_loss"], abs=1e-5)
    # Without rewards and dones the advantages are used as given; only both together are accepted.
    assert torch.isfinite(
        ppo.compute_ppo_loss(
            minibatch["obs"],
            minibatch["actions"],
            minibatch["logprobs"],
            minibatch["advantages"],
            minibatch["returns"],
            minibatch["values"],
        ).total_loss
    )
    with pytest.raises(ValueError, match="rewards and dones"):
        ppo.compute_ppo_loss(
            minibatch["obs"],
            minibatch["actions"],
            minibatch["logprobs"],
            minibatch["advantages"],
            minibatch["returns"],
            minibatch["values"],
            rewards=minibatch["rewards"],
        )
    with pytest.raises(ValueError, match="truncations mark which dones are truncations"):
        ppo.compute_ppo_loss(
            minibatch["obs"],
            minibatch["actions"],
            minibatch["logprobs"],
            minibatch["advantages"],
            minibatch["returns"],
            minibatch["values"],
            truncations=minibatch["truncateds"],
        )


def test_components_reject_wrong_arguments(filled):
    policy, experience, _, cfg = filled
    with pytest.raises(TypeError, match="vecenv"):
        RolloutCollector(object(), policy, experience, "cpu")
    with pytest.raises(TypeError, match="experience"):
        RolloutCollector(tiny_vecenv_stub(), policy, {}, "cpu")
    with pytest.raises(TypeError, match="metta's Optimizer"):
        PPOOptimizer(policy, object(), "cpu", cfg)
    with pytest.raises(TypeError, match="TrainerConfig"):
        PPOOptimizer(policy, optimizer_for(policy, cfg), "cpu", {"gamma": 0.9})
    with pytest.raises(TypeError, match="SimulationSuiteConfig"):
        PolicyEvaluator("navigation")
    with pytest.raises(TypeError, match="PolicyStore"):
        TrainingCheckpointer("ckpt", object())


class tiny_vecenv_stub:  # noqa: N801 - only has the methods RolloutCollector checks for
    def recv(self): ...

    def send(self, actions): ...


def test_update_needs_a_full_buffer():
    cfg = tiny_config()
    policy, env = fresh_policy(), tiny_vecenv()
    experience = make_experience(env, policy, cfg, "cpu")
    env.close()
    with pytest.raises(ValueError, match="not full"):
        PPOOptimizer(policy, optimizer_for(policy, cfg), "cpu", cfg).update(experience)


def test_training_checkpointer_round_trip(tmp_path):
    cfg = tiny_config()
    policy, env = fresh_policy(), tiny_vecenv()
    optimizer = optimizer_for(policy, cfg)
    run_dir = tmp_path / "run"
    store = policy_store(str(run_dir / "checkpoints"))
    timer = Stopwatch()
    timer.start()
    checkpointer = TrainingCheckpointer(run_dir / "checkpoints", store, trainer_config=cfg, vecenv=env, stopwatch=timer)
    assert checkpointer.load_trainer_state(run_dir) is None
    fresh = checkpointer.load_policy(None, env)
    assert fresh.policy is not policy and fresh.metadata["epoch"] == 0

    with torch.no_grad():
        next(policy.parameters()).add_(1.0)  # weights that differ from a fresh policy's
    with pytest.raises(ValueError, match=r"save_policy\(policy, 3"):
        checkpointer.save_trainer_state(100, 3, optimizer.state_dict(), run_dir)
    record = checkpointer.save_policy(policy, 3, {"agent_step": 100, "note": "x"})
    assert os.path.isfile(record.file_path) and record.metadata["epoch"] == 3
    path = checkpointer.save_trainer_state(100, 3, optimizer.state_dict(), run_dir, extra_args={"lr": 0.1})
    assert os.path.basename(path) == "trainer_state_0003.ckpt"
    assert not [f for f in os.listdir(run_dir / "checkpoints") if ".tmp" in f]  # atomic writes leave no temp files

    ckpt = checkpointer.load_trainer_state(run_dir)
    assert (ckpt.agent_step, ckpt.epoch, ckpt.extra_args["lr"]) == (100, 3, 0.1)
    # Complete, as save_checkpoint's: config, curriculum, stopwatch and RNG besides the counters and optimizer.
    assert ckpt.trainer_config["batch_size"] == cfg.batch_size and ckpt.curriculum_state is not None
    assert "global" in str(ckpt.stopwatch_state) and ckpt.rng_state["torch"] is not None
    assert ckpt.optimizer_state_dict["param_groups"][0]["lr"] == optimizer.state_dict()["param_groups"][0]["lr"]
    loaded = checkpointer.load_policy(ckpt, env)
    assert loaded.metadata["agent_step"] == 100 and loaded.metadata["note"] == "x"
    for (name, a), b in zip(policy.state_dict().items(), loaded.policy.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    env.close()

    with pytest.raises(ValueError, match="does not hold this checkpointer's checkpoint_dir"):
        checkpointer.load_trainer_state(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="epoch=-1"):
        checkpointer.save_policy(policy, -1)


def test_policy_evaluator_scores_a_tiny_suite(tmp_path):
    suite = SimulationSuiteConfig(
        name="tiny",
        num_episodes=1,
        simulations={
            "nav/small": SingleEnvSimulationConfig(
                env="/env/mettagrid/navigation/evals/terrain_small",
                num_episodes=1,
                max_time_s=60,
                env_overrides={"game.max_steps": 10},
            )
        },
    )
    evaluator = PolicyEvaluator(suite, None, "cpu", stats_dir=tmp_path / "stats")
    scores = evaluator.evaluate(fresh_policy())  # evaluate_policy_suite's scores: each sim and its category's mean
    assert set(scores) == {"nav/small", "nav/score"} and scores["nav/score"] == scores["nav/small"]
    assert math.isfinite(scores["nav/small"])
    assert evaluator.last_results["nav/small"].num_episodes == 1


def test_stats_logger_is_the_common_one(tmp_path):
    from metta.common.stats_logger import StatsLogger as CommonStatsLogger

    assert StatsLogger is CommonStatsLogger


def test_train_ppo_takes_a_plain_torch_optimizer_as_seed_000_does():
    """Seed 000 passes torch.optim.Adam(...) to train_ppo: it is wrapped (clipping included) and gives the
    same weights as metta's Optimizer('adam') with the same settings."""
    cfg = tiny_config()
    weights = []
    for make_optimizer in (
        lambda p: optimizer_for(p, cfg),
        lambda p: torch.optim.Adam(
            p.parameters(),
            lr=cfg.optimizer.learning_rate,
            betas=(cfg.optimizer.beta1, cfg.optimizer.beta2),
            eps=cfg.optimizer.eps,
            fused=True,  # as metta's Adam is: the same arithmetic, bit for bit
        ),
    ):
        policy, env = fresh_policy(), tiny_vecenv()
        experience = make_experience(env, policy, cfg, "cpu")
        torch.manual_seed(ROLLOUT_SEED)
        rollout(policy, env, experience, "cpu", 0, None)
        env.close()
        epoch = train_ppo(policy, make_optimizer(policy), experience, "cpu", Losses(), 0, cfg)
        assert epoch == cfg.update_epochs
        weights.append([p.detach().clone() for p in policy.parameters()])
    assert any(not torch.equal(a, b) for a, b in zip(weights[0], fresh_policy().parameters()))
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
