"""``MemoryMonitor``: the memory held by named objects (buffers, policies, envs) and by the process.

    monitor = MemoryMonitor()
    monitor.add(experience, name="experience", track_attributes=True)
    monitor.add(agent)
    monitor.stats()   # {"memory/process_rss_mb": ..., "memory/experience_mb": ..., "memory/experience.obs_mb": ...}

Sizes are measured when ``stats()`` is called: tensors count their storage once (views and shared storages
are not double-counted), NumPy arrays their buffer, containers and plain objects their contents. The walk
stops after ``max_objects`` objects, so a huge graph costs a bounded time; use it every few epochs, not
every step.
"""

from __future__ import annotations

import logging
import sys
import types
import weakref
from typing import Any

import numpy as np
import psutil
import torch

MB = 1024 * 1024
# Code, classes and modules are shared program state, not memory an object holds.
_NOT_DATA = (
    type,
    weakref.ref,
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.ModuleType,
    logging.Logger,
)


def get_object_size(obj: Any, max_objects: int = 100_000) -> int:
    """Bytes held by ``obj`` and everything it references (tensor and array data included)."""
    seen_ids: set[int] = set()
    seen_storages: set[tuple[str, int]] = set()
    total = 0
    stack = [obj]
    while stack and len(seen_ids) < max_objects:
        o = stack.pop()
        if id(o) in seen_ids or isinstance(o, _NOT_DATA):
            continue
        seen_ids.add(id(o))
        if isinstance(o, torch.Tensor):
            storage = o.untyped_storage()
            key = (str(o.device), storage.data_ptr())
            if key not in seen_storages:
                seen_storages.add(key)
                total += storage.nbytes()
            continue
        if isinstance(o, np.ndarray):
            base = o if o.base is None else o.base
            key = ("numpy", id(base))
            if key not in seen_storages:
                seen_storages.add(key)
                total += base.nbytes if isinstance(base, np.ndarray) else o.nbytes
            continue
        total += sys.getsizeof(o, 0)
        if isinstance(o, (str, bytes, bytearray, int, float, bool, complex)) or o is None:
            continue
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        else:
            if hasattr(o, "__dict__"):
                stack.append(vars(o))
            for slot in getattr(type(o), "__slots__", ()):
                if isinstance(slot, str) and hasattr(o, slot):
                    stack.append(getattr(o, slot))
    return total


class MemoryMonitor:
    def __init__(self, max_objects: int = 100_000):
        self.max_objects = max_objects
        self._tracked: dict[str, Any] = {}
        self._process = psutil.Process()

    def add(self, obj: Any, name: str | None = None, track_attributes: bool = False) -> None:
        """Track ``obj`` under ``name`` (default: its class name); with ``track_attributes`` also each attribute.

        Objects are held by reference: a tracked object stays alive until ``remove``/``clear``.
        """
        name = name or type(obj).__name__
        if not isinstance(name, str) or not name:
            raise ValueError(f"name={name!r} must be a non-empty string")
        self._tracked[name] = obj
        if track_attributes and hasattr(obj, "__dict__"):
            for attr, value in vars(obj).items():
                if isinstance(value, (torch.Tensor, np.ndarray, dict, list, torch.nn.Module)):
                    self._tracked[f"{name}.{attr}"] = value

    def remove(self, name: str) -> None:
        if name not in self._tracked:
            raise KeyError(f"{name!r} is not tracked; tracked: {sorted(self._tracked)}")
        for key in [k for k in self._tracked if k == name or k.startswith(name + ".")]:
            del self._tracked[key]

    def clear(self) -> None:
        self._tracked.clear()

    def tracked(self) -> list[str]:
        return sorted(self._tracked)

    def stats(self) -> dict[str, float]:
        """``memory/process_rss_mb`` and ``memory/<name>_mb`` for every tracked object."""
        out = {"memory/process_rss_mb": self._process.memory_info().rss / MB}
        for name, obj in self._tracked.items():
            out[f"memory/{name}_mb"] = get_object_size(obj, self.max_objects) / MB
        return out
