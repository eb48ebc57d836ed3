"""TrainerConfig: upstream defaults, validators with numbers in the message, dict/YAML round trips."""

import pytest
from omegaconf import OmegaConf
from pydantic import ValidationError

from metta.common.config_cli import ConfigFileError
from metta.rl.trainer_config import KickstartConfig, PPOConfig, TrainerConfig


def test_defaults_match_upstream_and_construct():
    cfg = TrainerConfig()
    assert (cfg.batch_size, cfg.minibatch_size, cfg.bptt_horizon, cfg.update_epochs) == (524288, 16384, 64, 1)
    assert (cfg.ppo.clip_coef, cfg.ppo.ent_coef, cfg.ppo.gae_lambda, cfg.ppo.gamma, cfg.ppo.vf_coef) == (
        0.1,
        0.0021,
        0.916,
        0.977,
        0.44,
    )
    assert cfg.optimizer.learning_rate == 0.0004573146765703167 and cfg.optimizer.eps == 1e-12
    assert cfg.prioritized_experience_replay.prio_alpha == 0.0 and cfg.vtrace.vtrace_rho_clip == 1.0
    assert cfg.kickstart.anneal_ratio == 0.65 and cfg.checkpoint.checkpoint_interval == 60
    assert cfg.num_workers == 1 and cfg.checkpoint.checkpoint_dir is None  # None: the run directory's folder
    placed = cfg.with_run_dir("/runs/a")
    assert (placed.checkpoint.checkpoint_dir, placed.simulation.replay_dir, placed.profiler.profile_dir) == (
        "/runs/a/checkpoints",
        "/runs/a/replays",
        "/runs/a/torch_traces",
    )
    assert (
        TrainerConfig(checkpoint={"checkpoint_dir": "/ck"}).with_run_dir("/runs/a").checkpoint.checkpoint_dir == "/ck"
    )
    seed = TrainerConfig(
        total_timesteps=10_000_000, batch_size=16384, minibatch_size=512, ppo=PPOConfig(gamma=0.99, gae_lambda=0.95)
    )
    assert seed.ppo.gamma == 0.99


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"batch_size": 16384, "minibatch_size": 500},
            r"minibatch_size=500 must divide batch_size=16384 \(remainder 384\).*minibatch_size=256",
        ),
        ({"batch_size": 1024, "minibatch_size": 2048}, r"minibatch_size=2048 is larger than batch_size=1024"),
        (
            {"batch_size": 4096, "minibatch_size": 1024, "bptt_horizon": 48},
            r"minibatch_size=1024 must be a multiple of bptt_horizon=48",
        ),
        ({"curriculum": None}, r"curriculum"),
        ({"_target_": "metta.rl.trainer.MettaTrainer"}, r"_target_ is not a metta setting: metta has one trainer loop"),
        ({"env": "/env/mettagrid/simple"}, r"env is not a metta setting: pass an env config's path as curriculum"),
        ({"hyperparameter_scheduler": {}}, r"hyperparameter_scheduler is not a metta setting: upstream disabled it"),
        ({"require_contiguous_env_ids": True}, r"require_contiguous_env_ids is not a metta setting"),
        (
            {"minibatch_size": 1024, "max_minibatch_size": 96, "bptt_horizon": 16},
            r"max_minibatch_size=96 must divide minibatch_size=1024",
        ),
        (
            {"checkpoint": {"checkpoint_interval": 50}, "simulation": {"evaluate_interval": 10}},
            r"evaluate_interval=10 must be 0 .* checkpoint.checkpoint_interval=50",
        ),
        (
            {
                "checkpoint": {"checkpoint_interval": 50, "wandb_checkpoint_interval": 20},
                "simulation": {"evaluate_interval": 0},
            },
            r"wandb_checkpoint_interval=20 must be >= checkpoint.checkpoint_interval=50",
        ),
        ({"ppo": {"clip_coef": -1}}, r"clip_coef"),
        ({"optimizer": {"type": "sgd"}}, r"'adam' or 'muon'"),
        ({"bogus_field": 1}, r"bogus_field"),
        ({"checkpoint": {"checkpoint_dir": ""}}, r"checkpoint_dir"),
    ],
)
def test_bad_configs_fail_with_numbers(kwargs, message):
    with pytest.raises(ConfigFileError, match=message):  # from_dict names the source, then each field
        TrainerConfig.from_dict(kwargs)


def test_num_agents_check():
    cfg = TrainerConfig(batch_size=4096, minibatch_size=1024, bptt_horizon=64)
    cfg.check_num_agents(64)
    with pytest.raises(
        ValueError, match=r"batch_size=4096 is smaller than num_agents \* bptt_horizon = 100 \* 64 = 6400"
    ):
        cfg.check_num_agents(100)


def test_assignment_is_validated():
    cfg = TrainerConfig(batch_size=4096, minibatch_size=1024)
    with pytest.raises(ValidationError, match="minibatch_size=1000"):
        cfg.minibatch_size = 1000


def test_dict_yaml_round_trip(tmp_path):
    cfg = TrainerConfig.from_dict(
        {
            "batch_size": 8192,
            "minibatch_size": 1024,
            "ppo": {"target_kl": 0.02},
            "kickstart": {"additional_teachers": [{"teacher_uri": "file://x.pt"}]},
        }
    )
    path = tmp_path / "sub" / "trainer.yaml"
    cfg.to_yaml(path)
    assert TrainerConfig.from_yaml(path) == cfg
    assert TrainerConfig.from_dict(OmegaConf.create(cfg.to_dict())) == cfg
    assert "_target_" not in cfg.to_dict()
    assert isinstance(cfg.kickstart, KickstartConfig) and cfg.kickstart.additional_teachers[0].action_loss_coef == 1.0


def test_with_run_dir_fills_only_the_folders_left_unset(tmp_path):
    cfg = TrainerConfig(batch_size=4096, minibatch_size=512).with_run_dir(tmp_path)
    assert cfg.checkpoint.checkpoint_dir == str(tmp_path / "checkpoints")
    assert cfg.simulation.replay_dir == str(tmp_path / "replays")
    assert cfg.profiler.profile_dir == str(tmp_path / "torch_traces")
    explicit = TrainerConfig(checkpoint={"checkpoint_dir": "/ck"}).with_run_dir(tmp_path)
    assert explicit.checkpoint.checkpoint_dir == "/ck"


def test_tf32_and_cuda_graphs_are_settings_written_with_the_config():
    import torch

    cfg = TrainerConfig()
    assert cfg.tf32 and cfg.cuda_graphs
    text = cfg.to_yaml()
    assert "tf32: true" in text and "cuda_graphs: true" in text  # config.yaml records both
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        TrainerConfig(tf32=False).apply_tf32()
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        cfg.apply_tf32()
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
