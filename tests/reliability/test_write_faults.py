"""run.py on storage that fails: a full disk under checkpoints/ (a small tmpfs mounted there), then the same
directory made immutable. Each stops the run with a ``run.py: ...`` message naming the file and the cause, no
traceback, no temp file, and the newest checkpoint intact (the next run resumes from it)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest
from run_helpers import Run, run_env

from metta.rl.checkpoint import load_latest_checkpoint

pytestmark = pytest.mark.timeout(300)


def _fill(directory: Path) -> None:
    """Write zeros into ``directory`` until its filesystem is full."""
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


def _immutable(directory: Path, on: bool) -> str:
    """Make ``directory`` unwritable (``chattr +i`` as root, whom modes do not stop; else ``chmod``); returns the
    cause the kernel then reports."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", str(directory)], check=True)
        return "Operation not permitted"
    directory.chmod(0o555 if on else 0o755)
    return "Permission denied"


def test_a_full_disk_then_an_unwritable_checkpoints_dir_stop_the_run_naming_the_file(tmp_path: Path):
    ckpts = tmp_path / "faults" / "checkpoints"
    ckpts.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(ckpts)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs privileges: {mounted.stderr.decode().strip()}")
    cause = None
    try:
        # The disk fills while the run holds just before logging epoch 3; SIGTERM then asks for the final
        # checkpoint, whose policy does not fit.
        full = Run(tmp_path, "faults", None, env=run_env(METTA_HOLD_AT="log:3"))
        try:
            full.wait_for("fault point reached: log:3")
            _fill(ckpts)
            full.signal_group(signal.SIGTERM)
            assert full.finish() == 1, full.log[-3000:]
        finally:
            full.kill()
        assert (
            f"run.py: checkpoint of epoch 3 not saved: cannot write {ckpts / 'model_0003.pt'}: the disk is full (No "
            f"space left on device); free space on the filesystem of {ckpts}. The newest checkpoint on disk, "
            f"{ckpts / 'trainer_state_0002.ckpt'} (epoch 2), is intact and a resumed run starts from it"
        ) in full.log
        assert "Traceback" not in full.log
        assert sorted(p.name for p in ckpts.iterdir()) == [
            "filler",
            "model_0001.pt",
            "model_0002.pt",
            "trainer_state_0001.ckpt",
            "trainer_state_0002.ckpt",
        ]
        (ckpts / "filler").unlink()

        # checkpoints/ unwritable: the resumed run trains epoch 3 and cannot save it.
        cause = _immutable(ckpts, True)
        locked = Run(tmp_path, "faults", None)
        assert locked.finish() == 1, locked.log[-3000:]
        assert "resumed from " in locked.log and "epoch     3" in locked.log
        assert (
            f"run.py: checkpoint of epoch 3 not saved: cannot write {ckpts / 'model_0003.pt'}: {ckpts} is not "
            f"writable ({cause}); check its permissions, attributes and mount. The newest checkpoint on disk"
        ) in locked.log
        assert "Traceback" not in locked.log
    finally:
        if cause is not None:
            _immutable(ckpts, False)
        assert load_latest_checkpoint(str(ckpts)).epoch == 2
        assert not list(ckpts.glob("*.tmp.*"))
        subprocess.run(["umount", str(ckpts)], check=True)
