"""metta.train.train_config: presets, from_dict (seed 001's legacy dict too), YAML round trips, load_yaml_config."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf
from pydantic import BaseModel, ValidationError

from metta.agent.agent_config import AgentConfig, fast_components, interface_default_components
from metta.agent.metta_agent import make_policy
from metta.common.config_cli import field_paths, help_text, parse_config
from metta.mettagrid.curriculum.loader import curriculum_from_any
from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.vecenv_factory import build_vecenv
from metta.rl.trainer_config import PPOConfig, TrainerConfig
from metta.train import (
    PRESETS,
    ConfigFileError,
    TrainingConfig,
    cpu_smoke_config,
    cpu_trainer_config,
    gpu_full_config,
    load_yaml_config,
    small_fast_config,
)


# ----------------------------------------------------------------------------------------------------
# Presets
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_fit_their_envs(name):
    config = PRESETS[name]()
    assert isinstance(config, TrainingConfig) and config.experiment_name == name
    assert TrainingConfig.model_validate(config.model_dump(by_alias=True)) == config
    # Every env of the packaged curricula has 4 agents; each agent needs one bptt segment per batch.
    kwargs = config.env_kwargs(curriculum_from_any(config.trainer.curriculum))  # build_vecenv's arguments
    assert kwargs["async_factor"] == config.trainer.async_factor
    if config.num_envs is None:  # sized from the forward-pass target (seed 003's arithmetic)
        assert kwargs["num_envs"] == 1
        assert kwargs["forward_pass_minibatch_target_size"] == config.trainer.forward_pass_minibatch_target_size
        num_envs = config.trainer.async_factor * config.trainer.forward_pass_minibatch_target_size // 4
    else:
        assert kwargs["num_envs"] == config.num_envs and kwargs["forward_pass_minibatch_target_size"] is None
        num_envs = config.num_envs
    config.trainer.check_num_agents(num_envs * 4)
    if config.vectorization == "serial":  # the async_factor batches, stepped in turn in this process
        assert kwargs["num_workers"] == config.trainer.async_factor


def test_envs_sized_from_the_target_fit_the_batch_and_say_so(caplog):
    """num_envs=None: as many envs as forward_pass_minibatch_target_size agents make, unless a batch could not hold
    one bptt row per agent; then fewer, with a warning naming the settings."""
    config = TrainingConfig(trainer=TrainerConfig(batch_size=8192, minibatch_size=2048, bptt_horizon=16))
    curriculum = curriculum_from_any(config.trainer.curriculum)  # 4 agents per env
    with caplog.at_level(logging.WARNING, logger="metta.rl.run_config"):
        kwargs = config.env_kwargs(curriculum)
    # TrainerConfig's own target (4096 agents per pass, async_factor 2) would need 131072 steps per batch.
    assert kwargs["forward_pass_minibatch_target_size"] == 8192 // (16 * 2)
    assert "envs sized to fit the batch: trainer.forward_pass_minibatch_target_size=4096" in caplog.text
    assert "trainer.batch_size=8192" in caplog.text
    config.trainer.check_num_agents(2 * kwargs["forward_pass_minibatch_target_size"])
    caplog.clear()
    assert TrainingConfig().env_kwargs(curriculum)["forward_pass_minibatch_target_size"] == 256 and not caplog.text


def test_one_rule_for_vectorization_workers_and_async_batches():
    # Serial steps its async_factor batches in turn (no worker processes), with the sizes from the target or not.
    serial = TrainingConfig(num_envs=8, trainer=TrainerConfig(async_factor=2))
    assert serial.env_kwargs()["num_workers"] == 2 and serial.env_kwargs()["async_factor"] == 2
    with pytest.raises(ValidationError, match="num_envs=7 must be a multiple of trainer.async_factor=2"):
        TrainingConfig(num_envs=7, trainer=TrainerConfig(async_factor=2))
    with pytest.raises(ValidationError, match="trainer.num_workers=2 needs vectorization='multiprocessing'"):
        TrainingConfig(trainer=TrainerConfig(num_workers=2, async_factor=1))
    mp = TrainingConfig(vectorization="multiprocessing", num_envs=8, trainer=TrainerConfig(num_workers=4))
    assert mp.env_kwargs()["num_workers"] == 4
    assert mp.env_kwargs()["prebuild_maps"] and not serial.env_kwargs()["prebuild_maps"]


def test_multiprocessing_workers_build_the_curriculums_terrain_sets_before_the_first_step(tmp_path, monkeypatch):
    """A multiprocessing run's envs (the trainer builds them from ``env_kwargs``) have the curriculum's terrain
    sets built into the disk cache, one share per worker, by the time the vecenv is up."""
    monkeypatch.setenv("METTA_TERRAIN_CACHE", str(tmp_path))  # inherited by the worker processes
    small_sets = ["varied_terrain/dense_small", "varied_terrain/sparse_small"]
    curriculum = curriculum_from_any(
        {
            "_target_": "metta.mettagrid.curriculum.bucketed.BucketedCurriculum",
            "env_cfg_template_path": "/env/mettagrid/navigation/training/terrain_from_numpy_defaults",
            "buckets": {"game.map_builder.room.dir": {"values": small_sets}},
        }
    )
    config = TrainingConfig(
        vectorization="multiprocessing", num_envs=2, trainer=TrainerConfig(num_workers=2, async_factor=1)
    )
    env = build_vecenv(curriculum, seed=0, **config.env_kwargs(curriculum))
    try:
        built = sorted(path.name.split("__own__")[0] for path in tmp_path.iterdir())
    finally:
        env.close()
    assert built == [name.replace("/", "__") for name in small_sets]


def test_run_key_total_timesteps_and_removed_keys():
    assert TrainingConfig(run="named").experiment_name == "named"  # run.py's and upstream's name for it
    assert TrainingConfig.from_dict({"run": "over"}, base=small_fast_config()).experiment_name == "over"
    assert small_fast_config().total_timesteps == small_fast_config().trainer.total_timesteps  # seed 001's loop
    with pytest.raises(ConfigFileError, match="'run_dir' is not a metta setting: the run directory is"):
        parse_config(TrainingConfig, ["run_dir=/tmp/x"])
    with pytest.raises(ConfigFileError, match="run_dir is not a metta setting: the run directory is"):
        TrainingConfig.from_dict({"run_dir": "/tmp/x"})


def test_help_lists_every_key_with_its_choices_and_a_description():
    rows = field_paths(TrainingConfig)
    assert [key for key, _, _, description in rows if not description] == []
    choices = {key: kind for key, kind, _, _ in rows if kind.startswith("one of:")}
    assert choices == {
        "vectorization": "one of: serial, multiprocessing",
        "trainer.compile_mode": "one of: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
        "trainer.optimizer.type": "one of: adam, muon",
        "trainer.lr_scheduler.schedule_type": "one of: linear, cosine, exponential or null",
        "trainer.initial_policy.type": "one of: top, latest, specific",
        "trainer.simulation.suite": "one of: terrain, navigation, smoke",
    }
    text = help_text(TrainingConfig, "run.py")
    assert "  agent='fast_cpu'  (AgentConfig: a name or a mapping)" in text and "(Literal)" not in text


def test_gpu_preset_uses_upstream_scale():
    config = gpu_full_config()
    trainer = config.trainer
    assert (trainer.batch_size, trainer.minibatch_size, trainer.bptt_horizon) == (524288, 16384, 64)
    assert config.device == "cuda" and config.vectorization == "multiprocessing"
    assert trainer.async_factor == 2 and trainer.forward_pass_minibatch_target_size == 4096
    assert trainer.ppo == PPOConfig()  # upstream's PPO defaults
    assert config.agent.name == "fast"  # upstream's agent; the CPU default is fast_cpu
    assert config.wandb.enabled is None  # on when an API key (or WANDB_MODE=offline) is there


def test_smoke_preset_is_tiny_and_small_fast_is_cpu_sized():
    smoke = cpu_smoke_config()
    assert smoke.device == "cpu" and smoke.trainer.total_timesteps <= 4096
    assert smoke.trainer.total_timesteps // smoke.trainer.batch_size >= 2 * smoke.trainer.checkpoint.checkpoint_interval
    small = small_fast_config()
    assert small.trainer.batch_size <= 16384 and small.vectorization == "serial"


def test_defaults_run_on_a_cpu_and_edits_are_validated():
    config = TrainingConfig()
    assert config.vectorization == "serial" and config.trainer == cpu_trainer_config()
    assert config.agent == AgentConfig(name="fast_cpu") and config.agent.components["_core_"].nn_params == {
        "num_layers": 1
    }
    config.trainer.total_timesteps = 5000
    with pytest.raises(ValidationError, match="minibatch_size=2048 must divide batch_size=3000"):
        config.trainer.batch_size = 3000
    with pytest.raises(ValidationError, match="experiment_name='my run' must be"):
        config.experiment_name = "my run"
    with pytest.raises(ValidationError, match="device='gpu' is not a torch device"):
        config.device = "gpu"
    with pytest.raises(ValidationError, match="num_epochs"):
        TrainingConfig(num_epochs=3)


def test_multiprocessing_layout_is_checked():
    config = gpu_full_config()
    with pytest.raises(ValidationError, match="num_envs=100 is not divisible by num_workers=8"):
        config.num_envs = 100
    with pytest.raises(ValidationError, match="trainer.num_workers=8 needs vectorization='multiprocessing'"):
        config.vectorization = "serial"
    with pytest.raises(ValidationError, match="num_workers=3 must be a multiple of trainer.async_factor=2"):
        TrainingConfig(
            vectorization="multiprocessing", num_envs=8, trainer=TrainerConfig(num_workers=3, async_factor=2)
        )


# ----------------------------------------------------------------------------------------------------
# Seed 001's snippets
def test_a_hand_built_config_with_a_named_agent_and_its_width():
    config = TrainingConfig(
        experiment_name="my_experiment",
        agent=AgentConfig(name="simple_cnn", hidden_size=512),
        trainer=TrainerConfig(total_timesteps=1_000_000),
    )
    assert config.agent.hidden_size == 512 and config.agent.components["_core_"].output_size == 512
    assert set(config.agent.components) == set(fast_components())  # simple_cnn is the fast CNN-LSTM graph
    assert config.trainer.total_timesteps == 1_000_000


def test_a_legacy_dict_converts_with_the_defaults_filling_the_rest():
    yaml_config = {"agent": {"name": "simple_cnn"}, "trainer": {"total_timesteps": 10_000_000}}
    config = TrainingConfig.from_dict(yaml_config)
    assert config.agent.name == "simple_cnn" and config.agent.hidden_size == 128
    assert config.agent.components == fast_components()
    assert config.trainer.total_timesteps == 10_000_000
    # The rest comes from the defaults of TrainingConfig, which run on a CPU.
    assert config.trainer.batch_size == TrainingConfig().trainer.batch_size


def test_agent_name_and_hidden_size_build_that_policy():
    env = MettaGridEnv(
        {
            "game": {
                "num_agents": 2,
                "max_steps": 20,
                "map_builder": {"type": "random", "width": 8, "height": 8, "agents": 2},
            }
        },
        num_envs=1,
        seed=0,
    )
    policy = make_policy(env, AgentConfig(name="simple_cnn", hidden_size=48))
    assert policy.hidden_size == 48 and policy.core_num_layers == 2
    big = AgentConfig(name="interface_default")
    assert big.hidden_size == 512 and big.components == interface_default_components()


def test_agent_name_errors_are_clear():
    with pytest.raises(
        ValidationError,
        match=r"name='latent_attn_med' is unknown .*not implemented.*'fast', 'fast_cpu', 'interface_default'",
    ):
        AgentConfig(name="latent_attn_med")
    with pytest.raises(ValidationError, match="hidden_size=64 conflicts with components._core_.output_size=128"):
        AgentConfig(hidden_size=64, components=fast_components())
    with pytest.raises(ConfigFileError, match=r"field agent: .*name='bogus' is unknown"):
        TrainingConfig.from_dict({"agent": {"name": "bogus"}})


# ----------------------------------------------------------------------------------------------------
# from_dict
def test_from_dict_merges_nested_models_and_replaces_the_agent():
    config = TrainingConfig.from_dict({"trainer": {"ppo": {"gamma": 0.9}}, "seed": 7})
    default = TrainingConfig()
    assert config.trainer.ppo.gamma == 0.9 and config.seed == 7
    assert config.trainer.ppo.clip_coef == default.trainer.ppo.clip_coef
    assert config.trainer.batch_size == default.trainer.batch_size
    # The agent section is replaced as a whole, so a named graph never keeps the base's components.
    big = TrainingConfig.from_dict({"agent": {"name": "interface_default"}}, base=small_fast_config())
    assert big.agent.components == interface_default_components()
    assert big.experiment_name == "small_fast"
    # Dict-valued fields are replaced, not merged.
    base = TrainingConfig.from_dict({"trainer": {"env_overrides": {"game.max_steps": 100}}})
    changed = TrainingConfig.from_dict({"trainer": {"env_overrides": {"game.num_agents": 2}}}, base=base)
    assert changed.trainer.env_overrides == {"game.num_agents": 2}


def test_from_dict_accepts_dictconfig_and_upstream_run_key():
    config = TrainingConfig.from_dict(OmegaConf.create({"run": "legacy_run", "trainer": {"bptt_horizon": 8}}))
    assert config.experiment_name == "legacy_run" and config.trainer.bptt_horizon == 8


def test_from_dict_errors_name_field_and_value():
    with pytest.raises(ConfigFileError) as err:
        TrainingConfig.from_dict({"trainer": {"batch_sz": 3, "ppo": {"gamma": 1.5}}, "num_envs": 0})
    message = str(err.value)
    assert "TrainingConfig.from_dict" in message
    assert "field trainer.batch_sz=3: unknown field; did you mean batch_size" in message
    assert "field trainer.ppo.gamma=1.5: Input should be less than or equal to 1" in message
    assert "field num_envs=0" in message
    with pytest.raises(ConfigFileError, match="mapping, not a list"):
        TrainingConfig.from_dict([1, 2])


# ----------------------------------------------------------------------------------------------------
# YAML
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_round_trip_of_each_preset(tmp_path, name):
    config = PRESETS[name]()
    path = tmp_path / "nested" / f"{name}.yaml"
    text = config.to_yaml(path)
    assert path.read_text() == text
    assert TrainingConfig.from_yaml(path) == config


def test_yaml_round_trip_of_an_edited_config(tmp_path):
    config = small_fast_config()
    config.experiment_name = "edited"
    config.agent = AgentConfig(name="simple_cnn", hidden_size=96, clip_range=0.1)
    config.trainer.env_overrides = {"game.max_steps": 200}
    config.trainer.ppo.ent_coef = 0.05
    config.wandb.tags = ["a", "b"]
    config.data_dir = str(tmp_path / "runs")
    config.to_yaml(tmp_path / "c.yaml")
    loaded = TrainingConfig.from_yaml(tmp_path / "c.yaml")
    assert loaded == config and loaded.to_dict() == config.to_dict()
    # Through load_yaml_config too (any model).
    assert load_yaml_config(tmp_path / "c.yaml", TrainingConfig) == config


def test_partial_yaml_over_a_base(tmp_path):
    (tmp_path / "p.yaml").write_text("experiment_name: partial\ntrainer:\n  total_timesteps: 4096\n")
    config = TrainingConfig.from_yaml(tmp_path / "p.yaml", base=cpu_smoke_config())
    assert config.experiment_name == "partial" and config.trainer.total_timesteps == 4096
    assert config.trainer.batch_size == cpu_smoke_config().trainer.batch_size


def test_load_yaml_config_reads_any_model(tmp_path):
    (tmp_path / "ppo.yaml").write_text("gamma: 0.99\nclip_coef: 0.2\n")
    assert load_yaml_config(tmp_path / "ppo.yaml", PPOConfig) == PPOConfig(gamma=0.99, clip_coef=0.2)

    class Plain(BaseModel):
        lr: float = 1e-3
        name: str = "x"

    (tmp_path / "plain.yaml").write_text("lr: 0.5\n")
    assert load_yaml_config(tmp_path / "plain.yaml", Plain) == Plain(lr=0.5)
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml_config(tmp_path / "empty.yaml", PPOConfig) == PPOConfig()


def test_load_yaml_config_errors_name_file_field_and_value(tmp_path):
    bad = tmp_path / "bad_ppo.yaml"
    bad.write_text("gamma: 2.0\nclip_coeff: 0.2\n")
    with pytest.raises(ConfigFileError) as err:
        load_yaml_config(bad, PPOConfig)
    message = str(err.value)
    assert str(bad) in message and "invalid PPOConfig" in message
    assert "field gamma=2.0: Input should be less than or equal to 1" in message
    assert "field clip_coeff=0.2: unknown field; did you mean clip_coef" in message

    nested = tmp_path / "trainer.yaml"
    nested.write_text("batch_size: 1000\nminibatch_size: 300\nppo:\n  vf_coef: -1\n")
    with pytest.raises(ConfigFileError) as err:
        load_yaml_config(nested, TrainerConfig)
    assert str(nested) in str(err.value) and "field ppo.vf_coef=-1" in str(err.value)

    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        load_yaml_config(tmp_path / "no_such.yaml", PPOConfig)
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("gamma: [0.9\n")
    with pytest.raises(ConfigFileError, match=f"{syntax}: not valid YAML at line 2, column 1"):
        load_yaml_config(syntax, PPOConfig)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigFileError, match=f"{listing}: the file must hold a mapping of fields, not a list"):
        load_yaml_config(listing, PPOConfig)
    with pytest.raises(TypeError, match="must be a pydantic model class"):
        load_yaml_config(bad, dict)


def test_from_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  ppo:\n    gama: 0.9\n")
    with pytest.raises(
        ConfigFileError,
        match=rf"{path}: invalid TrainingConfig:\n  field trainer.ppo.gama=0.9: unknown field; did you mean gamma",
    ):
        TrainingConfig.from_yaml(path)
    path.write_text("agent:\n  components:\n    _core_:\n      type: LSTM\n      nn_paramz: {}\n")
    with pytest.raises(
        ConfigFileError, match=r"field agent.components._core_.nn_paramz: unknown field; did you mean nn_params"
    ):
        TrainingConfig.from_yaml(path)
