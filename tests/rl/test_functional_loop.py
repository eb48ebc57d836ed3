"""functional_training_loop on the real env and policy: custom step, custom losses in metrics.jsonl, periodic and
final checkpoints, console progress, resuming a run directory, and clear errors."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch
from component_helpers import fresh_policy, policy_store, tiny_config, tiny_curriculum, value_regularizer

from metta.agent.policy_store import read_policy_file
from metta.interface.environment import default_env_config
from metta.rl.checkpoint import load_latest_checkpoint, read_trainer_state
from metta.rl.functional_trainer import TrainingState, default_training_step, functional_training_loop
from metta.rl.trainer_config import PPOConfig


def test_loop_with_custom_step_losses_and_checkpoints(tmp_path, capsys):
    calls: list[int] = []

    def my_step(state, components, config, experience):
        calls.append(state.epoch)
        metrics = default_training_step(state, components, config, experience)
        metrics["custom/calls"] = float(len(calls))
        return metrics

    torch.manual_seed(0)
    cfg = tiny_config(total_timesteps=192)  # three rollouts of 64 agent steps
    state = functional_training_loop(
        cfg,
        PPOConfig(ent_coef=0.02),
        fresh_policy(),
        tiny_curriculum(),
        policy_store(str(tmp_path / "store")),
        step_fn=my_step,
        custom_losses=[value_regularizer],
        num_envs=2,
        run_dir=tmp_path / "run",
        checkpoint_interval=2,
    )
    assert isinstance(state, TrainingState)
    assert calls == [0, 1, 2] and state.epoch == 3 and state.agent_steps == state.agent_step == 192
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["custom/calls"] == 3.0
    assert all(r["losses/custom/value_regularizer"] > 0 for r in rows)
    files = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert files == ["model_0002.pt", "model_0003.pt", "trainer_state_0002.ckpt", "trainer_state_0003.ckpt"]
    ckpt = load_latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    assert (ckpt.epoch, ckpt.agent_step) == (3, 192) and ckpt.trainer_config["ppo"]["ent_coef"] == 0.02
    assert state.policy_record.file_path.endswith("model_0003.pt")
    out = capsys.readouterr().out
    assert "192 agent steps on cpu x1, 2 envs (4 agents, serial)" in out and "epoch     3" in out
    assert "done: epoch 3, agent_step 192" in out


def test_loop_errors_are_clear(tmp_path):
    store = policy_store(str(tmp_path / "store"))
    with pytest.raises(TypeError, match="config is a dict; pass a TrainerConfig"):
        functional_training_loop({"batch_size": 64}, None, fresh_policy(), tiny_curriculum(), store)
    with pytest.raises(TypeError, match="ppo_config is a dict"):
        functional_training_loop(tiny_config(), {"gamma": 0.9}, fresh_policy(), tiny_curriculum(), store)
    with pytest.raises(ValueError, match="checkpoint_interval=-1"):
        functional_training_loop(tiny_config(), None, fresh_policy(), tiny_curriculum(), store, checkpoint_interval=-1)

    def stuck_step(state, components, config, experience):
        return {}

    with pytest.raises(RuntimeError, match="did not advance state.agent_step"):
        functional_training_loop(
            tiny_config(),
            None,
            fresh_policy(),
            tiny_curriculum(),
            store,
            step_fn=stuck_step,
            num_envs=2,
            run_dir=tmp_path / "run",
            console=False,
        )


def _files(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_a_second_call_on_one_run_dir_continues_from_the_first(tmp_path):
    """Run twice on one directory: the second resumes the first's newest checkpoint (weights, optimizer, counters,
    timer) and writes only later epochs; a third at the same total trains no further and rewrites nothing."""
    run_dir, store = tmp_path / "run", policy_store(str(tmp_path / "store"))
    ckpt_dir = run_dir / "checkpoints"
    torch.manual_seed(0)
    first = functional_training_loop(
        tiny_config(total_timesteps=128),
        None,
        fresh_policy(),
        tiny_curriculum(),
        store,
        num_envs=2,
        run_dir=run_dir,
        checkpoint_interval=1,
        console=False,
    )
    assert (first.agent_step, first.epoch) == (128, 2)
    written = _files(ckpt_dir)
    saved = read_policy_file(str(ckpt_dir / "model_0002.pt"))["state_dict"]
    seen: list[tuple[int, int, bool]] = []

    def watching_step(state, components, config, experience):
        if not seen:  # the weights the second run starts from are the first run's last ones
            current = components.collector.policy.state_dict()
            same = all(torch.equal(current[k], v) for k, v in saved.items() if isinstance(v, torch.Tensor))
            seen.append((state.agent_step, state.epoch, same))
        return default_training_step(state, components, config, experience)

    second = functional_training_loop(
        tiny_config(total_timesteps=192),
        None,
        fresh_policy(),
        tiny_curriculum(),
        store,
        step_fn=watching_step,
        num_envs=2,
        run_dir=run_dir,
        checkpoint_interval=1,
        console=False,
    )
    assert seen == [(128, 2, True)] and (second.agent_step, second.epoch) == (192, 3)
    after = _files(ckpt_dir)
    assert {k: after[k] for k in written} == written  # the first run's checkpoints are untouched
    assert sorted(set(after) - set(written)) == ["model_0003.pt", "trainer_state_0003.ckpt"]
    ckpt = load_latest_checkpoint(str(ckpt_dir))
    first_ckpt = read_trainer_state(str(ckpt_dir / "trainer_state_0002.ckpt"))
    assert ckpt.stopwatch_state["global"]["total_elapsed"] > first_ckpt.stopwatch_state["global"]["total_elapsed"]
    assert ckpt.optimizer_state_dict["state"]  # Adam's moments, carried on from the first run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]

    third = functional_training_loop(
        tiny_config(total_timesteps=192),
        None,
        fresh_policy(),
        tiny_curriculum(),
        store,
        num_envs=2,
        run_dir=run_dir,
        checkpoint_interval=1,
        console=False,
    )
    assert (third.agent_step, third.epoch) == (192, 3) and _files(ckpt_dir) == after


def test_a_run_directory_in_use_is_refused_and_a_killed_runs_extra_rows_are_dropped(tmp_path):
    """The loop holds the run directory's lock (a second writer is refused before it touches anything) and, on
    resume, drops metrics rows logged after the checkpoint it continues from."""
    from metta.common.run_lock import RunLockError, acquire_run_lock

    run_dir, store = tmp_path / "run", policy_store(str(tmp_path / "store"))
    args = (tiny_config(total_timesteps=64), None, fresh_policy(), tiny_curriculum(), store)
    functional_training_loop(*args, num_envs=2, run_dir=run_dir, console=False)
    with (run_dir / "metrics.jsonl").open("a") as f:  # as if a killed run had logged epoch 2 but not saved it
        f.write(json.dumps({"epoch": 2, "agent_step": 128}) + "\n")
    held = acquire_run_lock(run_dir)
    try:
        with pytest.raises(RunLockError):
            functional_training_loop(*args, num_envs=2, run_dir=run_dir, console=False)
    finally:
        held.release()
    state = functional_training_loop(
        tiny_config(total_timesteps=128),
        None,
        fresh_policy(),
        tiny_curriculum(),
        store,
        num_envs=2,
        run_dir=run_dir,
        console=False,
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert state.epoch == 2 and [(r["epoch"], r["agent_step"]) for r in rows] == [(1, 64), (2, 128)]
    assert "overview/sps" in rows[1]  # the re-trained epoch 2, not the killed run's row


def test_the_configs_settings_are_the_ones_that_run(tmp_path, capsys):
    """The loop reads the TrainerConfig as run.py does: envs from forward_pass_minibatch_target_size and
    async_factor (no num_envs given), env_overrides on every task, verbose for the console, profiler traces at
    their interval, a SIGTERM that stops after the step in progress with a checkpoint, and rows of a run killed
    before its first checkpoint dropped."""
    run_dir, store = tmp_path / "run", policy_store(str(tmp_path / "store"))
    run_dir.mkdir()
    with (run_dir / "metrics.jsonl").open("w") as f:  # a run killed before its first checkpoint logged these
        f.writelines(json.dumps({"epoch": e, "agent_step": 64 * e}) + "\n" for e in (1, 2))
    cfg = tiny_config(
        total_timesteps=5 * 64,
        forward_pass_minibatch_target_size=4,
        env_overrides={"game.max_steps": 5},
        profiler={"interval_epochs": 2},
        checkpoint={"checkpoint_interval": 0, "wandb_checkpoint_interval": 0},
    )

    def stopped_in_epoch_3(state, components, config, experience):
        if state.epoch == 2:  # the signal lands mid-step, as a scheduler's would
            os.kill(os.getpid(), signal.SIGTERM)
        return default_training_step(state, components, config, experience)

    env_config = default_env_config(num_agents=2, width=8, height=8)  # not a built curriculum: env_overrides apply
    state = functional_training_loop(
        cfg, None, fresh_policy(), env_config, store, step_fn=stopped_in_epoch_3, run_dir=run_dir
    )
    out = capsys.readouterr().out
    assert "2 envs (4 agents, serial)" in out  # 4 agents per forward pass of 2-agent envs, one batch
    assert "stopped by SIGTERM: epoch 3" in out and state.epoch == 3 and state.agent_step == 192
    assert state.stopped_by == "SIGTERM"
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["model_0003.pt", "trainer_state_0003.ckpt"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("overview/sps" in r for r in rows)
    assert all(r["overview/episodes"] > 0 for r in rows)  # game.max_steps=5: episodes end within each rollout
    assert sorted(os.listdir(run_dir / "torch_traces")) == ["trace_epoch_000002.json"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop put the handler back


def test_a_fresh_run_starts_from_the_initial_policy_and_verbose_false_is_quiet(tmp_path, capsys):
    store = policy_store(str(tmp_path / "store"))
    functional_training_loop(
        tiny_config(), None, fresh_policy(), tiny_curriculum(), store, run_dir=tmp_path / "a", console=False
    )
    source = read_policy_file(str(tmp_path / "a" / "checkpoints" / "model_0001.pt"))["state_dict"]
    starts: list[bool] = []

    def checking_step(state, components, config, experience):
        if not starts:
            current = components.collector.policy.state_dict()
            starts.append(all(torch.equal(current[k], v) for k, v in source.items() if isinstance(v, torch.Tensor)))
        return default_training_step(state, components, config, experience)

    cfg = tiny_config(verbose=False, initial_policy={"uri": str(tmp_path / "a" / "checkpoints"), "type": "latest"})
    functional_training_loop(
        cfg, None, fresh_policy(), tiny_curriculum(), store, step_fn=checking_step, run_dir=tmp_path / "b"
    )
    assert starts == [True] and capsys.readouterr().out == ""
    with pytest.raises(FileNotFoundError, match="initial_policy.uri='/nonexistent' does not exist"):
        functional_training_loop(
            tiny_config(initial_policy={"uri": "/nonexistent"}),
            None,
            fresh_policy(),
            tiny_curriculum(),
            store,
            run_dir=tmp_path / "c",
        )
    assert not (tmp_path / "c").exists()  # refused before anything was created


def test_the_l2_init_anchor_moves_when_the_epoch_crosses_its_interval(tmp_path):
    """The agent's l2_init_weight_update_interval is one more periodic task of the loop (crossing rule)."""
    policy = fresh_policy()
    policy.config = policy.config.model_copy(update={"l2_init_weight_update_interval": 2})
    anchors: list[list[torch.Tensor]] = []

    def watching_step(state, components, config, experience):
        anchors.append([layer.initial_weight.clone() for layer in policy._param_layers()])
        return default_training_step(state, components, config, experience)

    functional_training_loop(
        tiny_config(total_timesteps=3 * 64, update_epochs=1),
        None,
        policy,
        tiny_curriculum(),
        policy_store(str(tmp_path / "store")),
        step_fn=watching_step,
        run_dir=tmp_path / "run",
        console=False,
    )
    same = [all(torch.equal(a, b) for a, b in zip(anchors[i], anchors[i + 1])) for i in range(2)]
    assert same == [True, False]  # untouched after epoch 1; moved toward the weights when epoch 2 crossed 2


