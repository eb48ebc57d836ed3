"""Complete training checkpoints: written atomically, verified on load, pruned, resumable after any crash.

One checkpoint is two files in the checkpoint directory::

    model_0010.pt              the policy (PolicyStore's format: config + weights, no pickled module)
    trainer_state_0010.ckpt    everything else, and the policy file's name and sha256

The trainer state holds ``agent_step``, ``epoch``, the optimizer state, the RNG states (python, numpy,
torch, cuda), the curriculum state of every vecenv worker (rank 0's), the trainer config, the world size it was
written at, the stopwatch state and any ``extra_args``. Its file is a header line, the sha256 of the payload,
and the ``torch.save`` payload: ``torch.load`` does not verify zip checksums, so without our own digest a flipped
byte would load silently.

Why a crash never leaves a run that cannot resume: the policy file is written first (atomically, fsynced),
then the trainer state that points to it (atomically, fsynced). A trainer state therefore only exists once
its policy is complete, and old checkpoints are deleted only after the new one is durable (trainer state
first, so no surviving state points to a deleted policy; oldest first, so a prune killed midway is finished
by the next). ``load_latest_checkpoint`` walks the trainer states from the newest, skips (with a warning naming
the trainer state and its policy file) any that is truncated or corrupt, or whose policy file is missing, does
not match its digest, is not a policy or does not fit the agent, and returns the first good one. When trainer
states exist and none is good it raises ``UnloadableCheckpointsError``: a run never silently starts over them.

Only rank 0 writes; every rank may read. A write that fails (disk full, an unwritable directory) raises
``metta.common.fs.WriteError`` naming the file, the cause and the newest checkpoint on disk, which it left intact.

A run may resume at another world size (more or fewer torchrun ranks): ``restore_checkpoint`` restores the
optimizer state and the run's counters as they are, says in the log what happens to the batch sizes
(``trainer.scale_batches_by_world_size``), and says whether the curriculum state was restored or rebuilt.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_store import PolicyFileError, PolicyStore, read_policy_file
from metta.common.distributed import barrier, get_rank, get_world_size, is_distributed, is_master, unwrap_agent
from metta.common.fault_points import fault_point
from metta.common.fs import (
    WriteError,
    atomic_write_bytes,
    fsync_dir,
    fsync_file,
    remove_stale_temp_files,
    sha256_bytes,
    sha256_file,
)
from metta.mettagrid.config_loader import flatten_dotted
from metta.rl.intervals import crossed

logger = logging.getLogger(__name__)

TRAINER_STATE_HEADER = b"METTA-TRAINER-CHECKPOINT 1\n"
_DIGEST_LEN = 64  # hex sha256
_TRAINER_STATE_RE = re.compile(r"^trainer_state_(\d+)\.ckpt$")
_POLICY_FILE_RE = re.compile(r"^model_(\d+)\.pt$")
DEFAULT_KEEP_LAST_N = 5


class CheckpointError(RuntimeError):
    """A trainer state that cannot be used: unreadable, corrupt, or pointing to a bad policy file."""


def policy_file_name(epoch: int) -> str:
    return PolicyStore.make_model_name(epoch)


def trainer_state_file_name(epoch: int) -> str:
    return f"trainer_state_{epoch:04d}.ckpt"


@dataclass
class TrainerCheckpoint:
    """Everything besides the policy weights that a resumed run needs (upstream's ``TrainerCheckpoint``)."""

    agent_step: int = 0
    epoch: int = 0
    optimizer_state_dict: dict[str, Any] | None = None
    policy_path: str | None = None  # absolute once loaded; stored as a name relative to the checkpoint dir
    policy_sha256: str | None = None
    stopwatch_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    curriculum_state: list[dict[str, Any]] | dict[str, Any] | None = None
    trainer_config: dict[str, Any] | None = None
    world_size: int | None = None  # torch.distributed ranks of the run that wrote it (None: an older file)
    extra_args: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # the trainer-state file this record was read from or written to

    def to_payload(self) -> dict[str, Any]:
        return {
            "agent_step": int(self.agent_step),
            "epoch": int(self.epoch),
            "optimizer_state_dict": self.optimizer_state_dict,
            # Relative, so a run directory can be moved or copied and still resume.
            "policy_path": os.path.basename(self.policy_path) if self.policy_path else None,
            "policy_sha256": self.policy_sha256,
            "stopwatch_state": self.stopwatch_state,
            "rng_state": self.rng_state,
            "curriculum_state": self.curriculum_state,
            "trainer_config": self.trainer_config,
            "world_size": self.world_size,
            "extra_args": dict(self.extra_args),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], path: str) -> TrainerCheckpoint:
        missing = [k for k in ("agent_step", "epoch", "optimizer_state_dict", "policy_path") if k not in payload]
        if missing:
            raise CheckpointError(f"trainer state {path} lacks required keys {missing}; it was not written by metta")
        known = set(cls.__dataclass_fields__) - {"path", "extra_args"}
        extra = dict(payload.get("extra_args") or {})
        extra.update({k: v for k, v in payload.items() if k not in known and k != "extra_args"})
        policy_path = payload["policy_path"]
        if policy_path:
            policy_path = os.path.join(os.path.dirname(os.path.abspath(path)), policy_path)
        return cls(
            **{k: payload.get(k) for k in known if k != "policy_path"},
            policy_path=policy_path,
            extra_args=extra,
            path=path,
        )


