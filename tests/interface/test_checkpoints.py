"""Checkpoints: complete round trip, pruning, corrupt-file fallback, and crash safety under SIGKILL."""

from __future__ import annotations

import errno
import glob
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from metta.agent.policy_store import PolicyStore
from metta.common.fs import WriteError
from metta.common.profiling.stopwatch import Stopwatch
from metta.interface import Agent, Environment, Optimizer, TrainerConfig, load_checkpoint, save_checkpoint
from metta.rl import checkpoint as ck

SMALL = {
    "game": {
        "num_agents": 2,
        "max_steps": 50,
        "map_builder": {"type": "random", "width": 10, "height": 10, "agents": 2, "objects": {"altar": 2}},
    }
}


@pytest.fixture(scope="module")
def env():
    vec = Environment(env_config=SMALL, num_envs=2, device="cpu", seed=0)
    yield vec
    vec.close()


def make_store(checkpoint_dir: str) -> PolicyStore:
    return PolicyStore(
        {"device": "cpu", "policy_cache_size": 4, "trainer": {"checkpoint": {"checkpoint_dir": checkpoint_dir}}}
    )


def trained(env, seed: int = 0):
    """An agent and optimizer with non-trivial state (one Adam step taken)."""
    torch.manual_seed(seed)
    agent = Agent(env, config="fast", device="cpu")
    optimizer = Optimizer("adam", agent, learning_rate=1e-3)
    loss = sum((p.float() ** 2).sum() for p in agent.parameters())
    optimizer.step(loss, 0)
    return agent, optimizer


def save(env, agent, optimizer, store, directory, epoch, **kwargs):
    return save_checkpoint(
        epoch, epoch * 100, agent, optimizer, store, directory, checkpoint_interval=1, vecenv=env, **kwargs
    )


def test_round_trip_restores_everything(env, tmp_path):
    directory = str(tmp_path / "checkpoints")
    agent, optimizer = trained(env)
    store = make_store(directory)
    timer = Stopwatch()
    timer.start()
    with timer("_train"):
        time.sleep(0.01)
    cfg = TrainerConfig(batch_size=1024, minibatch_size=256, bptt_horizon=16)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    curriculum_state = env.get_curriculum_state()
    record = save(
        env, agent, optimizer, store, directory, 7, stats={"reward": 1.5}, trainer_config=cfg, stopwatch=timer
    )
    assert record is not None and record.metadata["epoch"] == 7 and record.metadata["stats"] == {"reward": 1.5}
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    # A different agent, optimizer, RNG and curriculum state, then resume.
    agent2, optimizer2 = trained(env, seed=1)
    assert not torch.equal(next(agent2.parameters()), next(agent.parameters()))
    env.set_curriculum_state({"rng": random.Random(99).getstate()})
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    timer2 = Stopwatch()
    agent_step, epoch, policy_path = load_checkpoint(directory, agent2, optimizer2, store, vecenv=env, stopwatch=timer2)

    assert (agent_step, epoch) == (700, 7)
    assert policy_path == os.path.join(os.path.abspath(directory), "model_0007.pt")
    for (n1, t1), (n2, t2) in zip(agent.state_dict().items(), agent2.state_dict().items()):
        assert n1 == n2 and (not isinstance(t1, torch.Tensor) or torch.equal(t1, t2)), n1
    s1, s2 = optimizer.state_dict(), optimizer2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name, value in s1["state"][k].items():
            assert torch.equal(value, s2["state"][k][name]), (k, name)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws
    assert env.get_curriculum_state() == curriculum_state
    assert timer2.get_elapsed("_train") >= 0.01
    ckpt = ck.load_latest_checkpoint(directory)
    assert ckpt.trainer_config == cfg.model_dump(mode="json", by_alias=True)
    assert TrainerConfig.from_dict(ckpt.trainer_config) == cfg


