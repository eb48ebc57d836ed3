"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest

from metta.common.headless_browser import HeadlessBrowser, find_chromium


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for a module's browser tests; they skip where no Chromium is installed."""
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (CI installs Debian's chromium package)")
    with HeadlessBrowser(width=1400, height=900) as b:
        yield b
