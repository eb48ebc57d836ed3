"""Advantages: generalized GAE with V-trace clipping (PufferLib's "puff advantage"), and their normalization.

The buffers are ``[segments, bptt]``: each row is one agent's ``bptt`` consecutive steps. Following PufferLib,
the reward and done stored with observation ``t`` belong to the action taken at ``t - 1``, so the recursion
reads ``rewards[t + 1]`` and ``dones[t + 1]``::

    nextnonterminal = 1 - max(dones[t + 1], truncations[t + 1])
    bootstrap = values[t + 1] * nextnonterminal + values[t] * truncations[t + 1]
    rho_t = min(ratio[t], rho_clip);  c_t = min(ratio[t], c_clip)
    delta = rho_t * (rewards[t + 1] + gamma * bootstrap - values[t])
    A[t] = delta + gamma * gae_lambda * c_t * A[t + 1] * nextnonterminal

With ratio == 1 and both clips >= 1 this is plain GAE.

Episode ends, as Gymnasium defines them. ``dones`` marks every step whose observation starts a new episode
(``terminals | truncations``); ``truncations`` (optional, default none) marks the ends that are truncations,
a time limit rather than a terminal state. Neither lets the recursion cross into the next episode. At a
terminal the return stops (the episode's future is worth 0). At a truncation the episode had a future, worth
the value of its final observation ``s_T``; an auto-resetting env has already replaced that observation with
the next episode's first one, so the recursion takes the value of the last observation before the time limit,
``V(s_{T-1}) = values[t]``, in its place (docs/training.md, "Truncation", has why). A step marked in
``truncations`` ends an episode whatever ``dones`` says there, so ``terminals`` passed as ``dones`` give the same
result as ``terminals | truncations``.

Row ends. Alone, a row's last step has no ``t + 1``: its advantage is 0, and the reward stored at a row's first
step is never seen (PufferLib's rule, harmless there because a row is an agent's whole rollout). An agent
usually fills several rows of one rollout in turn, so that rule would drop one reward in ``bptt`` and cut
every lambda-return at the row's end. Two optional inputs carry the recursion across:

- ``next_rows`` (``int64 [segments]``, from ``Experience.next_rows``): the row that continues row ``s`` in
  time, or -1. The step after row ``s``'s last is then row ``next_rows[s]``'s step 0, including its advantage
  (rows continue into rows with a larger index, so rows are solved from the last one down).
- ``tail`` (a ``RowTail``): that following step given directly, for rows taken out of the buffer (a
  minibatch, whose V-trace advantages are recomputed from its own rows only), its truncation flag included.

Rows with neither keep advantage 0 at their last step (an agent's last row of a rollout).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from metta.common.code_paths import gpu_forms

_NO_NEXT = -1  # next_rows: the row ends the agent's part of the buffer
_USE_TAIL = -2  # kernel only: the step after the row's last is tail[s]


class RowTail(NamedTuple):
    """The step after each row's last step (all ``[segments]``): what the recursion reads as ``t + 1`` there,
    with the advantage already computed for it. Rows where ``valid`` is false keep advantage 0 at their end.
    ``truncations`` (None: no truncation) says which of those steps' ``dones`` are truncations."""

    rewards: torch.Tensor
    values: torch.Tensor
    dones: torch.Tensor
    advantages: torch.Tensor
    valid: torch.Tensor
    truncations: torch.Tensor | None = None


@numba.njit(cache=True, nogil=True, inline="always")
def _gae_step(
    value,
    ratio,
    next_reward,
    next_value,
    next_done,
    next_truncated,
    next_advantage,
    gamma,
    gae_lambda,
    rho_clip,
    c_clip,
):  # pragma: no cover - compiled
    """``A[t]`` from step ``t``'s value and ratio and what the recursion reads at ``t + 1``."""
    nextnonterminal = 1.0 - (next_done if next_done > next_truncated else next_truncated)
    # A truncation bootstraps from V(s_{T-1}), standing in for the final observation's value (module docstring).
    bootstrap = next_value * nextnonterminal + value * next_truncated
    rho_t = ratio if ratio < rho_clip else rho_clip
    c_t = ratio if ratio < c_clip else c_clip
    delta = rho_t * (next_reward + gamma * bootstrap - value)
    return delta + gamma * gae_lambda * c_t * next_advantage * nextnonterminal


@numba.njit(cache=True, nogil=True)
def _advantage_kernel(
    values, rewards, dones, truncations, ratio, advantages, gamma, gae_lambda, rho_clip, c_clip, next_rows, tail
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
                tail[s, 4],
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
                truncations[n, 0],
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
                truncations[s, t + 1],
                last,
                gamma,
                gae_lambda,
                rho_clip,
                c_clip,
            )
            advantages[s, t] = last


def _as_numpy_f32(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).contiguous().numpy()


