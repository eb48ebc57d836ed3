"""Scripted baseline policies: a random policy and "walk to the nearest visible altar, explore when none is".

They are the floor a trained policy must beat: the evaluate command scores them beside every policy on the
same episodes, and the leaderboard shows them as rows.

    policy = NearestAltarPolicy()
    policy.bind(env)                          # a MettaGridEnv or a VecEnv: action and feature ids
    actions = policy.act(obs)                 # uint8[agents, tokens, 3] -> int32[agents, 2]
    actions = policy(torch_obs)[0]            # the same through the policy interface Simulation uses

A ``Simulation`` binds them itself; ``baseline_record(name)`` wraps one in a ``PolicyRecord`` with the uri
``baseline://<name>`` (what the evaluation database stores). Their randomness comes from torch's global
generator, which ``Simulation`` seeds, so an evaluation is reproducible.

``NearestAltarPolicy`` reads each agent's tokens (``docs/mettagrid.md``, Observations): the cells holding an
object (``type_id``) block the way, an altar that still shows ``inv:heart`` is a goal. A breadth-first search over
the open cells of the 11x11 window finds the nearest cell next to such an altar; the agent steps toward it
(turning first unless it faces that way, stepping backward when the way is straight behind it), turns to the
altar and takes the heart (``get_items``). With no reachable altar in view it explores: forward while the cell
ahead is open (and with probability ``1 - turn_prob``), otherwise it turns to a random open side, reversing
only at a dead end. The search is one compiled function over the whole batch; there is no Python loop over
agents.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from torch import nn

from metta.agent.policy_record import PolicyRecord

BASELINE_SCHEME = "baseline://"

# Orientation values (docs/mettagrid.md): up 0, down 1, left 2, right 3; and the step each takes in the window.
_DR = np.array([-1, 1, 0, 0], dtype=np.int64)
_DC = np.array([0, 0, -1, 1], dtype=np.int64)
_REVERSE = np.array([1, 0, 3, 2], dtype=np.int64)
_NONE = 255  # "no such id" for feature and type ids


def _env_of(env: Any) -> Any:
    """The MettaGridEnv that describes ``env``'s actions and features (a VecEnv's driver env)."""
    return getattr(env, "driver_env", env)


class ScriptedPolicy(nn.Module):
    """A policy computed from the observation tokens by a fixed rule; no parameters, no memory."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__()
        self._action_names: list[str] | None = None

    def bind(self, env: Any) -> ScriptedPolicy:
        """Read the ids this env uses (action indices, feature and object type ids); returns self."""
        env = _env_of(env)
        self._action_names = list(env.action_names)
        self._max_args = np.asarray(env.max_action_args, dtype=np.int64)
        self._features = {name: int(info["id"]) for name, info in env.get_observation_features().items()}
        self._type_ids = {name: int(tid) for tid, name in env.object_type_names.items()}
        self._obs_shape = (int(env.obs_height), int(env.obs_width))
        return self

    def _action_index(self, name: str) -> int:
        if name not in self._action_names:
            raise ValueError(
                f"the {self.name} baseline needs the {name!r} action, which this env does not enable (its actions: "
                f"{self._action_names}); enable game.actions.{name}"
            )
        return self._action_names.index(name)

    def act(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError(type(self).__name__)  # pragma: no cover - every subclass overrides

    def forward(self, obs: torch.Tensor, state: Any = None) -> tuple[torch.Tensor]:
        """The policy interface ``Simulation`` calls: ``(actions,)``, actions first as a MettaAgent returns them."""
        if self._action_names is None:
            raise RuntimeError(f"the {self.name} baseline is not bound to an env; call bind(env) first")
        actions = self.act(obs.detach().to("cpu").numpy())
        return (torch.from_numpy(actions).to(obs.device),)


class RandomPolicy(ScriptedPolicy):
    """Every agent picks an enabled action uniformly and then a uniform argument for it."""

    name = "random"

    def act(self, obs: np.ndarray) -> np.ndarray:
        n = obs.shape[0]
        u = torch.rand(n, 2, dtype=torch.float64).numpy()
        kinds = np.minimum((u[:, 0] * len(self._max_args)).astype(np.int64), len(self._max_args) - 1)
        sizes = self._max_args[kinds] + 1
        args = np.minimum((u[:, 1] * sizes).astype(np.int64), sizes - 1)
        return np.stack([kinds, args], axis=1).astype(np.int32)


class NearestAltarPolicy(ScriptedPolicy):
    """Walk to the nearest visible altar that still holds a heart and take it; explore when there is none."""

    name = "nearest_altar"

    def __init__(self, turn_prob: float = 0.05):
        super().__init__()
        if not 0.0 <= turn_prob <= 1.0:
            raise ValueError(f"turn_prob={turn_prob} must be in [0, 1]")
        self.turn_prob = float(turn_prob)

    def bind(self, env: Any) -> NearestAltarPolicy:
        super().bind(env)
        self._move = self._action_index("move")
        self._rotate = self._action_index("rotate")
        self._get = self._action_index("get_items")
        for feature in ("type_id", "agent:orientation"):
            if feature not in self._features:
                raise ValueError(f"the {self.name} baseline needs the {feature!r} observation feature")
        self._f_type = self._features["type_id"]
        self._f_orient = self._features["agent:orientation"]
        self._f_heart = self._features.get("inv:heart", _NONE)
        self._altar = self._type_ids.get("altar", _NONE)
        return self

    def act(self, obs: np.ndarray) -> np.ndarray:
        n = obs.shape[0]
        u = torch.rand(n, 2, dtype=torch.float64).numpy()
        out = np.empty((n, 2), dtype=np.int32)
        _nearest_altar_actions(
            np.ascontiguousarray(obs, dtype=np.uint8),
            self._obs_shape[0],
            self._obs_shape[1],
            self._f_type,
            self._f_orient,
            self._f_heart,
            self._altar,
            self._move,
            self._rotate,
            self._get,
            self.turn_prob,
            u,
            _DR,
            _DC,
            _REVERSE,
            out,
        )
        return out


@numba.njit(cache=True)
def _nearest_altar_actions(
    obs, height, width, f_type, f_orient, f_heart, altar, a_move, a_rotate, a_get, turn_prob, u, dr, dc, rev, out
):
    n = obs.shape[0]
    cr = height // 2
    cc = width // 2
    blocked = np.zeros((height, width), dtype=np.bool_)
    is_altar = np.zeros((height, width), dtype=np.bool_)
    has_heart = np.zeros((height, width), dtype=np.bool_)
    first = np.zeros((height, width), dtype=np.int64)
    seen = np.zeros((height, width), dtype=np.bool_)
    queue = np.empty(height * width, dtype=np.int64)
    sides = np.empty(4, dtype=np.int64)
    for i in range(n):
        blocked[:] = False
        is_altar[:] = False
        has_heart[:] = False
        seen[:] = False
        orient = 0
        for t in range(obs.shape[1]):
            loc = obs[i, t, 0]
            if loc == 0xFF:
                continue
            r = loc >> 4
            c = loc & 15
            if r >= height or c >= width:
                continue
            fid = obs[i, t, 1]
            value = obs[i, t, 2]
            if fid == f_type:
                if r != cr or c != cc:
                    blocked[r, c] = True
                if value == altar:
                    is_altar[r, c] = True
            elif fid == f_heart and value > 0:
                has_heart[r, c] = True
            elif fid == f_orient and r == cr and c == cc and value < 4:
                orient = value
        # Next to a full altar: face it, then take the heart (the faced side first, to save a turn).
        target = -1
        for k in range(5):
            d = orient if k == 0 else k - 1
            r = cr + dr[d]
            c = cc + dc[d]
            if 0 <= r < height and 0 <= c < width and is_altar[r, c] and has_heart[r, c]:
                target = d
                break
        if target >= 0:
            if target == orient:
                out[i, 0] = a_get
                out[i, 1] = 0
            else:
                out[i, 0] = a_rotate
                out[i, 1] = target
            continue
        # Breadth-first search from the agent over open cells for the nearest cell next to a full altar.
        head = 0
        tail = 1
        queue[0] = cr * width + cc
        seen[cr, cc] = True
        goal_dir = -1
        while head < tail and goal_dir < 0:
            cur = queue[head]
            head += 1
            r0 = cur // width
            c0 = cur % width
            for d in range(4):
                r = r0 + dr[d]
                c = c0 + dc[d]
                if r < 0 or r >= height or c < 0 or c >= width or seen[r, c]:
                    continue
                if is_altar[r, c] and has_heart[r, c] and (r0 != cr or c0 != cc):
                    goal_dir = first[r0, c0]
                    break
                if blocked[r, c]:
                    continue
                seen[r, c] = True
                first[r, c] = d if (r0 == cr and c0 == cc) else first[r0, c0]
                queue[tail] = r * width + c
                tail += 1
        if goal_dir >= 0:
            # Straight behind: step backward instead of spending a step on turning round.
            _head(out, i, goal_dir, orient, goal_dir == rev[orient], a_move, a_rotate)
            continue
        # Explore: keep going while the way ahead is open; otherwise turn to a random open side.
        ahead_open = not blocked[cr + dr[orient], cc + dc[orient]]
        if ahead_open and u[i, 0] >= turn_prob:
            out[i, 0] = a_move
            out[i, 1] = 0
            continue
        n_open = 0
        for d in range(4):
            if d != orient and d != rev[orient] and not blocked[cr + dr[d], cc + dc[d]]:
                sides[n_open] = d
                n_open += 1
        if n_open > 0:
            turn = sides[min(int(u[i, 1] * n_open), n_open - 1)]
        elif not blocked[cr + dr[rev[orient]], cc + dc[rev[orient]]]:
            turn = rev[orient]
        elif ahead_open:
            turn = orient
        else:
            turn = min(int(u[i, 1] * 4), 3)
        _head(out, i, turn, orient, False, a_move, a_rotate)


@numba.njit(cache=True)
def _head(out, i, d, orient, backward, a_move, a_rotate):
    """Agent ``i``'s action to go in direction ``d``: move forward when it faces ``d``, backward when ``backward``
    (``d`` is straight behind it), otherwise turn to ``d``."""
    if d == orient or backward:
        out[i, 0] = a_move
        out[i, 1] = 1 if backward else 0
    else:
        out[i, 0] = a_rotate
        out[i, 1] = d


BASELINES: dict[str, type[ScriptedPolicy]] = {"random": RandomPolicy, "nearest_altar": NearestAltarPolicy}


def baseline_uri(name: str) -> str:
    return f"{BASELINE_SCHEME}{name}"


def make_baseline(name: str) -> ScriptedPolicy:
    """A fresh, unbound baseline by name: ``random`` or ``nearest_altar``."""
    if name not in BASELINES:
        raise ValueError(f"baseline {name!r} does not exist; use one of {list(BASELINES)}")
    return BASELINES[name]()


def baseline_record(name: str) -> PolicyRecord:
    """A ``PolicyRecord`` holding the baseline ``name``, with the uri ``baseline://<name>`` and no training counters."""
    record = PolicyRecord(None, name, baseline_uri(name), {})
    record.policy = make_baseline(name)
    return record
