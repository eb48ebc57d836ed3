"""``Agent(env, config=None, device=None)``: a ``MettaAgent`` built for an environment.

    agent = Agent(env)                                   # upstream's interface agent: 512-wide LSTM, one layer
    agent = Agent(env, config="fast")                    # the small CNN-LSTM that trains on a laptop CPU
    agent = Agent(env, config=DictConfig({"device": "cpu", "agent": {"clip_range": 0.2}}))  # default graph, knobs set

As upstream's factory, ``Agent(env)`` builds the ``interface_default`` agent (full-resolution CNN, LSTM 512 x 1
layer), which is what the API documentation's ``Experience(..., hidden_size=512, num_lstm_layers=1)`` is sized for. Code
meant for a CPU names the ``fast`` agent (128 wide, 2 layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from metta.agent.agent_config import AgentConfig, resolve_agent_config
from metta.agent.metta_agent import MettaAgent, make_policy
from metta.common.device import resolve_device

__all__ = ["Agent"]

DEFAULT_AGENT = "interface_default"  # upstream's Agent factory built _get_default_agent_config's agent


def Agent(  # noqa: N802 - upstream's name; a factory returning a plain nn.Module
    env: Any,
    config: AgentConfig | Mapping[str, Any] | str | None = None,
    device: str | torch.device | None = None,
) -> MettaAgent:
    """A ``MettaAgent`` sized for ``env`` (a vecenv from ``Environment`` or a MettaGridEnv), on ``device``.

    ``config`` is None (the ``interface_default`` agent), a ready config's name (``"fast"``,
    ``"interface_default"``), an ``AgentConfig``, or a dict/DictConfig either of the agent itself or, as seed
    documents write it, ``{"device": ..., "agent": {...}}`` (without a ``name`` or ``components`` it changes the
    interface agent's knobs). The device is ``device``, else the config's ``device``, else the one the env was
    made for (``Environment(device=...)``), else CUDA when available; CUDA on a machine without it falls back to
    the CPU with a warning.
    """
    if env is None or not hasattr(getattr(env, "driver_env", env), "single_observation_space"):
        raise TypeError(
            f"env is a {type(env).__name__}; pass the vectorized env from Environment(...) or a MettaGridEnv"
        )
    if device is None:
        device = _config_device(config) or getattr(env, "policy_device", None)
    return make_policy(env, resolve_agent_config(config, default=DEFAULT_AGENT), resolve_device(device))


def _config_device(config: Any) -> str | None:
    if not isinstance(config, Mapping) and not type(config).__module__.startswith("omegaconf"):
        return None  # None, a config name or an AgentConfig carry no device
    value = config.get("device")
    return None if value is None else str(value)
