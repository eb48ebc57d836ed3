"""Recording episodes of a ``MettaGridEnv`` as replay files (format: docs/replay_format.md).

Frames follow upstream's writer: frame ``k`` is the state after the ``k+1``-th env step of the recording,
together with the action, success and reward of that step. Each object key is a change list
``[[step, value], ...]`` that gets an entry only when the value changes and starts at step 0; a list with
one entry is written as a plain constant, except a constant inventory of two or more items (see ``_Track.encode``).

The end of an episode: ``log_step`` sees the terminal step through the terminals/truncations of the env's
agent rows and fills ``episode_end`` (that step's rewards and the episode returns). With the default
``auto_reset=True``, ``MettaGridEnv.step`` has already reset the env, so the objects it shows belong to the
next episode: the terminal state is not recorded. With ``auto_reset=False`` it is the last frame.

This module never imports the env: it reads ``env`` through the public methods that ``MettaGridEnv``
offers (``grid_objects``, ``map_size``, ``current_step``, ``agent_rows``, ...).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from metta.mettagrid.replay.format import (
    AGENT_LAYER,
    OBJECT_LAYER,
    ORIENTATION_NAMES,
    REPLAY_SUFFIX,
    REPLAY_VERSION,
    validate_replay,
    write_atomic,
)

_EPISODE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
INVENTORY_CAP = 255  # an inventory slot holds at most this many items


def _pairs(counts: dict[int, int]) -> list[list[int]]:
    """{item id: count} -> [[id, count], ...], ids ascending, zero counts left out."""
    return [[int(i), int(n)] for i, n in sorted(counts.items()) if n]


def _common_values(o: dict[str, Any], layer: int) -> dict[str, Any]:
    """The keys every agent and building has (section 4.3 of docs/replay_format.md)."""
    return {
        "id": int(o["id"]),
        "type_id": int(o["type_id"]),
        "location": [int(o["c"]), int(o["r"]), layer],
        "orientation": int(o["orientation"]),
        "inventory": _pairs(o["inventory"]),
        "inventory_max": int(o["inventory_max"]),
        "color": int(o["color"]),
        "is_swappable": False,
    }


def _agent_values(o: dict[str, Any], vision: int) -> dict[str, Any]:
    frozen = int(o["frozen"])
    return {
        **_common_values(o, AGENT_LAYER),
        "agent_id": int(o["agent_id"]),
        "is_agent": True,
        "vision_size": vision,
        "group_id": int(o["group_id"]),
        "action_id": int(o["action_id"]),
        "action_param": int(o["action_param"]),
        "action_success": bool(o["action_success"]),
        "current_reward": float(o["current_reward"]),
        "total_reward": float(o["total_reward"]),
        "is_frozen": frozen > 0,
        "frozen_progress": frozen,
        "frozen_time": int(o["freeze_duration"]),
        "freeze_remaining": frozen,
        "freeze_duration": int(o["freeze_duration"]),
        "glyph": int(o["glyph"]),
    }


def _converter_values(o: dict[str, Any], item_ids: dict[str, int]) -> dict[str, Any]:
    recipe_max = int(o["recipe_max"])
    converting, cooling = bool(o["converting"]), bool(o["cooling_down"])
    ticks, cooldown = int(o["conversion_ticks"]), int(o["cooldown"])
    conv_left, cool_left = int(o["conversion_remaining"]), int(o["cooldown_remaining"])
    return {
        **_common_values(o, OBJECT_LAYER),
        "input_resources": _pairs({item_ids[name]: n for name, n in o["recipe_input"].items()}),
        "output_resources": _pairs({item_ids[name]: n for name, n in o["recipe_output"].items()}),
        "recipe_max": recipe_max,
        # progress counts up from 0 to the duration; *_remaining counts the ticks left down to 0
        "production_progress": ticks - conv_left if converting else 0,
        "production_time": ticks,
        "cooldown_progress": cooldown - cool_left if cooling else 0,
        "cooldown_time": cooldown,
        "output_limit": recipe_max if recipe_max >= 0 else INVENTORY_CAP,
        "conversion_remaining": conv_left,
        "conversion_duration": ticks,
        "cooldown_remaining": cool_left,
        "cooldown_duration": cooldown,
        "is_converting": converting,
        "is_cooling_down": cooling,
    }


def _static_props(o: dict[str, Any], replay_id: int) -> dict[str, Any]:
    """A wall's or block's keys other than its location (they never change)."""
    return {
        "id": replay_id,
        "type_id": int(o["type_id"]),
        "orientation": 0,
        "inventory": [],
        "inventory_max": int(o.get("inventory_max", 0)),
        "color": int(o.get("color", 0)),
        "is_swappable": bool(o.get("swappable", False)),
    }


class _Track:
    """The change lists of one object's keys."""

    __slots__ = ("series", "last")

    def __init__(self) -> None:
        self.series: dict[str, list[list[Any]]] = {}
        self.last: dict[str, Any] = {}

    def record(self, step: int, values: dict[str, Any]) -> None:
        last = self.last
        for key, value in values.items():
            if key not in last:
                self.series[key] = [[step, value]]
                last[key] = value
            elif last[key] != value:
                self.series[key].append([step, value])
                last[key] = value

    def encode(self) -> dict[str, Any]:
        """Single-entry lists become constants; every key stays (upstream's tools read no defaults)."""
        out: dict[str, Any] = {}
        for key, series in self.series.items():
            if len(series) > 1:
                out[key] = series
            elif key == "inventory" and len(series[0][1]) >= 2:
                # Upstream's loader takes a constant list whose second element is a list for a series, which
                # misreads a constant inventory of two or more items; a two-entry series reads right everywhere.
                # In a one-frame replay the second entry sits at step 1 = max_steps: a padding entry that
                # repeats the first and that no frame shows (docs/replay_format.md, 4.1).
                out[key] = [series[0], [1, series[0][1]]]
            else:
                out[key] = series[0][1]
        return out


