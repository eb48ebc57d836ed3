"""Advantages: generalized GAE with V-trace clipping (PufferLib's "puff advantage"), and their normalization.

The buffers are ``[segments, bptt]``: each row is one agent's ``bptt`` consecutive steps. Following PufferLib,
the reward and done stored with observation ``t`` belong to the action taken at ``t - 1``, so the recursion
reads ``rewards[t + 1]`` and ``dones[t + 1]``::

    nextnonterminal = 1 - dones[t + 1]
    rho_t = min(ratio[t], rho_clip);  c_t = min(ratio[t], c_clip)
    delta = rho_t * (rewards[t + 1] + gamma * values[t + 1] * nextnonterminal - values[t])
    A[t] = delta + gamma * gae_lambda * c_t * A[t + 1] * nextnonterminal

With ratio == 1 and both clips >= 1 this is plain GAE.

Row ends. Alone, a row's last step has no ``t + 1``: its advantage is 0, and the reward stored at a row's first
step is never seen (PufferLib's rule, harmless there because a row is an agent's whole rollout). An agent
usually fills several rows of one rollout in turn, so that rule would drop one reward in ``bptt`` and cut
every lambda-return at the row's end. Two optional inputs carry the recursion across:

- ``next_rows`` (``int64 [segments]``, from ``Experience.next_rows``): the row that continues row ``s`` in
  time, or -1. The step after row ``s``'s last is then row ``next_rows[s]``'s step 0, including its advantage
  (rows continue into rows with a larger index, so rows are solved from the last one down).
- ``tail`` (a ``RowTail``): that following step given directly, for rows taken out of the buffer (a
  minibatch, whose V-trace advantages are recomputed from its own rows only).

Rows with neither keep advantage 0 at their last step (an agent's last row of a rollout).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch
import torch.distributed as dist

_NO_NEXT = -1  # next_rows: the row ends the agent's part of the buffer
_USE_TAIL = -2  # kernel only: the step after the row's last is tail[s]


class RowTail(NamedTuple):
    """The step after each row's last step (all ``[segments]``): what the recursion reads as ``t + 1`` there,
    with the advantage already computed for it. Rows where ``valid`` is false keep advantage 0 at their end."""

    rewards: torch.Tensor
    values: torch.Tensor
    dones: torch.Tensor
    advantages: torch.Tensor
    valid: torch.Tensor


@numba.njit(cache=True, nogil=True, inline="always")
def _gae_step(
    value, ratio, next_reward, next_value, next_done, next_advantage, gamma, gae_lambda, rho_clip, c_clip
):  # pragma: no cover - compiled
    """``A[t]`` from step ``t``'s value and ratio and what the recursion reads at ``t + 1``."""
    nextnonterminal = 1.0 - next_done
    rho_t = ratio if ratio < rho_clip else rho_clip
    c_t = ratio if ratio < c_clip else c_clip
    delta = rho_t * (next_reward + gamma * next_value * nextnonterminal - value)
    return delta + gamma * gae_lambda * c_t * next_advantage * nextnonterminal


@numba.njit(cache=True, nogil=True)
def _advantage_kernel(
    values, rewards, dones, ratio, advantages, gamma, gae_lambda, rho_clip, c_clip, next_rows, tail
):  # pragma: no cover - compiled
    segments, horizon = values.shape
    h = horizon - 1
    for s in range(segments - 1, -1, -1):  # a row's successor (a larger index) is solved first
        n = next_rows[s]
        last = 0.0
        if n == _USE_TAIL:
            last = _gae_step(
                values[s, h],
                ratio[s, h],
                tail[s, 0],
                tail[s, 1],
                tail[s, 2],
                tail[s, 3],
                gamma,
                gae_lambda,
                rho_clip,
                c_clip,
            )
        elif n != _NO_NEXT:
            last = _gae_step(
                values[s, h],
                ratio[s, h],
                rewards[n, 0],
                values[n, 0],
                dones[n, 0],
                advantages[n, 0],
                gamma,
                gae_lambda,
                rho_clip,
                c_clip,
            )
        advantages[s, h] = last
        for t in range(h - 1, -1, -1):
            last = _gae_step(
                values[s, t],
                ratio[s, t],
                rewards[s, t + 1],
                values[s, t + 1],
                dones[s, t + 1],
                last,
                gamma,
                gae_lambda,
                rho_clip,
                c_clip,
            )
            advantages[s, t] = last


def _as_numpy_f32(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).contiguous().numpy()


