"""run.py under signals, kills, corrupt run directories and a second writer, on real processes.

- SIGTERM (to the process group, vecenv workers included) and SIGINT finish the iteration, checkpoint and exit 0:
  one Ctrl-C to a plain run.py stops the timestamped run below, SIGTERM to the group ends the kill chain; under
  torchrun a SIGINT to one rank stops both ranks after the same iteration, and torchrun exits 0.
- A second Ctrl-C aborts at once, even in the middle of a checkpoint write (in the kill chain) or of a stop's
  evaluation, leaving a resumable directory.
- A stopped run evaluates before its final checkpoint when its previous evaluation took at most
  ``trainer.simulation.evaluate_on_stop_s``, with scores and a replay as any evaluation; otherwise it says that it
  skipped and prints the command that evaluates afterwards, which works.
- SIGKILL before the first epoch, during a trainer-state write and during pruning (``METTA_KILL_AT``,
  metta/common/fault_points.py): each resume continues from the last complete checkpoint, the optimizer state
  included, and metrics.jsonl ends with every epoch exactly once.
- A directory whose checkpoints all fail to load stops run.py with the error and changes nothing, unless
  ``restart_if_unloadable=true``.
- A second run.py on a directory in use is refused, naming the directory and the holder's pid.
- A run named by its timestamp, stopped, resumes with the command its stop message prints (its run_config.json),
  from another directory; metrics.jsonl's ``time`` and the report's wall time go on across the resume.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from run_helpers import FOREVER, REPO, STEPS, TINY, Run, metrics_epochs, metrics_rows, refused_in_process, run_env

from metta.agent.policy_store import read_policy_file
from metta.common.evaluation_db import EvaluationDB, database_path
from metta.common.run_lock import RunLock
from metta.rl.checkpoint import TRAINER_STATE_HEADER, list_trainer_states, load_latest_checkpoint

pytestmark = pytest.mark.timeout(300)


def temp_files(run_dir: Path) -> list[str]:
    return glob.glob(str(run_dir / "checkpoints" / "*.tmp.*"))


def assert_complete(run_dir: Path, steps: int = STEPS) -> int:
    """Every epoch logged once, in order, and the newest checkpoint is the last epoch logged; returns it."""
    rows = metrics_rows(run_dir)
    epochs = [r["epoch"] for r in rows]
    last = epochs[-1]
    assert epochs == list(range(1, last + 1))
    assert [r["agent_step"] for r in rows] == [e * steps for e in epochs]
    ckpt = load_latest_checkpoint(str(run_dir / "checkpoints"))
    assert (ckpt.epoch, ckpt.agent_step) == (last, last * steps)
    assert [e for e, _ in list_trainer_states(str(run_dir / "checkpoints"))] == [last, last - 1]  # keep_checkpoints=2
    assert not temp_files(run_dir)
    return last


def resumed_epoch(log: str) -> int | None:
    for line in log.splitlines():
        if "resumed from " in line:
            return int(line.split(": epoch ")[1].split(",")[0])
    return None


# ----------------------------------------------------------------------------------------------------------
def test_sigterm_during_setup_exits_0_without_training(tmp_path: Path):
    """The handlers are in place before the run directory is made: a signal while the envs are being built ends
    the run before its first iteration, with exit 0 and no traceback."""
    run = Run(tmp_path, "setup_stop", None, env=run_env(METTA_HOLD_AT="setup:env"))
    try:
        run.wait_for("fault point reached: setup:env")
        run.signal_group(signal.SIGTERM)
        assert run.finish() == 0, run.log[-3000:]
    finally:
        run.kill()
    assert "stopped by SIGTERM: epoch 0, agent_step 0" in run.log and "Traceback" not in run.log
    assert metrics_epochs(run.run_dir) == [] and not list_trainer_states(str(run.run_dir / "checkpoints"))
    RunLock(run.run_dir).acquire().release()


EVALUATE_EVERY_EPOCH = ("evaluate=true", "trainer.simulation.suite=smoke", "trainer.simulation.evaluate_interval=1")


def test_a_stop_evaluates_when_the_last_evaluation_was_quick_and_else_says_how_to(tmp_path: Path):
    quick = Run(tmp_path, "quick", None, *EVALUATE_EVERY_EPOCH)  # smoke's evaluations take well under 30 s
    skip = Run(tmp_path, "skip", None, *EVALUATE_EVERY_EPOCH, "trainer.simulation.evaluate_on_stop_s=0", "replay=false")
    try:
        for run in (quick, skip):
            run.wait_for("evaluation at epoch 1")
            run.signal_group(signal.SIGTERM)
        assert quick.finish() == 0 and skip.finish() == 0
    finally:
        quick.kill()
        skip.kill()
    last = assert_complete(quick.run_dir)
    assert "stopping: evaluating before the final checkpoint" in quick.log
    assert f"evaluation at epoch {last}:" in quick.log and "eval/smoke/score" in metrics_rows(quick.run_dir)[-1]
    assert list((quick.run_dir / "replays" / f"epoch_{last:04d}").glob("replay/*.json.z"))
    saved = read_policy_file(str(quick.run_dir / "checkpoints" / f"model_{last:04d}.pt"))
    assert "smoke/score" in saved["metadata"]["eval_scores"]

    last = assert_complete(skip.run_dir)
    command = f"python -m metta.sim.evaluate {skip.run_dir} --suite smoke --data-dir {tmp_path}"
    assert "stopping: evaluation skipped (this run's last evaluation took" in skip.log
    assert f"evaluate_on_stop_s=0); evaluate the final checkpoint with: {command}\n" in skip.log
    assert f"evaluation at epoch {last}:" not in skip.log and "eval/smoke/score" not in metrics_rows(skip.run_dir)[-1]
    # The printed command scores the final checkpoint into the run's database.
    args = [*command.split()[1:], "--no-baselines", "--workers", "1"]
    out = subprocess.run([sys.executable, *args], cwd=REPO, env=run_env(), capture_output=True, text=True)
    assert out.returncode == 0 and f"model_{last:04d}.pt@{last}" in out.stdout, out.stdout + out.stderr
    with EvaluationDB(database_path(tmp_path)) as db:
        rows = db.execute("SELECT epoch, sim FROM evaluations WHERE run_dir = ?", (str(skip.run_dir),))
    assert sorted((r["epoch"], r["sim"]) for r in rows if r["epoch"] == last) == [
        (last, "smoke/open"),
        (last, "smoke/wall"),
    ]


def test_second_ctrl_c_during_a_stops_evaluation_aborts_at_once(tmp_path: Path):
    # The run pauses as epoch 2's evaluation starts: the stop's, since the first Ctrl-C comes during epoch 1.
    run = Run(tmp_path, "abort", None, *EVALUATE_EVERY_EPOCH, "replay=false", env=run_env(METTA_PAUSE_AT="evaluate:2"))
    try:
        run.wait_for("evaluation at epoch 1")
        run.signal_group(signal.SIGINT)
        run.wait_for("fault point reached: evaluate:2")
        time.sleep(1.2)  # a SIGINT within a second of the first is the same Ctrl-C delivered twice
        run.signal_group(signal.SIGINT)
        assert run.finish() == -signal.SIGINT
    finally:
        run.kill()
    assert "stopping: evaluating before the final checkpoint" in run.log and "aborting now without saving" in run.log
    assert metrics_epochs(run.run_dir) == [1] and load_latest_checkpoint(str(run.run_dir / "checkpoints")).epoch == 1


def adam_steps(checkpoint) -> float:
    """The Adam step count of the first parameter: it keeps growing across resumes only if the state was restored."""
    state = checkpoint.optimizer_state_dict["state"]
    return float(state[min(state)]["step"])


def test_kills_and_stops_at_chosen_moments_resume_without_duplicate_or_missing_epochs(tmp_path: Path):
    """One run directory, five processes: killed before its first epoch; aborted by a second Ctrl-C in the middle
    of a policy write; killed during a trainer-state write and during pruning; then resumed with a vecenv worker
    process, refused to a second run.py, and stopped by SIGTERM to its process group (as a scheduler preempts a
    job). Every process resumes from the last complete checkpoint. (SIGKILL at every step of a checkpoint write
    is tests/interface/test_checkpoints.py's.)"""
    run_dir = tmp_path / "chain"
    ckpts = run_dir / "checkpoints"

    def sigkill_at(point: str) -> Run:
        run = Run(tmp_path, "chain", None, env=run_env(METTA_KILL_AT=point))
        try:
            assert run.finish() == -signal.SIGKILL, f"{point}: {run.log[-3000:]}"
        finally:
            run.kill()
        return run

    def aborted_by_two_ctrl_c_during(point: str) -> Run:
        run = Run(tmp_path, "chain", None, env=run_env(METTA_PAUSE_AT=point))
        try:
            run.wait_for(f"fault point reached: {point}")
            run.signal_group(signal.SIGINT)
            run.wait_for("received SIGINT")
            time.sleep(1.2)  # a SIGINT within a second of the first is the same Ctrl-C delivered twice (documented)
            run.signal_group(signal.SIGINT)
            assert run.finish() == -signal.SIGINT, run.log[-3000:]
        finally:
            run.kill()
        assert "aborting now without saving" in run.log
        assert temp_files(run_dir)  # the write it cut short; the next process clears it
        return run

    moments = [
        # (what ends the process, the checkpoint it resumes from, the epochs in metrics.jsonl when it ends)
        (lambda: sigkill_at("log:1"), None, []),  # before the first epoch
        # Epoch 2 is logged but its checkpoint never finishes: the directory resumes from epoch 1.
        (lambda: aborted_by_two_ctrl_c_during("write:model_0002.pt"), None, [1, 2]),
        (lambda: sigkill_at("write:trainer_state_0003.ckpt"), 1, [1, 2, 3]),  # during a trainer-state write
        (lambda: sigkill_at("prune:model_0001.pt"), 2, [1, 2, 3]),  # trainer_state_0001 gone, model_0001 not yet
    ]
    for i, (end_process, resumes_from, logged) in enumerate(moments):
        run = end_process()
        assert resumed_epoch(run.log) == resumes_from, i
        assert metrics_epochs(run_dir) == logged, i
    assert [e for e, _ in list_trainer_states(str(ckpts))] == [3, 2]
    assert (ckpts / "model_0001.pt").exists()

    last = Run(tmp_path, "chain", None, "vectorization=multiprocessing", "trainer.num_workers=1")
    try:
        last.wait_for_epoch(4)
        second = Run(tmp_path, "chain", None)
        assert second.finish() == 1
        assert f"run directory {run_dir} is in use by another process (pid {last.pid} " in second.log
        assert "Traceback" not in second.log
        last.wait_for_epoch(5)  # the first went on
        last.signal_group(signal.SIGTERM)  # the trainer and its vecenv worker at once
        assert last.finish() == 0, last.log[-3000:]
    finally:
        last.kill()
    assert resumed_epoch(last.log) == 3
    assert "received SIGTERM" in last.log and "stopped by SIGTERM" in last.log and "Traceback" not in last.log
    final = assert_complete(run_dir)
    assert final >= 5
    # The interrupted prune was finished: only the two kept checkpoints remain.
    assert sorted(p.name for p in ckpts.iterdir()) == [
        f"model_{final - 1:04d}.pt",
        f"model_{final:04d}.pt",
        f"trainer_state_{final - 1:04d}.ckpt",
        f"trainer_state_{final:04d}.ckpt",
    ]
    assert (run_dir / "run.lock").read_text() == ""  # released
    # The optimizer state came through every resume: Adam took one step per minibatch of every epoch.
    newest = load_latest_checkpoint(str(ckpts))
    assert adam_steps(newest) == (STEPS // 256) * final  # TINY: minibatches of 256, one update epoch


def resume_command(log: str) -> list[str]:
    """The command of the stop message's ``resume with: ...`` line, on this interpreter."""
    (line,) = [line for line in log.splitlines() if line.startswith("resume with: ")]
    command = shlex.split(line.removeprefix("resume with: "))
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_a_timestamped_run_resumes_with_the_printed_command_and_its_time_goes_on(tmp_path: Path):
    data_dir = tmp_path / "runs"  # given relative to where run.py starts; recorded absolute
    first = Run.command(
        [sys.executable, str(REPO / "run.py"), "data_dir=runs", f"trainer.total_timesteps={FOREVER}", *TINY],
        None,
        tmp_path / "first.log",
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not (found := list(data_dir.glob("run_*/metrics.jsonl"))):  # `python run.py` names it run_<time>
            assert first.proc.poll() is None and time.monotonic() < deadline, first.log[-3000:]
            time.sleep(0.05)
        first.run_dir = found[0].parent
        first.wait_for_epoch(2)
        first.signal_group(signal.SIGINT)  # one Ctrl-C, as a terminal sends it to a plain `python run.py`
        assert first.finish() == 0, first.log[-3000:]
    finally:
        first.kill()
    assert "received SIGINT" in first.log and "stopped by SIGINT" in first.log and "Traceback" not in first.log
    run_dir = first.run_dir
    record = json.loads((run_dir / "run_config.json").read_text())
    assert record["experiment_name"] == run_dir.name and Path(record["data_dir"]) == data_dir.resolve()
    stopped_at = metrics_epochs(run_dir)[-1]
    first_time = metrics_rows(run_dir)[-1]["time"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = resume_command(first.log)
    assert command[1:] == [str(REPO / "run.py"), "--config", str(run_dir.resolve() / "run_config.json")]
    second = Run.command(command, run_dir, tmp_path / "second.log", cwd=elsewhere)
    try:
        second.wait_for_epoch(stopped_at + 2)
        second.signal_group(signal.SIGTERM)
        assert second.finish() == 0, second.log[-3000:]
    finally:
        second.kill()
    assert resumed_epoch(second.log) == stopped_at and resume_command(second.log) == command
    assert not list(elsewhere.iterdir())  # everything went to the recorded run directory
    assert_complete(run_dir)
    times = [row["time"] for row in metrics_rows(run_dir)]
    assert all(a < b for a, b in zip(times, times[1:])), times  # on across the resume, never from 0 again
    assert times[stopped_at] > first_time
    # The checkpoint carries the training time; the report's wall time covers both processes.
    stopwatch = load_latest_checkpoint(str(run_dir / "checkpoints")).stopwatch_state
    assert stopwatch["global"]["total_elapsed"] >= times[-1]
    assert f"{times[-1] / 60:.1f} min" in (run_dir / "index.html").read_text()


def test_all_corrupt_directory_stops_with_the_error_and_changes_nothing(tmp_path: Path, monkeypatch):
    run_dir = tmp_path / "bad"
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "trainer_state_0001.ckpt").write_bytes(b"")
    (ckpts / "trainer_state_0002.ckpt").write_bytes(TRAINER_STATE_HEADER + b"0" * 64 + b"\nnot a payload")
    (ckpts / "model_0002.pt").write_bytes(b"not a policy")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "agent_step": 1024}\n{"epoch": 2, "agent_step": 2048}\n')
    before = {p: p.read_bytes() for p in [*ckpts.iterdir(), run_dir / "metrics.jsonl"]}

    message = refused_in_process(
        [f"data_dir={tmp_path}", "run=bad", f"trainer.total_timesteps={STEPS}", *TINY], monkeypatch
    )
    assert f"no checkpoint in {os.path.abspath(ckpts)} can be loaded" in message
    assert "trainer_state_0001.ckpt" in message and "trainer_state_0002.ckpt" in message
    assert "run=" in message and "restart_if_unloadable=true" in message and "Traceback" not in message
    assert {p: p.read_bytes() for p in [*ckpts.iterdir(), run_dir / "metrics.jsonl"]} == before

    restarted = Run(tmp_path, "bad", 1, "restart_if_unloadable=true")
    assert restarted.finish() == 0, restarted.log[-3000:]
    (aside,) = run_dir.glob("unloadable_*")
    assert str(aside) in restarted.log
    for path, data in before.items():  # moved, byte for byte
        assert (aside / path.relative_to(run_dir)).read_bytes() == data
    assert metrics_epochs(run_dir) == [1]
    assert [e for e, _ in list_trainer_states(str(ckpts))] == [1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_pids(launcher_pid: int, timeout: float = 60) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        ranks = {}
        for child in psutil.Process(launcher_pid).children():
            try:
                ranks[int(child.environ()["RANK"])] = child.pid
            except (KeyError, psutil.Error):
                pass
        if len(ranks) == 2 or time.monotonic() > deadline:
            return ranks
        time.sleep(0.05)


def test_torchrun_ctrl_c_on_one_rank_stops_every_rank_with_exit_0(tmp_path: Path):
    """Two ranks train one run: the batch sizes are totals over the ranks (scale_batches_by_world_size), rank 0
    alone writes and logs, every rank ends with the checkpoint's weights, and a Ctrl-C to one rank stops both."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    per_rank = ["trainer.batch_size=2048", "trainer.minibatch_size=512", "trainer.scale_batches_by_world_size=true"]
    run = Run(tmp_path, "ddp", None, "debug_dump_weights=true", *per_rank, launcher=launcher)
    try:
        run.wait_for_epoch(2, timeout=180)
        ranks = _rank_pids(run.pid)
        holder = json.loads((run.run_dir / "run.lock").read_text())
        assert holder["pid"] == ranks[0]  # only rank 0 holds the run directory's lock
        # SIGINT to rank 1 alone: the all-reduced flag stops rank 0 after the same iteration.
        psutil.Process(ranks[1]).send_signal(signal.SIGINT)
        assert run.finish(timeout=180) == 0, run.log[-3000:]  # torchrun exits 0 only when every rank did
    finally:
        run.kill()
    assert "stopped by a signal to another rank" in run.log
    assert run.log.count("experience: 128 rows of 8 steps (1024 agent steps)") == 2  # each rank's half
    assert run.log.count("INFO stopped by") == 1 and run.log.count("resume with: ") == 1  # rank 0 logs
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".log"] == ["ddp"]  # rank 0 alone writes
    assert len(glob.glob(str(run.run_dir / "**" / "metrics*.jsonl"), recursive=True)) == 1
    last = assert_complete(run.run_dir, steps=2 * STEPS)  # agent_step counts both ranks
    w0 = torch.load(run.run_dir / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(run.run_dir / "rank1_weights.pt", weights_only=True)
    saved = read_policy_file(str(run.run_dir / "checkpoints" / f"model_{last:04d}.pt"))["state_dict"]
    for key, value in w0.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, w1[key]) and torch.equal(value, saved[key]), key


def test_kill_resume_benchmark_prints_one_json_line():
    out = subprocess.run(
        [sys.executable, "benchmarks/kill_resume.py", "--tries", "1", "--max-delay", "0.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["tries"] == 1 and result["resumed"] == 1 and result["final_exit"] == 0, result
    assert result["duplicates"] == 0 and result["missing"] == 0 and not result["failures"], result
