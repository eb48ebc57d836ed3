"""Typed trainer configuration: pydantic models with upstream's names, defaults and validators.

Every model forbids unknown keys, so a typo is an error that names the key. Derived-size checks run at
construction and quote the numbers, e.g. ``minibatch_size=500 must divide batch_size=16384``.

Differences from upstream that make "defaults that run" hold:

- ``num_workers`` defaults to 1 (upstream required it).
- ``checkpoint_dir``, ``replay_dir`` and ``profile_dir`` default to None, folders of the run directory
  (upstream required them): ``cfg.with_run_dir(run_dir)`` or ``create_trainer_config(run_dir=...)`` fills them
  in; a value that is set is used as is.

Load and save: ``TrainerConfig.from_dict(d)``, ``TrainerConfig.from_yaml(path)``, ``cfg.to_yaml(path)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, model_validator

from metta.mettagrid.vecenv import DEFAULT_WORKER_TIMEOUT_S


class Config(BaseModel):
    """Base: no unknown keys, validate on assignment so a later edit is checked too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | Any) -> Config:
        """Build from a plain dict or an omegaconf DictConfig (interpolations resolved)."""
        if OmegaConf.is_config(data):
            data = OmegaConf.to_container(data, resolve=True)
        return cls.model_validate(data or {})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Config:
        return cls.from_dict(OmegaConf.load(str(path)))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The YAML text; also written (atomically) to ``path`` when given."""
        text = OmegaConf.to_yaml(OmegaConf.create(self.to_dict()))
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        return text


class OptimizerConfig(Config):
    type: Literal["adam", "muon"] = "adam"
    learning_rate: float = Field(default=0.0004573146765703167, gt=0)
    beta1: float = Field(default=0.9, ge=0, le=1)
    beta2: float = Field(default=0.999, ge=0, le=1)
    eps: float = Field(default=1e-12, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


class LRSchedulerConfig(Config):
    enabled: bool = False
    anneal_lr: bool = False
    warmup_steps: int | None = Field(default=None, ge=0)
    schedule_type: Literal["linear", "cosine", "exponential"] | None = None


class PrioritizedExperienceReplayConfig(Config):
    # 0 samples segments uniformly; 1 samples proportionally to the summed |advantage| of a segment.
    prio_alpha: float = Field(default=0.0, ge=0, le=1)
    # Initial importance-sampling exponent, annealed towards 1 (see calculate_anneal_beta).
    prio_beta0: float = Field(default=0.6, ge=0, le=1)


class VTraceConfig(Config):
    vtrace_rho_clip: float = Field(default=1.0, gt=0)
    vtrace_c_clip: float = Field(default=1.0, gt=0)


class KickstartTeacherConfig(Config):
    teacher_uri: str
    action_loss_coef: float = Field(default=1.0, ge=0)
    value_loss_coef: float = Field(default=1.0, ge=0)


class KickstartConfig(Config):
    teacher_uri: str | None = None
    action_loss_coef: float = Field(default=1.0, ge=0)
    value_loss_coef: float = Field(default=1.0, ge=0)
    # The last anneal_ratio of kickstart_steps ramps the teacher losses linearly down to 0.
    anneal_ratio: float = Field(default=0.65, ge=0, le=1)
    kickstart_steps: int = Field(default=1_000_000_000, gt=0)
    additional_teachers: list[KickstartTeacherConfig] | None = None


class InitialPolicyConfig(Config):
    uri: str | None = None
    type: Literal["top", "latest", "specific"] = "top"
    range: int = Field(default=1, gt=0)
    metric: str = "epoch"
    filters: dict[str, Any] = Field(default_factory=dict)


class CheckpointConfig(Config):
    checkpoint_interval: int = Field(default=60, ge=0, description="epochs between checkpoints; 0: only the final one")
    wandb_checkpoint_interval: int = Field(
        default=300, ge=0, description="epochs between wandb policy uploads; 0: none"
    )
    checkpoint_dir: str | None = Field(default=None, min_length=1, description="None: {run_dir}/checkpoints")


class SimulationConfig(Config):
    evaluate_interval: int = Field(default=300, ge=0, description="epochs between evaluations; 0: only the final one")
    replay_dir: str | None = Field(default=None, min_length=1, description="None: {run_dir}/replays")
    # The names of metta.sim.suites.SUITES (a test keeps the two lists equal).
    suite: Literal["terrain", "navigation", "smoke"] = Field(
        default="terrain", description="the evaluation suite (metta.sim.suites): terrain, navigation or smoke"
    )


class TorchProfilerConfig(Config):
    interval_epochs: int = Field(default=10000, ge=0, description="epochs between profiler traces; 0: none")
    profile_dir: str | None = Field(default=None, min_length=1, description="None: {run_dir}/torch_traces")


class PPOConfig(Config):
    clip_coef: float = Field(default=0.1, gt=0, le=1)
    ent_coef: float = Field(default=0.0021, ge=0)
    gae_lambda: float = Field(default=0.916, ge=0, le=1)
    gamma: float = Field(default=0.977, ge=0, le=1)
    max_grad_norm: float = Field(default=0.5, gt=0)
    vf_clip_coef: float = Field(default=0.1, ge=0)
    vf_coef: float = Field(default=0.44, ge=0)
    l2_reg_loss_coef: float = Field(default=0.0, ge=0)
    l2_init_loss_coef: float = Field(default=0.0, ge=0)
    norm_adv: bool = True
    clip_vloss: bool = True
    # Stop the remaining update epochs once the mean approx_kl of the epoch exceeds this (None: never).
    target_kl: float | None = Field(default=None, gt=0)


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

    total_timesteps: int = Field(default=50_000_000_000, gt=0)
    batch_size: int = Field(default=524288, gt=0)  # agent-steps per rollout (per rank; see scale_batches_by_world_size)
    minibatch_size: int = Field(default=16384, gt=0)  # agent-steps per gradient step
    # Largest minibatch one forward/backward pass takes: a larger minibatch_size is split into pieces of this size
    # whose gradients are accumulated before one optimizer step (less memory). It is the same update as one
    # minibatch when ppo.norm_adv is off; with norm_adv each piece's advantages are normalized over that piece
    # (a whole-minibatch mean and std would need every piece's forward pass first). None: no split.
    max_minibatch_size: int | None = Field(default=None, gt=0)
    bptt_horizon: int = Field(default=64, gt=0)
    update_epochs: int = Field(default=1, gt=0)
    # Under torchrun: batch_size and minibatch_size are the totals over all ranks, divided among them.
    scale_batches_by_world_size: bool = False

    zero_copy: bool = True  # the vecenv hands out its shared buffers instead of copies
    verbose: bool = True  # one console line per epoch
    cpu_offload: bool = False  # the rollout buffer's observations stay in (pinned) host memory
    compile: bool = False  # torch.compile the policy (the parts around its LSTM)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "reduce-overhead"
    )
    # On CUDA, each env batch's rollout step (upload, episode resets, policy forward, buffer writes) is captured
    # as a CUDA graph and replayed, one launch instead of some 100 (metta.rl.rollout). Eager elsewhere, and with
    # compile (torch.compile's reduce-overhead mode brings graphs of its own).
    cuda_graphs: bool = True
    # TF32 tensor-core matmuls and convolutions on CUDA (torch.backends.cuda.matmul.allow_tf32 and
    # torch.backends.cudnn.allow_tf32; 10-bit mantissas, about twice as fast on an H100). No effect on a CPU.
    tf32: bool = True

    # Envs per process, when the run does not set num_envs: forward_pass_minibatch_target_size agents per
    # forward pass, rounded to the workers, times async_factor (calculate_batch_sizes).
    forward_pass_minibatch_target_size: int = Field(default=4096, gt=0)
    async_factor: int = Field(default=2, gt=0)
    num_workers: int = Field(default=1, gt=0)
    # With multiprocessing: how long to wait for a worker's reply before raising WorkerError (a stopped or hung
    # worker would otherwise block the trainer for ever); starts and resets get longer.
    worker_timeout_s: float = Field(default=DEFAULT_WORKER_TIMEOUT_S, gt=0)

    curriculum: str = Field(default="/env/mettagrid/curriculum/simple", min_length=1)
    env_overrides: dict[str, Any] = Field(default_factory=dict)  # dotted keys applied to every task's env
    grad_mean_variance_interval: int = Field(default=0, ge=0)  # epochs; 0 disables

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

    @model_validator(mode="before")
    @classmethod
    def _reject_removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in REMOVED_TRAINER_KEYS.items():
                if key in data:
                    raise ValueError(f"{key} is not a metta setting: {why}")
        return data

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
                f"bptt_horizon={h} (the minibatch is split into equal pieces of whole rows); e.g. max_minibatch_size={mb // 2 if (mb // 2) % h == 0 else mb}"
            )
        ck, wb = self.checkpoint.checkpoint_interval, self.checkpoint.wandb_checkpoint_interval
        ev = self.simulation.evaluate_interval
        if ev != 0 and ev < max(ck, wb):
            raise ValueError(
                f"simulation.evaluate_interval={ev} must be 0 (only the final evaluation) or >= checkpoint.checkpoint_interval={ck} and "
                f"checkpoint.wandb_checkpoint_interval={wb}, since evaluation reads a saved policy; "
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
        """A copy whose unset folders (None) are those of ``run_dir``: ``checkpoints/``, ``replays/``, ``torch_traces/``."""
        run_dir = Path(run_dir)
        out = self.model_copy(deep=True)
        if out.checkpoint.checkpoint_dir is None:
            out.checkpoint.checkpoint_dir = str(run_dir / "checkpoints")
        if out.simulation.replay_dir is None:
            out.simulation.replay_dir = str(run_dir / "replays")
        if out.profiler.profile_dir is None:
            out.profiler.profile_dir = str(run_dir / "torch_traces")
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
    because each altar pays one heart per episode and the per-action advantage signal is tiny. Used by run.py's
    CPU defaults, ``TrainingConfig()`` and recipes/navigation_cpu.py; pass as
    ``TrainerConfig(**cpu_learning_settings(), ...)``.
    """
    return {
        "update_epochs": 2,
        "ppo": {"clip_coef": 0.1, "ent_coef": 0.0005, "gamma": 0.99, "gae_lambda": 0.95},
        "optimizer": {"learning_rate": 1e-3},
    }