def _checked_next_rows(next_rows: torch.Tensor | None, segments: int) -> torch.Tensor | None:
    if next_rows is None:
        return None
    next_rows = torch.as_tensor(next_rows).to("cpu", torch.int64)
    if next_rows.shape != (segments,):
        raise ValueError(f"next_rows has shape {list(next_rows.shape)}; it must be [segments] = [{segments}]")
    rows = torch.arange(segments)
    bad = (next_rows != _NO_NEXT) & ((next_rows <= rows) | (next_rows >= segments))
    if bool(bad.any()):
        s = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"next_rows[{s}]={int(next_rows[s])}: a row continues into a later row (an index in ({s}, {segments})) "
            "or none (-1); pass Experience.next_rows"
        )
    return next_rows


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
    next_rows: torch.Tensor | None = None,
    tail: RowTail | None = None,
) -> torch.Tensor:
    """Fill ``advantages`` (``[segments, bptt]``) in place by the recursion above and return it.

    ``next_rows`` or ``tail`` carry the recursion across row ends (see the module docstring); give at most one.
    No gradient flows through the result (the ratio is detached): advantages are targets, not predictions.
    On CPU a compiled kernel does the work; elsewhere a torch loop over time, vectorised over segments.
    ``device`` (optional, as upstream's signature has it) is where the tensors are: the recursion runs there, so a
    tensor elsewhere is an error that names both.
    """
    if device is not None and torch.device(device).type != values.device.type:
        raise ValueError(f"device={str(device)!r} but the tensors are on {values.device}; pass their device (or None)")
    shape = values.shape
    for name, t in (
        ("rewards", rewards),
        ("dones", dones),
        ("importance_sampling_ratio", importance_sampling_ratio),
        ("advantages", advantages),
    ):
        if t.shape != shape:
            raise ValueError(
                f"{name} has shape {list(t.shape)} but values has {list(shape)}; all must be [segments, bptt]"
            )
    if values.dim() != 2:
        raise ValueError(f"values must be [segments, bptt], got shape {list(shape)}")
    if next_rows is not None and tail is not None:
        raise ValueError(
            "pass next_rows (rows of this buffer continue each other) or tail (the steps after the rows), not both"
        )
    if tail is not None and any(t.shape != shape[:1] for t in tail):
        raise ValueError(f"every field of tail must be [segments] = [{shape[0]}]; got {[list(t.shape) for t in tail]}")
    if shape[1] == 0:
        return advantages
    next_rows = _checked_next_rows(next_rows, shape[0])
    if advantages.device.type == "cpu":
        out = (
            advantages
            if (advantages.dtype == torch.float32 and advantages.is_contiguous())
            else torch.empty(shape, dtype=torch.float32)
        )
        links = np.full(shape[0], _NO_NEXT, dtype=np.int64) if next_rows is None else next_rows.numpy()
        tail_np = np.zeros((shape[0], 4), dtype=np.float32)
        if tail is not None:
            links[tail.valid.detach().cpu().numpy().astype(bool)] = _USE_TAIL
            tail_np = _as_numpy_f32(torch.stack([tail.rewards, tail.values, tail.dones, tail.advantages], dim=1))
        _advantage_kernel(
            _as_numpy_f32(values),
            _as_numpy_f32(rewards),
            _as_numpy_f32(dones),
            _as_numpy_f32(importance_sampling_ratio),
            out.detach().numpy(),
            float(gamma),
            float(gae_lambda),
            float(vtrace_rho_clip),
            float(vtrace_c_clip),
            links,
            tail_np,
        )
        if out is not advantages:
            advantages.copy_(out)
        return advantages
    if next_rows is None:
        return _advantage_torch(
            values,
            rewards,
            dones,
            importance_sampling_ratio,
            advantages,
            gamma,
            gae_lambda,
            vtrace_rho_clip,
            vtrace_c_clip,
            tail,
        )
    return _advantage_torch_chained(
        values,
        rewards,
        dones,
        importance_sampling_ratio,
        advantages,
        gamma,
        gae_lambda,
        vtrace_rho_clip,
        vtrace_c_clip,
        next_rows,
    )


def _advantage_torch(
    values, rewards, dones, importance_sampling_ratio, advantages, gamma, gae_lambda, rho_clip, c_clip, tail=None
):
    """The same recursion in torch ops (any device): a loop over time, vectorised over segments."""
    with torch.no_grad():
        v, r, ratio = values.float(), rewards.float(), importance_sampling_ratio.detach().float()
        if tail is None:
            zero = torch.zeros_like(v[:, 0])
            tail = RowTail(zero, zero, zero, zero, zero)
        # What the recursion reads at t + 1: the row shifted by one, then the step after the row.
        next_v = torch.cat([v[:, 1:], tail.values.float()[:, None]], dim=1)
        next_r = torch.cat([r[:, 1:], tail.rewards.float()[:, None]], dim=1)
        next_nonterminal = 1.0 - torch.cat([dones[:, 1:].float(), tail.dones.float()[:, None]], dim=1)
        # delta for every t at once; only the time recursion is sequential.
        delta = ratio.clamp(max=rho_clip) * (next_r + gamma * next_v * next_nonterminal - v)
        decay = gamma * gae_lambda * ratio.clamp(max=c_clip) * next_nonterminal
        valid = tail.valid.to(v.dtype)  # rows without a following step end with advantage 0
        delta[:, -1] *= valid
        decay[:, -1] *= valid
        last = tail.advantages.float()
        for t in range(values.shape[1] - 1, -1, -1):
            last = delta[:, t] + decay[:, t] * last
            advantages[:, t] = last
    return advantages


def _advantage_torch_chained(values, rewards, dones, ratio, advantages, gamma, gae_lambda, rho_clip, c_clip, next_rows):
    """``next_rows`` on the torch path: rows are solved in waves, each wave the rows whose successor is solved."""
    links = next_rows.numpy()
    depth_np = np.zeros(len(links), dtype=np.int64)  # rows after this one in its chain
    for s in range(len(links) - 1, -1, -1):
        if links[s] != _NO_NEXT:
            depth_np[s] = depth_np[links[s]] + 1
    depth = torch.from_numpy(depth_np)
    device = values.device
    for d in range(int(depth.max()) + 1 if len(depth) else 0):
        rows = (depth == d).nonzero().flatten()
        nxt = next_rows[rows].clamp(min=0).to(device)
        rows = rows.to(device)
        tail = RowTail(
            rewards[nxt, 0],
            values[nxt, 0],
            dones[nxt, 0],
            advantages[nxt, 0],
            torch.full_like(rows, d > 0, dtype=torch.bool),
        )
        part = torch.empty((len(rows), values.shape[1]), dtype=advantages.dtype, device=device)
        _advantage_torch(
            values[rows], rewards[rows], dones[rows], ratio[rows], part, gamma, gae_lambda, rho_clip, c_clip, tail
        )
        advantages[rows] = part
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
