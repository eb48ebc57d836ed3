"""Typed trainer configuration: pydantic models with upstream's names, defaults and validators.

Every model forbids unknown keys, so a typo is an error that names the key. Derived-size checks run at
construction and quote the numbers, e.g. ``minibatch_size=500 must divide batch_size=16384``.

Differences from upstream that make "defaults that run" hold:

- ``num_workers`` defaults to 1 (upstream required it).
- ``checkpoint_dir``, ``replay_dir`` and ``profile_dir`` default to None, folders of the run directory
  (upstream required them): ``cfg.with_run_dir(run_dir)`` fills them in (``metta.common.run_dirs``' layout);
  a value that is set is used as is.

Load and save: ``TrainerConfig.from_dict(d)``, ``TrainerConfig.from_yaml(path)``, ``cfg.to_yaml(path)``
(``metta.common.config_cli``). A whole run (device, envs, agent, wandb, ...) is a ``TrainingConfig``
(``metta.rl.run_config``), which holds one of these as ``trainer``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from metta.common import config_cli
from metta.common.run_dirs import run_folders
from metta.mettagrid.vecenv import DEFAULT_WORKER_TIMEOUT_S

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base: no unknown keys, validate on assignment so a later edit is checked too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Keys a model dropped on purpose, each with what to use instead: setting one is an error that says so.
    REMOVED_KEYS: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _reject_removed_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, why in cls.REMOVED_KEYS.items():
                if key in data:
                    raise ValueError(f"{key} is not a metta setting: {why}")
        return data

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | Any, base: C | None = None) -> C:
        """A config from a (partial) dict or omegaconf DictConfig laid over ``base`` (default: the defaults):
        nested models merge key by key (``metta.common.config_cli.merge``). Raises ``ConfigFileError`` naming
        each bad field and its value."""
        return config_cli.from_data(cls, data, base, source=f"{cls.__name__}.from_dict")

    @classmethod
    def from_yaml(cls: type[C], path: str | os.PathLike, base: C | None = None) -> C:
        """A config from a YAML file (partial files are laid over ``base``); errors name the file."""
        return config_cli.from_data(cls, config_cli.read_yaml(path), base, source=os.fspath(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The complete config as YAML text; also written atomically to ``path`` when given."""
        return config_cli.write_yaml(path, self) if path is not None else config_cli.to_yaml(self)


class OptimizerConfig(Config):
    type: Literal["adam", "muon"] = Field(default="adam", description="adam (torch) or muon (heavyball)")
    learning_rate: float = Field(default=0.0004573146765703167, gt=0, description="the optimizer's step size")
    beta1: float = Field(default=0.9, ge=0, le=1, description="decay of the first gradient moment")
    beta2: float = Field(default=0.999, ge=0, le=1, description="decay of the second gradient moment")
    eps: float = Field(default=1e-12, gt=0, description="added to the denominator for numerical stability")
    weight_decay: float = Field(default=0.0, ge=0, description="decoupled weight decay; 0: none")


class LRSchedulerConfig(Config):
    enabled: bool = Field(default=False, description="follow a learning-rate schedule (else constant)")
    anneal_lr: bool = Field(default=False, description="linear decay to 0 over total_timesteps (schedule_type unset)")
    warmup_steps: int | None = Field(
        default=None, ge=0, description="agent steps of linear warmup from 0; null: no warmup"
    )
    schedule_type: Literal["linear", "cosine", "exponential"] | None = Field(
        default=None, description="shape of the decay over total_timesteps; null: anneal_lr decides"
    )


class PrioritizedExperienceReplayConfig(Config):
    prio_alpha: float = Field(
        default=0.0, ge=0, le=1, description="0: uniform segments; 1: sampled in proportion to summed |advantage|"
    )
    prio_beta0: float = Field(
        default=0.6, ge=0, le=1, description="initial importance-sampling exponent, annealed towards 1"
    )


class VTraceConfig(Config):
    vtrace_rho_clip: float = Field(default=1.0, gt=0, description="clip of the importance ratio in the TD term")
    vtrace_c_clip: float = Field(default=1.0, gt=0, description="clip of the importance ratio in the trace")


