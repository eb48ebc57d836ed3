"""Structured configs for a whole training run: ``TrainingConfig``, presets, and YAML loading (seeds 000/001).

    from metta.train.train_config import TrainingConfig, small_fast_config, load_yaml_config

    config = small_fast_config()                        # a preset
    config.trainer.total_timesteps = 200_000            # edits are validated on assignment
    config.to_yaml("my_run.yaml")                       # the complete config, written atomically
    config = TrainingConfig.from_yaml("my_run.yaml")    # the same config back
    config = TrainingConfig.from_dict({"agent": {"name": "simple_cnn"}, "trainer": {"total_timesteps": 10_000_000}})
    ppo = load_yaml_config("ppo.yaml", PPOConfig)       # any pydantic model from a YAML file

A ``TrainingConfig`` is made of the existing models, not copies of their fields: ``agent`` is the
``AgentConfig`` of ``metta.agent``, ``trainer`` the ``TrainerConfig`` of ``metta.rl`` (which also holds the
curriculum path, ``env_overrides``, ``num_workers`` and ``async_factor``). It adds only what a run needs
besides them: a name, the device, the seed, the number of envs and how they are vectorized, where files go,
and wandb.

``from_dict`` and ``from_yaml`` read partial configs: a key given replaces that key of ``base`` (default:
``TrainingConfig()``); nested models (``trainer``, ``trainer.ppo``, ...) merge key by key, while ``agent`` and
dict-valued fields (``env_overrides``, ``agent.components``) are replaced whole, so a graph never mixes two
configs. A legacy top-level ``run`` key is read as ``experiment_name``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from metta.agent.agent_config import AgentConfig, fast_agent_config
from metta.common.device import parse_device
from metta.common.fs import atomic_write_text
from metta.mettagrid.vecenv import check_layout
from metta.rl.trainer_config import TrainerConfig, cpu_learning_settings

__all__ = [
    "ConfigFileError",
    "TrainingConfig",
    "WandbConfig",
    "cpu_smoke_config",
    "gpu_full_config",
    "load_yaml_config",
    "small_fast_config",
    "PRESETS",
]

M = TypeVar("M", bound=BaseModel)

# The experiment name becomes a directory name and a wandb run id.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


class ConfigFileError(ValueError):
    """A config that cannot be read or does not validate; the message names the file, the fields and values."""


class WandbConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool | None = Field(default=False, description="None: on with an API key or WANDB_MODE=offline")
    project: str | None = Field(default=None, description="default: $WANDB_PROJECT or 'metta'")
    entity: str | None = Field(default=None, description="default: $WANDB_ENTITY")
    tags: list[str] = Field(default_factory=list)


def _cpu_trainer() -> TrainerConfig:
    """The trainer of ``TrainingConfig()``: sized to show learning on a laptop CPU, with run.py's update settings
    (``cpu_learning_settings()``) at a smaller batch."""
    return TrainerConfig(
        total_timesteps=1_000_000,
        batch_size=8192,
        minibatch_size=2048,
        bptt_horizon=16,
        async_factor=1,
        zero_copy=False,
        curriculum="/env/mettagrid/curriculum/navigation/bucketed",
        **cpu_learning_settings(),
        checkpoint={"checkpoint_interval": 20, "wandb_checkpoint_interval": 0},
        simulation={"evaluate_interval": 0},
    )


class TrainingConfig(BaseModel):
    """Everything one training run reads. Every field has a default that runs on a CPU."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    experiment_name: str = Field(default="metta_experiment", description="names the run directory and the wandb run")
    agent: AgentConfig = Field(default_factory=fast_agent_config)
    trainer: TrainerConfig = Field(default_factory=_cpu_trainer)
    device: str | None = Field(default=None, description="'cpu', 'cuda', 'cuda:N'; None: CUDA when available")
    seed: int = Field(default=0, ge=0)
    num_envs: int | None = Field(
        default=32,
        ge=1,
        description="envs per process (agents = num_envs x agents per env); None: as many as "
        "trainer.forward_pass_minibatch_target_size agents per forward pass make",
    )
    vectorization: Literal["serial", "multiprocessing"] = "serial"
    data_dir: str | None = Field(default=None, description="None: $DATA_DIR or ./train_dir")
    run_dir: str | None = Field(default=None, description="None: {data_dir}/{experiment_name}")
    keep_checkpoints: int = Field(default=5, ge=1, description="checkpoints kept on disk (older ones pruned)")
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @field_validator("experiment_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"experiment_name={value!r} must be 1-128 letters, digits, '.', '_', '=' or '-', starting with a "
                "letter or digit (it names a directory and a wandb run), e.g. 'nav_lr3e-4'"
            )
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str | None) -> str | None:
        if value is not None:
            parse_device(value)  # null means auto
        return value

    @model_validator(mode="after")
    def _check_vectorization(self) -> TrainingConfig:
        async_factor, workers = self.trainer.async_factor, self.trainer.num_workers
        if self.vectorization == "serial" and workers > 1:
            raise ValueError(
                f"trainer.num_workers={workers} needs vectorization='multiprocessing' (serial steps every env in this "
                "process); set num_workers=1 or vectorization='multiprocessing'"
            )
        if self.num_envs is None:
            return self  # sized from trainer.forward_pass_minibatch_target_size by the env itself
        if self.num_envs % async_factor:
            raise ValueError(
                f"num_envs={self.num_envs} must be a multiple of trainer.async_factor={async_factor} (the envs are "
                f"split into that many batches); use num_envs={async_factor * (self.num_envs // async_factor + 1)}"
            )
        if self.vectorization == "serial":
            return self  # the async_factor batches are stepped in turn in this process
        if workers % async_factor:
            raise ValueError(
                f"trainer.num_workers={workers} must be a multiple of trainer.async_factor={async_factor} (each batch "
                f"of envs has its own workers); use num_workers={async_factor * max(1, workers // async_factor)}"
            )
        check_layout(self.num_envs, self.num_envs // async_factor, workers)  # the vecenv's own rule and message
        return self

    # ------------------------------------------------------------------------------------------------
    # What the run derives from the config
    def resolved_run_dir(self) -> str:
        """``run_dir``, else ``{data_dir or $DATA_DIR or ./train_dir}/{experiment_name}``."""
        if self.run_dir:
            return self.run_dir
        data_dir = self.data_dir or os.environ.get("DATA_DIR") or "./train_dir"
        return os.path.join(data_dir, self.experiment_name)

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``metta.interface.Environment(**config.env_kwargs())``.

        With ``vectorization="serial"`` this process steps the trainer's ``async_factor`` batches in turn (one
        partition of the envs per batch); ``num_envs=None`` sizes the envs from
        ``trainer.forward_pass_minibatch_target_size``.
        """
        serial = self.vectorization == "serial"
        trainer = self.trainer
        sized_by_target = self.num_envs is None
        return {
            "curriculum_path": trainer.curriculum,
            "env_config": dict(trainer.env_overrides) or None,
            "device": self.device or "cpu",
            "seed": self.seed,
            "num_envs": 1 if sized_by_target else self.num_envs,
            "num_workers": trainer.async_factor if serial else trainer.num_workers,
            "async_factor": trainer.async_factor,
            "zero_copy": trainer.zero_copy,
            "vectorization": self.vectorization,
            "is_training": True,
            "worker_timeout_s": trainer.worker_timeout_s,
            "forward_pass_minibatch_target_size": trainer.forward_pass_minibatch_target_size
            if sized_by_target
            else None,
        }

    # ------------------------------------------------------------------------------------------------
    # Dicts and YAML
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The complete config as YAML text; also written atomically to ``path`` when given."""
        text = OmegaConf.to_yaml(OmegaConf.create(self.to_dict()))
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(os.fspath(path), text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Any, base: TrainingConfig | None = None) -> TrainingConfig:
        """A config from a (partial, possibly legacy) dict or DictConfig, laid over ``base`` (default: the defaults).

        Raises ``ConfigFileError`` naming each bad field and its value.
        """
        return _validate(cls, _training_data(data, base), source="TrainingConfig.from_dict")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, base: TrainingConfig | None = None) -> TrainingConfig:
        """A config from a YAML file (partial files are laid over ``base``); errors name the file."""
        raw = _read_yaml(path)
        try:
            data = _training_data(raw, base)
        except ConfigFileError as err:
            raise ConfigFileError(f"{path}: {err}") from None
        return _validate(cls, data, source=str(path))


