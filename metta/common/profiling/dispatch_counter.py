"""``DispatchCounter``: how many torch ops a piece of code dispatches, and how often it reads the device.

    counter = DispatchCounter()
    with counter:
        train_ppo(...)
    counter.totals()        # {"ops": ..., "scalar_reads": ..., "host_syncs": ...}

On a GPU the host launches every op (some 5-20 us each), so the number of ops is the host's cost of a step
whatever the device; counted on a CPU it is the same number. Three counts:

- ``ops``: every aten op that reaches the dispatcher (forward and backward, views included);
- ``scalar_reads``: values read back to Python: ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``,
  ``int(t)``, ``float(t)``) and ``Tensor.tolist()``;
- ``host_syncs``: what would make the host wait for a GPU: the scalar reads, ops whose output shape depends
  on the data (``nonzero``, ``masked_select``, boolean-mask indexing, ``unique``) and copies from a device to
  the CPU.

Used as a timer (``counter(name)`` returns a context manager, as ``Stopwatch`` does), it also splits the
counts by phase: ``rollout(..., timer=counter)`` counts ``_rollout.forward`` apart from the rest.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_SCALAR_READ = "aten._local_scalar_dense"
_DATA_DEPENDENT = ("aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique", "aten.repeat_interleave")
_INDEXING = ("aten.index.Tensor", "aten.index_put", "aten.index_put_", "aten._index_put_impl_")


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _is_device_to_host(name: str, args: tuple, kwargs: dict) -> bool:
    if name.startswith("aten._to_copy"):
        source, target = args[0], kwargs.get("device")
        return target is not None and source.device.type != "cpu" and torch.device(target).type == "cpu"
    if name.startswith("aten.copy_"):
        target, source = args[0], args[1]
        return source.device.type != "cpu" and target.device.type == "cpu"
    return False


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: DispatchCounter):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        owner = self.owner
        owner._add("ops")
        if name.startswith(_SCALAR_READ):
            owner._add("scalar_reads")
            owner._add("host_syncs")
        elif (
            name.startswith(_DATA_DEPENDENT)
            or (name.startswith(_INDEXING) and _has_bool_index(args))
            or _is_device_to_host(name, args, kwargs)
        ):
            owner._add("host_syncs")
        if owner.record_ops:
            owner.op_names[name] += 1
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, owner: DispatchCounter):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.tolist:
            self.owner._add("scalar_reads")
            self.owner._add("host_syncs")
            if self.owner.record_ops:
                self.owner.op_names["Tensor.tolist"] += 1
        return func(*args, **(kwargs or {}))


class DispatchCounter:
    """Counts ops, scalar reads and host syncs while entered (see the module docstring); reusable."""

    KEYS = ("ops", "scalar_reads", "host_syncs")

    def __init__(self, record_ops: bool = False):
        self.record_ops = record_ops  # also count each op by name (op_names), to see what a step is made of
        self.op_names: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()
        self._phases: dict[str, Counter[str]] = {}
        self._active: list[str] = []
        self._modes: list[Any] = []

    def _add(self, key: str) -> None:
        self._totals[key] += 1
        for phase in self._active:
            self._phases[phase][key] += 1

    def __enter__(self) -> DispatchCounter:
        self._modes = [_Function(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []

    @contextmanager
    def __call__(self, phase: str):
        """Attribute what runs inside to ``phase`` as well (the ``Stopwatch`` protocol the trainers use)."""
        self._phases.setdefault(phase, Counter())
        self._active.append(phase)
        try:
            yield
        finally:
            self._active.remove(phase)

    def totals(self) -> dict[str, int]:
        return {key: self._totals[key] for key in self.KEYS}

    def phase(self, name: str) -> dict[str, int]:
        counts = self._phases.get(name, Counter())
        return {key: counts[key] for key in self.KEYS}

    def reset(self) -> None:
        self.op_names.clear()
        self._totals.clear()
        self._phases.clear()
