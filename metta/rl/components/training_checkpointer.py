"""``TrainingCheckpointer``: save and load policies and trainer state, over ``metta.rl.checkpoint``.

    checkpointer = TrainingCheckpointer(checkpoint_dir, policy_store, wandb_run)
    record = checkpointer.save_policy(policy, epoch, {"agent_step": agent_step})
    checkpointer.save_trainer_state(agent_step, epoch, optimizer.state_dict(), run_dir)
    checkpoint = checkpointer.load_trainer_state(run_dir)          # None when there is none
    record = checkpointer.load_policy(checkpoint, env)             # the checkpoint's policy, or a new one
    checkpoint = checkpointer.resume(policy, optimizer)            # restore a run in place (or None)

The files are ``metta.rl.checkpoint``'s, written by its two writers (``write_policy`` and
``write_checkpoint_state``, the ones ``write_checkpoint`` and ``ensure_initial_policy`` use): ``model_XXXX.pt``
(PolicyStore's format) and ``trainer_state_XXXX.ckpt`` (verified by sha256, pointing to its policy file by
name), both written atomically, so a crash never leaves a state that cannot be loaded. The trainer state
always lives next to its policy file in ``checkpoint_dir``; the ``run_dir`` arguments (the seed's signature)
may be ``checkpoint_dir`` itself or the directory that holds it. ``save(...)`` writes both files at once with
``write_checkpoint``.

A trainer state is complete (optimizer, agent_step, epoch, RNG, curriculum, stopwatch, trainer config) when
the checkpointer knows the run: ``TrainingCheckpointer(..., trainer_config=cfg, vecenv=env, stopwatch=timer)``
(``create_training_components`` passes them). Built the seed's way, with three arguments, it learns what it can:
``load_policy(checkpoint, env)`` (or ``resume``) binds it to that vecenv's curriculum, and without a ``stopwatch``
it keeps its own clock of the run's wall time (started when it is made, restored on resume). Whatever is still
missing at the first save is named in a warning, with how to supply it (``metta.rl.checkpoint`` does, for every
API that writes trainer states).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from metta.agent.metta_agent import MettaAgent, make_policy
from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_store import PolicyStore
from metta.common.distributed import is_master, unwrap_agent
from metta.common.profiling.stopwatch import Stopwatch
from metta.rl.checkpoint import (
    DEFAULT_KEEP_LAST_N,
    CheckpointError,
    TrainerCheckpoint,
    load_latest_checkpoint,
    policy_file_name,
    restore_checkpoint,
    write_checkpoint,
    write_checkpoint_state,
    write_policy,
)


class TrainingCheckpointer:
    def __init__(
        self,
        checkpoint_dir: str | os.PathLike,
        policy_store: PolicyStore,
        wandb_run: Any = None,
        keep_last_n: int | None = DEFAULT_KEEP_LAST_N,
        *,
        trainer_config: Any = None,
        vecenv: Any = None,
        stopwatch: Any = None,
    ):
        if not isinstance(checkpoint_dir, (str, os.PathLike)) or not os.fspath(checkpoint_dir):
            raise ValueError(f"checkpoint_dir={checkpoint_dir!r} must be a directory path, e.g. dirs.checkpoint_dir")
        if not isinstance(policy_store, PolicyStore):
            raise TypeError(
                f"policy_store is a {type(policy_store).__name__}; pass a metta.agent.policy_store.PolicyStore"
            )
        if keep_last_n is not None and (
            isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 1
        ):
            raise ValueError(f"keep_last_n={keep_last_n!r} must be an int >= 1 (None keeps every checkpoint)")
        self.checkpoint_dir = os.path.abspath(os.fspath(checkpoint_dir))
        self.policy_store = policy_store
        self.wandb_run = wandb_run
        self.keep_last_n = keep_last_n
        # What a trainer state records besides the counters and the optimizer (see the module docstring).
        self.trainer_config = trainer_config
        self.vecenv = vecenv
        if stopwatch is None:  # the run's wall time at least (phases are timed by whoever owns the loop's timer)
            stopwatch = Stopwatch()
            stopwatch.start()
        self.stopwatch = stopwatch
        # Uploads go through PolicyStore.add_to_wandb_run, the one upload implementation.
        if wandb_run is not None and policy_store.wandb_run is None:
            policy_store.wandb_run = wandb_run

    # ------------------------------------------------------------------------------------------------
    # Saving
    def save_policy(
        self, policy: torch.nn.Module, epoch: int, metadata: Mapping[str, Any] | None = None
    ) -> PolicyRecord | None:
        """Write ``model_{epoch:04d}.pt`` atomically and durably; returns its record (None on ranks > 0).

        ``metadata`` (numbers, strings, lists, dicts) is stored in the file; ``epoch`` is always set.
        """
        if not isinstance(policy, torch.nn.Module):
            raise TypeError(f"policy is a {type(policy).__name__}; pass the agent (an nn.Module)")
        _check_count("epoch", epoch)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata is a {type(metadata).__name__}; pass a dict such as {{'agent_step': 1000}}")
        if not is_master():
            return None
        return write_policy(
            self.checkpoint_dir, epoch, policy, self.policy_store, {**dict(metadata or {}), "epoch": int(epoch)}
        )

    def save_trainer_state(
        self,
        agent_step: int,
        epoch: int,
        optimizer_state_dict: Mapping[str, Any] | None,
        run_dir: str | os.PathLike | None = None,
        extra_args: Mapping[str, Any] | None = None,
        *,
        trainer_config: Any = None,
        vecenv: Any = None,
        stopwatch: Any = None,
    ) -> str | None:
        """Write ``trainer_state_{epoch:04d}.ckpt`` for the policy ``save_policy`` wrote for ``epoch``; returns
        its path (None on ranks > 0). Older checkpoints beyond ``keep_last_n`` are pruned afterwards.

        The state also holds the RNG states and, from the arguments or else the checkpointer's own, the trainer
        config, the curriculum state of ``vecenv`` and the ``stopwatch``."""
        _check_count("agent_step", agent_step)
        _check_count("epoch", epoch)
        if optimizer_state_dict is not None and not isinstance(optimizer_state_dict, Mapping):
            raise TypeError(
                f"optimizer_state_dict is a {type(optimizer_state_dict).__name__}; pass optimizer.state_dict()"
            )
        self._check_run_dir(run_dir)
        if not is_master():
            return None
        context = self._context(trainer_config, vecenv, stopwatch)
        ckpt = write_checkpoint_state(
            self.checkpoint_dir,
            epoch=epoch,
            agent_step=agent_step,
            optimizer=optimizer_state_dict,
            extra_args=extra_args,
            keep_last_n=self.keep_last_n,
            **context,
        )
        return ckpt.path

    def _context(self, trainer_config: Any, vecenv: Any, stopwatch: Any) -> dict[str, Any]:
        """What a trainer state records besides counters and optimizer: the arguments, else the checkpointer's."""
        return {
            "trainer_config": trainer_config if trainer_config is not None else self.trainer_config,
            "vecenv": vecenv if vecenv is not None else self.vecenv,
            "stopwatch": stopwatch if stopwatch is not None else self.stopwatch,
        }

    def save(
        self,
        policy: torch.nn.Module,
        optimizer: Any,
        agent_step: int,
        epoch: int,
        *,
        trainer_config: Any = None,
        vecenv: Any = None,
        stopwatch: Any = None,
        metadata: Mapping[str, Any] | None = None,
        final: bool = False,
    ) -> PolicyRecord | None:
        """Policy and trainer state in one call (``metta.rl.checkpoint.write_checkpoint``); the trainer config,
        ``vecenv`` and ``stopwatch`` default to the checkpointer's own."""
        return write_checkpoint(
            self.checkpoint_dir,
            epoch=epoch,
            agent_step=agent_step,
            agent=policy,
            optimizer=optimizer,
            policy_store=self.policy_store,
            keep_last_n=self.keep_last_n,
            final=final,
            metadata=metadata,
            **self._context(trainer_config, vecenv, stopwatch),
        )

    def upload_policy(self, record: PolicyRecord, name: str | None = None) -> str:
        """Upload a saved policy as a W&B artifact of ``wandb_run``; returns the artifact's name."""
        if self.policy_store.wandb_run is None:
            raise ValueError(
                "upload_policy needs a wandb run: TrainingCheckpointer(checkpoint_dir, policy_store, wandb_run=run)"
            )
        return self.policy_store.add_to_wandb_run(name or record.run_name.removesuffix(".pt"), record)

    # ------------------------------------------------------------------------------------------------
    # Loading
    def load_trainer_state(self, run_dir: str | os.PathLike | None = None) -> TrainerCheckpoint | None:
        """The newest verified checkpoint (corrupt ones are skipped with a warning), or None when there is none."""
        self._check_run_dir(run_dir)
        return load_latest_checkpoint(self.checkpoint_dir)

    def resume(self, policy: torch.nn.Module, optimizer: Any = None) -> TrainerCheckpoint | None:
        """Continue a run: the newest good checkpoint restored into ``policy`` (weights, in place), ``optimizer``,
        the checkpointer's ``vecenv`` (curriculum) and ``stopwatch``, and the RNG states, as run.py resumes;
        returns it (its ``agent_step`` and ``epoch`` are where to continue), or None when there is none."""
        if not isinstance(policy, torch.nn.Module):
            raise TypeError(f"policy is a {type(policy).__name__}; pass the agent (an nn.Module)")
        # With the policy, a checkpoint whose policy file does not fit it is skipped for the previous good pair.
        ckpt = load_latest_checkpoint(self.checkpoint_dir, unwrap_agent(policy))
        if ckpt is not None:
            restore_checkpoint(ckpt, policy, optimizer, vecenv=self.vecenv, stopwatch=self.stopwatch)
        return ckpt

    def load_policy(self, checkpoint: TrainerCheckpoint | None, env: Any) -> PolicyRecord:
        """The record of ``checkpoint``'s policy, loaded and bound to ``env``; with no checkpoint (None, or one
        without a policy) a new policy built for ``env`` (not yet saved: call ``save_policy`` for that)."""
        if checkpoint is not None and not isinstance(checkpoint, TrainerCheckpoint):
            raise TypeError(
                f"checkpoint is a {type(checkpoint).__name__}; pass what load_trainer_state returned (or None)"
            )
        if self.vecenv is None and hasattr(env, "get_curriculum_state"):
            self.vecenv = env  # the run's envs: their curriculum state goes into the trainer states from now on
        env = getattr(env, "driver_env", env)
        if not hasattr(env, "single_observation_space"):
            raise TypeError(f"env is a {type(env).__name__}; pass the vecenv from Environment(...) or a MettaGridEnv")
        device = self.policy_store.device
        if checkpoint is None or not checkpoint.policy_path:
            path = os.path.join(self.checkpoint_dir, policy_file_name(0))
            record = self.policy_store.create_empty_policy_record(os.path.basename(path), override_path=path)
            record.metadata = {"epoch": 0, "agent_step": 0}
            record.policy = make_policy(env, device=device)
            return record
        if not os.path.isfile(checkpoint.policy_path):
            raise CheckpointError(
                f"trainer state {checkpoint.path} points to {checkpoint.policy_path}, which does not exist"
            )
        record = self.policy_store.policy_record(checkpoint.policy_path, selector_type="latest")
        policy = record.policy
        if isinstance(policy, MettaAgent):
            # Bind to this env's feature ids and actions (they may be numbered differently from the run that saved it).
            policy.initialize_to_environment(
                env.get_observation_features(), env.action_names, env.max_action_args, device
            )
        return record

    # ------------------------------------------------------------------------------------------------
    def _check_run_dir(self, run_dir: str | os.PathLike | None) -> None:
        """A trainer state must sit next to its policy file, so only ``checkpoint_dir`` or its parent fit."""
        if run_dir is None:
            return
        if not isinstance(run_dir, (str, os.PathLike)) or not os.fspath(run_dir):
            raise ValueError(f"run_dir={run_dir!r} must be a directory path")
        run_dir = os.path.abspath(os.fspath(run_dir))
        if run_dir not in (self.checkpoint_dir, os.path.dirname(self.checkpoint_dir)):
            raise ValueError(
                f"run_dir={run_dir} does not hold this checkpointer's checkpoint_dir={self.checkpoint_dir}; trainer "
                "states are kept next to their policy files, so pass the run directory that contains checkpoint_dir "
                "(or None), or make a TrainingCheckpointer for that run's checkpoint directory"
            )


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative int")