# ----------------------------------------------------------------------------------------------------
# Presets
def small_fast_config() -> TrainingConfig:
    """Seed 001's preset: the fast agent on the navigation curriculum, sized for a laptop CPU (minutes)."""
    return TrainingConfig(experiment_name="small_fast", trainer=_cpu_trainer(), num_envs=32)


def cpu_smoke_config() -> TrainingConfig:
    """A run that finishes in seconds on a CPU: 8 agents on the simple env, 4 epochs, a checkpoint every 2."""
    return TrainingConfig(
        experiment_name="cpu_smoke",
        device="cpu",
        num_envs=2,  # the simple env has 4 agents
        trainer=TrainerConfig(
            total_timesteps=2048,
            batch_size=512,
            minibatch_size=256,
            bptt_horizon=16,
            async_factor=1,
            zero_copy=False,
            curriculum="/env/mettagrid/curriculum/simple",
            ppo={"ent_coef": 0.01, "gamma": 0.99, "gae_lambda": 0.95},
            optimizer={"learning_rate": 1e-3},
            checkpoint={"checkpoint_interval": 2, "wandb_checkpoint_interval": 0},
            simulation={"evaluate_interval": 0},
        ),
        keep_checkpoints=2,
    )


def gpu_full_config() -> TrainingConfig:
    """Upstream's scale on one GPU: batch 524288, minibatch 16384, bptt 64, 2048 navigation envs (8192 agents)
    in 8 worker processes, async double-buffering, upstream's PPO defaults and checkpoint/eval intervals."""
    return TrainingConfig(
        experiment_name="gpu_full",
        device="cuda",
        num_envs=None,  # from forward_pass_minibatch_target_size: 2 x 1024 envs of 4 agents, 8192 agents
        vectorization="multiprocessing",
        trainer=TrainerConfig(
            total_timesteps=10_000_000_000,
            batch_size=524288,
            minibatch_size=16384,
            bptt_horizon=64,
            update_epochs=1,
            num_workers=8,
            async_factor=2,
            forward_pass_minibatch_target_size=4096,
            curriculum="/env/mettagrid/curriculum/navigation/bucketed",
            optimizer={"learning_rate": 0.000457},
            checkpoint={"checkpoint_interval": 50, "wandb_checkpoint_interval": 50},
            simulation={"evaluate_interval": 200},
        ),
        wandb=WandbConfig(enabled=None),
    )


