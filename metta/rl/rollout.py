"""One rollout step: receive a batch of observations, run the policy, store the step, send the actions.

    while not experience.ready_for_training:
        num_steps, infos = perform_rollout_step(policy, vecenv, experience, device, timer)

The vecenv returns the same batch layout every time (contiguous agent rows ``env_ids``). No Python loop runs
over agents. On a CPU the step works on the vecenv's buffers in place. On a GPU it costs one host-to-device
copy (observations, rewards, terminals and truncations packed in one page-locked buffer, ``HostUpload``), one
forward pass and one device-to-host copy of the actions, which is the step's only synchronisation; where each
agent's step goes in the buffer is tracked on the device too (``Experience.store``), so storing it copies
nothing from the host.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from metta.agent.policy_state import PolicyState
from metta.rl.experience import Experience
from metta.rl.host_transfer import HostUpload


def _timed(timer: Any, name: str):
    return timer(name) if timer is not None else nullcontext()


def get_observation(
    vecenv: Any, device: torch.device | str, timer: Any = None, upload: HostUpload | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[dict], slice, np.ndarray, int]:
    """``(obs, rewards, dones, truncations, infos, env_id slice, mask, num_steps)``, tensors on ``device``.

    ``dones`` is ``terminals``; ``num_steps`` counts the active agents (``mask``). Off the CPU, ``upload`` (a
    ``HostUpload``, kept across steps) makes it one pinned copy; the tensors are then views of its device
    buffer, valid until this batch comes round again. Without it each array is copied on its own.
    """
    with _timed(timer, "_rollout.env"):
        o, r, d, t, info, env_id, mask = vecenv.recv()
    start, stop = int(env_id[0]), int(env_id[-1]) + 1
    if stop - start != len(env_id):
        raise RuntimeError(
            f"the vecenv returned non-contiguous agent rows {env_id[:8]}...; Experience stores contiguous slices"
        )
    training_env_id = slice(start, stop)
    num_steps = int(mask.sum())
    if torch.device(device).type == "cpu":  # from_numpy shares memory with the vecenv's buffers
        o, r, d, t = (torch.from_numpy(x) for x in (o, r, d, t))
    elif upload is not None:
        o, r, d, t = upload.upload(start, o, r, d, t)
    else:
        o, r, d, t = (torch.from_numpy(x).to(device, non_blocking=True) for x in (o, r, d, t))
    return o, r, d, t, info, training_env_id, mask, num_steps


def run_policy_inference(
    policy: torch.nn.Module,
    obs: torch.Tensor,
    experience: Experience,
    env_id_start: int | slice,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``(actions [n, 2], logprobs [n], values [n], (lstm_h, lstm_c))`` for the agents starting at ``env_id_start``.

    The LSTM state is read from ``experience`` (sized for ``policy`` on first use); the returned state is the one
    after this step.
    """
    env_id = env_id_start if isinstance(env_id_start, slice) else slice(env_id_start, env_id_start + obs.shape[0])
    experience.match_policy(policy)
    with torch.no_grad():
        lstm_h, lstm_c = experience.get_lstm_state(env_id)
        state = PolicyState(lstm_h=lstm_h, lstm_c=lstm_c)
        actions, logprobs, _, value, _ = policy(obs, state)
    if actions.shape != (obs.shape[0], 2):
        raise RuntimeError(f"the policy returned actions of shape {list(actions.shape)}; expected [{obs.shape[0]}, 2]")
    return actions, logprobs, value.view(-1), (state.lstm_h, state.lstm_c)


def perform_rollout_step(
    policy: torch.nn.Module, vecenv: Any, experience: Experience, device: torch.device | str, timer: Any = None
) -> tuple[int, list[dict]]:
    """recv -> reset LSTM state at episode starts -> inference -> store -> send. Returns ``(num_steps, infos)``."""
    o, r, d, t, info, env_id, mask, num_steps = get_observation(vecenv, device, timer, experience.host_upload)
    # The env resets in the same step an episode ends, so an observation with done=True already belongs to
    # the next episode: those agents must not carry the old episode's memory into this forward pass.
    dones = d | t
    experience.reset_lstm_state(env_id, dones)
    with _timed(timer, "_rollout.forward"):
        actions, logprobs, values, lstm_state = run_policy_inference(policy, o, experience, env_id, device)
        host_actions = experience.actions_to_host(actions)  # on a GPU: waits for the forward pass
    # Stored before send(): on a CPU ``o`` is the vecenv's buffer, which the next step overwrites.
    experience.store(o, actions, logprobs, r, dones, t, values, env_id, mask, lstm_state)
    with _timed(timer, "_rollout.env"):
        vecenv.send(host_actions)
    return num_steps, info