def _size_hint(batch: int, minibatch: int, bptt: int) -> str:
    """A consistent fix for an error message: the nearest valid minibatch_size, or a batch_size."""
    for mb in range(minibatch - minibatch % bptt, 0, -bptt):
        if batch % mb == 0:
            return f"e.g. minibatch_size={mb} (a multiple of bptt_horizon={bptt} that divides batch_size={batch})"
    mb = max(bptt, minibatch - minibatch % bptt)
    return f"e.g. batch_size={max(1, batch // mb) * mb} with minibatch_size={mb} (batch a multiple of minibatch, minibatch of bptt_horizon={bptt})"


def create_trainer_config(
    run_dir: str | os.PathLike | None = None,
    vectorization: str = "serial",
    overrides: dict[str, Any] | None = None,
    **fields: Any,
) -> TrainerConfig:
    """A TrainerConfig from keyword fields and/or a nested ``overrides`` dict, adjusted like upstream's:

    - ``vectorization == "serial"``: ``async_factor`` and ``zero_copy`` default to 1 and False (nothing to
      overlap); given explicitly they are kept;
    - directories not given explicitly go under ``run_dir``: ``checkpoints/``, ``replays/``, ``torch_traces/``.
    """
    data: dict[str, Any] = {**(overrides or {}), **fields}
    if vectorization == "serial":
        data.setdefault("async_factor", 1)
        data.setdefault("zero_copy", False)
    if run_dir is not None:
        run_dir = Path(run_dir)
        data.setdefault("checkpoint", {}).setdefault("checkpoint_dir", str(run_dir / "checkpoints"))
        data.setdefault("simulation", {}).setdefault("replay_dir", str(run_dir / "replays"))
        data.setdefault("profiler", {}).setdefault("profile_dir", str(run_dir / "torch_traces"))
    return TrainerConfig.from_dict(data)


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
