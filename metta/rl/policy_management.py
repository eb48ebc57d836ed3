"""Wrapping the agent for distributed training."""

from __future__ import annotations

import torch

from metta.common.distributed import is_distributed


def wrap_agent_distributed(agent: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``DistributedDataParallel(agent)`` under torch.distributed, else ``agent`` unchanged.

    On CUDA the agent's device is passed as ``device_ids``; on CPU (gloo) none are given. Code that needs the
    agent's own methods (``clip_weights``, ``l2_init_loss``) reaches it as ``getattr(policy, "module", policy)``.
    """
    if not is_distributed():
        return agent
    device = torch.device(device)
    if device.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(agent, device_ids=[device], output_device=device)
    return torch.nn.parallel.DistributedDataParallel(agent)


def unwrap_agent(agent: torch.nn.Module) -> torch.nn.Module:
    """The agent inside a DDP wrapper (or the agent itself)."""
    return getattr(agent, "module", agent)
