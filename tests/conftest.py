"""Fixtures shared by test modules."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from metta.common.headless_browser import HeadlessBrowser, find_chromium

# Terrain sets a test generates whole go to a disk cache (metta.mettagrid.map.terrain): one of this session's
# own, inherited by the processes tests start, so no test reads what another session left in ~/.cache.
os.environ.setdefault("METTA_TERRAIN_CACHE", tempfile.mkdtemp(prefix="metta-terrain-test-"))


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for a module's browser tests; they skip where no Chromium is installed."""
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (CI installs Debian's chromium package)")
    with HeadlessBrowser(width=1400, height=900) as b:
        yield b


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine a second thread only spins
    (each op gets many times slower). Modules opt in: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
