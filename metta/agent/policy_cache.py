"""``PolicyCache``: a small LRU map from a policy's path to its ``PolicyRecord``."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metta.agent.policy_record import PolicyRecord


class PolicyCache:
    """Keeps the ``max_size`` most recently used records (and the policies they hold) in memory."""

    def __init__(self, max_size: int = 10):
        if max_size < 1:
            raise ValueError(f"policy cache max_size={max_size} must be at least 1")
        self.max_size = max_size
        self._records: OrderedDict[str, PolicyRecord] = OrderedDict()

    def get(self, key: str) -> PolicyRecord | None:
        record = self._records.get(key)
        if record is not None:
            self._records.move_to_end(key)
        return record

    def put(self, key: str, record: PolicyRecord) -> None:
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self.max_size:
            self._records.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._records)

    def clear(self) -> None:
        self._records.clear()