PRESETS = {"small_fast": small_fast_config, "cpu_smoke": cpu_smoke_config, "gpu_full": gpu_full_config}


# ----------------------------------------------------------------------------------------------------
# YAML loading for any model
def load_yaml_config(path: str | os.PathLike, model: type[M]) -> M:
    """``model`` (any pydantic model) validated from the YAML file at ``path`` (OmegaConf interpolations resolved).

    Raises ``FileNotFoundError`` for a missing file and ``ConfigFileError`` for a file that is not YAML, not a
    mapping, or does not validate; the message names the file, each bad field and its value.
    """
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"model={model!r} must be a pydantic model class, e.g. PPOConfig")
    return _validate(model, _read_yaml(path), source=str(path))


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist; check the path (cwd is {os.getcwd()})")
    try:
        loaded = OmegaConf.load(str(path))
        data = OmegaConf.to_container(loaded, resolve=True)
    except Exception as err:  # yaml and omegaconf raise several types for bad files
        raise ConfigFileError(f"{path}: cannot read YAML: {type(err).__name__}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the file must hold a mapping of fields, not a {type(data).__name__}")
    return data


def _validate(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigFileError(format_validation_error(err, model, source)) from None


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: ``field=value: what is wrong`` (and close field names for an unknown key)."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "(top level)"
        value = e.get("input")
        shown = f"={value!r}" if not isinstance(value, (dict, list)) else ""
        if e["type"] == "extra_forbidden":
            known = _field_names(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=3)
            if close:
                hint = f"; did you mean {', '.join(close)}?"
            else:
                hint = f"; known fields here: {', '.join(known)}" if known else ""
            lines.append(f"field {key}{shown}: unknown field{hint}")
        else:
            lines.append(f"field {key}{shown}: {e['msg']}")
    return f"{source}: invalid {model.__name__}:\n  " + "\n  ".join(lines)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds directly (``Model`` or ``Model | None``), not one inside a dict or list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _dict_value_model(annotation: Any) -> type[BaseModel] | None:
    """``Model`` for a ``dict[str, Model]`` field (such as ``agent.components``)."""
    if get_origin(annotation) is dict:
        args = get_args(annotation)
        if len(args) == 2:
            return _submodel(args[1])
    return None


def _field_names(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names (aliases where set) of the model at ``loc`` under ``model``; [] when unknown."""
    current: type[BaseModel] | None = model
    skip_key = False
    for part in loc:
        if skip_key:  # a key of a dict[str, Model] field: the model stays the dict's value model
            skip_key = False
            continue
        if current is None:
            return []
        field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        current = _submodel(field.annotation)
        if current is None:
            current = _dict_value_model(field.annotation)
            skip_key = current is not None
    if current is None:
        return []
    return sorted(f.alias or n for n, f in current.model_fields.items())


# ----------------------------------------------------------------------------------------------------
# Partial and legacy dicts
def _training_data(data: Any, base: TrainingConfig | None) -> dict[str, Any]:
    if OmegaConf.is_config(data):
        data = OmegaConf.to_container(data, resolve=True)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigFileError(f"a TrainingConfig is read from a mapping, not a {type(data).__name__}")
    data = dict(data)
    if "run" in data and "experiment_name" not in data:  # upstream's Hydra configs named the run `run`
        data["experiment_name"] = data.pop("run")
    base_data = (base or TrainingConfig()).model_dump(by_alias=True)
    return _merge(TrainingConfig, base_data, data)


def _merge(model: type[BaseModel], base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: recurse into nested models (except the agent), replace everything else."""
    out = dict(base)
    fields = {f.alias or n: f for n, f in model.model_fields.items()} | dict(model.model_fields)
    for key, value in update.items():
        field = fields.get(key)
        sub = _submodel(field.annotation) if field is not None else None
        if sub is not None and sub is not AgentConfig and isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(sub, out[key], value)
        else:
            out[key] = value
    return out
