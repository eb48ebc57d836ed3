"""Shared setup for the seed-document tests: one torch thread, run directories under tmp_path, wandb off."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def quiet_small_machine(tmp_path, monkeypatch):
    # Tiny tensors: a second intra-op thread only spins, and on a busy 2-core machine makes each op far slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "train_dir"))  # setup_run_directories() with no arguments
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)  # relative paths the seeds write ("config.yaml", ./train_dir) stay in tmp_path
    yield
    torch.set_num_threads(threads)
