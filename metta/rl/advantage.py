"""Advantages: generalized GAE with V-trace clipping (PufferLib's "puff advantage"), and their normalization.

The buffers are ``[segments, bptt]``: each row is one agent's ``bptt`` consecutive steps, and rows are
independent (no bootstrap across a row's end, so the last step of every row keeps advantage 0). Following
PufferLib, the reward and done stored with observation ``t`` belong to the action taken at ``t - 1``, so the
recursion reads ``rewards[t + 1]`` and ``dones[t + 1]``::

    nextnonterminal = 1 - dones[t + 1]
    rho_t = min(ratio[t], rho_clip);  c_t = min(ratio[t], c_clip)
    delta = rho_t * (rewards[t + 1] + gamma * values[t + 1] * nextnonterminal - values[t])
    A[t] = delta + gamma * gae_lambda * c_t * A[t + 1] * nextnonterminal

With ratio == 1 and both clips >= 1 this is plain GAE.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.distributed as dist


@numba.njit(cache=True, nogil=True)
def _advantage_kernel(values, rewards, dones, ratio, advantages, gamma, gae_lambda, rho_clip, c_clip):  # pragma: no cover - compiled
    segments, horizon = values.shape
    for s in range(segments):
        advantages[s, horizon - 1] = 0.0
        last = 0.0
        for t in range(horizon - 2, -1, -1):
            nextnonterminal = 1.0 - dones[s, t + 1]
            r = ratio[s, t]
            rho_t = r if r < rho_clip else rho_clip
            c_t = r if r < c_clip else c_clip
            delta = rho_t * (rewards[s, t + 1] + gamma * values[s, t + 1] * nextnonterminal - values[s, t])
            last = delta + gamma * gae_lambda * c_t * last * nextnonterminal
            advantages[s, t] = last


def _as_numpy_f32(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).contiguous().numpy()


def compute_advantage(
    values: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    importance_sampling_ratio: torch.Tensor,
    advantages: torch.Tensor,
    gamma: float,
    gae_lambda: float,
    vtrace_rho_clip: float,
    vtrace_c_clip: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fill ``advantages`` (``[segments, bptt]``) in place by the recursion above and return it.

    No gradient flows through the result (the ratio is detached): advantages are targets, not predictions.
    On CPU a compiled kernel does the work; elsewhere a torch loop over time, vectorised over segments.
    ``device`` is accepted for upstream compatibility; the tensors' own device is used.
    """
    del device
    shape = values.shape
    for name, t in (("rewards", rewards), ("dones", dones), ("importance_sampling_ratio", importance_sampling_ratio), ("advantages", advantages)):
        if t.shape != shape:
            raise ValueError(f"{name} has shape {list(t.shape)} but values has {list(shape)}; all must be [segments, bptt]")
    if values.dim() != 2:
        raise ValueError(f"values must be [segments, bptt], got shape {list(shape)}")
    if shape[1] == 0:
        return advantages

    if advantages.device.type == "cpu":
        out = advantages if (advantages.dtype == torch.float32 and advantages.is_contiguous()) else torch.empty(shape, dtype=torch.float32)
        _advantage_kernel(
            _as_numpy_f32(values), _as_numpy_f32(rewards), _as_numpy_f32(dones), _as_numpy_f32(importance_sampling_ratio),
            out.detach().numpy(), float(gamma), float(gae_lambda), float(vtrace_rho_clip), float(vtrace_c_clip),
        )  # fmt: skip
        if out is not advantages:
            advantages.copy_(out)
        return advantages

    return _advantage_torch(values, rewards, dones, importance_sampling_ratio, advantages, gamma, gae_lambda, vtrace_rho_clip, vtrace_c_clip)


def _advantage_torch(values, rewards, dones, importance_sampling_ratio, advantages, gamma, gae_lambda, rho_clip, c_clip):
    """The same recursion in torch ops (any device): a loop over time, vectorised over segments."""
    with torch.no_grad():
        v, r, ratio = values.float(), rewards.float(), importance_sampling_ratio.detach().float()
        nonterminal = 1.0 - dones.float()
        rho = ratio.clamp(max=rho_clip)
        c = ratio.clamp(max=c_clip)
        # delta for every t at once; only the time recursion is sequential.
        delta = rho[:, :-1] * (r[:, 1:] + gamma * v[:, 1:] * nonterminal[:, 1:] - v[:, :-1])
        decay = gamma * gae_lambda * c[:, :-1] * nonterminal[:, 1:]
        advantages[:, -1] = 0.0
        last = torch.zeros_like(v[:, 0])
        for t in range(values.shape[1] - 2, -1, -1):
            last = delta[:, t] + decay[:, t] * last
            advantages[:, t] = last
    return advantages


def normalize_advantage_distributed(adv: torch.Tensor, norm_adv: bool = True) -> torch.Tensor:
    """``(adv - mean) / (std + 1e-8)`` when ``norm_adv``, with the mean and variance over all ranks.

    Under torch.distributed one all_reduce of ``[sum, sum of squares, count]`` gives the global moments, so
    every rank scales its advantages identically (the variance is clamped at 1e-8 against round-off).
    """
    if not norm_adv:
        return adv
    if dist.is_available() and dist.is_initialized():
        moments = torch.stack([adv.sum(), (adv * adv).sum(), torch.tensor(float(adv.numel()), device=adv.device)])
        dist.all_reduce(moments, op=dist.ReduceOp.SUM)
        count = moments[2]
        mean = moments[0] / count
        # Unbiased (n - 1), like adv.std() on one process, so one rank gives exactly the local result.
        var = ((moments[1] - count * mean * mean) / (count - 1).clamp(min=1)).clamp(min=1e-8)
        return (adv - mean) / (var.sqrt() + 1e-8)
    return (adv - adv.mean()) / (adv.std() + 1e-8)