def _kind(o: dict[str, Any]) -> str:
    if "agent_id" in o:
        return "agent"
    if "recipe_input" in o:
        return "converter"
    return "static"


def _metta_version() -> str:
    try:
        return importlib.metadata.version("metta")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _names_by_id(names_by_id: dict[int, str], fill: str) -> list[str]:
    """{id: name} -> a list indexed by id; unused ids get ``{fill}_{id}`` (upstream wants no empty names)."""
    out = [f"{fill}_{i}" for i in range(max(names_by_id, default=-1) + 1)]
    for i, name in names_by_id.items():
        out[int(i)] = str(name) or f"{fill}_{i}"
    return out


class ReplayWriter:
    """Records episodes of one env of a ``MettaGridEnv`` into ``{replay_dir}/{episode_id}.json.z``.

    Use: ``start_episode(env)`` right after a reset, ``log_step(env)`` after every ``env.step`` (each call
    records one frame), then ``end_episode()`` (writes the file, returns its path). ``episode_ended`` turns
    true when ``log_step`` sees the env's terminal step.
    """

    def __init__(self, replay_dir: str | os.PathLike):
        self.replay_dir = Path(replay_dir)
        self._active = False
        self.episode_ended = False

    @property
    def num_frames(self) -> int:
        return self._n_frames if self._active else 0

    # ----------------------------------------------------------------------------------------------------
    def start_episode(self, env: Any, env_index: int = 0, episode_id: str | None = None) -> None:
        """Begin a replay of env ``env_index``; the next ``log_step`` records frame 0."""
        if self._active:
            raise RuntimeError(f"episode {self._episode_id!r} is still being recorded; call end_episode() first")
        episode_id = str(uuid.uuid4()) if episode_id is None else str(episode_id)
        if not _EPISODE_ID.match(episode_id):
            raise ValueError(
                f"episode_id {episode_id!r} must be a plain file name: letters, digits, '_', '-' and '.', "
                "not starting with '.'"
            )
        e = env_index
        self._env_index = e
        self._episode_id = episode_id
        self._rows = env.agent_rows(e)
        self._start_step = env.current_step(e)
        self._n_frames = 0
        self._end: dict[str, Any] | None = None
        self.episode_ended = False
        self._item_ids = {name: i for i, name in enumerate(env.inventory_item_names)}
        self._vision = int(env.obs_width)
        self._tracks: dict[int, _Track] = {}  # replay id -> track (agents and converters keep the env's ids)
        self._last_totals = [0.0] * int(env.agents_per_env)

        objects = env.grid_objects(e)
        # Walls and blocks: the env numbers them by map position; the replay follows each from where it starts.
        self._static_at: dict[tuple[int, int], int] = {}  # (r, c) -> replay id of the static object there
        self._static_type: dict[tuple[int, int], int] = {}  # (r, c) -> its type_id
        self._static_props: dict[int, dict[str, Any]] = {}
        for oid, o in objects.items():
            if _kind(o) == "static":
                pos = (int(o["r"]), int(o["c"]))
                self._static_at[pos] = int(oid)
                self._static_type[pos] = int(o["type_id"])
                self._static_props[int(oid)] = _static_props(o, int(oid))
        self._static_moves = env.static_moves(e) if hasattr(env, "static_moves") else None

        task = env.current_task(e)
        cfg = task.env_cfg() if task is not None else None
        height, width = env.map_size(e)
        groups = {int(o["group_id"]): o["group_name"] for o in objects.values() if _kind(o) == "agent"}
        if cfg is not None:
            groups.update({g.id: name for name, g in cfg.game.groups.items()})
        env_config = cfg.model_dump(mode="json") if cfg is not None else {}
        env_config["label"] = env_config.get("label") or (str(task.id) if task is not None else "mettagrid")
        env_config["metta"] = {
            "metta_version": _metta_version(),
            "episode_id": episode_id,
            "task": None if task is None else str(task.id),
            "start_step": int(self._start_step),
            "orientation_names": list(ORIENTATION_NAMES),
            "obs_width": int(env.obs_width),
            "obs_height": int(env.obs_height),
            "episode_end": None,
        }
        self._header: dict[str, Any] = {
            "version": REPLAY_VERSION,
            "num_agents": int(env.agents_per_env),
            "max_steps": 0,  # the number of frames, set when written
            "map_size": [int(width), int(height)],
            "file_name": episode_id + REPLAY_SUFFIX,
            "type_names": _names_by_id(env.object_type_names, "type"),
            "action_names": list(env.action_names),
            "item_names": list(env.inventory_item_names),
            "group_names": _names_by_id(groups, "group"),
            "objects": [],
            "env_config": env_config,
        }
        matrix = self._reward_sharing_matrix(objects, cfg)
        if matrix is not None:
            self._header["reward_sharing_matrix"] = matrix
        self._active = True

    def log_step(self, env: Any, env_index: int = 0) -> None:
        """Record the state after one ``env.step`` as the next frame (call it after every step, once)."""
        if not self._active:
            raise RuntimeError("log_step() before start_episode()")
        if env_index != self._env_index:
            raise ValueError(f"this episode records env_index {self._env_index}, got env_index {env_index}")
        if self.episode_ended:
            raise RuntimeError(
                f"episode {self._episode_id!r} ended at replay step {self._end['step']}; call end_episode() and "
                "start_episode() for the next one"
            )
        rows = self._rows
        terminated = bool(np.any(env.terminals[rows]))
        truncated = bool(np.any(env.truncations[rows]))
        expected = self._start_step + self._n_frames + 1
        current = env.current_step(env_index)
        if terminated or truncated:
            rewards = [float(r) for r in env.rewards[rows]]
            self._end = {
                "step": self._n_frames,
                "terminated": terminated,
                "truncated": truncated,
                "rewards": rewards,
                "total_rewards": [float(np.float32(t) + np.float32(r)) for t, r in zip(self._last_totals, rewards)],
            }
            self.episode_ended = True
            if current != expected:
                # Auto-reset: the env already shows the next episode; the terminal state is not observable.
                return
            # auto_reset=False: the terminal state is still on the map; it becomes the last frame.
        elif current != expected:
            raise RuntimeError(
                f"env {env_index} is at step {current} but the replay expects step {expected}; "
                "call log_step() exactly once after every env.step()"
            )
        # Walls and blocks are most objects of a terrain map and move only by swaps: re-read them only then.
        moves = env.static_moves(env_index) if hasattr(env, "static_moves") else None
        statics_changed = moves is None or moves != self._static_moves or self._n_frames == 0
        if moves is not None:
            objects = env.grid_objects(env_index, include_static=statics_changed)
        else:
            objects = env.grid_objects(env_index)
        self._record_dynamic(objects)
        if statics_changed:
            self._record_statics(objects)
            self._static_moves = moves
        self._n_frames += 1

    def end_episode(self) -> Path | None:
        """Write the replay atomically and return its path (None if no frame was recorded); the writer is then
        ready for a new episode."""
        if not self._active:
            raise RuntimeError("end_episode() before start_episode()")
        self._active = False
        if self._n_frames == 0:
            self._tracks = {}
            return None
        data = dict(self._header)
        data["max_steps"] = self._n_frames
        data["env_config"] = {**data["env_config"], "metta": {**data["env_config"]["metta"], "episode_end": self._end}}
        data["objects"] = [self._tracks[oid].encode() for oid in sorted(self._tracks)]
        self._tracks = {}
        validate_replay(data)  # a writer bug must never produce a file a viewer cannot read
        payload = zlib.compress(json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8"))
        return write_atomic(self.replay_dir / data["file_name"], payload)

    def record_episode(
        self,
        env: Any,
        policy_fn: Callable[[np.ndarray], np.ndarray],
        env_index: int = 0,
        max_steps: int | None = None,
    ) -> Path | None:
        """Reset ``env``, step it with ``policy_fn(observations) -> actions`` and record env ``env_index``.

        ``policy_fn`` sees the whole batch's observations and returns int actions ``[env.num_agents, 2]``.
        Recording stops when the episode ends or after ``max_steps`` steps. Returns the replay's path.
        ``env.reset()`` is called without a seed, so an env built with ``seed=`` replays the same first episode.
        """
        observations, _ = env.reset()  # before the check: a fresh env knows its step limit once reset
        if max_steps is None and env.max_steps(env_index) <= 0:
            raise ValueError("this env's episodes have no step limit (game.max_steps=0); pass max_steps")
        self.start_episode(env, env_index)
        steps = 0
        while not self.episode_ended and (max_steps is None or steps < max_steps):
            observations, *_ = env.step(policy_fn(observations))
            self.log_step(env, env_index)
            steps += 1
        return self.end_episode()

    # ----------------------------------------------------------------------------------------------------
    def _record_dynamic(self, objects: dict[int, dict[str, Any]]) -> None:
        step = self._n_frames
        for oid, o in objects.items():
            kind = _kind(o)
            if kind == "static":
                continue
            if kind == "agent":
                values = _agent_values(o, self._vision)
                self._last_totals[values["agent_id"]] = values["total_reward"]
            else:
                values = _converter_values(o, self._item_ids)
            track = self._tracks.get(oid)
            if track is None:
                if step > 0:
                    raise RuntimeError(
                        f"object id {oid} ({o['type_name']}) appeared mid-episode; replays cannot show it"
                    )
                track = self._tracks[oid] = _Track()
            track.record(step, values)

    def _record_statics(self, objects: dict[int, dict[str, Any]]) -> None:
        """Follow walls and blocks by position (a swap moves a block one cell); frame 0 records them all."""
        step = self._n_frames
        now = {(int(o["r"]), int(o["c"])): int(o["type_id"]) for o in objects.values() if _kind(o) == "static"}
        if step > 0 and now == self._static_type:
            return
        old_type, old_at = self._static_type, self._static_at
        new_at = {pos: old_at[pos] for pos, t in now.items() if old_type.get(pos) == t}
        vanished = [pos for pos in old_at if pos not in new_at]
        for pos in sorted(pos for pos in now if pos not in new_at):
            t = now[pos]
            candidates = [q for q in vanished if old_type[q] == t]
            if not candidates:
                raise RuntimeError(f"a static object of type {t} appeared at row {pos[0]}, column {pos[1]} mid-episode")
            source = min(candidates, key=lambda q: (abs(q[0] - pos[0]) + abs(q[1] - pos[1]), q))
            vanished.remove(source)
            new_at[pos] = old_at[source]
        if vanished:
            raise RuntimeError(f"static objects at (row, column) {sorted(vanished)} disappeared mid-episode")
        for pos, rid in new_at.items():
            location = [pos[1], pos[0], OBJECT_LAYER]
            track = self._tracks.get(rid)
            if track is None:
                track = self._tracks[rid] = _Track()
                track.record(step, {**self._static_props[rid], "location": location})
            else:
                track.record(step, {"location": location})
        self._static_at = new_at
        self._static_type = now

    def _reward_sharing_matrix(self, objects: dict[int, dict[str, Any]], cfg: Any) -> list[list[float]] | None:
        """M[actor][receiver]: the share of the actor's reward that the receiver gets (zero diagonal), only
        when some group shares. The actor keeps the rest of its reward, its own share included."""
        if cfg is None:
            return None
        pct = {name: g.group_reward_pct for name, g in cfg.game.groups.items()}
        agents = sorted((o for o in objects.values() if _kind(o) == "agent"), key=lambda o: o["agent_id"])
        if not any(pct.get(o["group_name"], 0.0) > 0 for o in agents):
            return None
        size: dict[str, int] = {}
        for o in agents:
            size[o["group_name"]] = size.get(o["group_name"], 0) + 1
        return [
            [
                pct.get(actor["group_name"], 0.0) / size[actor["group_name"]]
                if actor["group_name"] == receiver["group_name"] and actor is not receiver
                else 0.0
                for receiver in agents
            ]
            for actor in agents
        ]
