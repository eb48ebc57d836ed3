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


# Files whose tests start training processes, heaviest first (seconds of a suite run, from pytest --durations):
# pytest-xdist's --dist loadfile hands whole files to its workers in collection order, so starting with these
# leaves the many short files to even out the end, instead of one worker finishing a long file alone.
HEAVY_FIRST = (
    "tests/reliability/test_stop_and_resume.py",  # ~100
    "tests/reliability/test_multinode.py",  # ~45
    "tests/test_run_settings.py",  # ~40
    "tests/test_sweep.py",  # ~35
    "tests/benchmarks/test_benchmarks_run.py",  # ~25
    "tests/reliability/test_worker_faults.py",  # ~20
    "tests/test_run_py.py",
    "tests/test_demo_and_structured_example.py",
    "tests/test_examples_components.py",
    "tests/rl/test_learning.py",
    "tests/interface/test_checkpoints.py",
    "tests/seeds/test_interface_document.py",
    "tests/reliability/test_bad_input.py",
    "tests/reliability/test_write_faults.py",
    "tests/recipes/test_navigation_recipe.py",
    "tests/test_notebook.py",
    "tests/sim/test_evaluate_command.py",
    "tests/mettagrid/test_replay_viewer.py",  # ~8
)


def pytest_configure(config):
    """Keep HEAVY_FIRST's order under pytest-xdist: by default (``--loadscope-reorder``) its scheduler re-sorts the
    files by how many tests each holds, which puts the files of one long test last."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The files of HEAVY_FIRST first, in its order; every other file after them, in the usual order."""
    rank = {path: i for i, path in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable within a file