def test_kickstart_teachers_a_torch_optimizer_and_changed_settings(tmp_path, caplog):
    """config.kickstart builds the loop's kickstarter (as run.py does); a plain torch optimizer is wrapped once,
    so grad_mean_variance_interval still reports; resuming with other trainer settings says which."""
    store = policy_store(str(tmp_path / "store"))
    functional_training_loop(
        tiny_config(), None, fresh_policy(), tiny_curriculum(), store, run_dir=tmp_path / "teacher", console=False
    )
    teacher = str(tmp_path / "teacher" / "checkpoints" / "model_0001.pt")
    policy = fresh_policy()
    cfg = tiny_config(
        kickstart={"teacher_uri": teacher, "action_loss_coef": 1.0, "kickstart_steps": 10_000},
        grad_mean_variance_interval=1,
    )
    state = functional_training_loop(
        cfg,
        None,
        policy,
        tiny_curriculum(),
        store,
        optimizer=torch.optim.Adam(policy.parameters(), lr=1e-3),
        run_dir=tmp_path / "student",
        console=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert state.metrics["losses/ks_action_loss"] > 0 and rows[-1]["losses/ks_action_loss"] > 0
    assert {"grad/mean", "grad/variance", "grad/norm"} <= set(state.metrics) & set(rows[-1])

    with caplog.at_level(logging.WARNING, logger="metta.rl.functional_trainer"):
        functional_training_loop(
            tiny_config(total_timesteps=128, ppo={"gamma": 0.5}),
            None,
            fresh_policy(),
            tiny_curriculum(),
            store,
            run_dir=tmp_path / "teacher",
            console=False,
        )
    assert "other trainer settings (ppo.gamma: 0.977 -> 0.5)" in caplog.text


def test_trainer_config_defaults_run_in_the_loop(tmp_path, capsys):
    """TrainerConfig's own async_factor (2) with one worker: serial, its two batches stepped in turn."""
    cfg = tiny_config(async_factor=2, forward_pass_minibatch_target_size=4)
    state = functional_training_loop(
        cfg, None, fresh_policy(), tiny_curriculum(), policy_store(str(tmp_path / "s")), run_dir=tmp_path / "run"
    )
    assert "4 envs (8 agents, serial)" in capsys.readouterr().out and state.agent_step == 64


def test_a_training_config_gives_the_run_level_defaults(tmp_path, capsys, monkeypatch):
    """Seed 001 passes a TrainingConfig: its seed, num_envs, run directory and keep_checkpoints are used, and
    wandb.enabled=True starts wandb (here: without an API key, an error that says how to get one)."""
    from metta.train.train_config import TrainingConfig

    config = TrainingConfig(
        experiment_name="structured",
        data_dir=str(tmp_path),
        num_envs=2,
        seed=3,
        keep_checkpoints=1,
        evaluate=False,  # the terrain suite takes a minute; tests/test_faces_train_alike.py evaluates a tiny one
        trainer=tiny_config(
            total_timesteps=3 * 64, checkpoint={"checkpoint_interval": 1, "wandb_checkpoint_interval": 0}
        ),
    )
    state = functional_training_loop(config, None, fresh_policy(), tiny_curriculum(), policy_store(str(tmp_path / "s")))
    run_dir = tmp_path / "structured"
    assert state.epoch == 3 and state.stopped_by is None and "2 envs (4 agents, serial)" in capsys.readouterr().out
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["model_0003.pt", "trainer_state_0003.ckpt"]  # keep 1
    config.wandb.enabled = True
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    with pytest.raises(RuntimeError, match="wandb is enabled but no API key was found"):
        functional_training_loop(config, None, fresh_policy(), tiny_curriculum(), policy_store(str(tmp_path / "s")))


def test_wandb_checkpoint_interval_uploads_the_policy_as_an_artifact(tmp_path, monkeypatch):
    """wandb offline: the policy saved at each wandb_checkpoint_interval is recorded as an artifact of the run
    (its manifest holds the policy file's md5)."""
    import base64
    import hashlib

    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="functional_loop_test", dir=str(tmp_path))
    try:
        cfg = tiny_config(total_timesteps=2 * 64, checkpoint={"checkpoint_interval": 0, "wandb_checkpoint_interval": 2})
        state = functional_training_loop(
            cfg,
            None,
            fresh_policy(),
            tiny_curriculum(),
            policy_store(str(tmp_path / "s")),
            run_dir=tmp_path / "run",
            wandb_run=run,
            console=False,
        )
    finally:
        run.finish()
        wandb.teardown()  # stops wandb's writer process, so the run's file is complete before it is read
    data = b"".join(p.read_bytes() for p in tmp_path.glob("wandb/**/*.wandb"))
    policy_file = tmp_path / "run" / "checkpoints" / "model_0002.pt"
    assert state.epoch == 2 and base64.b64encode(hashlib.md5(policy_file.read_bytes()).digest()) in data
