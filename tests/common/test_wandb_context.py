"""wandb: off by default without a key, on with WANDB_MODE=offline (no network), clear errors otherwise."""

from __future__ import annotations

import glob
import os

import pytest

from metta.common.wandb_context import WandbContext, wandb_run_id, wandb_wanted
from metta.interface import cleanup_wandb, initialize_wandb


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_off_by_default_without_a_key(no_wandb_env, tmp_path):
    run, ctx = initialize_wandb("r", str(tmp_path))
    assert run is None and not ctx.enabled
    cleanup_wandb(ctx)
    cleanup_wandb(None)
    assert not os.path.exists(tmp_path / "wandb")


def test_decision_from_the_environment(no_wandb_env, monkeypatch):
    assert not wandb_wanted(None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_wanted(None)
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert not wandb_wanted(None)
    monkeypatch.delenv("WANDB_DISABLED")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_wanted(None) and not wandb_wanted(False)
    assert wandb_run_id("a b/c:d") == "a-b-c-d"


def test_enabled_without_a_key_is_a_clear_error(no_wandb_env):
    with pytest.raises(RuntimeError, match="WANDB_MODE=offline"):
        WandbContext("r", enabled=True).__enter__()
    with pytest.raises(ValueError, match="run_name=''"):
        WandbContext("")
    with pytest.raises(TypeError, match="config is a int"):
        initialize_wandb("r", config=3)


def test_offline_run_writes_its_directory(no_wandb_env, monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    from metta.rl.trainer_config import TrainerConfig

    run, ctx = initialize_wandb("offline_test", str(tmp_path), config=TrainerConfig())
    try:
        assert run is not None
        run.log({"overview/sps": 123.0})
        assert run.config["batch_size"] == TrainerConfig().batch_size
    finally:
        cleanup_wandb(ctx)
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*offline_test"))
    assert len(runs) == 1 and glob.glob(os.path.join(runs[0], "*.wandb"))
