"""Rollout statistics: episode infos flattened into ``{"a/b": [values...]}`` lists."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


def unroll_nested_dict(d: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``{"agent": {"action.move": 1}}`` -> ``("agent/action.move", 1)``, depth first."""
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from unroll_nested_dict(value, name + "/")
        else:
            yield name, value


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().item() if value.numel() == 1 else value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def accumulate_rollout_stats(raw_infos: list[dict[str, Any]], stats: dict[str, Any]) -> None:
    """Append every (flattened) info value to ``stats[key]``; a key seen for the first time gets a list.

    Values that are lists (e.g. ``episode_rewards`` per agent) are appended as a whole; numbers stay numbers.
    """
    for info in raw_infos:
        for key, value in unroll_nested_dict(info):
            value = _scalar(value)
            existing = stats.get(key)
            if existing is None:
                stats[key] = [value]
            elif isinstance(existing, list):
                existing.append(value)
            else:
                stats[key] = [existing, value]
