"""Kill real run.py processes at random moments, resume after each kill, count what was lost: one JSON line.

    python benchmarks/kill_resume.py --tries 20 [--seed 0] [--max-delay 2.0] [--data-dir DIR]

Every try starts run.py on the same run directory (tiny sizes, one torch thread, every epoch checkpointed, two
kept) and SIGKILLs it. Half the kills come a random 0 to ``--max-delay`` seconds after the run's setup (in a
rollout, an update, a metrics write, a checkpoint write...); the other half at a random fault point of one of the
next three epochs (metta/common/fault_points.py: before a metrics row, during a policy write, during a
trainer-state write, during a prune). The next try resumes the directory; a last process trains two more
epochs and exits. The line holds:

    tries        SIGKILLs made
    resumed      kills after which the next process resumed from the newest checkpoint on disk (or started
                 fresh where there was none yet) and trained
    steps_lost   agent steps logged before a kill and trained again after it: total, mean and max per kill
    duplicates   epochs that appear more than once in metrics.jsonl at the end (should be 0)
    missing      epochs between 1 and the last that metrics.jsonl lacks (should be 0)
    kept         trainer states on disk at the end (keep_checkpoints=2)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metta.rl.checkpoint import list_trainer_states, load_latest_checkpoint  # noqa: E402

STEPS_PER_EPOCH = 1024
ARGS = (
    "num_envs=4 trainer.batch_size=1024 trainer.minibatch_size=256 trainer.bptt_horizon=8 trainer.update_epochs=1 "
    "evaluate=false trainer.checkpoint.checkpoint_interval=1 device=cpu torch_threads=1 keep_checkpoints=2"
).split()
SETUP_DONE = re.compile(r"INFO run \S+: [\d,]+ agent steps on")
RESUMED = re.compile(r"resumed from \S+: epoch (\d+), agent_step (\d+)")


def start(data_dir: Path, total: int, log_path: Path, kill_at: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METTA_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if kill_at:
        env["METTA_KILL_AT"] = kill_at
    cmd = [sys.executable, str(REPO / "run.py"), f"data_dir={data_dir}", "run=kr", f"trainer.total_timesteps={total}"]
    cmd += ARGS
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_setup(proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> str | None:
    """The log once the run's setup is done (None when the process ended first or took too long)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if SETUP_DONE.search(text):
            return text
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def newest_checkpoint(run_dir: Path) -> tuple[int, int]:
    """``(epoch, agent_step)`` of the checkpoint a resume must use; ``(0, 0)`` when there is none yet."""
    ckpt = load_latest_checkpoint(str(run_dir / "checkpoints")) if run_dir.exists() else None
    return (ckpt.epoch, ckpt.agent_step) if ckpt else (0, 0)


def logged_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a torn last line
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=2.0, help="seconds after setup for the random-time kills")
    parser.add_argument("--data-dir", type=str, default=None, help="kept afterwards when given")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="kill_resume_"))
    run_dir, t0 = data_dir / "kr", time.monotonic()
    moments: Counter[str] = Counter()
    resumed, lost, failures = 0, [], []

    def launch(i: int, total: int, kill_at: str | None) -> tuple[subprocess.Popen, Path, str | None]:
        """Start process i and check its resume against what is on disk; the log once set up."""
        expected = newest_checkpoint(run_dir)
        reached = max((r.get("agent_step", 0) for r in logged_rows(run_dir)), default=0)
        log_path = data_dir / f"try{i:03d}.log"
        proc = start(data_dir, total, log_path, kill_at)
        text = wait_setup(proc, log_path)
        if text is None:
            failures.append(f"process {i} never finished its setup: {log_path}")
            return proc, log_path, None
        m = RESUMED.search(text)
        got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        if i > 0:
            nonlocal resumed
            resumed += got == expected
            lost.append(max(0, reached - got[1]))
            if got != expected:
                failures.append(f"process {i} resumed from {got}, the newest checkpoint on disk is {expected}")
        return proc, log_path, text

    for i in range(args.tries):
        kill_at = None
        if i % 2:
            e = newest_checkpoint(run_dir)[0] + rng.randint(1, 3)
            kind, kill_at = rng.choice(
                [
                    ("log", f"log:{e}"),
                    ("write_policy", f"write:model_{e:04d}.pt"),
                    ("write_trainer_state", f"write:trainer_state_{e:04d}.ckpt"),
                    ("prune", "prune:*"),
                ]
            )
        else:
            kind = "random_time"
        proc, log_path, text = launch(i, 10**9, kill_at)
        if text is not None and kill_at is None:
            time.sleep(rng.uniform(0.0, args.max_delay))
        if kill_at is not None:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                failures.append(f"process {i} never reached {kill_at}")
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        moments[kind] += 1
        if proc.returncode != -signal.SIGKILL:
            failures.append(f"process {i} exited {proc.returncode} instead of being killed: {log_path}")

    proc, log_path, _ = launch(args.tries, (newest_checkpoint(run_dir)[0] + 2) * STEPS_PER_EPOCH, None)
    final_exit = proc.wait(300)
    if final_exit != 0:
        failures.append(f"the last process exited {final_exit}: {log_path}")

    epochs = [r["epoch"] for r in logged_rows(run_dir)]
    counts = Counter(epochs)
    result = {
        "benchmark": "kill_resume",
        "tries": args.tries,
        "resumed": resumed,
        "steps_lost": {
            "total": sum(lost),
            "mean": round(sum(lost) / max(len(lost), 1), 1),
            "max": max(lost, default=0),
        },
        "duplicates": sum(c - 1 for c in counts.values()),
        "missing": len(set(range(1, max(epochs, default=0) + 1)) - set(epochs)),
        "final_epoch": max(epochs, default=0),
        "final_exit": final_exit,
        "kept": len(list_trainer_states(str(run_dir / "checkpoints"))),
        "kills": dict(sorted(moments.items())),
        "failures": failures,
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(result))
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