# ----------------------------------------------------------------------------------------------------
# Trainer-state files
def write_trainer_state(path: str, ckpt: TrainerCheckpoint) -> None:
    buffer = io.BytesIO()
    torch.save(ckpt.to_payload(), buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, TRAINER_STATE_HEADER + sha256_bytes(payload).encode("ascii") + b"\n" + payload)
    ckpt.path = path


def read_trainer_state(path: str) -> TrainerCheckpoint:
    """Read and verify one trainer-state file; raises ``CheckpointError`` naming the file when it is bad."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read trainer state {path}: {e}") from e
    head = len(TRAINER_STATE_HEADER)
    if not data.startswith(TRAINER_STATE_HEADER) or len(data) < head + _DIGEST_LEN + 1:
        raise CheckpointError(f"trainer state {path} is truncated or not a metta trainer checkpoint (bad header)")
    digest = data[head : head + _DIGEST_LEN].decode("ascii", errors="replace")
    payload = data[head + _DIGEST_LEN + 1 :]
    if sha256_bytes(payload) != digest:
        raise CheckpointError(f"trainer state {path} is corrupt or truncated (sha256 mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged or foreign payloads
        raise CheckpointError(f"trainer state {path} cannot be unpickled: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"trainer state {path} holds a {type(state).__name__}, expected a dict")
    return TrainerCheckpoint.from_payload(state, path)


def list_trainer_states(checkpoint_dir: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of every trainer-state file, newest epoch first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = []
    for name in os.listdir(checkpoint_dir):
        m = _TRAINER_STATE_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(checkpoint_dir, name)))
    return sorted(found, reverse=True)


def verify_checkpoint(ckpt: TrainerCheckpoint) -> None:
    """Raise ``CheckpointError`` unless the policy file the state points to exists and matches its digest."""
    where = f"trainer state {ckpt.path}"
    if not ckpt.policy_path:
        raise CheckpointError(f"{where} names no policy file")
    if not os.path.isfile(ckpt.policy_path):
        raise CheckpointError(f"{where} points to {ckpt.policy_path}, which does not exist")
    if ckpt.policy_sha256 and sha256_file(ckpt.policy_path) != ckpt.policy_sha256:
        raise CheckpointError(
            f"{where}: its policy file {ckpt.policy_path} is corrupt, truncated or was overwritten (sha256 mismatch)"
        )


class UnloadableCheckpointsError(CheckpointError):
    """A checkpoint directory holds trainer states and none of them can be loaded."""

    def __init__(self, checkpoint_dir: str, problems: list[str]):
        self.checkpoint_dir = checkpoint_dir
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"no checkpoint in {checkpoint_dir} can be loaded ({len(problems)} tried):\n{listed}\n"
            "Nothing was changed. Resuming from scratch here would overwrite this run's files: start a new run "
            "directory, or move these checkpoints aside first"
        )


def check_checkpoint_dir(checkpoint_dir: str) -> str:
    """``checkpoint_dir`` as an absolute path; a ``ValueError`` when it names a file or a run directory."""
    path = os.path.abspath(os.fspath(checkpoint_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"checkpoint_dir={checkpoint_dir!r} is a file, not a checkpoint directory; pass the directory that "
            "holds the trainer_state_*.ckpt files (dirs.checkpoint_dir)"
        )
    inner = os.path.join(path, "checkpoints")
    if not list_trainer_states(path) and list_trainer_states(inner):
        raise ValueError(
            f"checkpoint_dir={checkpoint_dir!r} is a run directory; its checkpoints are in {inner} "
            "(dirs.checkpoint_dir)"
        )
    return path


def _fit_problem(state_dict: Mapping[str, Any], agent: torch.nn.Module) -> str | None:
    """Why ``state_dict`` cannot load into ``agent`` (None when it can); checked before loading, since a failed
    ``load_state_dict`` has already copied the tensors that did fit."""
    own = unwrap_agent(agent).state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or unexpected:
        parts = [f"it lacks the agent's {missing[:3]}"] if missing else []
        if unexpected:
            parts.append(f"it has {unexpected[:3]}, which the agent lacks")
        return "; ".join(parts)
    for key, value in own.items():
        other = state_dict[key]
        if isinstance(value, torch.Tensor) and (not isinstance(other, torch.Tensor) or other.shape != value.shape):
            shape = tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
            return f"its {key} has shape {shape}, the agent's {tuple(value.shape)}"
    # The shapes fit; what the layers' extra state binds may not (the env's actions next to the checkpoint's may
    # outnumber the action embeddings): loaded into a copy, so the agent itself is untouched either way.
    try:
        trial = copy.deepcopy(unwrap_agent(agent))
    except Exception:  # an agent of the caller's own that cannot be copied: restore_checkpoint reports a misfit
        return None
    try:
        trial.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as e:
        return " ".join(str(e).split())
    return None


def load_latest_checkpoint(checkpoint_dir: str, agent: torch.nn.Module | None = None) -> TrainerCheckpoint | None:
    """The newest usable checkpoint in ``checkpoint_dir``; None when the directory holds no trainer state.

    A trainer state is usable when it reads and verifies, its policy file exists, matches its digest and
    reads as a policy, and (when ``agent`` is given) the policy's weights fit ``agent``. Each unusable one is
    skipped with a warning naming the trainer state and its policy file, and left in place; the previous
    pair is tried. When none is usable this raises ``UnloadableCheckpointsError`` listing why, or, when every
    policy was fine but none fits ``agent``, a ``CheckpointError`` that says the agent config differs.
    """
    checkpoint_dir = check_checkpoint_dir(checkpoint_dir)
    problems: list[str] = []
    misfits = 0
    for _, path in list_trainer_states(checkpoint_dir):
        try:
            ckpt = read_trainer_state(path)
            verify_checkpoint(ckpt)
        except CheckpointError as e:
            problems.append(str(e))
            logger.warning("skipping checkpoint: %s; trying the previous one", e)
            continue
        try:
            weights = read_policy_file(ckpt.policy_path)["state_dict"]
        except (PolicyFileError, KeyError, TypeError) as e:
            why = f"cannot be loaded: {e}"
        else:
            misfit = _fit_problem(weights, agent) if agent is not None else None
            if misfit is None:
                return ckpt
            misfits += 1
            why = f"does not fit the agent: {misfit}"
        problems.append(f"trainer state {path}: its policy file {ckpt.policy_path} {why}")
        logger.warning(
            "skipping checkpoint %s: its policy file %s %s; trying the previous one", path, ckpt.policy_path, why
        )
    if not problems:
        return None
    if misfits == len(problems):
        raise CheckpointError(
            f"no policy in {checkpoint_dir} fits this agent ({problems[0]}). The checkpoints were made with a "
            "different agent config or environment; build the agent with the config in the checkpoint's trainer "
            "state, or start a new run directory"
        )
    raise UnloadableCheckpointsError(checkpoint_dir, problems)


def set_aside_checkpoints(checkpoint_dir: str, extra_files: Sequence[str] = ()) -> str:
    """Move ``checkpoint_dir`` (and ``extra_files``, e.g. the run's metrics file) into a new folder
    ``unloadable_<time>`` beside it, and recreate an empty ``checkpoint_dir``; returns the new folder.

    For starting a run over in place, on the user's explicit request, after ``UnloadableCheckpointsError``:
    nothing is deleted. Collective under torch.distributed (rank 0 moves once every rank is past loading).
    """
    checkpoint_dir = os.path.abspath(checkpoint_dir)
    parent = os.path.dirname(checkpoint_dir)
    base = os.path.join(parent, time.strftime("unloadable_%Y%m%d_%H%M%S"))
    dest = base
    barrier()
    if is_master():
        n = 1
        while os.path.exists(dest):
            dest, n = f"{base}_{n}", n + 1
        os.makedirs(dest)
        os.replace(checkpoint_dir, os.path.join(dest, os.path.basename(checkpoint_dir)))
        for path in extra_files:
            if os.path.exists(path):
                os.replace(path, os.path.join(dest, os.path.basename(path)))
        os.makedirs(checkpoint_dir, exist_ok=True)
        fsync_dir(parent)
    names = [dest]
    if is_distributed():
        torch.distributed.broadcast_object_list(names, src=0)
    barrier()
    return names[0]


# ----------------------------------------------------------------------------------------------------
# RNG states
def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (global), torch CPU and CUDA generator states, as weights-only-loadable values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # np.ndarray is not allowed by torch.load(weights_only=True): store the keys as a list.
        "numpy": {
            "name": name,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices but %d are visible; CUDA RNG not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


# ----------------------------------------------------------------------------------------------------
# Saving
def should_save(epoch: int, checkpoint_interval: int, force_save: bool = False, last_saved_epoch: int = 0) -> bool:
    """The interval rule (``metta.rl.intervals.crossed``) for a loop that only knows the current epoch: save when a
    multiple of ``checkpoint_interval`` lies in ``(last_saved_epoch, epoch]`` (0 disables), or when forced.

    ``epoch % interval == 0`` would fire at half rate, or never, when the epoch advances by ``update_epochs`` > 1."""
    if force_save:
        return True
    return crossed(checkpoint_interval, last_saved_epoch, epoch)


def last_saved_epoch(checkpoint_dir: str, before: int) -> int:
    """The epoch of the newest trainer state in ``checkpoint_dir`` below epoch ``before`` (0 when there is none).

    States at or above ``before`` belong to a future this run abandoned (it resumed from an older checkpoint)."""
    return next((e for e, _ in list_trainer_states(checkpoint_dir) if e < before), 0)


# Settings that a continued run is expected to change (a longer budget, other folders, logging).
_RESUME_NEUTRAL = ("total_timesteps", "checkpoint.", "simulation.replay_dir", "profiler.", "verbose")


def config_differences(saved: Mapping[str, Any] | None, trainer_config: Any) -> list[str]:
    """The dotted trainer-config keys whose value differs between a checkpoint's recorded config and
    ``trainer_config`` (``"ppo.gamma: 0.99 -> 0.5"``), leaving out those a continued run changes on purpose
    (``total_timesteps``, folders, intervals, logging). Empty when the checkpoint recorded no config."""
    current = _config_as_dict(trainer_config)
    if not saved or current is None:
        return []
    before, after = flatten_dotted(saved), flatten_dotted(current)
    return [
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k) and not k.startswith(_RESUME_NEUTRAL)
    ]


def _config_as_dict(trainer_config: Any) -> dict[str, Any] | None:
    if trainer_config is None:
        return None
    if hasattr(trainer_config, "model_dump"):
        return trainer_config.model_dump(mode="json", by_alias=True)
    if type(trainer_config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(trainer_config, resolve=True)  # type: ignore[return-value]
    if isinstance(trainer_config, Mapping):
        return dict(trainer_config)
    raise TypeError(
        f"trainer_config is a {type(trainer_config).__name__}; pass a TrainerConfig, a dict or a DictConfig"
    )


def _check_save_args(checkpoint_dir: Any, epoch: Any, agent_step: Any, keep_last_n: Any) -> None:
    if not isinstance(checkpoint_dir, (str, os.PathLike)) or not str(checkpoint_dir):
        raise ValueError(f"checkpoint_dir={checkpoint_dir!r} must be a directory path, e.g. dirs.checkpoint_dir")
    for name, value in (("epoch", epoch), ("agent_step", agent_step)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative int")
    if keep_last_n is not None and (not isinstance(keep_last_n, int) or keep_last_n < 1):
        raise ValueError(f"keep_last_n={keep_last_n!r} must be >= 1 (None keeps every checkpoint)")


def write_checkpoint(
    checkpoint_dir: str,
    *,
    epoch: int,
    agent_step: int,
    agent: torch.nn.Module,
    optimizer: Any,
    policy_store: PolicyStore,
    stats: Mapping[str, Any] | None = None,
    trainer_config: Any = None,
    vecenv: Any = None,
    curriculum_state: Any = None,
    stopwatch: Any = None,
    keep_last_n: int | None = DEFAULT_KEEP_LAST_N,
    final: bool = False,
    metadata: Mapping[str, Any] | None = None,
    extra_args: Mapping[str, Any] | None = None,
) -> PolicyRecord | None:
    """Write a complete checkpoint for ``epoch`` and prune old ones. Rank 0 only (others get None).

    The policy goes through ``write_policy`` and the rest through ``write_checkpoint_state``, the two writers
    every API uses. ``optimizer`` is anything with ``state_dict()`` (metta's ``Optimizer`` or a torch
    optimizer) or None. The curriculum state comes from ``curriculum_state`` or, when None,
    ``vecenv.get_curriculum_state()``. Returns the saved policy's record.
    """
    _check_save_args(checkpoint_dir, epoch, agent_step, keep_last_n)
    if not is_master():
        return None
    checkpoint_dir = os.path.abspath(str(checkpoint_dir))
    state_path = os.path.join(checkpoint_dir, trainer_state_file_name(epoch))
    policy_path = os.path.join(checkpoint_dir, policy_file_name(epoch))

    existing = _existing_checkpoint(state_path)
    if existing is not None and existing.agent_step == agent_step:
        # Weights change only in a training phase, which advances the epoch: an existing checkpoint with the
        # same epoch and agent_step (e.g. the final forced save right after an interval save) is this one.
        return policy_store.policy_record(policy_path, selector_type="latest")

    meta: dict[str, Any] = {"agent_step": int(agent_step), "epoch": int(epoch), "final": bool(final)}
    if stats is not None:
        meta["stats"] = dict(stats)
    if stopwatch is not None:
        meta["total_time"] = stopwatch.get_elapsed()
        meta["train_time"] = stopwatch.get_elapsed("_train")
    meta.update(metadata or {})
    try:
        record = write_policy(checkpoint_dir, epoch, agent, policy_store, meta)
        write_checkpoint_state(
            checkpoint_dir,
            epoch=epoch,
            agent_step=agent_step,
            optimizer=optimizer,
            trainer_config=trainer_config,
            vecenv=vecenv,
            curriculum_state=curriculum_state,
            stopwatch=stopwatch,
            extra_args=extra_args,
            keep_last_n=keep_last_n,
        )
    except WriteError as err:
        raise checkpoint_write_error(err, checkpoint_dir, epoch) from err
    return record


def checkpoint_write_error(err: WriteError, checkpoint_dir: str, epoch: int) -> WriteError:
    """``err`` (a failed write of epoch ``epoch``'s checkpoint) with what is left: the newest checkpoint on disk,
    which the failed write did not touch and which a resumed run starts from."""
    older = [(e, path) for e, path in list_trainer_states(checkpoint_dir) if e != epoch]
    kept = (
        f"The newest checkpoint on disk, {older[0][1]} (epoch {older[0][0]}), is intact and a resumed run starts "
        "from it"
        if older
        else "There is no earlier checkpoint: a resumed run starts from scratch"
    )
    return WriteError(err.errno, f"checkpoint of epoch {epoch} not saved: {err}. {kept}", err.filename)


def write_policy(
    checkpoint_dir: str, epoch: int, agent: torch.nn.Module, policy_store: PolicyStore, metadata: Mapping[str, Any]
) -> PolicyRecord:
    """The one writer of policy files: ``{checkpoint_dir}/model_{epoch:04d}.pt`` in PolicyStore's format,
    written atomically and fsynced (file and directory) before anything may point to it; returns its record.

    A trainer state that points to an older file of that name is retired first, so no state ever points to
    a policy it was not written with. Callers gate on rank 0.
    """
    checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
    os.makedirs(checkpoint_dir, exist_ok=True)
    policy_path = os.path.join(checkpoint_dir, policy_file_name(epoch))
    state_path = os.path.join(checkpoint_dir, trainer_state_file_name(epoch))
    if os.path.exists(state_path):
        os.remove(state_path)
        fsync_dir(checkpoint_dir)
    record = policy_store.create_empty_policy_record(os.path.basename(policy_path), override_path=policy_path)
    record.metadata = dict(metadata)
    record.policy = unwrap_agent(agent)
    policy_store.save(record, policy_path)
    fsync_file(policy_path)
    fsync_dir(checkpoint_dir)
    return record


def write_checkpoint_state(
    checkpoint_dir: str,
    *,
    epoch: int,
    agent_step: int,
    optimizer: Any = None,
    trainer_config: Any = None,
    vecenv: Any = None,
    curriculum_state: Any = None,
    stopwatch: Any = None,
    extra_args: Mapping[str, Any] | None = None,
    keep_last_n: int | None = DEFAULT_KEEP_LAST_N,
) -> TrainerCheckpoint:
    """The one writer of trainer states: ``trainer_state_{epoch:04d}.ckpt`` for the policy ``write_policy`` wrote
    for ``epoch`` (its digest included), with the optimizer state (``optimizer`` or its ``state_dict()``), the
    RNG states, the curriculum state (``curriculum_state``, else ``vecenv.get_curriculum_state()``), the
    stopwatch, the trainer config and ``extra_args``; then prunes to ``keep_last_n``. Callers gate on rank 0.
    """
    checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
    policy_path = os.path.join(checkpoint_dir, policy_file_name(epoch))
    if not os.path.isfile(policy_path):
        raise ValueError(
            f"no policy file {policy_path} for epoch {epoch}: write the policy first (write_policy, or "
            f"TrainingCheckpointer.save_policy(policy, {epoch}, metadata)) so that the trainer state can point to it"
        )
    if curriculum_state is None and vecenv is not None and hasattr(vecenv, "get_curriculum_state"):
        curriculum_state = vecenv.get_curriculum_state()
    _warn_if_incomplete(checkpoint_dir, trainer_config=trainer_config, vecenv=curriculum_state, stopwatch=stopwatch)
    if optimizer is not None and not isinstance(optimizer, Mapping):
        optimizer = optimizer.state_dict()
    ckpt = TrainerCheckpoint(
        agent_step=int(agent_step),
        epoch=int(epoch),
        optimizer_state_dict=dict(optimizer) if optimizer is not None else None,
        policy_path=policy_path,
        policy_sha256=sha256_file(policy_path),
        stopwatch_state=stopwatch.save_state() if stopwatch is not None else None,
        rng_state=capture_rng_state(),
        curriculum_state=curriculum_state,
        trainer_config=_config_as_dict(trainer_config),
        world_size=get_world_size(),
        extra_args=dict(extra_args or {}),
    )
    write_trainer_state(os.path.join(checkpoint_dir, trainer_state_file_name(epoch)), ckpt)
    # Only now is it safe to drop old checkpoints.
    prune_checkpoints(checkpoint_dir, keep_last_n, current_epoch=epoch)
    return ckpt


_WARNED_INCOMPLETE: set[str] = set()  # checkpoint directories already warned about, once per process


def _warn_if_incomplete(checkpoint_dir: str, **parts: Any) -> None:
    """Say once per directory which parts of a run its trainer states lack, and how to supply them."""
    missing = [name for name, value in parts.items() if value is None]
    if not missing or checkpoint_dir in _WARNED_INCOMPLETE:
        return
    _WARNED_INCOMPLETE.add(checkpoint_dir)
    logger.warning(
        "trainer states in %s are written without %s, so a resumed run cannot restore them: pass %s to "
        "save_checkpoint, or to TrainingCheckpointer(...) or its save_trainer_state",
        checkpoint_dir,
        ", ".join(missing),
        ", ".join(f"{name}=..." for name in missing),
    )


def _existing_checkpoint(state_path: str) -> TrainerCheckpoint | None:
    if not os.path.exists(state_path):
        return None
    try:
        ckpt = read_trainer_state(state_path)
        verify_checkpoint(ckpt)
        return ckpt
    except CheckpointError:
        return None


def prune_checkpoints(checkpoint_dir: str, keep_last_n: int | None, current_epoch: int | None = None) -> list[str]:
    """Keep the newest ``keep_last_n`` checkpoints (None keeps all); returns the deleted paths.

    Crash-safe: old checkpoints go oldest first, each trainer state before its policy file, so a prune killed
    at any moment leaves the newest checkpoints intact plus some older files; no surviving trainer state points
    to a deleted policy, and the next prune finishes the job, including policy files older than every kept
    checkpoint (whose trainer state an interrupted prune already deleted).

    Trainer states newer than ``current_epoch`` belong to a timeline this run abandoned (it resumed from an
    older checkpoint because the newer ones could not be loaded). They are renamed to ``*.abandoned`` rather
    than kept, so they can neither be resumed by mistake nor crowd out the good checkpoints in the count.
    Policy files newer than the oldest kept checkpoint and without a trainer state (a save killed midway, or
    ``ensure_initial_policy``'s) are left alone.
    """
    removed = remove_stale_temp_files(checkpoint_dir, "model_*") + remove_stale_temp_files(
        checkpoint_dir, "trainer_state_*"
    )
    states = list_trainer_states(checkpoint_dir)
    if current_epoch is not None:
        for _, path in [s for s in states if s[0] > current_epoch]:
            logger.warning(
                "checkpoint %s is newer than the current epoch %d; renaming it to %s.abandoned",
                path,
                current_epoch,
                path,
            )
            os.replace(path, path + ".abandoned")
        states = [s for s in states if s[0] <= current_epoch]
    if keep_last_n is None or not states:
        return removed
    kept, old = states[:keep_last_n], states[keep_last_n:]
    for _, state_path in reversed(old):
        fault_point("prune", os.path.basename(state_path))
        os.remove(state_path)
        fsync_dir(checkpoint_dir)  # durable before its policy goes: no state may outlive its policy
        removed.append(state_path)
    oldest_kept = kept[-1][0]
    for epoch, policy_path in _policy_files(checkpoint_dir):
        if epoch < oldest_kept:
            fault_point("prune", os.path.basename(policy_path))
            os.remove(policy_path)
            removed.append(policy_path)
    fsync_dir(checkpoint_dir)
    return removed


def _policy_files(checkpoint_dir: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of every ``model_XXXX.pt`` file, oldest first."""
    found = []
    for name in os.listdir(checkpoint_dir):
        m = _POLICY_FILE_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(checkpoint_dir, name)))
    return sorted(found)


# ----------------------------------------------------------------------------------------------------
# The interface's signatures (re-exported by metta.interface)
def save_checkpoint(
    epoch: int,
    agent_step: int,
    agent: torch.nn.Module,
    optimizer: Any,
    policy_store: Any,
    checkpoint_path: str,
    checkpoint_interval: int,
    stats: Mapping[str, Any] | None = None,
    force_save: bool = False,
    *,
    trainer_config: Any = None,
    vecenv: Any = None,
    stopwatch: Any = None,
    keep_last_n: int | None = DEFAULT_KEEP_LAST_N,
    final: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> PolicyRecord | None:
    """Write a complete checkpoint on rank 0 when the epoch has crossed a multiple of ``checkpoint_interval``
    since the newest checkpoint in ``checkpoint_path`` (``metta.rl.intervals.crossed``), or with ``force_save``
    (a loop's last save, say: ``force_save=agent_step >= total_timesteps``).

    Call it after every update: with ``update_epochs=2`` and ``checkpoint_interval=3`` it saves at epochs 4, 6,
    10, 12, ... (``epoch % 3 == 0`` would miss every odd multiple).

    The checkpoint (``write_checkpoint``) holds the policy (``model_XXXX.pt``) and a trainer state (optimizer,
    agent_step, epoch, RNG, the curriculum state of ``vecenv``, ``trainer_config``, the ``stopwatch``); the newest
    ``keep_last_n`` are kept. Returns the saved policy's record, or None when nothing was saved.
    """
    if not isinstance(checkpoint_interval, int) or isinstance(checkpoint_interval, bool) or checkpoint_interval < 0:
        raise ValueError(
            f"checkpoint_interval={checkpoint_interval!r} must be an int >= 0 (epochs; 0 saves only with force_save)"
        )
    checkpoint_path = _check_dir("checkpoint_path", checkpoint_path)
    _check_agent(agent)
    _check_optimizer(optimizer)
    if not hasattr(policy_store, "create_empty_policy_record"):
        raise TypeError(f"policy_store is a {type(policy_store).__name__}; pass a metta.agent.policy_store.PolicyStore")
    if not should_save(epoch, checkpoint_interval, force_save, last_saved_epoch(checkpoint_path, epoch)):
        return None
    return write_checkpoint(
        checkpoint_path,
        epoch=epoch,
        agent_step=agent_step,
        agent=agent,
        optimizer=optimizer,
        policy_store=policy_store,
        stats=stats,
        trainer_config=trainer_config,
        vecenv=vecenv,
        stopwatch=stopwatch,
        keep_last_n=keep_last_n,
        final=final,
        metadata=metadata,
    )


def _check_agent(agent: Any) -> None:
    if not isinstance(agent, torch.nn.Module):
        raise TypeError(f"agent is a {type(agent).__name__}; pass the policy from Agent(env) (an nn.Module)")


def _check_optimizer(optimizer: Any) -> None:
    if optimizer is not None and not (hasattr(optimizer, "state_dict") and hasattr(optimizer, "load_state_dict")):
        raise TypeError(f"optimizer is a {type(optimizer).__name__}; pass metta's Optimizer, a torch optimizer or None")


def _check_dir(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name}={value!r} must be a directory path, e.g. dirs.checkpoint_dir")
    return os.fspath(value)


# ----------------------------------------------------------------------------------------------------
# Restoring
def load_checkpoint(
    checkpoint_dir: str,
    agent: torch.nn.Module | None,
    optimizer: Any,
    policy_store: PolicyStore | None = None,
    *,
    vecenv: Any = None,
    stopwatch: Any = None,
    restore_rng: bool = True,
    trainer_config: Any = None,
) -> tuple[int, int, str | None]:
    """Resume from the newest good checkpoint in ``checkpoint_dir``: ``(agent_step, epoch, policy_path)``.

    Loads the weights into ``agent`` in place, the optimizer state, and (when given) the curriculum state of
    ``vecenv``, the ``stopwatch`` and the RNG states. With a ``policy_store`` the weights are read through it
    (``policy_store.policy_record(policy_path).policy``, on the store's device), which leaves the loaded record in
    its cache for later ``policy_record(policy_path)`` calls. A checkpoint written at another torch.distributed
    world size resumes too; rank 0 then logs what that does to the batch sizes of ``trainer_config`` (this run's
    ``TrainerConfig``, per rank) and whether the curriculum state was restored or rebuilt. A checkpoint that is
    corrupt, truncated, or whose policy file cannot be loaded into ``agent`` is skipped with a warning naming its
    files, and the previous one is used. Returns ``(0, 0, None)`` when the directory is missing or holds no checkpoint.
    Raises ``UnloadableCheckpointsError`` when it holds checkpoints and none can be loaded (nothing is changed),
    and ``ValueError`` when ``checkpoint_dir`` is a file or a run directory.
    """
    checkpoint_dir = _check_dir("checkpoint_dir", checkpoint_dir)
    if agent is not None:
        _check_agent(agent)
    _check_optimizer(optimizer)
    if policy_store is not None and not isinstance(policy_store, PolicyStore):
        raise TypeError(f"policy_store is a {type(policy_store).__name__}; pass a metta.agent.policy_store.PolicyStore")
    ckpt = load_latest_checkpoint(checkpoint_dir, agent)
    if ckpt is None:
        return 0, 0, None
    restore_checkpoint(
        ckpt,
        agent,
        optimizer,
        vecenv=vecenv,
        stopwatch=stopwatch,
        restore_rng=restore_rng,
        policy_store=policy_store,
        trainer_config=trainer_config,
    )
    return ckpt.agent_step, ckpt.epoch, ckpt.policy_path


def ensure_initial_policy(
    agent: torch.nn.Module, policy_store: PolicyStore, checkpoint_path: str, loaded_policy_path: str | None
) -> str | None:
    """Make every rank start from the same weights; returns the policy file they start from (or None).

    After ``load_checkpoint`` every rank already holds the checkpoint's weights. A fresh distributed run has
    rank 0 write its initial weights to ``model_0000.pt`` (through ``policy_store``) and the other ranks load
    them, so the ranks agree even before DDP's own broadcast. A single process has nothing to agree on.
    """
    _check_agent(agent)
    checkpoint_path = _check_dir("checkpoint_path", checkpoint_path)
    if loaded_policy_path is not None or not is_distributed():
        barrier()
        return loaded_policy_path
    path = os.path.join(os.path.abspath(checkpoint_path), policy_file_name(0))
    if is_master():
        write_policy(checkpoint_path, 0, agent, policy_store, {"agent_step": 0, "epoch": 0, "initial": True})
    barrier()
    if not is_master():
        unwrap_agent(agent).load_state_dict(read_policy_file(path)["state_dict"])
    return path


def restore_checkpoint(
    ckpt: TrainerCheckpoint,
    agent: torch.nn.Module | None = None,
    optimizer: Any = None,
    vecenv: Any = None,
    stopwatch: Any = None,
    restore_rng: bool = True,
    policy_store: PolicyStore | None = None,
    trainer_config: Any = None,
) -> None:
    """Load a verified checkpoint into live objects (each one optional).

    The agent's weights are loaded in place (read through ``policy_store`` when given), so call this before
    ``wrap_agent_distributed`` or pass the wrapped agent (it is unwrapped). Every rank should call it with the
    same checkpoint; RNG states are restored on rank 0 only, since the other ranks must keep streams of their own
    (``restore_curriculum``). When the checkpoint was written at another world size, rank 0 logs what that does
    to the batch sizes of ``trainer_config`` (this run's per-rank ``TrainerConfig``; ``world_size_change``).
    """
    if agent is not None:
        try:
            if policy_store is not None:
                state_dict = policy_store.policy_record(ckpt.policy_path, "latest").policy.state_dict()
            else:
                state_dict = read_policy_file(ckpt.policy_path)["state_dict"]
            unwrap_agent(agent).load_state_dict(state_dict)
        except (PolicyFileError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"cannot load policy {ckpt.policy_path} into the agent: {e}. The checkpoint was made with a "
                "different agent config or environment; build the agent with the config in the checkpoint's "
                "trainer state, or start a new run directory"
            ) from e
    if optimizer is not None and ckpt.optimizer_state_dict is not None:
        try:
            optimizer.load_state_dict(ckpt.optimizer_state_dict)
        except (ValueError, KeyError, RuntimeError) as e:
            logger.warning(
                "optimizer state in %s does not fit this optimizer (%s); continuing with a fresh optimizer state. "
                "Use the same optimizer type and agent as the run that wrote it to restore it",
                ckpt.path,
                e,
            )
    resized = ckpt.world_size is not None and ckpt.world_size != get_world_size()
    if resized and is_master():
        logger.warning(world_size_change(ckpt.world_size, get_world_size(), ckpt.trainer_config, trainer_config))
    if vecenv is not None and hasattr(vecenv, "set_curriculum_state"):
        restore_curriculum(ckpt, vecenv, resized)
    if stopwatch is not None and ckpt.stopwatch_state:
        stopwatch.load_state(ckpt.stopwatch_state, resume_running=True)
    if restore_rng and ckpt.rng_state and is_master():
        restore_rng_state(ckpt.rng_state)


def world_size_change(saved_world_size: int, world_size: int, saved_config: Any, trainer_config: Any) -> str:
    """In words, what resuming a checkpoint written by ``saved_world_size`` ranks with ``world_size`` ranks does
    to the batch sizes: ``saved_config`` is the checkpoint's recorded trainer config and ``trainer_config`` this
    run's (both per rank, as ``scale_by_world_size`` made them; either may be None)."""
    head = f"resuming at world size {world_size} from a checkpoint written at world size {saved_world_size}"
    now = _config_as_dict(trainer_config)
    if now is None:
        return f"{head}; the optimizer state, agent_step and the schedules go on from the checkpoint"
    before = _config_as_dict(saved_config) or {}

    def sizes(cfg: Mapping[str, Any], ranks: int) -> str:
        return (
            f"batch_size {cfg['batch_size'] * ranks} in all ({ranks} x {cfg['batch_size']}), minibatch_size "
            f"{cfg['minibatch_size'] * ranks} ({ranks} x {cfg['minibatch_size']})"
        )

    if now.get("scale_batches_by_world_size"):
        rule = "trainer.scale_batches_by_world_size=true keeps the totals and splits them over the ranks"
    else:
        rule = (
            "trainer.scale_batches_by_world_size=false keeps the per-rank sizes, so the totals (and each epoch's "
            "agent steps) change with the world size"
        )
    was = f"; before: {sizes(before, saved_world_size)}" if "batch_size" in before else ""
    return (
        f"{head}: {rule}; now {sizes(now, world_size)}{was}. The optimizer state, agent_step and the schedules "
        "go on from the checkpoint"
    )


def without_rng_states(state: Any) -> Any:
    """A curriculum state with every ``"rng"`` entry (a random stream's position) left out, at any depth."""
    if isinstance(state, Mapping):
        return {k: without_rng_states(v) for k, v in state.items() if k != "rng"}
    if isinstance(state, list):
        return [without_rng_states(v) for v in state]
    return state


def restore_curriculum(ckpt: TrainerCheckpoint, vecenv: Any, resized: bool = False) -> bool:
    """Load the checkpoint's curriculum state (rank 0's, one entry per vecenv worker) into ``vecenv``; True when
    it was restored.

    Rank 0 takes it whole; the other ranks take what it learned (task weights, completions) but keep their own
    random streams, so that the ranks go on drawing different tasks. A state that does not fit this vecenv
    (another ``num_workers`` or curriculum) is left out with a warning, and every rank goes on with the curriculum
    as built from the config. After a world-size change (``resized``) rank 0 says which of the two happened.
    """
    where = ckpt.path
    if ckpt.curriculum_state is None:
        if resized and is_master():
            logger.warning("%s holds no curriculum state: each rank rebuilt its curriculum from the config", where)
        return False
    state = ckpt.curriculum_state if get_rank() == 0 else without_rng_states(ckpt.curriculum_state)
    try:
        vecenv.set_curriculum_state(state)
    except ValueError as e:
        if is_master():
            logger.warning(
                "curriculum state in %s not restored (%s): each rank rebuilt its curriculum from the config", where, e
            )
        return False
    if resized and is_master():
        logger.warning(
            "curriculum state restored from %s (rank 0's, written at world size %d) on each of the %d ranks; the "
            "ranks other than 0 keep their own random streams",
            where,
            ckpt.world_size,
            get_world_size(),
        )
    return True
