"""``trainer.initial_policy``: the policy a fresh run starts from instead of random weights.

    record = load_initial_policy(agent, policy_store, trainer_cfg.initial_policy)

``uri`` is a policy file, a directory of policy files (``file://`` or a plain path) or a ``wandb://`` uri.
``type`` picks among the policies found there: ``specific`` (the uri must be one file), ``latest`` (the
newest by epoch and agent step), or ``top`` (the best by ``metric``, e.g. ``score`` or an evaluation score
from the metadata, or ``epoch``), both among the ``range`` best candidates that match every ``filters``
entry (metadata key = value). The chosen policy's weights are copied into ``agent``, which keeps its own
binding to the env (feature ids, actions). A uri that does not exist, or a choice that finds nothing, is an
error before any training.

A run that resumes from its own checkpoint ignores ``initial_policy``: the checkpoint is newer.
"""

from __future__ import annotations

from typing import Any

import torch

from metta.agent.policy_record import PolicyRecord


def select_initial_policy(policy_store: Any, cfg: Any) -> PolicyRecord:
    """The record ``cfg`` (an ``InitialPolicyConfig``) names, or a ``ValueError``/``FileNotFoundError`` that says
    why none is."""
    if not cfg.uri:
        raise ValueError("initial_policy.uri is not set; set it to a policy file, a directory or a wandb:// uri")
    uri = str(cfg.uri)
    if cfg.type == "specific":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        records = policy_store.policy_records(uri, "all", 1)
        if "://" not in path and len(records) != 1:
            raise ValueError(
                f"initial_policy.type=specific needs uri to name one policy file; {uri!r} holds {len(records)}: "
                "name the file, or use type=latest or type=top"
            )
        return records[0]
    selector = "latest" if cfg.type == "latest" else "top"
    candidates = policy_store.policy_records(uri, "all", 1)
    matching = [r for r in candidates if all(r.metadata.get(k) == v for k, v in (cfg.filters or {}).items())]
    if not matching:
        raise ValueError(
            f"initial_policy: none of the {len(candidates)} policies at {uri!r} match filters={dict(cfg.filters)}; "
            "loosen the filters"
        )
    chosen = _choose(matching, selector, cfg.range, cfg.metric, policy_store)
    return chosen[0]


def _choose(records: list[PolicyRecord], selector: str, n: int, metric: str, policy_store: Any) -> list[PolicyRecord]:
    from metta.agent.policy_store import _select

    picked = _select(records, selector, n, metric)
    if not picked:
        raise ValueError(f"initial_policy: no policy selected by type={selector!r} metric={metric!r}")
    return picked


def load_initial_policy(agent: torch.nn.Module, policy_store: Any, cfg: Any) -> str:
    """Copy the weights of the policy ``cfg`` names into ``agent``; returns its uri."""
    record = select_initial_policy(policy_store, cfg)
    source = record.policy_as_metta_agent()
    try:
        agent.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"initial_policy {record.uri}: its weights do not fit this run's agent ({err}); start from a policy of the "
            "same agent config"
        ) from err
    return str(record.uri)