def _checked_next_rows(next_rows: torch.Tensor | None, segments: int) -> np.ndarray | None:
    """``next_rows`` as an int64 NumPy array (checked on the host: no torch op, no device read)."""
    if next_rows is None:
        return None
    links = np.asarray(torch.as_tensor(next_rows).detach().cpu(), dtype=np.int64)
    if links.shape != (segments,):
        raise ValueError(f"next_rows has shape {list(links.shape)}; it must be [segments] = [{segments}]")
    rows = np.arange(segments)
    bad = (links != _NO_NEXT) & ((links <= rows) | (links >= segments))
    if bad.any():
        s = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"next_rows[{s}]={int(links[s])}: a row continues into a later row (an index in ({s}, {segments})) "
            "or none (-1); pass Experience.next_rows"
        )
    return links


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
    truncations: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fill ``advantages`` (``[segments, bptt]``) in place by the recursion above and return it.

    ``truncations`` (``[segments, bptt]``, like ``dones``) marks the episode ends that are truncations, which
    bootstrap (see the module docstring); without it every done is a terminal.
    ``next_rows`` or ``tail`` carry the recursion across row ends (see the module docstring); give at most one.
    No gradient flows through the result (the ratio is detached): advantages are targets, not predictions.
    On a CPU a compiled kernel does the work; elsewhere (``metta.common.code_paths.gpu_forms``) a closed form in
    a few torch ops (``_advantage_torch``), float64 kept where given. ``device`` (optional, as upstream's
    signature has it) is where the tensors are: the recursion runs there, so a tensor elsewhere is an error that
    names both.
    """
    if device is not None and torch.device(device).type != values.device.type:
        raise ValueError(f"device={str(device)!r} but the tensors are on {values.device}; pass their device (or None)")
    shape = values.shape
    for name, t in (
        ("rewards", rewards),
        ("dones", dones),
        ("importance_sampling_ratio", importance_sampling_ratio),
        ("advantages", advantages),
        ("truncations", truncations),
    ):
        if t is not None and t.shape != shape:
            raise ValueError(
                f"{name} has shape {list(t.shape)} but values has {list(shape)}; all must be [segments, bptt]"
            )
    if values.dim() != 2:
        raise ValueError(f"values must be [segments, bptt], got shape {list(shape)}")
    if next_rows is not None and tail is not None:
        raise ValueError(
            "pass next_rows (rows of this buffer continue each other) or tail (the steps after the rows), not both"
        )
    if tail is not None and any(t is not None and t.shape != shape[:1] for t in tail):
        got = [None if t is None else list(t.shape) for t in tail]
        raise ValueError(f"every field of tail must be [segments] = [{shape[0]}]; got {got}")
    if shape[1] == 0:
        return advantages
    next_rows = _checked_next_rows(next_rows, shape[0])
    if not gpu_forms(advantages.device):
        out = (
            advantages
            if (advantages.dtype == torch.float32 and advantages.is_contiguous())
            else torch.empty(shape, dtype=torch.float32)
        )
        links = np.full(shape[0], _NO_NEXT, dtype=np.int64) if next_rows is None else next_rows.copy()
        tail_np = np.zeros((shape[0], 5), dtype=np.float32)
        if tail is not None:
            links[tail.valid.detach().cpu().numpy().astype(bool)] = _USE_TAIL
            tail_np[:, :4] = _as_numpy_f32(torch.stack([tail.rewards, tail.values, tail.dones, tail.advantages], 1))
            if tail.truncations is not None:
                tail_np[:, 4] = _as_numpy_f32(tail.truncations)
        _advantage_kernel(
            _as_numpy_f32(values),
            _as_numpy_f32(rewards),
            _as_numpy_f32(dones),
            np.zeros(shape, dtype=np.float32) if truncations is None else _as_numpy_f32(truncations),
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
            truncations,
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
        truncations,
        importance_sampling_ratio,
        advantages,
        gamma,
        gae_lambda,
        vtrace_rho_clip,
        vtrace_c_clip,
        next_rows,
    )


def _host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host index array on ``device``; to a GPU through page-locked memory, so the host does not wait."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)  # the caching host allocator keeps it until copied


_STEP_MASKS: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _step_masks(horizon: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(later [T, T+1], from_t [T, T+1])``: ``s > t`` and ``s >= t`` for step ``t`` and term ``s``."""
    key = (horizon, device)
    if key not in _STEP_MASKS:
        t = torch.arange(horizon, device=device).view(-1, 1)
        s = torch.arange(horizon + 1, device=device).view(1, -1)
        _STEP_MASKS[key] = (s > t, s >= t)
    return _STEP_MASKS[key]


