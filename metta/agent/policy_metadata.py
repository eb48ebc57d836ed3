"""``PolicyMetadata``: a dict with attribute access and four required training counters."""

from __future__ import annotations

from typing import Any

_REQUIRED: dict[str, Any] = {"agent_step": 0, "epoch": 0, "generation": 0, "train_time": 0.0}


class PolicyMetadata(dict):
    """``agent_step``, ``epoch``, ``generation`` and ``train_time`` always exist; any other key may be added."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(_REQUIRED)
        self.update(*args, **kwargs)

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"policy metadata has no {key!r}; keys: {sorted(self)}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]

    def __delitem__(self, key: str) -> None:
        if key in _REQUIRED:
            raise KeyError(f"{key!r} is a required policy metadata field and cannot be deleted; set it instead")
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in _REQUIRED:
            raise KeyError(f"{key!r} is a required policy metadata field and cannot be removed")
        return super().pop(key, *default)