def test_interval_force_and_same_epoch(env, tmp_path):
    directory = str(tmp_path)
    agent, optimizer = trained(env)
    store = make_store(directory)
    assert save_checkpoint(1, 10, agent, optimizer, store, directory, checkpoint_interval=2) is None
    assert save_checkpoint(4, 40, agent, optimizer, store, directory, checkpoint_interval=2) is not None
    assert save_checkpoint(5, 50, agent, optimizer, store, directory, checkpoint_interval=0) is None
    assert (
        save_checkpoint(5, 50, agent, optimizer, store, directory, checkpoint_interval=0, force_save=True) is not None
    )
    # The final forced save right after an interval save of the same epoch reuses it.
    mtime = os.path.getmtime(os.path.join(directory, "trainer_state_0005.ckpt"))
    record = save_checkpoint(5, 50, agent, optimizer, store, directory, checkpoint_interval=5, force_save=True)
    assert record.metadata["epoch"] == 5
    assert os.path.getmtime(os.path.join(directory, "trainer_state_0005.ckpt")) == mtime
    assert load_checkpoint(directory, agent, optimizer)[:2] == (50, 5)


def test_interval_saves_follow_the_crossing_rule_with_two_epochs_per_update(env, tmp_path):
    """Seed 002's loop calls save_checkpoint after every update; with update_epochs=2 the epoch goes 2, 4, 6, ...
    and an odd interval still saves once per multiple crossed (``epoch % 3 == 0`` would save at 6 and 12 only)."""
    directory = str(tmp_path)
    agent, optimizer = trained(env)
    store = make_store(directory)
    saved = [
        epoch
        for epoch in range(2, 14, 2)
        if save_checkpoint(
            epoch, epoch * 10, agent, optimizer, store, directory, checkpoint_interval=3, keep_last_n=None
        )
    ]
    assert saved == [4, 6, 10, 12]
    assert sorted(os.listdir(directory)) == [
        f"{kind}_{e:04d}.{ext}" for kind, ext in (("model", "pt"), ("trainer_state", "ckpt")) for e in saved
    ]


def test_load_from_empty_dir_starts_fresh(env, tmp_path):
    agent, optimizer = trained(env)
    assert load_checkpoint(str(tmp_path / "nothing_here"), agent, optimizer) == (0, 0, None)


def test_pruning_keeps_the_newest(env, tmp_path):
    directory = str(tmp_path)
    agent, optimizer = trained(env)
    store = make_store(directory)
    for epoch in range(1, 7):
        save(env, agent, optimizer, store, directory, epoch, keep_last_n=3)
    assert sorted(os.listdir(directory)) == [
        "model_0004.pt",
        "model_0005.pt",
        "model_0006.pt",
        "trainer_state_0004.ckpt",
        "trainer_state_0005.ckpt",
        "trainer_state_0006.ckpt",
    ]
    # keep_last_n=None keeps everything.
    for epoch in range(7, 10):
        save(env, agent, optimizer, store, directory, epoch, keep_last_n=None)
    assert len(ck.list_trainer_states(directory)) == 6
    # A policy directory URI still works: trainer states are not *.pt files.
    assert store.policy_record(directory, selector_type="latest").metadata["epoch"] == 9


def test_cleanup_old_policies_prunes(env, tmp_path):
    from metta.rl.policy_management import cleanup_old_policies

    directory = str(tmp_path)
    agent, optimizer = trained(env)
    store = make_store(directory)
    for epoch in range(1, 5):
        save(env, agent, optimizer, store, directory, epoch, keep_last_n=None)
    removed = cleanup_old_policies(directory, keep_last_n=1)
    assert len(removed) == 6 and [e for e, _ in ck.list_trainer_states(directory)] == [4]


def three_checkpoints(env, directory: str):
    """Epochs 1, 2 and 3 saved in ``directory``, none pruned; returns the agent, optimizer and store."""
    agent, optimizer = trained(env)
    store = make_store(directory)
    for epoch in (1, 2, 3):
        save(env, agent, optimizer, store, directory, epoch, keep_last_n=None)
    return agent, optimizer, store


