"""Setup shared by every test module: one torch thread, a terrain cache of this session's own, and the browser
fixture."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# One intra-op thread for every test and every process a test starts (they inherit OMP_NUM_THREADS): the tensors
# here are tiny, and on a busy 2-core machine a second thread only spins against other work (each op gets many
# times slower). Set before torch is imported, so this process's pool starts with one thread too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# The headless-browser driver lives with the benchmarks, which use it too (benchmarks/headless_browser.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from headless_browser import HeadlessBrowser, find_chromium  # noqa: E402

# Terrain sets a test generates whole go to a disk cache (metta.mettagrid.map.terrain): one of this session's
# own, inherited by the processes tests start (pytest-xdist's workers too), so no test reads what another session
# left in ~/.cache; the process that made it removes it at exit.
if "METTA_TERRAIN_CACHE" not in os.environ:
    os.environ["METTA_TERRAIN_CACHE"] = tempfile.mkdtemp(prefix="metta-terrain-test-")
    atexit.register(shutil.rmtree, os.environ["METTA_TERRAIN_CACHE"], ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for a module's browser tests; they skip where no Chromium is installed."""
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (CI installs Debian's chromium package)")
    with HeadlessBrowser(width=1400, height=900) as b:
        yield b