class KickstartTeacherConfig(Config):
    teacher_uri: str = Field(description="a saved policy: a file, a folder or a wandb:// uri")
    action_loss_coef: float = Field(default=1.0, ge=0, description="weight of the teacher's action loss")
    value_loss_coef: float = Field(default=1.0, ge=0, description="weight of the teacher's value loss")


class KickstartConfig(Config):
    teacher_uri: str | None = Field(default=None, description="the teacher policy; null: no kickstarting")
    action_loss_coef: float = Field(default=1.0, ge=0, description="weight of the teacher's action loss")
    value_loss_coef: float = Field(default=1.0, ge=0, description="weight of the teacher's value loss")
    anneal_ratio: float = Field(
        default=0.65, ge=0, le=1, description="the last fraction of kickstart_steps ramps the teacher losses to 0"
    )
    kickstart_steps: int = Field(default=1_000_000_000, gt=0, description="agent steps with teacher losses")
    additional_teachers: list[KickstartTeacherConfig] | None = Field(
        default=None, description="more teachers: a list of {teacher_uri, action_loss_coef, value_loss_coef}"
    )


class InitialPolicyConfig(Config):
    uri: str | None = Field(default=None, description="weights a fresh run starts from; null: random init")
    type: Literal["top", "latest", "specific"] = Field(
        default="top", description="which policy of the uri: best by metric, newest, or the one file named"
    )
    range: int = Field(default=1, gt=0, description="draw the start (with seed) from the range best or newest")
    metric: str = Field(default="epoch", description="metadata key that ranks policies for type=top")
    filters: dict[str, Any] = Field(default_factory=dict, description="metadata values a policy must have")


class CheckpointConfig(Config):
    checkpoint_interval: int = Field(default=60, ge=0, description="epochs between checkpoints; 0: only the final one")
    wandb_checkpoint_interval: int = Field(
        default=300, ge=0, description="epochs between wandb policy uploads; 0: none"
    )
    checkpoint_dir: str | None = Field(default=None, min_length=1, description="null: {run_dir}/checkpoints")


class SimulationConfig(Config):
    evaluate_interval: int = Field(default=300, ge=0, description="epochs between evaluations; 0: only the final one")
    evaluate_on_stop_s: float = Field(
        default=30.0,
        ge=0,
        description="a run stopped by SIGTERM/Ctrl-C evaluates first when this run's previous evaluation took at "
        "most this many seconds (none yet: it does not)",
    )
    replay_dir: str | None = Field(default=None, min_length=1, description="null: {run_dir}/replays")
    # The names of metta.sim.suites.SUITES (a test keeps the two lists equal).
    suite: Literal["terrain", "navigation", "smoke"] = Field(
        default="terrain", description="the evaluation suite (metta.sim.suites): terrain, navigation or smoke"
    )


class TorchProfilerConfig(Config):
    interval_epochs: int = Field(default=10000, ge=0, description="epochs between profiler traces; 0: none")
    profile_dir: str | None = Field(default=None, min_length=1, description="null: {run_dir}/torch_traces")


class PPOConfig(Config):
    clip_coef: float = Field(default=0.1, gt=0, le=1, description="PPO's clip of the policy ratio")
    ent_coef: float = Field(default=0.0021, ge=0, description="weight of the entropy bonus")
    gae_lambda: float = Field(default=0.916, ge=0, le=1, description="GAE's lambda")
    gamma: float = Field(default=0.977, ge=0, le=1, description="discount per step")
    max_grad_norm: float = Field(default=0.5, gt=0, description="gradients are clipped to this global norm")
    vf_clip_coef: float = Field(default=0.1, ge=0, description="clip of the value change (with clip_vloss)")
    vf_coef: float = Field(default=0.44, ge=0, description="weight of the value loss")
    l2_reg_loss_coef: float = Field(default=0.0, ge=0, description="weight of an L2 penalty on the weights")
    l2_init_loss_coef: float = Field(default=0.0, ge=0, description="weight of an L2 pull towards the initial weights")
    norm_adv: bool = Field(default=True, description="normalize advantages over each minibatch")
    clip_vloss: bool = Field(default=True, description="clip the value loss as the policy loss is clipped")
    target_kl: float | None = Field(
        default=None, gt=0, description="stop the update's passes once the mean approx_kl exceeds it; null: never"
    )


