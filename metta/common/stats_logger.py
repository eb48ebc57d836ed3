"""Where training metrics go: a local JSON-lines file (always), wandb (when a run is given), TensorBoard (when
asked), and the console (a line per epoch with the time since the start and the ETA to ``total_timesteps``, and a
progress bar toward it when stdout is a terminal).

    logger = StatsLogger(run_dir, total_timesteps=cfg.trainer.total_timesteps, wandb_run=wandb_run)
    logger.log(epoch, agent_step, {"overview/sps": sps, "overview/reward": r, "losses/policy_loss": pl, ...})
    logger.close()

Metric keys follow the shared vocabulary (``overview/*``, ``losses/*``, ``env_*``, ``timing/*``). The file is
``{run_dir}/metrics.jsonl``, one object per call, appended to, so a resumed run continues its curve.

A run that resumes passes ``resume_epoch``, the epoch of the checkpoint it resumes from (0 when it starts
fresh): rows the killed run logged after that checkpoint are dropped from the file first (and a torn last line),
since those epochs are about to be trained and logged again. The file then has each epoch once, wherever the
kill came. Lines that are not metrics rows (a damaged file) are dropped with a warning that quotes them, and the
epochs up to the checkpoint whose rows are then missing are named.

Each row's ``time`` is seconds of training: by default since the logger was made; a trainer passes ``clock``, its
stopwatch's total, which a checkpoint saves and a resume restores, so ``time`` goes on across resumes.

A file that cannot be written (a directory named ``metrics.jsonl``, a full disk) raises
``metta.common.fs.WriteError`` naming the file and the cause.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import operator
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from metta.common.fault_points import fault_point
from metta.common.fs import WriteError, atomic_write_text, write_error

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """A JSON-safe scalar: tensors and NumPy numbers become floats, NaN and inf become None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StatsLogger:
    def __init__(
        self,
        run_dir: str | Path,
        total_timesteps: int | None = None,
        wandb_run: Any = None,
        console: bool = True,
        tensorboard: bool = False,
        stream: TextIO | None = None,
        resume_epoch: int | None = None,
        clock: Callable[[], float] | None = None,
        start_agent_step: int = 0,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_epoch is not None:
            drop_rows_after(self.metrics_path, resume_epoch)
        self._file = self._open()
        self.total_timesteps = total_timesteps
        self.wandb_run = wandb_run
        self.console = console
        self.stream = stream or sys.stdout
        self._is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # tensorboard is an optional install
                raise ImportError("tensorboard=True needs the tensorboard package: pip install tensorboard") from err
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        start = time.time()
        self._clock = clock or (lambda: time.time() - start)
        # The ETA's rate: the steps since this logger started over the seconds since (a resumed run's earlier
        # steps ran at another time, maybe on another machine).
        self.start_agent_step = start_agent_step
        self._rate_start = time.monotonic()

    def resume_from(self, epoch: int) -> None:
        """What ``resume_epoch=epoch`` does, for a logger opened before the run knew where it resumes: the rows
        logged after ``epoch`` are dropped from the file, and logging goes on after the rest."""
        self._file.close()
        drop_rows_after(self.metrics_path, epoch)
        self._file = self._open()

    def _open(self) -> TextIO:
        if self.metrics_path.is_dir():  # open() would say only "Is a directory"
            raise write_error(self.metrics_path, IsADirectoryError(errno.EISDIR, "Is a directory"))
        try:
            return self.metrics_path.open("a")
        except OSError as err:
            raise write_error(self.metrics_path, err) from err

    def log(self, epoch: int, agent_step: int, metrics: dict[str, Any]) -> None:
        row = {"epoch": epoch, "agent_step": agent_step, "time": round(self._clock(), 3)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        fault_point("log", str(epoch))
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as err:
            raise write_error(self.metrics_path, err) from err
        if self.wandb_run is not None:
            self.wandb_run.log({**row, "metric/agent_step": agent_step, "metric/epoch": epoch}, step=agent_step)
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, agent_step)
        if self.console:
            self.stream.write(self._line(epoch, agent_step, row) + "\n")
            self.stream.flush()

    def _line(self, epoch: int, agent_step: int, row: dict[str, Any]) -> str:
        def fmt(key: str, label: str, spec: str = ".3f") -> str | None:
            value = row.get(key)
            return f"{label} {value:{spec}}" if isinstance(value, (int, float)) else None

        parts = [f"epoch {epoch:>5}", f"steps {agent_step:>11,}"]
        parts += [
            p
            for p in (
                fmt("overview/sps", "sps", ",.0f"),
                fmt("overview/reward", "reward", ".4f"),
                fmt("losses/policy_loss", "pg", ".4f"),
                fmt("losses/value_loss", "vf", ".4f"),
                fmt("losses/entropy", "ent", ".3f"),
                fmt("losses/approx_kl", "kl", ".4f"),
            )
            if p
        ]
        split = [
            f"{name} {row[key] * 100:.0f}%"
            for name, key in (
                ("env", "timing/frac/env"),
                ("fwd", "timing/frac/forward"),
                ("learn", "timing/frac/learn"),
                ("other", "timing/frac/other"),
            )
            if isinstance(row.get(key), (int, float))
        ]
        if split:
            parts.append("[" + " ".join(split) + "]")
        parts.append(f"elapsed {format_duration(row['time'])}")
        eta = self._eta(agent_step)
        if eta is not None:
            parts.append(f"eta {format_duration(eta)}")
        if self.total_timesteps and self._is_tty:
            done = min(1.0, agent_step / self.total_timesteps)
            width = 20
            parts.append("|" + "#" * int(done * width) + "." * (width - int(done * width)) + f"| {done * 100:.0f}%")
        return "  ".join(parts)

    def _eta(self, agent_step: int) -> float | None:
        """Seconds until ``total_timesteps`` at this logger's average rate (steps since it started per second)."""
        steps, seconds = agent_step - self.start_agent_step, time.monotonic() - self._rate_start
        if not self.total_timesteps or steps <= 0 or seconds <= 0:
            return None
        return max(0, self.total_timesteps - agent_step) * seconds / steps

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a line per epoch."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


_EPOCH_IN_TEXT = re.compile(r'"epoch"\s*:\s*(\d+)')


def drop_rows_after(metrics_path: str | Path, epoch: int) -> int:
    """Remove the rows of ``metrics_path`` whose epoch is above ``epoch`` and every line that is not a metrics row;
    returns how many lines went. The file is rewritten atomically, so a kill during the rewrite leaves the old
    file, which the next resume trims again.

    Each kind is reported as what it is: rows logged after the checkpoint and a torn last line (a write cut
    short by a kill) are the normal leftovers of a killed run (info); any other unreadable line is damage
    (a warning that quotes it), and the epochs up to ``epoch`` whose rows are then missing are named."""
    given = epoch
    try:
        epoch = operator.index(epoch)
    except TypeError:
        epoch = -1
    if epoch < 0 or isinstance(given, bool):
        raise ValueError(
            f"resume_epoch={given!r} must be an int >= 0: the epoch of the checkpoint the run resumes from"
        )
    path = Path(metrics_path)
    if path.is_dir():
        raise write_error(path, IsADirectoryError(errno.EISDIR, "Is a directory"))
    if not path.exists():
        return 0
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise WriteError(err.errno, f"cannot read {path.resolve()} to resume it: {err.strerror or err}") from err
    lines = text.splitlines()
    kept: list[str] = []
    kept_epochs: list[int] = []
    after = torn = 0
    damaged: list[tuple[int, str, int]] = []  # (line number, the line, rows kept before it)
    for number, line in enumerate(lines, 1):
        row_epoch = _row_epoch(line)
        if row_epoch is not None and row_epoch <= epoch:
            kept.append(line)
            kept_epochs.append(row_epoch)
        elif row_epoch is not None:
            after += 1
        elif number == len(lines) and not text.endswith("\n"):
            torn += 1
            damaged.append((number, line, len(kept)))
        elif line.strip():
            damaged.append((number, line, len(kept)))
    if after or damaged or (text and not text.endswith("\n")):
        atomic_write_text(str(path), "".join(line + "\n" for line in kept))
    if after:
        logger.info(
            "%s: dropped %d row(s) logged after epoch %d, the checkpoint this run resumes from", path, after, epoch
        )
    for number, line, _ in damaged:
        if torn and number == len(lines):
            logger.info("%s: dropped the torn last line (a write cut short, e.g. by a kill): %s", path, _quote(line))
        else:
            logger.warning("%s: line %d is not a metrics row, dropped: %s", path, number, _quote(line))
    missing = _missing_rows(kept_epochs, damaged, epoch)
    if missing:
        logger.warning(
            "%s lacks the rows of %s (up to epoch %d, the checkpoint this run resumes from): their metrics are lost",
            path,
            "; ".join(missing),
            epoch,
        )
    return after + len(damaged)


def _row_epoch(line: str) -> int | None:
    """The epoch of a metrics row, or None when ``line`` is not one."""
    try:
        row = json.loads(line)
        value = row["epoch"] if isinstance(row, dict) else None
    except (ValueError, KeyError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _quote(line: str, limit: int = 80) -> str:
    return repr(line if len(line) <= limit else line[:limit] + "...")


def _missing_rows(kept_epochs: list[int], damaged: list[tuple[int, str, int]], epoch: int) -> list[str]:
    """The epochs (or stretches between two logged epochs) up to ``epoch`` whose rows a damaged line replaced,
    plus the stretch after the last logged row when the file ends before ``epoch``."""
    missing: list[str] = []
    logged = set(kept_epochs)
    last = kept_epochs[-1] if kept_epochs else 0
    tail_covered = False
    for _, line, kept_before in damaged:
        found = _EPOCH_IN_TEXT.search(line)  # a torn or garbled row may still say which epoch it was
        if found:
            lost = int(found.group(1))
            if lost <= epoch and lost not in logged:
                missing.append(f"epoch {lost}")
                last = max(last, lost)
            continue
        prev = kept_epochs[kept_before - 1] if kept_before else 0
        nxt = kept_epochs[kept_before] if kept_before < len(kept_epochs) else None
        tail_covered |= nxt is None
        upper = nxt if nxt is not None else epoch + 1
        if prev + 1 < upper and prev < epoch:
            if nxt is None:
                missing.append(f"the epochs after {prev}")
            else:
                missing.append(f"the epochs after {prev} and before {nxt}")
    if last < epoch and not tail_covered:
        missing.append(f"the epochs after {last}")
    return list(dict.fromkeys(missing))
