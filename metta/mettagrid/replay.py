"""Episode replays: one zlib-compressed JSON file per episode, format version 2 (see docs/replay_format.md).

``ReplayWriter`` records frames of one env of a ``MettaGridEnv`` batch: frame 0 is the state when
``start_episode`` is called, frame ``k`` the state after the ``k``-th ``env.step``. Each object key is stored
as a change list ``[[step, value], ...]`` that gets an entry only when the value changes; a list with one
entry is written as a plain constant. ``read_replay`` decompresses, parses and validates a file, and
``expand_series`` turns a stored value back into one value per step, as a viewer does.

The end of an episode: ``log_step`` sees the terminal step through the terminals/truncations of the
env's agent rows and fills ``episode_end`` (that step's rewards and the episode returns). With the default
``auto_reset=True``, ``MettaGridEnv.step`` has already reset the env, so the objects it shows belong to the
next episode: no frame is recorded and the last frame is the state before the terminal step. With
``auto_reset=False`` the terminal state is still on the map and becomes the last frame.

This module never imports the env: it reads ``env`` through the public methods that ``MettaGridEnv``
offers (``grid_objects``, ``map_size``, ``current_step``, ``agent_rows``, ...).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import re
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPLAY_VERSION = 2
REPLAY_SUFFIX = ".json.z"
ORIENTATION_NAMES = ["up", "down", "left", "right"]

# Object keys and the kind of their values. "items" is a list of item ids, an id repeated once per unit;
# "vec2" is [x, y]. Keys marked (metta) are our additions to upstream's version 2.
COMMON_KEYS = {
    "id": "int",
    "type_id": "int",
    "position": "vec2",
    "orientation": "int",
    "inventory": "items",
    "inventory_max": "int",
    "color": "int",
}
AGENT_KEYS = {
    "agent_id": "int",
    "group_id": "int",
    "action_id": "int",
    "action_parameter": "int",
    "action_success": "bool",
    "current_reward": "float",
    "total_reward": "float",
    "frozen": "bool",
    "frozen_progress": "int",
    "frozen_time": "int",
    "glyph": "int",  # (metta)
}
CONVERTER_KEYS = {
    "recipe_input": "items",
    "recipe_output": "items",
    "recipe_max": "int",
    "production_progress": "int",
    "production_time": "int",
    "cooldown_progress": "int",
    "cooldown_time": "int",
    "converting": "bool",  # (metta)
    "cooling_down": "bool",  # (metta)
}
STATIC_KEYS = {"swappable": "bool"}  # (metta)
OBJECT_KEYS: dict[str, str] = {**COMMON_KEYS, **AGENT_KEYS, **CONVERTER_KEYS, **STATIC_KEYS}
REQUIRED_OBJECT_KEYS = ("id", "type_id", "position")
CONSTANT_OBJECT_KEYS = ("id", "type_id", "agent_id")  # never a time series
_DEFAULTS = {"int": 0, "float": 0.0, "bool": False, "items": [], "vec2": [0, 0]}

REQUIRED_TOP_KEYS = {
    "version": "the format version, 2",
    "num_agents": "the number of agents",
    "max_steps": "the number of frames",
    "map_size": "[width, height]",
    "file_name": "the file's name",
    "type_names": "object type names indexed by type_id",
    "action_names": "action names indexed by action_id",
    "item_names": "item names indexed by item id",
    "group_names": "group names indexed by group_id",
    "objects": "the list of objects",
}

_EPISODE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


class ReplayFormatError(ValueError):
    """A replay file or dict that does not follow docs/replay_format.md."""


def default_value(key: str) -> Any:
    """The value a missing object key stands for (0, 0.0, false or [])."""
    value = _DEFAULTS[OBJECT_KEYS.get(key, "int")]
    return list(value) if isinstance(value, list) else value


def is_series(value: Any) -> bool:
    """True for a time series ``[[step, value], ...]``: a non-empty list whose first element is a list.

    No key's constant value is a list of lists, so this tells a series from a constant list like a position.
    """
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], list)


def expand_series(value: Any, num_steps: int, default: Any = 0) -> list[Any]:
    """One value per step ``0..num_steps-1`` from a constant or a series (``default`` before its first entry).

    Steps share value objects (a constant list is repeated, not copied): treat the result as read-only.
    """
    if not is_series(value):
        return [value] * num_steps
    out = []
    current = default
    i = 0
    for step in range(num_steps):
        while i < len(value) and value[i][0] <= step:
            current = value[i][1]
            i += 1
        out.append(current)
    return out


def expand_object(obj: dict[str, Any], num_steps: int) -> dict[str, list[Any]]:
    """Every known key (and any other key the object has) of one object as a list of ``num_steps`` values."""
    keys = list(OBJECT_KEYS) + [k for k in obj if k not in OBJECT_KEYS]
    out = {}
    for key in keys:
        default = default_value(key)
        out[key] = expand_series(obj.get(key, default), num_steps, default)
    return out


# --------------------------------------------------------------------------------------------------------
# Reading and validation
def decode_replay(raw: bytes) -> dict[str, Any]:
    """Decompress, parse and validate the bytes of a ``.json.z`` file."""
    try:
        text = zlib.decompress(raw)
    except zlib.error as err:
        raise ReplayFormatError(f"replay: not a complete zlib stream ({len(raw)} bytes): {err}") from err
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReplayFormatError(f"replay: the decompressed content is not valid UTF-8 JSON: {err}") from err
    validate_replay(data)
    return data


def read_replay(path: str | os.PathLike) -> dict[str, Any]:
    """The replay at ``path`` as a dict, after checking it against the format."""
    raw = Path(path).read_bytes()
    try:
        return decode_replay(raw)
    except ReplayFormatError as err:
        raise ReplayFormatError(f"{path}: {err}") from None


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(length: int) -> Callable[[Any], bool]:
    """A check for a list of ``length`` finite numbers."""
    return lambda v: isinstance(v, list) and len(v) == length and all(map(_is_number, v))


def _check_names(data: dict, key: str) -> list:
    names = data[key]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ReplayFormatError(f"replay: {key!r} must be a list of strings, got {_type(names)} {names!r:.80}")
    return names


def validate_replay(data: Any) -> None:
    """Raise ``ReplayFormatError`` naming the key, object and expectation at the first problem found."""
    if not isinstance(data, dict):
        raise ReplayFormatError(f"replay: the top level must be a JSON object, got {_type(data)}")
    if "version" not in data:
        raise ReplayFormatError("replay: missing top-level key 'version' (expected 2)")
    version = data["version"]
    if not _is_int(version) or version != REPLAY_VERSION:
        raise ReplayFormatError(f"replay: 'version' is {version!r}; this reader reads version {REPLAY_VERSION} only")
    for key, meaning in REQUIRED_TOP_KEYS.items():
        if key not in data:
            raise ReplayFormatError(f"replay: missing top-level key {key!r} ({meaning})")

    num_agents, max_steps = data["num_agents"], data["max_steps"]
    if not _is_int(num_agents) or num_agents < 0:
        raise ReplayFormatError(f"replay: 'num_agents' must be an integer >= 0, got {num_agents!r}")
    if not _is_int(max_steps) or max_steps < 1:
        raise ReplayFormatError(
            f"replay: 'max_steps' (the number of frames) must be an integer >= 1, got {max_steps!r}"
        )
    map_size = data["map_size"]
    if not (isinstance(map_size, list) and len(map_size) == 2 and all(_is_int(v) and v >= 1 for v in map_size)):
        raise ReplayFormatError(f"replay: 'map_size' must be [width, height] with integers >= 1, got {map_size!r}")
    if not isinstance(data["file_name"], str):
        raise ReplayFormatError(f"replay: 'file_name' must be a string, got {_type(data['file_name'])}")
    names = {key: _check_names(data, key) for key in ("type_names", "action_names", "item_names", "group_names")}
    _check_additions(data, num_agents, max_steps)

    objects = data["objects"]
    if not isinstance(objects, list):
        raise ReplayFormatError(f"replay: 'objects' must be a list, got {_type(objects)}")
    ctx = {"max_steps": max_steps, "map_size": map_size, **names}
    ids: set[int] = set()
    agent_ids: set[int] = set()
    for i, obj in enumerate(objects):
        _check_object(i, obj, ctx, ids, agent_ids, num_agents)
    if len(agent_ids) != num_agents:
        raise ReplayFormatError(
            f"replay: 'num_agents' is {num_agents} but {len(agent_ids)} objects are agents; every agent_id in "
            f"0..num_agents-1 must have exactly one agent object"
        )


def _check_additions(data: dict, num_agents: int, max_steps: int) -> None:
    """Top-level keys that are optional in the format (upstream's and ours)."""
    matrix = data.get("reward_sharing_matrix")
    if matrix is not None:
        if not (isinstance(matrix, list) and len(matrix) == num_agents and all(map(_numbers(num_agents), matrix))):
            raise ReplayFormatError(
                f"replay: 'reward_sharing_matrix' must be a {num_agents}x{num_agents} list of lists of numbers"
            )
    for key in ("metta_version", "episode_id", "task"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ReplayFormatError(f"replay: {key!r} must be a string or null, got {_type(data[key])}")
    if data.get("env_config") is not None and not isinstance(data["env_config"], dict):
        raise ReplayFormatError(f"replay: 'env_config' must be an object or null, got {_type(data['env_config'])}")
    if "start_step" in data and not (_is_int(data["start_step"]) and data["start_step"] >= 0):
        raise ReplayFormatError(f"replay: 'start_step' must be an integer >= 0, got {data['start_step']!r}")
    if "orientation_names" in data:
        _check_names(data, "orientation_names")
    end = data.get("episode_end")
    if end is not None:
        if not isinstance(end, dict):
            raise ReplayFormatError(f"replay: 'episode_end' must be an object or null, got {_type(end)}")
        for key, check, expected in (
            ("step", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
            ("terminated", lambda v: isinstance(v, bool), "a boolean"),
            ("truncated", lambda v: isinstance(v, bool), "a boolean"),
            ("rewards", _numbers(num_agents), f"a list of {num_agents} numbers"),
            ("total_rewards", _numbers(num_agents), f"a list of {num_agents} numbers"),
        ):
            if key not in end or not check(end[key]):
                raise ReplayFormatError(f"replay: 'episode_end.{key}' must be {expected}, got {end.get(key)!r:.80}")
        if end["step"] not in (max_steps - 1, max_steps):
            raise ReplayFormatError(
                f"replay: 'episode_end.step' is {end['step']}; it must be max_steps ({max_steps}, the terminal state "
                f"was not recorded) or max_steps - 1 ({max_steps - 1}, the last frame is the terminal state)"
            )


def _check_object(i: int, obj: Any, ctx: dict, ids: set[int], agent_ids: set[int], num_agents: int) -> None:
    where = f"objects[{i}]"
    if not isinstance(obj, dict):
        raise ReplayFormatError(f"replay: {where} must be an object, got {_type(obj)}")
    for key in REQUIRED_OBJECT_KEYS:
        if key not in obj:
            raise ReplayFormatError(f"replay: {where} (id {obj.get('id')!r}): missing key {key!r}")
    oid = obj["id"]
    if not _is_int(oid) or oid < 1:
        raise ReplayFormatError(f"replay: {where}: 'id' must be a constant integer >= 1, got {oid!r:.80}")
    where = f"{where} (id {oid})"
    if oid in ids:
        raise ReplayFormatError(f"replay: {where}: duplicate id {oid}")
    ids.add(oid)
    type_id, type_names = obj["type_id"], ctx["type_names"]
    if not _is_int(type_id) or not 0 <= type_id < len(type_names) or not type_names[type_id]:
        raise ReplayFormatError(
            f"replay: {where}: 'type_id' must be a constant integer naming a type in type_names "
            f"(0..{len(type_names) - 1}, non-empty name), got {type_id!r:.80}"
        )
    if type_names[type_id] == "agent":
        agent_id = obj.get("agent_id")
        if not _is_int(agent_id) or not 0 <= agent_id < num_agents:
            raise ReplayFormatError(
                f"replay: {where}: an agent needs a constant 'agent_id' in 0..{num_agents - 1}, got {agent_id!r:.80}"
            )
        if agent_id in agent_ids:
            raise ReplayFormatError(f"replay: {where}: agent_id {agent_id} is used by two agents")
        agent_ids.add(agent_id)
    for key, value in obj.items():
        kind = OBJECT_KEYS.get(key)
        if kind is None or key in CONSTANT_OBJECT_KEYS:
            continue  # unknown keys are allowed (readers ignore them); constants were checked above
        if is_series(value):
            _check_series(where, key, kind, value, ctx)
        else:
            problem = _value_problem(key, kind, value, ctx)
            if problem:
                raise ReplayFormatError(f"replay: {where} key {key!r}: {problem} (as a constant), got {value!r:.80}")


def _check_series(where: str, key: str, kind: str, series: list, ctx: dict) -> None:
    max_steps = ctx["max_steps"]
    previous = -1
    for n, entry in enumerate(series):
        if not (isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0])):
            raise ReplayFormatError(
                f"replay: {where} key {key!r}: series entry {n} must be [step, value] with an integer step, "
                f"got {entry!r:.80}"
            )
        step, value = entry
        if not 0 <= step < max_steps:
            raise ReplayFormatError(
                f"replay: {where} key {key!r}: series entry {n} has step {step}, outside 0..{max_steps - 1} (max_steps)"
            )
        if step <= previous:
            raise ReplayFormatError(
                f"replay: {where} key {key!r}: series entry {n} has step {step} after step {previous}; "
                "steps must strictly increase"
            )
        previous = step
        problem = _value_problem(key, kind, value, ctx)
        if problem:
            raise ReplayFormatError(
                f"replay: {where} key {key!r}: series entry {n} (step {step}): {problem}, got {value!r:.80}"
            )


def _value_problem(key: str, kind: str, value: Any, ctx: dict) -> str | None:
    """What is wrong with one value of ``key``, or None."""
    if kind == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if kind == "float":
        return None if _is_number(value) else "expected a finite number"
    if kind == "int":
        lowest = -1 if key == "recipe_max" else 0  # recipe_max -1: no output limit
        if not _is_int(value) or value < lowest:
            return f"expected an integer >= {lowest}"
        limit = {"orientation": len(ORIENTATION_NAMES), "action_id": len(ctx["action_names"])}.get(key)
        if limit is not None and value >= limit:
            return f"expected an integer in 0..{limit - 1}"
        if key == "group_id" and (value >= len(ctx["group_names"]) or not ctx["group_names"][value]):
            return "expected a group_id that names a group in group_names"
        return None
    if kind == "vec2":
        width, height = ctx["map_size"]
        if not (isinstance(value, list) and len(value) == 2 and all(map(_is_int, value))):
            return "expected [x, y] with integers"
        if not (0 <= value[0] < width and 0 <= value[1] < height):
            return f"expected [x, y] inside the map (0 <= x < {width}, 0 <= y < {height})"
        return None
    if kind == "items":
        n_items = len(ctx["item_names"])
        if not (isinstance(value, list) and all(_is_int(v) and 0 <= v < n_items for v in value)):
            return f"expected a list of item ids in 0..{n_items - 1}"
        return None
    return f"unknown kind {kind!r}"


# --------------------------------------------------------------------------------------------------------
# Writing
def _item_list(counts: dict[int, int]) -> list[int]:
    """{item id: count} -> [id, id, ...] with each id repeated count times, ids ascending."""
    out: list[int] = []
    for item in sorted(counts):
        out.extend([int(item)] * int(counts[item]))
    return out


def _agent_values(o: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": int(o["id"]),
        "type_id": int(o["type_id"]),
        "position": [int(o["c"]), int(o["r"])],
        "orientation": int(o["orientation"]),
        "inventory": _item_list(o["inventory"]),
        "inventory_max": int(o["inventory_max"]),
        "color": int(o["color"]),
        "agent_id": int(o["agent_id"]),
        "group_id": int(o["group_id"]),
        "action_id": int(o["action_id"]),
        "action_parameter": int(o["action_param"]),
        "action_success": bool(o["action_success"]),
        "current_reward": float(o["current_reward"]),
        "total_reward": float(o["total_reward"]),
        "frozen": int(o["frozen"]) > 0,
        "frozen_progress": int(o["frozen"]),
        "frozen_time": int(o["freeze_duration"]),
        "glyph": int(o["glyph"]),
    }


def _converter_values(o: dict[str, Any], item_ids: dict[str, int]) -> dict[str, Any]:
    return {
        "id": int(o["id"]),
        "type_id": int(o["type_id"]),
        "position": [int(o["c"]), int(o["r"])],
        "orientation": int(o["orientation"]),
        "inventory": _item_list(o["inventory"]),
        "inventory_max": int(o["inventory_max"]),
        "color": int(o["color"]),
        "recipe_input": _item_list({item_ids[name]: n for name, n in o["recipe_input"].items()}),
        "recipe_output": _item_list({item_ids[name]: n for name, n in o["recipe_output"].items()}),
        "recipe_max": int(o["recipe_max"]),
        "production_progress": int(o["conversion_remaining"]),
        "production_time": int(o["conversion_ticks"]),
        "cooldown_progress": int(o["cooldown_remaining"]),
        "cooldown_time": int(o["cooldown"]),
        "converting": bool(o["converting"]),
        "cooling_down": bool(o["cooling_down"]),
    }


def _static_values(o: dict[str, Any], replay_id: int) -> dict[str, Any]:
    return {
        "id": replay_id,
        "type_id": int(o["type_id"]),
        "position": [int(o["c"]), int(o["r"])],
        "orientation": int(o.get("orientation", 0)),
        "inventory": _item_list(o.get("inventory", {})),
        "inventory_max": int(o.get("inventory_max", 0)),
        "color": int(o.get("color", 0)),
        "swappable": bool(o.get("swappable", False)),
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
        """Single-entry lists become constants; constants equal to the key's default are left out."""
        out: dict[str, Any] = {}
        for key, series in self.series.items():
            if len(series) > 1:
                out[key] = series
                continue
            value = series[0][1]
            if key in REQUIRED_OBJECT_KEYS or key in CONSTANT_OBJECT_KEYS or value != default_value(key):
                out[key] = value
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


def _id_indexed(names_by_id: dict[int, str]) -> list[str]:
    """{id: name} -> a list indexed by id, with "" for unused ids."""
    out = [""] * (max(names_by_id, default=-1) + 1)
    for i, name in names_by_id.items():
        out[int(i)] = str(name)
    return out


class ReplayWriter:
    """Records episodes of one env of a ``MettaGridEnv`` into ``{replay_dir}/{episode_id}.json.z``.

    Use: ``start_episode(env)`` (records frame 0), then ``log_step(env)`` after every ``env.step``, then
    ``end_episode()`` (writes the file, returns its path). ``episode_ended`` turns true when ``log_step``
    sees the env's terminal step (recorded as a frame only if the env did not auto-reset).
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
        """Begin a replay of env ``env_index`` and record its current state as frame 0."""
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
        self._tracks: dict[int, _Track] = {}  # replay id -> track (agents and converters keep the env's ids)
        self._static_at: dict[tuple[int, int], int] = {}  # (r, c) -> replay id of the static object there
        self._static_type: dict[tuple[int, int], int] = {}  # (r, c) -> its type_id

        objects = env.grid_objects(e)
        self._static_moves = env.static_moves(e) if hasattr(env, "static_moves") else None
        task = env.current_task(e)
        cfg = task.env_cfg() if task is not None else None
        height, width = env.map_size(e)
        groups = {int(o["group_id"]): o["group_name"] for o in objects.values() if _kind(o) == "agent"}
        if cfg is not None:
            groups.update({g.id: name for name, g in cfg.game.groups.items()})
        self._header: dict[str, Any] = {
            "version": REPLAY_VERSION,
            "num_agents": int(env.agents_per_env),
            "max_steps": 0,  # the number of frames, set when written
            "map_size": [int(width), int(height)],
            "file_name": episode_id + REPLAY_SUFFIX,
            "type_names": _id_indexed(env.object_type_names),
            "action_names": list(env.action_names),
            "item_names": list(env.inventory_item_names),
            "group_names": _id_indexed(groups),
            "objects": [],
            # metta additions
            "metta_version": _metta_version(),
            "episode_id": episode_id,
            "task": None if task is None else str(task.id),
            "env_config": None if cfg is None else cfg.model_dump(mode="json"),
            "start_step": int(self._start_step),
            "orientation_names": list(ORIENTATION_NAMES),
            "episode_end": None,
        }
        matrix = self._reward_sharing_matrix(objects, cfg)
        if matrix is not None:
            self._header["reward_sharing_matrix"] = matrix
        self._active = True
        for oid, o in objects.items():
            if _kind(o) != "static":
                continue
            # Frame 0 keeps the env's ids; later frames follow each object by position (see _record_statics).
            pos = (int(o["r"]), int(o["c"]))
            self._static_at[pos] = int(oid)
            self._static_type[pos] = int(o["type_id"])
            track = self._tracks[int(oid)] = _Track()
            track.record(0, _static_values(o, int(oid)))
        self._record_dynamic(objects, first=True)
        self._n_frames = 1

    def log_step(self, env: Any, env_index: int = 0) -> None:
        """Record the state after one ``env.step`` (call it after every step, once)."""
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
        expected = self._start_step + self._n_frames
        current = env.current_step(env_index)
        if terminated or truncated:
            rewards = [float(r) for r in env.rewards[rows]]
            totals = [0.0] * len(rewards)
            for track in self._tracks.values():
                if "agent_id" in track.last:
                    totals[track.last["agent_id"]] = track.last["total_reward"]
            self._end = {
                "step": self._n_frames,
                "terminated": terminated,
                "truncated": truncated,
                "rewards": rewards,
                "total_rewards": [float(np.float32(t) + np.float32(r)) for t, r in zip(totals, rewards)],
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
        statics_changed = moves is None or moves != self._static_moves
        objects = env.grid_objects(env_index, include_static=statics_changed) if moves is not None else env.grid_objects(env_index)
        self._record_dynamic(objects, first=False)
        if statics_changed:
            self._record_statics(objects)
            self._static_moves = moves
        self._n_frames += 1

    def end_episode(self) -> Path:
        """Write the replay atomically and return its path; the writer is then ready for a new episode."""
        if not self._active:
            raise RuntimeError("end_episode() before start_episode()")
        data = dict(self._header)
        data["max_steps"] = self._n_frames
        data["episode_end"] = self._end
        data["objects"] = [self._tracks[oid].encode() for oid in sorted(self._tracks)]
        validate_replay(data)  # a writer bug must never produce a file a viewer cannot read
        payload = zlib.compress(json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8"))
        path = self.replay_dir / data["file_name"]
        _write_atomic(path, payload)
        self._active = False
        self._tracks = {}
        return path

    def record_episode(
        self,
        env: Any,
        policy_fn: Callable[[np.ndarray], np.ndarray],
        env_index: int = 0,
        max_steps: int | None = None,
    ) -> Path:
        """Reset ``env``, step it with ``policy_fn(observations) -> actions`` and record env ``env_index``.

        ``policy_fn`` sees the whole batch's observations and returns int actions ``[env.num_agents, 2]``.
        Recording stops when the episode ends or after ``max_steps`` steps. Returns the replay's path.
        ``env.reset()`` is called without a seed, so an env built with ``seed=`` replays the same first episode.
        """
        if max_steps is None and env.max_steps(env_index) <= 0:
            raise ValueError("this env's episodes have no step limit (game.max_steps=0); pass max_steps")
        observations, _ = env.reset()
        self.start_episode(env, env_index)
        steps = 0
        while not self.episode_ended and (max_steps is None or steps < max_steps):
            observations, *_ = env.step(policy_fn(observations))
            self.log_step(env, env_index)
            steps += 1
        return self.end_episode()

    # ----------------------------------------------------------------------------------------------------
    def _record_dynamic(self, objects: dict[int, dict[str, Any]], first: bool) -> None:
        step = self._n_frames
        for oid, o in objects.items():
            kind = _kind(o)
            if kind == "static":
                continue
            if kind == "agent":
                values = _agent_values(o)
                if first and self._start_step == 0:
                    # After an auto-reset the env's reward buffer still holds the last episode's final rewards.
                    values["current_reward"] = 0.0
            else:
                values = _converter_values(o, self._item_ids)
            track = self._tracks.get(oid)
            if track is None:
                if not first:
                    raise RuntimeError(
                        f"object id {oid} ({o['type_name']}) appeared mid-episode; replays cannot show it"
                    )
                track = self._tracks[oid] = _Track()
            track.record(step, values)

    def _record_statics(self, objects: dict[int, dict[str, Any]]) -> None:
        """Walls and blocks: the env numbers them by map position, so follow them by position instead."""
        now = {(int(o["r"]), int(o["c"])): int(o["type_id"]) for o in objects.values() if _kind(o) == "static"}
        if now == self._static_type:
            return
        step = self._n_frames
        old_type, old_at = self._static_type, self._static_at
        new_at = {pos: old_at[pos] for pos, t in now.items() if old_type.get(pos) == t}
        vanished = [pos for pos in old_at if pos not in new_at]
        for pos in sorted(pos for pos in now if pos not in new_at):
            t = now[pos]
            # A swap moves a block one cell; take the nearest vanished object of the same type.
            candidates = [q for q in vanished if old_type[q] == t]
            if not candidates:
                raise RuntimeError(f"a static object of type {t} appeared at row {pos[0]}, column {pos[1]} mid-episode")
            source = min(candidates, key=lambda q: (abs(q[0] - pos[0]) + abs(q[1] - pos[1]), q))
            vanished.remove(source)
            rid = old_at[source]
            new_at[pos] = rid
            self._tracks[rid].record(step, {"position": [pos[1], pos[0]]})
        if vanished:
            raise RuntimeError(f"static objects at (row, column) {sorted(vanished)} disappeared mid-episode")
        self._static_at = new_at
        self._static_type = now

    def _reward_sharing_matrix(self, objects: dict[int, dict[str, Any]], cfg: Any) -> list[list[float]] | None:
        """M[i][j]: the share of agent j's own reward that agent i receives (only when a group shares)."""
        if cfg is None:
            return None
        pct = {name: g.group_reward_pct for name, g in cfg.game.groups.items()}
        agents = sorted((o for o in objects.values() if _kind(o) == "agent"), key=lambda o: o["agent_id"])
        if not any(pct.get(o["group_name"], 0.0) > 0 for o in agents):
            return None
        size = {}
        for o in agents:
            size[o["group_name"]] = size.get(o["group_name"], 0) + 1
        matrix = []
        for oi in agents:
            row = []
            for oj in agents:
                p = pct.get(oj["group_name"], 0.0)
                share = (1.0 - p) if oi["agent_id"] == oj["agent_id"] else 0.0
                if oi["group_name"] == oj["group_name"]:
                    share += p / size[oj["group_name"]]
                row.append(share)
            matrix.append(row)
        return matrix


def _write_atomic(path: Path, payload: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
