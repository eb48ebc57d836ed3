"""``trainer.initial_policy``: the policy a fresh run starts from instead of random weights.

    uri = load_initial_policy(agent, policy_store, trainer_cfg.initial_policy, seed=cfg.seed)

``uri`` is a policy file, a directory of policy files (``file://`` or a plain path) or a ``wandb://`` uri.
``type`` picks among the policies found there that match every ``filters`` entry (metadata key = value):
``specific`` (the uri must be one file), ``latest`` (the newest by epoch and agent step) or ``top`` (the best
by ``metric``, e.g. ``score`` or an evaluation score from the metadata, or ``epoch``). With ``range`` N > 1 the
start is drawn, with ``seed``, from the N newest or N best, so runs of a population start from different
policies; 1 takes the newest or the best itself. The chosen policy's weights are copied into ``agent``, which
keeps its own binding to the env (feature ids, actions). A uri that does not exist, or a choice that finds
nothing, is an error before any training.

A run that resumes from its own checkpoint ignores ``initial_policy``: the checkpoint is newer.
"""

from __future__ import annotations

import glob
import os
import pickle
import random
from typing import Any

import torch

from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_store import PolicyFileError, read_policy_file, select_records


def check_policy_uri(uri: str | None, field: str = "initial_policy.uri") -> None:
    """Fail fast, before a run creates anything, when ``uri`` (the setting ``field``, e.g. ``initial_policy.uri``
    or ``kickstart.teacher_uri``) cannot name a policy: a path (plain or ``file://``) that does not exist, a
    directory without ``*.pt`` files, a file that is not a readable metta policy (truncated, or holding objects a
    weights-only load refuses, which could run code when loaded), or a scheme other than ``file://``/``wandb://``
    (a ``wandb://`` uri is resolved when the policy is loaded). ``None`` or "" (no policy) passes."""
    if not uri:
        return
    uri = str(uri)
    if uri.startswith("wandb://"):
        return
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    if "://" in path:
        raise ValueError(f"{field}={uri!r}: unsupported scheme; use a policy file, a directory, file:// or wandb://")
    if os.path.isdir(path):
        if not glob.glob(os.path.join(path, "*.pt")):
            raise FileNotFoundError(f"{field}={uri!r} is a directory with no *.pt policy files")
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{field}={uri!r} does not exist; name a policy file, a directory of them or a wandb:// uri"
        )
    try:
        read_policy_file(path)  # memory-mapped: the metadata is read, the weights are not
    except PolicyFileError as err:
        if isinstance(err.__cause__, pickle.UnpicklingError):  # torch's message is a page long: say it in one line
            raise ValueError(
                f"{field}={uri!r} holds objects other than tensors and plain values, which a weights-only load "
                "refuses (loading them could run code); use a policy file saved by metta (PolicyStore.save)"
            ) from None
        raise ValueError(f"{field}={uri!r}: {' '.join(str(err).split())}") from None


def select_initial_policy(policy_store: Any, cfg: Any, seed: int = 0) -> PolicyRecord:
    """The record ``cfg`` (an ``InitialPolicyConfig``) names, or a ``ValueError``/``FileNotFoundError`` that says
    why none is."""
    if not cfg.uri:
        raise ValueError("initial_policy.uri is not set; set it to a policy file, a directory or a wandb:// uri")
    uri = str(cfg.uri)
    candidates = policy_store.policy_records(uri, "all", 1)  # newest first; a missing uri raises here
    if cfg.type == "specific":
        if len(candidates) != 1:
            raise ValueError(
                f"initial_policy.type=specific needs uri to name one policy file; {uri!r} holds {len(candidates)}: "
                "name the file, or use type=latest or type=top"
            )
        return candidates[0]
    matching = [r for r in candidates if all(r.metadata.get(k) == v for k, v in (cfg.filters or {}).items())]
    if not matching:
        raise ValueError(
            f"initial_policy: none of the {len(candidates)} policies at {uri!r} match filters={dict(cfg.filters)}; "
            "loosen the filters"
        )
    best = select_records(matching, cfg.type, cfg.range, cfg.metric)
    return best[0] if len(best) == 1 else random.Random(seed).choice(best)


def load_initial_policy(agent: torch.nn.Module, policy_store: Any, cfg: Any, seed: int = 0) -> str:
    """Copy the weights of the policy ``cfg`` names into ``agent``; returns its uri. ``seed`` draws the start
    when ``cfg.range`` > 1 (pass the same on every rank)."""
    record = select_initial_policy(policy_store, cfg, seed)
    source = record.policy_as_metta_agent()
    try:
        agent.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"initial_policy {record.uri}: its weights do not fit this run's agent ({err}); start from a policy of the "
            "same agent config"
        ) from err
    return str(record.uri)
