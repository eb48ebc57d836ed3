"""Checks the seed tests share: did training change the parameters, are the losses finite."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def parameters_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters(), strict=True))


def all_finite(values: Mapping[str, float]) -> bool:
    """Every value finite (explained_variance may be NaN when the returns are constant)."""
    return all(math.isfinite(v) for k, v in values.items() if k != "explained_variance")
