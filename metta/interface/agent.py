"""``Agent(env, config=None, device=None)``: a ``MettaAgent`` built for an environment.

    agent = Agent(env)                                   # the default ("fast") CNN-LSTM
    agent = Agent(env, config="interface_default")       # upstream's interface agent (LSTM 512)
    agent = Agent(env, config=DictConfig({"device": "cpu", "agent": {"clip_range": 0.2}}))
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from metta.agent.agent_config import AgentConfig
from metta.agent.metta_agent import MettaAgent, make_policy
from metta.common.device import resolve_device

__all__ = ["Agent"]


def Agent(  # noqa: N802 - upstream's name; a factory returning a plain nn.Module
    env: Any,
    config: AgentConfig | Mapping[str, Any] | str | None = None,
    device: str | torch.device | None = None,
) -> MettaAgent:
    """A ``MettaAgent`` sized for ``env`` (a vecenv from ``Environment`` or a MettaGridEnv), on ``device``.

    ``config`` is None (the fast agent), a ready config's name, an ``AgentConfig``, or a dict/DictConfig
    either of the agent itself or, as seed documents write it, ``{"device": ..., "agent": {...}}``. The device
    is ``device``, else the config's ``device``, else CUDA when available; CUDA on a machine without it falls
    back to the CPU with a warning.
    """
    if env is None or not hasattr(getattr(env, "driver_env", env), "single_observation_space"):
        raise TypeError(
            f"env is a {type(env).__name__}; pass the vectorized env from Environment(...) or a MettaGridEnv"
        )
    if device is None:
        device = _config_device(config)
    return make_policy(env, config, resolve_device(device))


def _config_device(config: Any) -> str | None:
    if not isinstance(config, Mapping) and not type(config).__module__.startswith("omegaconf"):
        return None  # None, a config name or an AgentConfig carry no device
    value = config.get("device")
    return None if value is None else str(value)
