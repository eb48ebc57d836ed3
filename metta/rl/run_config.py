"""``TrainingConfig``: everything one training run reads, the one config type of run.py, the functional loop and
the components (also importable as ``metta.train.train_config``, its documented path).

    config = TrainingConfig()                              # the CPU defaults (what `python run.py` trains)
    config = small_fast_config()                           # a preset
    config.trainer.total_timesteps = 200_000               # edits are validated on assignment
    config.to_yaml("my_run.yaml")                          # the complete config, written atomically
    config = TrainingConfig.from_yaml("my_run.yaml")       # the same config back
    config = TrainingConfig.from_dict({"agent": {"name": "simple_cnn"}, "trainer": {"total_timesteps": 10_000_000}})

It is made of the existing models, not copies of their fields: ``agent`` is the ``AgentConfig`` of
``metta.agent``, ``trainer`` the ``TrainerConfig`` of ``metta.rl.trainer_config`` (PPO, sizes, the curriculum,
workers, intervals). It adds what a run needs besides them: its name and data directory, the device, the seed,
the envs and how they are vectorized, what to evaluate, and wandb. ``python run.py --help`` lists every key.

Partial dicts and YAML files (``from_dict``, ``from_yaml``, ``--config``) are laid over the defaults: nested
models merge key by key, while ``agent`` and dict-valued fields are replaced whole, so a graph never mixes two
configs (``metta.common.config_cli``). An upstream top-level ``run`` key is the ``experiment_name``.

The envs, one rule for every combination: ``vectorization="serial"`` steps every env in this process, its envs
split into ``trainer.async_factor`` batches stepped in turn (``trainer.num_workers`` must be 1: there are no worker
processes); ``"multiprocessing"`` runs ``trainer.num_workers`` worker processes, a multiple of ``async_factor``
(each batch has its own workers), with ``num_envs`` split evenly among them, which build the curriculum's terrain
sets before the first step (``prebuild_maps``). ``num_envs=None`` sizes the envs from
``trainer.forward_pass_minibatch_target_size`` agents per forward pass, fewer when a batch could not hold one
``bptt_horizon`` row per agent (``env_kwargs`` says so).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from metta.agent.agent_config import AgentConfig, fast_cpu_agent_config, resolve_agent_config
from metta.common.device import parse_device
from metta.common.run_dirs import check_run_name
from metta.mettagrid.vecenv import agents_per_env, check_layout
from metta.rl.trainer_config import Config, TrainerConfig, cpu_learning_settings

__all__ = [
    "PRESETS",
    "TrainingConfig",
    "WandbConfig",
    "cpu_smoke_config",
    "cpu_trainer_config",
    "gpu_full_config",
    "small_fast_config",
]

logger = logging.getLogger(__name__)


class WandbConfig(Config):
    enabled: bool | None = Field(
        default=None, description="null: on with an API key or WANDB_MODE=offline; true/false force it"
    )
    project: str | None = Field(default=None, description="null: $WANDB_PROJECT or 'metta'")
    entity: str | None = Field(default=None, description="null: $WANDB_ENTITY or your default team")
    tags: list[str] = Field(default_factory=list, description="tags of the wandb run")


def cpu_trainer_config() -> TrainerConfig:
    """The CPU defaults (``TrainingConfig().trainer``): they show learning in minutes on a laptop CPU; raise the
    sizes on a GPU. The navigation curriculum, 3M agent steps, batch 32768, minibatch 2048, BPTT 16, 256 agents
    per forward pass (64 envs of 4 agents) in this process, ``cpu_learning_settings()`` (two passes per batch, lr
    1e-3, ent_coef 0.0005, gamma 0.99, gae_lambda 0.95, the value loss unclipped; docs/training.md says why), a
    checkpoint every 20 epochs and an evaluation every 50 (3M steps are 184 epochs: evaluations at 50, 100, 150
    and the end)."""
    return TrainerConfig(
        total_timesteps=3_000_000,
        batch_size=32768,
        minibatch_size=2048,
        bptt_horizon=16,
        curriculum="/env/mettagrid/curriculum/navigation/bucketed",
        forward_pass_minibatch_target_size=256,
        async_factor=1,
        num_workers=1,
        **cpu_learning_settings(),
        checkpoint={"checkpoint_interval": 20, "wandb_checkpoint_interval": 0},
        simulation={"evaluate_interval": 50},
    )


class TrainingConfig(Config):
    """Everything one training run reads. Every field has a default that runs on a CPU."""

    # Keys upstream configs or older metta versions had, each with what to use instead.
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "run_dir": "the run directory is {data_dir}/{experiment_name}: set those two",
    }
    WHOLE_FIELDS: ClassVar[frozenset[str]] = frozenset({"agent"})  # an agent graph is never mixed from two configs

    experiment_name: str | None = Field(
        default=None,
        validation_alias=AliasChoices("experiment_name", "run"),
        description="run name (also run=NAME): names the run directory and the wandb run; null: $METTA_RUN, "
        "else a timestamp. Running again with the same name resumes",
    )
    data_dir: str | None = Field(default=None, description="where run directories go; null: $DATA_DIR or ./train_dir")
    device: str | None = Field(
        default=None, description="cpu, cuda or cuda:N (one this machine has); null: cuda when available"
    )
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="seeds torch, numpy (plus the rank) and the envs (plus 1000 x rank)"
    )
    agent: AgentConfig = Field(
        default_factory=fast_cpu_agent_config,
        description="the policy: a ready graph's name (fast_cpu, fast, interface_default; legacy simple_cnn, "
        "simple) or a mapping of AgentConfig fields, set whole; fast_cpu learns most in short CPU runs, fast is "
        "upstream's default agent",
    )
    num_envs: int | None = Field(
        default=None,
        ge=1,
        description="envs per process; null: from trainer.forward_pass_minibatch_target_size, fitted to the batch",
    )
    vectorization: Literal["serial", "multiprocessing"] = Field(
        default="serial", description="serial: envs step in this process; multiprocessing: in trainer.num_workers"
    )
    keep_checkpoints: int = Field(default=5, ge=1, description="checkpoints kept on disk (older ones pruned)")
    evaluate: bool = Field(
        default=True,
        description="evaluate on trainer.simulation.suite every trainer.simulation.evaluate_interval epochs",
    )
    replay: bool = Field(default=True, description="write a replay and its viewer page with each evaluation")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="threads for torch ops; null: OMP_NUM_THREADS when set, else the usable CPUs (affinity, cgroup "
        "quota) less one per env worker process, at least 1",
    )
    debug_dump_weights: bool = Field(
        default=False, description="every rank saves its final weights to {run_dir}/rank{r}_weights.pt"
    )
    restart_if_unloadable: bool = Field(
        default=False,
        description="when no checkpoint can be loaded: move them to {run_dir}/unloadable_<time>/ and start over",
    )
    trainer: TrainerConfig = Field(default_factory=cpu_trainer_config)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @field_validator("experiment_name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return None if value is None else check_run_name(value, "experiment_name")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str | None) -> str | None:
        if value is not None:
            parse_device(value)  # null means auto
        return value

    @field_validator("agent", mode="before")
    @classmethod
    def _agent_by_name(cls, value: Any) -> Any:
        if isinstance(value, AgentConfig):
            return value
        if isinstance(value, str):
            return {"name": value}  # AgentConfig's own check names the ready graphs
        return resolve_agent_config(value)  # a mapping or a DictConfig, with or without an "agent" level around it

    @model_validator(mode="after")
    def _check_vectorization(self) -> TrainingConfig:
        async_factor, workers = self.trainer.async_factor, self.trainer.num_workers
        if self.vectorization == "serial":
            if workers > 1:
                raise ValueError(
                    f"trainer.num_workers={workers} needs vectorization='multiprocessing' (serial steps every env in "
                    "this process, its async_factor batches in turn); set num_workers=1 or "
                    "vectorization='multiprocessing'"
                )
        elif workers % async_factor:
            raise ValueError(
                f"trainer.num_workers={workers} must be a multiple of trainer.async_factor={async_factor} (each "
                f"batch of envs has its own workers); use num_workers={async_factor * max(1, workers // async_factor)}"
            )
        if self.num_envs is None:
            return self  # sized from trainer.forward_pass_minibatch_target_size when the envs are built
        if self.num_envs % async_factor:
            raise ValueError(
                f"num_envs={self.num_envs} must be a multiple of trainer.async_factor={async_factor} (the envs are "
                f"split into that many batches); use num_envs={async_factor * (self.num_envs // async_factor + 1)}"
            )
        if self.vectorization == "multiprocessing":
            check_layout(self.num_envs, self.num_envs // async_factor, workers)  # the vecenv's own rule and message
        return self

    @property
    def total_timesteps(self) -> int:
        """``trainer.total_timesteps``, readable at the top as loops over the components read it (set it on
        ``trainer``)."""
        return self.trainer.total_timesteps

    def env_kwargs(self, curriculum: Any = None) -> dict[str, Any]:
        """Keyword arguments of ``metta.mettagrid.vecenv_factory.build_vecenv`` for this run's envs (the device,
        seed and curriculum come from the caller).

        Serial vectorization steps the ``async_factor`` batches in turn (one partition of the envs per batch).
        ``num_envs=None`` sizes the envs for ``trainer.forward_pass_minibatch_target_size`` agents per forward
        pass, or for fewer when a batch of ``trainer.batch_size`` steps could not hold one ``bptt_horizon`` row
        per agent: that needs ``curriculum`` (a built one, for its agents per env), and the fit is logged.
        """
        trainer = self.trainer
        serial = self.vectorization == "serial"
        target = None
        if self.num_envs is None:
            target = trainer.forward_pass_minibatch_target_size
            fits = trainer.batch_size // (trainer.bptt_horizon * trainer.async_factor)  # agents per forward pass
            if target > fits:
                per_env = agents_per_env(curriculum) if curriculum is not None else 1
                fitted = max(per_env, fits - fits % per_env)
                logger.warning(
                    "envs sized to fit the batch: trainer.forward_pass_minibatch_target_size=%d agents per forward "
                    "pass x async_factor=%d x bptt_horizon=%d is more than trainer.batch_size=%d holds; using %d "
                    "agents per forward pass (set num_envs, or raise batch_size, to choose)",
                    target,
                    trainer.async_factor,
                    trainer.bptt_horizon,
                    trainer.batch_size,
                    fitted,
                )
                target = fitted
        return {
            "num_envs": 1 if self.num_envs is None else self.num_envs,
            "num_workers": trainer.async_factor if serial else trainer.num_workers,
            "async_factor": trainer.async_factor,
            "zero_copy": trainer.zero_copy,
            "vectorization": self.vectorization,
            "is_training": True,
            "worker_timeout_s": trainer.worker_timeout_s,
            "forward_pass_minibatch_target_size": target,
            # Worker processes build their shares of the curriculum's terrain sets in parallel before the first
            # step (into the disk cache, metta.mettagrid.map.terrain), so no episode waits for a map; serially,
            # generating each map when an episode first needs it starts sooner.
            "prebuild_maps": not serial,
        }


# ----------------------------------------------------------------------------------------------------
# Presets
def small_fast_config() -> TrainingConfig:
    """A preset that learns in minutes on a laptop CPU: the fast_cpu agent on the navigation curriculum, 32 envs (128
    agents), batch 8192, 1M agent steps, ``cpu_learning_settings()``, evaluated at the end."""
    trainer = cpu_trainer_config().model_copy(update={"total_timesteps": 1_000_000, "batch_size": 8192})
    trainer.simulation.evaluate_interval = 0
    return TrainingConfig(experiment_name="small_fast", trainer=trainer, num_envs=32)


def cpu_smoke_config() -> TrainingConfig:
    """A run that finishes in seconds on a CPU: 8 agents on the simple env, 4 epochs, a checkpoint every 2, no
    evaluation."""
    return TrainingConfig(
        experiment_name="cpu_smoke",
        device="cpu",
        num_envs=2,  # the simple env has 4 agents
        evaluate=False,
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
        agent="fast",  # upstream's agent, the one the GPU figures in docs/benchmarks.md are measured with
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
    )


PRESETS = {"small_fast": small_fast_config, "cpu_smoke": cpu_smoke_config, "gpu_full": gpu_full_config}