def _advantage_torch(
    values,
    rewards,
    dones,
    truncations,
    importance_sampling_ratio,
    advantages,
    gamma,
    gae_lambda,
    rho_clip,
    c_clip,
    tail=None,
):
    """The same recursion in a closed form of torch ops (any device, no loop over time).

    With ``delta[t]`` and ``decay[t] = gamma * lambda * c_t * nextnonterminal`` the recursion unrolls to
    ``A[t] = sum_{s >= t} (decay[t] * ... * decay[s - 1]) * delta[s]``, where the step after the row (its
    ``tail``) is term ``s = T`` with ``delta = tail.advantages``. The products come from one ``cumprod`` over
    ``[segments, T, T + 1]`` (zeros, at episode ends, stay exact), the sum from one reduction: elementwise, so
    TF32 matrix products never touch it. Without a tail the last step's ``decay`` is multiplied by a zero term,
    so it needs no masking. float64 inputs are computed in float64, anything else in float32. Without
    truncations (in the rows or the tail) the two ops that bootstrap them are left out.
    """
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    segments, horizon = values.shape
    truncated = truncations is not None or (tail is not None and tail.truncations is not None)
    with torch.no_grad():
        fields = [rewards, values, dones]
        if truncated:
            fields.append(truncations if truncations is not None else torch.zeros_like(values))
        steps = torch.stack(fields).to(dtype)  # [3 or 4, S, T]
        if tail is None:  # no step after the rows: every row ends with advantage 0
            ends, tail_advantages = steps.new_zeros(len(fields), segments), None
        else:
            tail_fields = [tail.rewards, tail.values, tail.dones]
            if truncated:
                tail_fields.append(tail.truncations if tail.truncations is not None else torch.zeros_like(tail.dones))
            ends, tail_advantages = torch.stack(tail_fields).to(dtype), tail.advantages
        # What the recursion reads at t + 1: the row shifted by one, then the step after the row.
        following = torch.cat([steps[:, :, 1:], ends.unsqueeze(2)], dim=2).unbind(0)
        v, ratio = steps[1], importance_sampling_ratio.detach().to(dtype)
        if truncated:
            next_r, next_v, next_d, next_t = following
            next_nonterminal = 1.0 - torch.maximum(next_d, next_t)
            # A truncation bootstraps from V(s_{T-1}), standing in for the final observation's value.
            bootstrap = torch.addcmul(next_v * next_nonterminal, v, next_t)
        else:
            next_r, next_v, next_d = following
            next_nonterminal = 1.0 - next_d
            bootstrap = next_v * next_nonterminal
        delta = ratio.clamp(max=rho_clip) * (next_r + gamma * bootstrap - v)
        decay = (gamma * gae_lambda) * ratio.clamp(max=c_clip) * next_nonterminal
        if tail_advantages is None:
            terms = F.pad(delta[:, :-1], (0, 2))  # the last step and the tail add nothing
        else:  # rows without a following step (valid false) end with advantage 0, as above
            last = torch.stack([delta[:, -1], tail_advantages.to(dtype)], dim=1) * tail.valid.to(dtype).unsqueeze(1)
            terms = torch.cat([delta[:, :-1], last], dim=1)  # [S, T + 1]: delta, then the tail's advantage
        later, from_t = _step_masks(horizon, v.device)
        shifted = F.pad(decay, (1, 0), value=1.0)  # shifted[s] = decay[s - 1]
        products = torch.where(later, shifted.unsqueeze(1), 1.0).cumprod(dim=2).mul_(from_t)
        advantages.copy_(products.mul_(terms.unsqueeze(1)).sum(dim=2))
    return advantages


def _advantage_torch_chained(
    values, rewards, dones, truncations, ratio, advantages, gamma, gae_lambda, rho_clip, c_clip, links
):
    """``next_rows`` (``links``, on the host) on the torch path: rows are solved in waves, each wave the rows
    whose successor is solved, the successor's step 0 being the wave's tail."""
    depth = np.zeros(len(links), dtype=np.int64)  # rows after this one in its chain
    for s in range(len(links) - 1, -1, -1):
        if links[s] != _NO_NEXT:
            depth[s] = depth[links[s]] + 1
    device = values.device
    for d in range(int(depth.max()) + 1 if len(depth) else 0):
        rows_np = np.flatnonzero(depth == d)
        rows, nxt = (_host_to_device(a, device) for a in (rows_np, np.maximum(links[rows_np], 0)))
        tail = RowTail(
            rewards[nxt, 0],
            values[nxt, 0],
            dones[nxt, 0],
            advantages[nxt, 0],
            torch.full((len(rows_np),), d > 0, dtype=torch.bool, device=device),
            None if truncations is None else truncations[nxt, 0],
        )
        part = torch.empty((len(rows_np), values.shape[1]), dtype=advantages.dtype, device=device)
        _advantage_torch(
            values[rows],
            rewards[rows],
            dones[rows],
            None if truncations is None else truncations[rows],
            ratio[rows],
            part,
            gamma,
            gae_lambda,
            rho_clip,
            c_clip,
            tail,
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
