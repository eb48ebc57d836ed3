"""Named moments at which a test can stop this process exactly (test hooks; inert unless an env var is set).

    METTA_KILL_AT=write:trainer_state_0003.ckpt    SIGKILL this process at that moment
    METTA_PAUSE_AT=write:model_*.pt                 write "fault point reached: ..." to stderr, then wait there
                                                    for signals forever (a test kills or signals it)
    METTA_HOLD_AT=setup:env                         the same message, then wait there until one signal has been
                                                    handled, and go on (a test signals a moment exactly)

    METTA_FAULT_ONCE=/tmp/x/fired                   with any of the three: act only where this file does not
                                                    exist yet, and create it first (one fault per test, even
                                                    when torchrun restarts the process with the same env)

A value is ``<point>:<glob>``; the glob is matched (fnmatch) against the point's key. The points:

    write:<file name>   a durable write (``fs.atomic_write_bytes``, ``PolicyStore.save``): the temp file is
                        complete and has not yet replaced <file name>
    prune:<file name>   checkpoint pruning, before <file name> is deleted
    log:<epoch>         ``StatsLogger.log``, before the metrics row of <epoch> is written
    setup:env           run.py, after the run directory and the signal handlers exist, before the envs are built
    evaluate:<epoch>    ``Trainer.evaluate``, before the evaluation of <epoch> starts

They exist so that the reliability tests and ``benchmarks/kill_resume.py`` can kill a real run in the middle
of a policy write, a trainer-state write or a prune instead of hoping a random kill lands there.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys

KILL_VAR = "METTA_KILL_AT"
PAUSE_VAR = "METTA_PAUSE_AT"
HOLD_VAR = "METTA_HOLD_AT"
ONCE_VAR = "METTA_FAULT_ONCE"


def _matches(spec: str, point: str, key: str) -> bool:
    want_point, _, pattern = spec.partition(":")
    return want_point == point and fnmatch.fnmatchcase(key, pattern or "*")


def _first_time() -> bool:
    """False when ``METTA_FAULT_ONCE`` names a file that exists (the fault already fired); else creates it."""
    marker = os.environ.get(ONCE_VAR)
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def fault_point(point: str, key: str) -> None:
    """Kill, pause or hold here when ``METTA_KILL_AT`` / ``METTA_PAUSE_AT`` / ``METTA_HOLD_AT`` names
    ``point:key`` (and ``METTA_FAULT_ONCE``, when set, names no file yet); otherwise nothing."""
    kill, pause, hold = os.environ.get(KILL_VAR), os.environ.get(PAUSE_VAR), os.environ.get(HOLD_VAR)
    if not any(spec and _matches(spec, point, key) for spec in (kill, pause, hold)) or not _first_time():
        return
    if kill and _matches(kill, point, key):
        os.kill(os.getpid(), signal.SIGKILL)
    if hold and _matches(hold, point, key):
        sys.stderr.write(f"fault point reached: {point}:{key} (pid {os.getpid()}); holding until a signal\n")
        sys.stderr.flush()
        signal.pause()  # returns once a signal's handler has run
    if pause and _matches(pause, point, key):
        sys.stderr.write(f"fault point reached: {point}:{key} (pid {os.getpid()}); pausing\n")
        sys.stderr.flush()
        while True:
            signal.pause()  # signal handlers still run; only a kill (or an abort) ends the wait
