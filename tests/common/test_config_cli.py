"""Command-line configs: YAML file, dotted overrides validated against the typed model, --help."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from metta.common.config_cli import ConfigCliError, help_text, parse_config
from metta.rl.trainer_config import TrainerConfig


class RunCfg(BaseModel):
    run: str | None = None
    device: str = "cpu"
    trainer: TrainerConfig = Field(
        default_factory=lambda: TrainerConfig(batch_size=1024, minibatch_size=256, bptt_horizon=16)
    )


def test_overrides_change_one_field_and_keep_nested_defaults():
    cfg = parse_config(
        RunCfg, ["trainer.total_timesteps=20000", "device=cuda", "trainer.ppo.clip_coef=0.2", "run=smoke"]
    )
    assert cfg.trainer.total_timesteps == 20000 and cfg.trainer.ppo.clip_coef == 0.2
    assert cfg.trainer.batch_size == 1024  # from the default factory, not TrainerConfig's own default
    assert cfg.device == "cuda" and cfg.run == "smoke"


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run: fromfile\ntrainer:\n  update_epochs: 3\n  optimizer:\n    learning_rate: 0.01\n")
    cfg = parse_config(RunCfg, ["--config", str(path), "trainer.update_epochs=2"])
    assert cfg.run == "fromfile" and cfg.trainer.update_epochs == 2 and cfg.trainer.optimizer.learning_rate == 0.01


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trainer.totl_timesteps=5"], "did you mean total_timesteps"),
        (["nope=1"], "unknown config key 'nope'"),
        (["trainer.batch_size=abc"], "trainer.batch_size='abc'"),
        (["trainer.minibatch_size=500"], "minibatch_size=500 must divide batch_size=1024"),
        (["--config", "/no/such.yaml"], "no such file"),
        (["trainer.ppo"], "not key=value"),
    ],
)
def test_bad_overrides_fail_before_any_work_naming_the_key(argv, message):
    with pytest.raises(ConfigCliError, match=message):
        parse_config(RunCfg, argv)


def test_help_lists_fields(capsys):
    text = help_text(RunCfg, "run.py")
    assert "trainer.ppo.clip_coef=0.1" in text and "device='cpu'" in text
    with pytest.raises(SystemExit):
        parse_config(RunCfg, ["--help"])
    assert "usage:" in capsys.readouterr().out