def test_corrupt_and_truncated_checkpoints_fall_back(env, tmp_path, caplog):
    directory = str(tmp_path)
    agent, optimizer, store = three_checkpoints(env, directory)
    # Flip one byte in the middle of the newest trainer state: torch.load alone would not notice.
    state3 = os.path.join(directory, "trainer_state_0003.ckpt")
    data = bytearray(open(state3, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(state3, "wb").write(data)
    # Truncate the policy file of the next one.
    model2 = os.path.join(directory, "model_0002.pt")
    size = os.path.getsize(model2)
    with open(model2, "r+b") as f:
        f.truncate(size // 2)

    with caplog.at_level(logging.WARNING, logger="metta.rl.checkpoint"):
        agent_step, epoch, path = load_checkpoint(directory, agent, optimizer)
    assert (agent_step, epoch) == (100, 1) and path.endswith("model_0001.pt")
    text = caplog.text
    assert "trainer_state_0003.ckpt" in text and "sha256 mismatch" in text
    assert "model_0002.pt" in text

    # Resuming from epoch 1 and saving again retires the abandoned newer states, so pruning cannot keep a
    # corrupt checkpoint in place of a good one.
    save(env, agent, optimizer, store, directory, 2, keep_last_n=1)
    assert [e for e, _ in ck.list_trainer_states(directory)] == [2]
    assert os.path.exists(state3 + ".abandoned")
    assert load_checkpoint(directory, agent, optimizer)[:2] == (200, 2)


def test_empty_and_foreign_files_are_reported(env, tmp_path, caplog):
    directory = str(tmp_path)
    agent, optimizer = trained(env)
    save(env, agent, optimizer, make_store(directory), directory, 1)
    open(os.path.join(directory, "trainer_state_0002.ckpt"), "wb").close()
    torch.save({"epoch": 3}, os.path.join(directory, "trainer_state_0003.ckpt"))
    with caplog.at_level(logging.WARNING, logger="metta.rl.checkpoint"):
        assert load_checkpoint(directory, agent, optimizer)[1] == 1
    assert "trainer_state_0002.ckpt" in caplog.text and "trainer_state_0003.ckpt" in caplog.text


def test_mismatched_agent_is_a_clear_error(env, tmp_path):
    directory = str(tmp_path)
    agent, optimizer = trained(env)
    save(env, agent, optimizer, make_store(directory), directory, 1)
    other = Agent(env, config="interface_default", device="cpu")
    with pytest.raises(ck.CheckpointError, match="different agent config"):
        load_checkpoint(directory, other, None)


def test_load_checkpoint_needs_a_checkpoint_directory(env, tmp_path):
    agent, optimizer = trained(env)
    directory = str(tmp_path / "checkpoints")
    save(env, agent, optimizer, make_store(directory), directory, 1)
    with pytest.raises(ValueError, match="trainer_state_0001.ckpt' is a file, not a checkpoint directory"):
        load_checkpoint(os.path.join(directory, "trainer_state_0001.ckpt"), agent, optimizer)
    with pytest.raises(ValueError, match=f"is a run directory; its checkpoints are in {directory}"):
        load_checkpoint(str(tmp_path), agent, optimizer)


def _resign(directory: str, epoch: int) -> None:
    """Make trainer_state_<epoch> vouch for whatever model_<epoch>.pt now holds (its digest matches again)."""
    path = os.path.join(directory, ck.trainer_state_file_name(epoch))
    ckpt = ck.read_trainer_state(path)
    ckpt.policy_sha256 = ck.sha256_file(ckpt.policy_path)
    ck.write_trainer_state(path, ckpt)


def test_a_policy_that_cannot_be_loaded_falls_back_to_the_previous_pair(env, tmp_path, caplog):
    directory = str(tmp_path)
    agent, optimizer, store = three_checkpoints(env, directory)
    # Newest: a policy file of another agent config; next: a file that is not a policy. Both pass their digest.
    other = Agent(env, config="interface_default", device="cpu")
    save(env, other, None, make_store(str(tmp_path / "other")), str(tmp_path / "other"), 3)
    shutil.copy(tmp_path / "other" / "model_0003.pt", os.path.join(directory, "model_0003.pt"))
    torch.save({"weights": torch.zeros(3)}, os.path.join(directory, "model_0002.pt"))
    _resign(directory, 3)
    _resign(directory, 2)
    with caplog.at_level(logging.WARNING, logger="metta.rl.checkpoint"):
        assert load_checkpoint(directory, agent, optimizer)[:2] == (100, 1)
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        "trainer_state_0003.ckpt" in w and "model_0003.pt" in w and "does not fit the agent" in w for w in warnings
    )
    assert any("trainer_state_0002.ckpt" in w and "model_0002.pt" in w and "cannot be loaded" in w for w in warnings)
    assert not any("agent config" in w for w in warnings)


def test_no_loadable_checkpoint_is_an_error_that_changes_nothing(env, tmp_path):
    directory = str(tmp_path / "checkpoints")
    agent, optimizer = trained(env)
    store = make_store(directory)
    for epoch in (1, 2):
        save(env, agent, optimizer, store, directory, epoch)
    for epoch in (1, 2):
        with open(os.path.join(directory, ck.trainer_state_file_name(epoch)), "r+b") as f:
            f.truncate(40)
    before = {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)}
    with pytest.raises(ck.UnloadableCheckpointsError, match=f"no checkpoint in {directory} can be loaded") as err:
        load_checkpoint(directory, agent, optimizer)
    assert len(err.value.problems) == 2 and "trainer_state_0001.ckpt" in str(err.value)
    assert {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)} == before
    # Starting over in place is explicit: everything is moved aside, nothing deleted.
    aside = ck.set_aside_checkpoints(directory)
    assert sorted(os.listdir(os.path.join(aside, "checkpoints"))) == sorted(before) and os.listdir(directory) == []
    assert load_checkpoint(directory, agent, optimizer) == (0, 0, None)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_prune_killed_midway_is_finished_by_the_next_save(env, tmp_path):
    directory = str(tmp_path)
    agent, optimizer, store = three_checkpoints(env, directory)
    pid = os.fork()
    if pid == 0:  # child: save epoch 4 with keep 2, killed after the old states went, before the old policies
        try:
            os.environ["METTA_KILL_AT"] = "prune:model_0001.pt"
            save(env, agent, optimizer, store, directory, 4, keep_last_n=2)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert sorted(os.listdir(directory)) == [
        "model_0001.pt",
        "model_0002.pt",
        "model_0003.pt",
        "model_0004.pt",
        "trainer_state_0003.ckpt",
        "trainer_state_0004.ckpt",
    ]
    assert load_checkpoint(directory, agent, optimizer)[1] == 4
    save(env, agent, optimizer, store, directory, 5, keep_last_n=2)
    assert sorted(os.listdir(directory)) == [
        "model_0004.pt",
        "model_0005.pt",
        "trainer_state_0004.ckpt",
        "trainer_state_0005.ckpt",
    ]


