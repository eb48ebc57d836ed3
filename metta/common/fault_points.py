"""Named moments at which a test can stop this process exactly (test hooks; inert unless an env var is set).

    METTA_KILL_AT=write:trainer_state_0003.ckpt    SIGKILL this process at that moment
    METTA_PAUSE_AT=write:model_*.pt                 write "fault point reached: ..." to stderr, then wait there
                                                    for signals forever (a test kills or signals it)

A value is ``<point>:<glob>``; the glob is matched (fnmatch) against the point's key. The points:

    write:<file name>   a durable write (``fs.atomic_write_bytes``, ``PolicyStore.save``): the temp file is
                        complete and has not yet replaced <file name>
    prune:<file name>   checkpoint pruning, before <file name> is deleted
    log:<epoch>         ``StatsLogger.log``, before the metrics row of <epoch> is written

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


def _matches(spec: str, point: str, key: str) -> bool:
    want_point, _, pattern = spec.partition(":")
    return want_point == point and fnmatch.fnmatchcase(key, pattern or "*")


def fault_point(point: str, key: str) -> None:
    """Kill or pause here when ``METTA_KILL_AT`` / ``METTA_PAUSE_AT`` names ``point:key``; otherwise nothing."""
    kill, pause = os.environ.get(KILL_VAR), os.environ.get(PAUSE_VAR)
    if kill and _matches(kill, point, key):
        os.kill(os.getpid(), signal.SIGKILL)
    if pause and _matches(pause, point, key):
        sys.stderr.write(f"fault point reached: {point}:{key} (pid {os.getpid()}); pausing\n")
        sys.stderr.flush()
        while True:
            signal.pause()  # signal handlers still run; only a kill (or an abort) ends the wait
