"""Real run.py processes for the reliability tests: tiny sizes, one torch thread, output in a log file.

One epoch is 4 envs x 32 agents x 8 steps = 1024 agent steps, and every epoch is checkpointed (two kept).
Each process starts a new session, so a signal to its process group reaches its vecenv workers (as a
scheduler's would) and never the test runner.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = 1024
TINY = (
    "num_envs=4 trainer.batch_size=1024 trainer.minibatch_size=256 trainer.bptt_horizon=8 trainer.update_epochs=1 "
    "evaluate=false trainer.checkpoint.checkpoint_interval=1 device=cpu torch_threads=1 keep_checkpoints=2"
).split()
FOREVER = 10**9  # total_timesteps for a run that a test stops


def run_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METTA_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))
    }
    env.pop("DATA_DIR", None)
    env.update(WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


class Run:
    """``run.py`` (or torchrun over it) in the background; ``epochs`` sets total_timesteps."""

    def __init__(
        self,
        data_dir: Path,
        name: str,
        epochs: int | None,
        *extra: str,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ):
        total = FOREVER if epochs is None else epochs * STEPS
        args = [f"data_dir={data_dir}", f"run={name}", f"trainer.total_timesteps={total}", *TINY, *extra]
        command = [*(launcher or [sys.executable]), str(REPO / "run.py"), *args]
        self._start(command, data_dir / name, data_dir / f"{name}.{time.monotonic_ns()}.log", env or run_env(), REPO)

    @classmethod
    def command(cls, command: list[str], run_dir: Path | None, log_path: Path, cwd: Path) -> Run:
        """Any command line, started in ``cwd`` (``run_dir`` may be set once it is known)."""
        run = cls.__new__(cls)
        run._start(command, run_dir, log_path, run_env(), cwd)
        return run

    def _start(self, command: list[str], run_dir: Path | None, log_path: Path, env: dict[str, str], cwd: Path):
        self.run_dir, self.log_path = run_dir, log_path
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120) -> str:
        """Wait until the log shows ``text`` (fails if the process ends first); returns the log."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log):
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {text!r}:\n{log[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{log[-3000:]}"
            time.sleep(0.05)
        return log

    def wait_for_epoch(self, epoch: int, timeout: float = 120) -> None:
        """Wait until metrics.jsonl has the row of ``epoch``."""
        deadline = time.monotonic() + timeout
        while epoch not in metrics_epochs(self.run_dir):
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before epoch {epoch}:\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, f"no epoch {epoch} within {timeout} s:\n{self.log[-3000:]}"
            time.sleep(0.05)

    def signal_group(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.log[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def metrics_epochs(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in metrics_rows(run_dir)]


@functools.cache
def run_py_main():
    """run.py's ``main``, loaded from the file once per test process."""
    spec = importlib.util.spec_from_file_location("run_py_under_test", REPO / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def refused_in_process(args: list[str], monkeypatch) -> str:
    """Launch run.py with ``args`` by calling its ``main`` in this process; the launch must be refused: returns
    the message. A refused launch ends in ``SystemExit("run.py: ...")``, which a process prints to stderr and exits
    1 with (tests/test_run_py.py checks that on real processes); calling ``main`` here spares each case an
    interpreter start. The launch must leave the signal handlers as it found them; torch's threads and random
    state, which a launch may set before it is refused, are put back for the tests that follow."""
    import numpy as np
    import pytest
    import torch

    monkeypatch.setattr(sys, "argv", ["run.py", *args])
    for name in ("METTA_RUN", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    threads, torch_rng, numpy_rng = torch.get_num_threads(), torch.get_rng_state(), np.random.get_state()
    try:
        with pytest.raises(SystemExit) as stopped:
            run_py_main()()
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(torch_rng)
        np.random.set_state(numpy_rng)
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    message = stopped.value.code
    assert isinstance(message, str) and message.startswith("run.py: "), message
    return message
