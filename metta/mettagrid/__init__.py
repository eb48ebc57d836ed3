"""MettaGrid: a fast multi-agent grid world.

The names below load on first use, so ``import metta.mettagrid`` (and importing any submodule such as
``metta.mettagrid.config``) stays cheap: the compiled kernel (numba) and PettingZoo load only when
``MettaGridEnv`` or an adapter is asked for. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "MettaGridConfig": "metta.mettagrid.config",
    "MettaGridEnv": "metta.mettagrid.env",
    "make_curriculum": "metta.mettagrid.env",
    "MettaGridGymEnv": "metta.mettagrid.gym_env",
    "MettaGridPettingZooEnv": "metta.mettagrid.pettingzoo_env",
    "Curriculum": "metta.mettagrid.curriculum",
    "Task": "metta.mettagrid.curriculum",
    "SingleTaskCurriculum": "metta.mettagrid.curriculum",
    "MultiTaskCurriculum": "metta.mettagrid.curriculum",
    "RandomCurriculum": "metta.mettagrid.curriculum",
    "LearningProgressCurriculum": "metta.mettagrid.curriculum",
    "BucketedCurriculum": "metta.mettagrid.curriculum",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'metta.mettagrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from metta.mettagrid.config import MettaGridConfig
    from metta.mettagrid.curriculum import (
        BucketedCurriculum,
        Curriculum,
        LearningProgressCurriculum,
        MultiTaskCurriculum,
        RandomCurriculum,
        SingleTaskCurriculum,
        Task,
    )
    from metta.mettagrid.env import MettaGridEnv, make_curriculum
    from metta.mettagrid.gym_env import MettaGridGymEnv
    from metta.mettagrid.pettingzoo_env import MettaGridPettingZooEnv
