"""Shared setup for the seed-document tests: run directories under tmp_path, wandb off (one torch thread comes
from tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def quiet_small_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "train_dir"))  # setup_run_directories() with no arguments
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)  # relative paths the seeds write ("config.yaml", ./train_dir) stay in tmp_path
