"""Wrapping the agent for distributed training (``unwrap_agent`` lives in ``metta.common.distributed``); pruning
checkpoints; compiling the policy; checking a policy fits an environment."""

from __future__ import annotations

from typing import Any

import torch

from metta.common.distributed import DistributedSetup, is_distributed, unwrap_agent
from metta.rl.checkpoint import prune_checkpoints
from metta.rl.intervals import crossed


def wrap_agent_distributed(agent: torch.nn.Module, device: torch.device | str | DistributedSetup) -> torch.nn.Module:
    """``DistributedDataParallel(agent)`` under torch.distributed, else ``agent`` unchanged.

    ``device`` is the agent's device, or what ``setup_device_and_distributed`` returned (the interface documentation
    passes that whole). On CUDA the device is passed as ``device_ids``; on CPU (gloo) none are given. Code that
    needs the agent's own methods (``clip_weights``, ``l2_init_loss``) reaches it as
    ``getattr(policy, "module", policy)``.
    """
    if isinstance(device, DistributedSetup):
        device = device.device
    if not is_distributed():
        return agent
    device = torch.device(device)
    if device.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(agent, device_ids=[device], output_device=device)
    return torch.nn.parallel.DistributedDataParallel(agent)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_policy(agent: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """Run ``agent``'s forward under ``torch.compile`` with ``mode``; returns the same module, compiled in place,
    so its state dict, checkpoints and attributes are unchanged.

    A ``MettaAgent`` compiles the parts before and after its LSTM (``compile_forward``): the LSTM splits a
    sequence where episodes start, which depends on the data, so it stays eager. Any other module is compiled
    whole (``nn.Module.compile``). Compilation happens at the first calls of each input shape (a rollout
    batch, a minibatch) and of each grad mode.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={mode!r} is not a torch.compile mode; use one of {list(COMPILE_MODES)}")
    module = unwrap_agent(agent)
    if hasattr(module, "compile_forward"):
        module.compile_forward(mode)
    else:
        module.compile(mode=mode)
    return agent


def update_l2_init_at_interval(agent: torch.nn.Module, epoch_before: int, epoch_after: int) -> bool:
    """Move the agent's L2-init reference weights toward its current weights when the epoch counter crossed a
    multiple of its config's ``l2_init_weight_update_interval`` (``metta.rl.intervals.crossed``); returns whether
    it did. An agent without that setting is left alone."""
    agent = unwrap_agent(agent)
    interval = getattr(getattr(agent, "config", None), "l2_init_weight_update_interval", 0)
    if not crossed(interval, epoch_before, epoch_after):
        return False
    agent.update_l2_init_weight_copy()
    return True


def cleanup_old_policies(checkpoint_dir: str, keep_last_n: int = 5) -> list[str]:
    """Delete all but the newest ``keep_last_n`` checkpoints (policy + trainer state); returns what was deleted.

    Upstream's version globbed ``policy_*.pt`` while files are named ``model_XXXX.pt``, so it never deleted
    anything; this one is ``metta.rl.checkpoint.prune_checkpoints``.
    """
    return prune_checkpoints(checkpoint_dir, keep_last_n)


def validate_policy_environment_match(policy: torch.nn.Module, env: Any) -> None:
    """Raise ``ValueError`` if ``policy`` was built for observations of another shape than ``env``'s.

    Actions need no check: a MettaAgent keys its action embeddings by name and activates new ones.
    """
    agent = unwrap_agent(policy)
    env = getattr(env, "driver_env", env)
    policy_shape = tuple(getattr(agent, "obs_shape", ()) or ())
    env_shape = tuple(env.single_observation_space.shape)
    if policy_shape and policy_shape != env_shape:
        raise ValueError(
            f"the policy expects observations of shape {list(policy_shape)} but the environment produces "
            f"{list(env_shape)}; build the agent for this environment (Agent(env)) or use an environment with the "
            "policy's observation tokens"
        )
    for name in ("obs_width", "obs_height"):
        mine, theirs = getattr(agent, name, None), getattr(env, name, None)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(
                f"the policy's {name}={mine} differs from the environment's {name}={theirs}; the observation window "
                "must match: build the agent for this environment (Agent(env))"
            )