# Upstream keys metta does not have, each with what to do instead (setting one is an error that says so).
REMOVED_TRAINER_KEYS = {
    "_target_": "metta has one trainer loop (run.py, metta.rl.functional_trainer); there is no trainer class to name",
    "require_contiguous_env_ids": "metta's vectorizer always returns contiguous agent rows, and the rollout checks it",
    "hyperparameter_scheduler": "upstream disabled it; use lr_scheduler for the learning rate",
    "env": "pass an env config's path as curriculum: an env config file is trained on as a single task",
}


class TrainerConfig(Config):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    REMOVED_KEYS: ClassVar[dict[str, str]] = REMOVED_TRAINER_KEYS

    total_timesteps: int = Field(
        default=50_000_000_000, gt=0, description="agent steps to train (all ranks), rounded up to whole batches"
    )
    batch_size: int = Field(default=524288, gt=0, description="agent steps per rollout and update (per rank)")
    minibatch_size: int = Field(default=16384, gt=0, description="agent steps per optimizer step")
    # It is the same update as one minibatch when ppo.norm_adv is off; with norm_adv each piece's advantages are
    # normalized over that piece (a whole-minibatch mean and std would need every piece's forward pass first).
    max_minibatch_size: int | None = Field(
        default=None,
        gt=0,
        description="largest piece of a minibatch per forward/backward; pieces add gradients; null: no split",
    )
    bptt_horizon: int = Field(default=64, gt=0, description="steps per row the LSTM is trained through")
    update_epochs: int = Field(default=1, gt=0, description="passes over each batch (the epoch counter counts them)")
    scale_batches_by_world_size: bool = Field(
        default=False, description="under torchrun: batch and minibatch sizes are totals divided among the ranks"
    )

    zero_copy: bool = Field(default=True, description="the vecenv hands out its shared buffers instead of copies")
    verbose: bool = Field(default=True, description="one console line per epoch")
    cpu_offload: bool = Field(default=False, description="the rollout buffer's observations stay in host memory")
    compile: bool = Field(default=False, description="torch.compile the policy (the parts around its LSTM)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        default="reduce-overhead", description="torch.compile's mode"
    )
    # On CUDA, each env batch's rollout step (upload, episode resets, policy forward, buffer writes) is captured
    # as a CUDA graph and replayed, one launch instead of some 100 (metta.rl.rollout). Eager elsewhere, and with
    # compile (torch.compile's reduce-overhead mode brings graphs of its own).
    cuda_graphs: bool = Field(
        default=True, description="on CUDA, each env batch's rollout step is captured and replayed as a CUDA graph"
    )
    # torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32; 10-bit mantissas, about twice as
    # fast on an H100. No effect on a CPU.
    tf32: bool = Field(default=True, description="TF32 tensor-core matmuls and convolutions on CUDA")

    # Envs per process, when the run does not set num_envs: forward_pass_minibatch_target_size agents per
    # forward pass, rounded to the workers, times async_factor (calculate_batch_sizes).
    forward_pass_minibatch_target_size: int = Field(
        default=4096, gt=0, description="agents per forward pass; sizes the envs when num_envs is not set"
    )
    async_factor: int = Field(
        default=2, gt=0, description="batches of envs in flight; the learner works on one while others step"
    )
    num_workers: int = Field(default=1, gt=0, description="env worker processes (vectorization=multiprocessing)")
    # A stopped or hung worker would otherwise block the trainer for ever; starts and resets get longer.
    worker_timeout_s: float = Field(
        default=DEFAULT_WORKER_TIMEOUT_S, gt=0, description="seconds to wait for a worker's reply (multiprocessing)"
    )

    curriculum: str = Field(
        default="/env/mettagrid/curriculum/simple", min_length=1, description="a packaged curriculum or env path"
    )
    env_overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted env keys applied to every task, e.g. {game.max_steps: 100}"
    )
    grad_mean_variance_interval: int = Field(
        default=0, ge=0, description="epochs between grad/mean, grad/variance metrics; 0: none"
    )

    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_scheduler: LRSchedulerConfig = Field(default_factory=LRSchedulerConfig)
    prioritized_experience_replay: PrioritizedExperienceReplayConfig = Field(
        default_factory=PrioritizedExperienceReplayConfig
    )
    vtrace: VTraceConfig = Field(default_factory=VTraceConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    kickstart: KickstartConfig = Field(default_factory=KickstartConfig)
    initial_policy: InitialPolicyConfig = Field(default_factory=InitialPolicyConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    profiler: TorchProfilerConfig = Field(default_factory=TorchProfilerConfig)

    @model_validator(mode="after")
    def _check_sizes(self) -> TrainerConfig:
        b, mb, h = self.batch_size, self.minibatch_size, self.bptt_horizon
        if mb > b:
            raise ValueError(f"minibatch_size={mb} is larger than batch_size={b}; use minibatch_size <= {b}")
        if b % mb:
            raise ValueError(
                f"minibatch_size={mb} must divide batch_size={b} (remainder {b % mb}); {_size_hint(b, mb, h)}"
            )
        if mb % h:
            raise ValueError(
                f"minibatch_size={mb} must be a multiple of bptt_horizon={h} (whole segments per minibatch); "
                f"{_size_hint(b, mb, h)}"
            )
        if self.max_minibatch_size is not None and (mb % self.max_minibatch_size or self.max_minibatch_size % h):
            raise ValueError(
                f"max_minibatch_size={self.max_minibatch_size} must divide minibatch_size={mb} and be a multiple of "
                f"bptt_horizon={h} (the minibatch is split into equal pieces of whole rows); "
                f"e.g. max_minibatch_size={mb // 2 if (mb // 2) % h == 0 else mb}"
            )
        ck, wb = self.checkpoint.checkpoint_interval, self.checkpoint.wandb_checkpoint_interval
        ev = self.simulation.evaluate_interval
        if ev != 0 and ev < max(ck, wb):
            raise ValueError(
                f"simulation.evaluate_interval={ev} must be 0 (only the final evaluation) or >= "
                f"checkpoint.checkpoint_interval={ck} and checkpoint.wandb_checkpoint_interval={wb}, since "
                "evaluation reads a saved policy; "
                f"use evaluate_interval={max(ck, wb)} or more"
            )
        if ck != 0 and wb != 0 and wb < ck:
            raise ValueError(
                f"checkpoint.wandb_checkpoint_interval={wb} must be >= checkpoint.checkpoint_interval={ck} "
                "(uploads reuse local checkpoints); raise it or set it to 0 to disable uploads"
            )
        return self

    def apply_tf32(self) -> None:
        """Set torch's TF32 switches for CUDA matmuls and cuDNN convolutions to ``tf32`` (process-wide; the
        buffer built from this config and every ``train_ppo`` update apply it)."""
        import torch

        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32

    def with_run_dir(self, run_dir: str | os.PathLike) -> TrainerConfig:
        """A copy whose unset folders (None) are those of ``run_dir`` (``metta.common.run_dirs.run_folders``:
        ``checkpoints/``, ``replays/``, ``torch_traces/``)."""
        folders = run_folders(run_dir)
        out = self.model_copy(deep=True)
        if out.checkpoint.checkpoint_dir is None:
            out.checkpoint.checkpoint_dir = folders.checkpoint_dir
        if out.simulation.replay_dir is None:
            out.simulation.replay_dir = folders.replay_dir
        if out.profiler.profile_dir is None:
            out.profiler.profile_dir = folders.profile_dir
        return out

    def check_num_agents(self, num_agents: int) -> None:
        """Raise if a rollout of ``batch_size`` cannot hold one ``bptt_horizon`` row per agent."""
        needed = num_agents * self.bptt_horizon
        if self.batch_size < needed:
            raise ValueError(
                f"batch_size={self.batch_size} is smaller than num_agents * bptt_horizon = {num_agents} * "
                f"{self.bptt_horizon} = {needed}; every agent needs at least one segment: use batch_size >= {needed} "
                f"(a multiple of minibatch_size={self.minibatch_size}), fewer envs, or a shorter bptt_horizon"
            )


def scale_by_world_size(cfg: TrainerConfig, world_size: int) -> TrainerConfig:
    """The per-rank config: with ``scale_batches_by_world_size`` the batch and minibatch sizes are totals over all
    ranks and each rank takes ``1 / world_size`` of them; otherwise ``cfg`` itself (sizes already per rank)."""
    if not cfg.scale_batches_by_world_size or world_size == 1:
        return cfg
    for name in ("batch_size", "minibatch_size"):
        value = getattr(cfg, name)
        if value % world_size or (value // world_size) % cfg.bptt_horizon:
            raise ValueError(
                f"scale_batches_by_world_size: {name}={value} must split into {world_size} ranks of whole "
                f"bptt_horizon={cfg.bptt_horizon} rows; use a multiple of {world_size * cfg.bptt_horizon}"
            )
    return cfg.model_copy(
        update={"batch_size": cfg.batch_size // world_size, "minibatch_size": cfg.minibatch_size // world_size},
        deep=True,
    )


def cpu_learning_settings() -> dict[str, Any]:
    """The update settings that learned navigation fastest per minute on a 2-core CPU (the sweep is in
    docs/training.md): two passes over each batch, learning rate 1e-3, and PPO with a small entropy bonus and a
    long horizon (gamma 0.99, gae_lambda 0.95: altars are often dozens of steps away, and returns run across
    BPTT rows, see compute_advantage). With ent_coef 0.01 the policy stayed near uniform for millions of steps,
    because each altar pays one heart per episode and the per-action advantage signal is tiny. The value loss is
    not clipped: a value that may move only vf_clip_coef (0.1) per update trails returns of several hearts, and
    with the clip two of five seeds' ten-minute runs stalled for minutes. Used by the CPU defaults
    (``metta.rl.run_config.cpu_trainer_config``) and recipes/navigation_cpu.py; pass as
    ``TrainerConfig(**cpu_learning_settings(), ...)``.
    """
    return {
        "update_epochs": 2,
        "ppo": {"clip_coef": 0.1, "ent_coef": 0.0005, "gamma": 0.99, "gae_lambda": 0.95, "clip_vloss": False},
        "optimizer": {"learning_rate": 1e-3},
    }


def _size_hint(batch: int, minibatch: int, bptt: int) -> str:
    """A consistent fix for an error message: the nearest valid minibatch_size, or a batch_size."""
    for mb in range(minibatch - minibatch % bptt, 0, -bptt):
        if batch % mb == 0:
            return f"e.g. minibatch_size={mb} (a multiple of bptt_horizon={bptt} that divides batch_size={batch})"
    mb = max(bptt, minibatch - minibatch % bptt)
    return (
        f"e.g. batch_size={max(1, batch // mb) * mb} with minibatch_size={mb} (batch a multiple of minibatch, "
        f"minibatch of bptt_horizon={bptt})"
    )


def resolve_trainer_config(config: Any, ppo_config: PPOConfig | None = None) -> TrainerConfig:
    """``config`` as a TrainerConfig with ``ppo_config`` (when given) as its ``ppo`` section.

    ``config`` may be a TrainerConfig or any object with a TrainerConfig in ``.trainer`` (a training config).
    """
    if not isinstance(config, TrainerConfig) and isinstance(getattr(config, "trainer", None), TrainerConfig):
        config = config.trainer
    if not isinstance(config, TrainerConfig):
        raise TypeError(
            f"config is a {type(config).__name__}; pass a TrainerConfig (metta.rl.trainer_config) or a TrainingConfig "
            "(metta.train.train_config)"
        )
    if ppo_config is None:
        return config
    if not isinstance(ppo_config, PPOConfig):
        raise TypeError(f"ppo_config is a {type(ppo_config).__name__}; pass a PPOConfig or None (use config.ppo)")
    return config.model_copy(update={"ppo": ppo_config})