def test_bad_arguments_name_the_field(env, tmp_path):
    agent, optimizer = trained(env)
    store = make_store(str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint_interval=-1"):
        save_checkpoint(1, 1, agent, optimizer, store, str(tmp_path), checkpoint_interval=-1)
    with pytest.raises(ValueError, match="checkpoint_path=None"):
        save_checkpoint(1, 1, agent, optimizer, store, None, checkpoint_interval=1)
    with pytest.raises(TypeError, match="agent is a str"):
        save_checkpoint(1, 1, "agent", optimizer, store, str(tmp_path), checkpoint_interval=1)
    with pytest.raises(TypeError, match="policy_store is a dict"):
        save_checkpoint(1, 1, agent, optimizer, {}, str(tmp_path), checkpoint_interval=1)
    with pytest.raises(ValueError, match="epoch=-2"):
        save_checkpoint(-2, 1, agent, optimizer, store, str(tmp_path), checkpoint_interval=1, force_save=True)
    with pytest.raises(ValueError, match="keep_last_n=0"):
        save_checkpoint(1, 1, agent, optimizer, store, str(tmp_path), checkpoint_interval=1, keep_last_n=0)
    with pytest.raises(TypeError, match="optimizer is a int"):
        load_checkpoint(str(tmp_path), agent, 3)


# ----------------------------------------------------------------------------------------------------
# Crash safety
def _kill_at_io_call(k: int) -> None:
    """In a forked child: SIGKILL ourselves just before the k-th filesystem mutation or fsync."""
    count = [0]

    def wrap(fn):
        def wrapper(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapper

    for name in ("replace", "remove", "fsync", "rename"):
        setattr(os, name, wrap(getattr(os, name)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_every_write_step_leaves_a_resumable_dir(env, tmp_path, caplog):
    """Kill a save at each of its filesystem steps in turn; every outcome must resume (old or new state)."""
    base = str(tmp_path / "base")
    agent, optimizer = trained(env)
    store = make_store(base)
    save(env, agent, optimizer, store, base, 1)
    # keep_last_n=1 is the riskiest setting: the save that is killed also deletes the only other checkpoint.
    for k in range(1, 100):
        directory = str(tmp_path / f"k{k}")
        shutil.copytree(base, directory)
        pid = os.fork()
        if pid == 0:  # child: save epoch 2, dying at step k
            try:
                _kill_at_io_call(k)
                save(env, agent, optimizer, make_store(directory), directory, 2, keep_last_n=1)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status)
        with caplog.at_level(logging.WARNING, logger="metta.rl.checkpoint"):
            ckpt = ck.load_latest_checkpoint(directory)
        assert ckpt is not None and ckpt.epoch in (1, 2), f"killed at step {k}: {sorted(os.listdir(directory))}"
        assert "skipping" not in caplog.text, caplog.text
        agent_step, epoch, _ = load_checkpoint(directory, agent, optimizer)
        assert agent_step == epoch * 100
        if not killed:
            assert epoch == 2 and k > 3  # the save completed: every step before it was covered
            break
    else:
        pytest.fail("the save never completed within 99 filesystem steps")


CHILD = textwrap.dedent(
    """
    import sys, torch
    from metta.agent.policy_store import PolicyStore
    from metta.interface import Agent, Environment, Optimizer, load_checkpoint, save_checkpoint
    directory = sys.argv[1]
    env = Environment(env_config={env_config!r}, device="cpu", seed=0)
    agent = Agent(env, config="fast", device="cpu")
    optimizer = Optimizer("adam", agent, learning_rate=1e-3)
    store = PolicyStore({{"device": "cpu", "trainer": {{"checkpoint": {{"checkpoint_dir": directory}}}}}})
    agent_step, epoch, _ = load_checkpoint(directory, agent, optimizer, vecenv=env)
    print("resumed", epoch, flush=True)
    while True:
        epoch += 1
        optimizer.step(sum((p.float() ** 2).sum() for p in agent.parameters()), epoch)
        save_checkpoint(epoch, epoch * 100, agent, optimizer, store, directory, 1, vecenv=env, keep_last_n=2)
        if epoch == 1 or epoch % 5 == 0:
            print("saved", epoch, flush=True)
    """
)


def test_sigkill_subprocess_loop_always_resumes(tmp_path, caplog):
    """A real training-like process killed at random moments while it saves, three times over one run dir."""
    directory = str(tmp_path / "run")
    script = CHILD.format(env_config=SMALL)
    rng = random.Random(0)
    last_epoch = 0
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, directory],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            line = proc.stdout.readline()
            assert line.startswith("resumed"), line
            assert int(line.split()[1]) == last_epoch  # resumed exactly where the last process got to
            assert proc.stdout.readline().startswith("saved")
            time.sleep(rng.uniform(0.0, 0.3))  # then die at a random point of a later save
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with caplog.at_level(logging.WARNING, logger="metta.rl.checkpoint"):
            ckpt = ck.load_latest_checkpoint(directory)
        assert "skipping" not in caplog.text, caplog.text
        if ckpt is not None:
            assert ckpt.epoch >= last_epoch and ckpt.agent_step == ckpt.epoch * 100
            last_epoch = ckpt.epoch
        assert len(ck.list_trainer_states(directory)) <= 3  # pruning keeps up (2, plus one mid-save)
    assert last_epoch >= 5


def test_a_failed_write_names_the_file_and_leaves_the_newest_checkpoint(env, tmp_path):
    directory = str(tmp_path / "checkpoints")
    agent, optimizer = trained(env)
    store = make_store(directory)
    save(env, agent, optimizer, store, directory, 2)
    os.makedirs(os.path.join(directory, "model_0003.pt"))  # what the next policy write meets
    with pytest.raises(WriteError) as err:
        save(env, agent, optimizer, store, directory, 3)
    path = os.path.join(directory, "model_0003.pt")
    assert str(err.value) == (
        f"checkpoint of epoch 3 not saved: cannot write {path}: a directory has that name; move it aside. The newest "
        f"checkpoint on disk, {os.path.join(directory, 'trainer_state_0002.ckpt')} (epoch 2), is intact and a resumed "
        "run starts from it"
    )
    assert err.value.errno == errno.EISDIR and not glob.glob(os.path.join(directory, "*.tmp.*"))
    assert ck.load_latest_checkpoint(directory).epoch == 2


def test_a_checkpoint_of_another_world_size_resumes_and_says_what_the_sizes_do(env, tmp_path, caplog):
    directory = str(tmp_path / "checkpoints")
    agent, optimizer = trained(env)
    cfg = TrainerConfig(batch_size=1024, minibatch_size=256, bptt_horizon=16)
    save(env, agent, optimizer, make_store(directory), directory, 4, trainer_config=cfg)
    ckpt = ck.load_latest_checkpoint(directory)
    assert ckpt.world_size == 1
    ckpt.world_size = 2  # as a two-rank run wrote it
    ck.write_trainer_state(ckpt.path, ckpt)
    agent2, optimizer2 = trained(env, seed=1)
    with caplog.at_level(logging.WARNING, logger="metta.rl.checkpoint"):
        assert load_checkpoint(directory, agent2, optimizer2, vecenv=env, trainer_config=cfg)[:2] == (400, 4)
    assert (
        "resuming at world size 1 from a checkpoint written at world size 2: trainer.scale_batches_by_world_size="
        "false keeps the per-rank sizes, so the totals (and each epoch's agent steps) change with the world size; "
        "now batch_size 1024 in all (1 x 1024), minibatch_size 256 (1 x 256); before: batch_size 2048 in all "
        "(2 x 1024), minibatch_size 512 (2 x 256). The optimizer state, agent_step and the schedules go on"
    ) in caplog.text
    assert f"curriculum state restored from {ckpt.path} (rank 0's, written at world size 2)" in caplog.text
    # With the totals kept, two ranks of 512 each resume what one rank of 1024 wrote.
    per_rank = cfg.model_copy(update={"scale_batches_by_world_size": True, "batch_size": 512, "minibatch_size": 128})
    said = ck.world_size_change(1, 2, cfg.model_dump(), per_rank)
    assert "=true keeps the totals and splits them over the ranks; now batch_size 1024 in all (2 x 512)" in said
    assert said.endswith(
        "before: batch_size 1024 in all (1 x 1024), minibatch_size 256 (1 x 256). The optimizer "
        "state, agent_step and the schedules go on from the checkpoint"
    )


def test_ranks_other_than_0_take_the_curriculum_state_without_its_random_streams():
    state = [{"rng": [3, [1, 2], None], "task_ids": ["a"], "children": {"a": {"rng": [3, [4], None], "w": 0.5}}}]
    assert ck.without_rng_states(state) == [{"task_ids": ["a"], "children": {"a": {"w": 0.5}}}]
