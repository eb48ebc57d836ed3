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

    python benchmarks/kill_resume.py --elastic --tries 6 [--seed 0] [--max-delay 2.0]

The elastic mode runs one ``torchrun --nproc_per_node=2 --max-restarts=TRIES`` (c10d rendezvous,
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) and lets torchrun restart it: each try SIGKILLs one rank, half of them a
random rank a random 0 to ``--max-delay`` seconds after its group's setup, the other half rank 0 in the middle of
its next trainer-state write (``METTA_KILL_AT`` armed once by removing ``METTA_FAULT_ONCE``'s file). After each
kill the next group must resume from the newest checkpoint on disk. Then the launcher itself is SIGKILLed: its
ranks must save and exit on their own (``orphans``: ranks still alive 60 s later, should be 0; ``saved_on_orphan``:
the last logged epoch was checkpointed). A last plain torchrun trains two more epochs. The line adds
``restarts`` (worker groups torchrun started after the first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from metta.rl.checkpoint import list_trainer_states, load_latest_checkpoint  # noqa: E402

STEPS_PER_EPOCH = 1024
ARGS = (
    "num_envs=4 trainer.batch_size=1024 trainer.minibatch_size=256 trainer.bptt_horizon=8 trainer.update_epochs=1 "
    "evaluate=false trainer.checkpoint.checkpoint_interval=1 device=cpu torch_threads=1 keep_checkpoints=2"
).split()
SETUP_DONE = re.compile(r"INFO run \S+: [\d,]+ agent steps\b")  # the start line, after the setup
RESUMED = re.compile(r"resumed from \S+: epoch (\d+), agent_step (\d+)")


def start(
    data_dir: Path, total: int, log_path: Path, kill_at: str | None, launcher: list[str] | None = None, **env_vars: str
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METTA_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env_vars)
    if kill_at:
        env["METTA_KILL_AT"] = kill_at
    cmd = [*(launcher or [sys.executable]), str(REPO / "run.py"), f"data_dir={data_dir}", "run=kr"]
    cmd += [f"trainer.total_timesteps={total}", *ARGS]
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


def epoch_counts(run_dir: Path) -> dict[str, int]:
    """``duplicates``, ``missing`` and ``final_epoch`` of the run's metrics.jsonl."""
    epochs = [r["epoch"] for r in logged_rows(run_dir)]
    counts = Counter(epochs)
    return {
        "duplicates": sum(c - 1 for c in counts.values()),
        "missing": len(set(range(1, max(epochs, default=0) + 1)) - set(epochs)),
        "final_epoch": max(epochs, default=0),
    }


def torchrun(*options: str) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d"]
    return [*head, f"--rdzv-endpoint=127.0.0.1:{port}", *options]


def elastic(args: argparse.Namespace, rng: random.Random, data_dir: Path) -> dict:
    """The ``--elastic`` mode (see the module docstring)."""
    run_dir, t0, steps_per_epoch = data_dir / "kr", time.monotonic(), 2 * STEPS_PER_EPOCH
    fired = data_dir / "fault_fired"
    fired.touch()  # the trainer-state kill stays disarmed until a try removes this file
    log_path = data_dir / "elastic.log"
    launcher = torchrun(f"--max-restarts={args.tries}", "--monitor-interval=0.2")
    proc = start(
        data_dir,
        10**9,
        log_path,
        "write:trainer_state_*",
        launcher,
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
        METTA_FAULT_ONCE=str(fired),
    )
    moments: Counter[str] = Counter()
    resumed, lost, failures = 0, [], []

    def log() -> str:
        return log_path.read_text(errors="replace")

    def wait(what: str, condition, timeout: float = 180) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = "timed out" if proc.poll() is None else f"torchrun exited {proc.returncode}"
                failures.append(f"no {what}: {why} ({log_path})")
                return False
            time.sleep(0.05)
        return True

    def ranks() -> dict[int, psutil.Process]:
        found = {}
        for child in psutil.Process(proc.pid).children():
            try:
                found[int(child.environ()["RANK"])] = child
            except (KeyError, psutil.Error):
                pass
        return found

    groups, expected = 0, (0, 0)
    for i in range(args.tries):
        if not wait(f"group {groups + 1}'s setup", lambda n=groups: len(SETUP_DONE.findall(log())) > n):
            break
        groups += 1
        group = ranks()
        if i % 2:
            kind, victim = "write_trainer_state", 0
            fired.unlink()
        else:
            kind, victim = "random_time", rng.choice(sorted(group))
            time.sleep(rng.uniform(0.0, args.max_delay))
            if victim in group:
                group[victim].kill()
        moments[f"{kind}_rank{victim}"] += 1
        psutil.wait_procs(list(group.values()), timeout=180)
        # The group is gone: what is on disk now is what the next one must resume.
        expected = newest_checkpoint(run_dir)
        reached = max((r.get("agent_step", 0) for r in logged_rows(run_dir)), default=0)
        before = len(RESUMED.findall(log()))
        if not wait(f"group {groups + 1}'s setup", lambda n=groups: len(SETUP_DONE.findall(log())) > n):
            break
        found = RESUMED.findall(log())
        got = tuple(int(x) for x in found[-1]) if len(found) > before else (0, 0)
        resumed += got == expected
        lost.append(max(0, reached - got[1]))
        if got != expected:
            failures.append(f"try {i}: resumed from {got}, the newest checkpoint on disk was {expected}")

    # The launcher dies: its ranks must save and exit on their own.
    wait("epoch after the last restart", lambda: newest_checkpoint(run_dir)[0] > expected[0], timeout=120)
    group = ranks()
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(list(group.values()), timeout=60)
    for p in alive:
        p.kill()
    logged = max((r["epoch"] for r in logged_rows(run_dir)), default=0)
    saved_on_orphan = newest_checkpoint(run_dir)[0] == logged and "stopped by the launcher's death" in log()

    final_log = data_dir / "final.log"
    total = (newest_checkpoint(run_dir)[0] + 2) * steps_per_epoch
    final = start(data_dir, total, final_log, None, torchrun())
    final_exit = final.wait(300)
    if final_exit != 0:
        failures.append(f"the last torchrun exited {final_exit}: {final_log}")
    return {
        "benchmark": "kill_resume",
        "mode": "elastic",
        "tries": args.tries,
        "resumed": resumed,
        "restarts": len(SETUP_DONE.findall(log())) - 1,
        "steps_lost": {
            "total": sum(lost),
            "mean": round(sum(lost) / max(len(lost), 1), 1),
            "max": max(lost, default=0),
        },
        **epoch_counts(run_dir),
        "final_exit": final_exit,
        "orphans": len(alive),
        "saved_on_orphan": saved_on_orphan,
        "kept": len(list_trainer_states(str(run_dir / "checkpoints"))),
        "kills": dict(sorted(moments.items())),
        "failures": failures,
        "seconds": round(time.monotonic() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=2.0, help="seconds after setup for the random-time kills")
    parser.add_argument("--data-dir", type=str, default=None, help="kept afterwards when given")
    parser.add_argument("--elastic", action="store_true", help="two ranks under torchrun --max-restarts (see above)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="kill_resume_"))
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.elastic:
        print(json.dumps(elastic(args, rng, data_dir)))
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
        return
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

    result = {
        "benchmark": "kill_resume",
        "tries": args.tries,
        "resumed": resumed,
        "steps_lost": {
            "total": sum(lost),
            "mean": round(sum(lost) / max(len(lost), 1), 1),
            "max": max(lost, default=0),
        },
        **epoch_counts(run_dir),
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
