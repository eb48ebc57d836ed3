"""The replay file format (docs/replay_format.md): key tables, reading, validation, expansion of time series.

A replay is zlib-compressed JSON, format version 2 as upstream MettaScope's loader and validator read it.
Every object key holds a constant or a time series ``[[step, value], ...]`` that starts at step 0.
``read_replay`` decompresses, parses, upgrades files written by earlier metta versions and validates;
every failure is a ``ReplayFormatError`` that names the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPLAY_VERSION = 2
REPLAY_SUFFIX = ".json.z"
ORIENTATION_NAMES = ["up", "down", "left", "right"]
AGENT_LAYER, OBJECT_LAYER = 0, 1  # the z of an object's location
MAX_DECOMPRESSED_BYTES = 1 << 30  # a larger replay is refused rather than exhausting memory


class ReplayFormatError(ValueError):
    """A replay file or dict that does not follow docs/replay_format.md."""


@dataclass(frozen=True)
class Key:
    """How one object key's values look.

    kind: "int", "number", "bool", "location" ([x, y, z] on the map) or "pairs" ([[item_id, count], ...]).
    const: upstream's loader reads the key as a plain value, so it is never a time series.
    low: the smallest allowed integer.
    """

    kind: str
    const: bool = False
    low: int = 0


# Keys of every object; upstream's validator requires all of them.
COMMON_KEYS = {
    "id": Key("int", const=True, low=1),
    "type_id": Key("int", const=True),
    "location": Key("location"),
    "orientation": Key("int"),
    "inventory": Key("pairs"),
    "inventory_max": Key("int", const=True),
    "color": Key("int"),
    "is_swappable": Key("bool", const=True),
}
# Agents: upstream's loader reads frozen_progress/frozen_time, its writer and validator the freeze_* names;
# both are written. glyph is metta's.
AGENT_KEYS = {
    "agent_id": Key("int", const=True),
    "is_agent": Key("bool", const=True),
    "vision_size": Key("int", const=True, low=1),
    "group_id": Key("int", const=True),
    "action_id": Key("int"),
    "action_param": Key("int"),
    "action_success": Key("bool"),
    "current_reward": Key("number"),
    "total_reward": Key("number"),
    "is_frozen": Key("bool"),
    "frozen_progress": Key("int"),
    "frozen_time": Key("int", const=True),
    "freeze_remaining": Key("int"),
    "freeze_duration": Key("int", const=True),
}
AGENT_EXTRA_KEYS = {"glyph": Key("int")}
# Converters (mines, generators, altars, ...): the loader reads input_resources, recipe_max, production_*,
# cooldown_progress/_time; the validator wants output_limit, conversion_*, cooldown_remaining/_duration and
# the is_* flags. The same values are written under both names.
CONVERTER_KEYS = {
    "input_resources": Key("pairs", const=True),
    "output_resources": Key("pairs", const=True),
    "recipe_max": Key("int", const=True, low=-1),
    "production_progress": Key("int"),
    "production_time": Key("int", const=True),
    "cooldown_progress": Key("int"),
    "cooldown_time": Key("int", const=True),
    "output_limit": Key("int", const=True),
    "conversion_remaining": Key("int"),
    "conversion_duration": Key("int", const=True),
    "cooldown_remaining": Key("int"),
    "cooldown_duration": Key("int", const=True),
    "is_converting": Key("bool"),
    "is_cooling_down": Key("bool"),
}
OBJECT_KEYS: dict[str, Key] = {**COMMON_KEYS, **AGENT_KEYS, **AGENT_EXTRA_KEYS, **CONVERTER_KEYS}

# Top-level keys. Upstream's validator allows exactly the required and optional ones; its loader also reads
# env_config (and fails on a null one). metta's additions live in env_config["metta"].
REQUIRED_TOP_KEYS = {
    "version": "the format version, 2",
    "num_agents": "the number of agents",
    "max_steps": "the number of frames",
    "map_size": "[width, height]",
    "action_names": "action names indexed by action_id",
    "item_names": "item names indexed by item id",
    "type_names": "object type names indexed by type_id",
    "objects": "the list of objects",
}
OPTIONAL_TOP_KEYS = ("file_name", "group_names", "reward_sharing_matrix")
ALLOWED_TOP_KEYS = (*REQUIRED_TOP_KEYS, *OPTIONAL_TOP_KEYS, "env_config")

_DEFAULTS = {"int": 0, "number": 0.0, "bool": False, "pairs": [], "location": [0, 0, 0]}


def default_value(key: str) -> Any:
    """The value a missing object key stands for (0, 0.0, false, [] or [0, 0, 0])."""
    value = _DEFAULTS[OBJECT_KEYS[key].kind if key in OBJECT_KEYS else "int"]
    return list(value) if isinstance(value, list) else value


def is_series(value: Any, key: str | None = None) -> bool:
    """True for a time series ``[[step, value], ...]``.

    Constants of the list kinds are lists too: a location ``[x, y, z]`` (numbers) and an item list
    ``[[item_id, count], ...]`` (pairs of numbers); an item-list series holds ``[step, [[id, n], ...]]``.
    """
    if not (isinstance(value, list) and value and isinstance(value[0], list)):
        return False
    kind = OBJECT_KEYS[key].kind if key in OBJECT_KEYS else None
    if kind == "pairs":
        return len(value[0]) == 2 and isinstance(value[0][1], list)
    return True


def expand_series(value: Any, num_steps: int, default: Any = 0, key: str | None = None) -> list[Any]:
    """One value per step ``0..num_steps-1`` from a constant or a series (``default`` before its first entry).

    Steps share value objects (a constant list is repeated, not copied): treat the result as read-only.
    """
    if not is_series(value, key):
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
    """Every key of one object as a list of ``num_steps`` values."""
    return {key: expand_series(value, num_steps, default_value(key), key) for key, value in obj.items()}


def pairs_to_counts(pairs: list[list[int]]) -> dict[int, int]:
    """``[[item_id, count], ...]`` -> ``{item_id: count}``."""
    return {int(i): n for i, n in pairs}


# --------------------------------------------------------------------------------------------------------
# Reading
def decode_replay(raw: bytes) -> dict[str, Any]:
    """Decompress, parse, upgrade (earlier metta files) and validate the bytes of a ``.json.z`` file."""
    return decode_replay_upgraded(raw)[0]


def decode_replay_upgraded(raw: bytes) -> tuple[dict[str, Any], bool]:
    """Like ``decode_replay``, and whether the file was an earlier metta file that had to be upgraded."""
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(raw, MAX_DECOMPRESSED_BYTES)
    except zlib.error as err:
        raise ReplayFormatError(f"replay: not a zlib stream ({len(raw)} bytes): {err}") from None
    if inflater.unconsumed_tail:
        raise ReplayFormatError(f"replay: decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")
    if not inflater.eof:
        raise ReplayFormatError(f"replay: not a complete zlib stream ({len(raw)} bytes; the file is cut short)")
    if inflater.unused_data:
        raise ReplayFormatError(
            f"replay: {len(inflater.unused_data)} bytes after the end of its zlib stream ({len(raw)} bytes in all: "
            "something was appended, or two files were joined)"
        )
    try:
        original = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReplayFormatError(f"replay: the decompressed content is not valid UTF-8 JSON: {err}") from None
    except RecursionError:
        raise ReplayFormatError("replay: the JSON is nested too deeply to be a replay") from None
    try:
        data = upgrade_replay(original)
        validate_replay(data)
    except RecursionError:
        raise ReplayFormatError("replay: a value is nested too deeply to be a replay value") from None
    return data, data is not original


def read_replay(path: str | os.PathLike) -> dict[str, Any]:
    """The replay at ``path`` as a dict, after checking it; any problem is a ``ReplayFormatError`` naming the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ReplayFormatError(f"{path}: cannot read the replay: {err.strerror or err}") from None
    try:
        return decode_replay(raw)
    except ReplayFormatError as err:
        raise ReplayFormatError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - whatever else a hostile file provokes is a format error too
        raise ReplayFormatError(f"{path}: replay: unreadable ({type(err).__name__}: {err})") from None


def replay_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """metta's additions to a replay (``env_config["metta"]``): episode_id, task, episode_end, ..."""
    return data.get("env_config", {}).get("metta") or {}


# --------------------------------------------------------------------------------------------------------
# Earlier metta files: position [x, y], inventories as repeated item ids, keys left out at their defaults
_DRAFT_RENAMES = {
    "action_parameter": "action_param",
    "frozen": "is_frozen",
    "converting": "is_converting",
    "cooling_down": "is_cooling_down",
    "swappable": "is_swappable",
}
_DRAFT_ADDITIONS = ("metta_version", "episode_id", "task", "start_step", "orientation_names", "episode_end")
_DRAFT_CONVERTER_KEYS = (
    "recipe_input",
    "recipe_output",
    "recipe_max",
    "production_progress",
    "production_time",
    "cooldown_progress",
    "cooldown_time",
    "converting",
    "cooling_down",
)
_ALIASES = {  # validator name <- loader name
    "freeze_remaining": "frozen_progress",
    "freeze_duration": "frozen_time",
    "conversion_remaining": "production_progress",
    "conversion_duration": "production_time",
    "cooldown_remaining": "cooldown_progress",
    "cooldown_duration": "cooldown_time",
}


def _map_values(value: Any, fn: Any) -> Any:
    """Apply ``fn`` to a draft constant or to every value of a draft series."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        return [[step, fn(v)] for step, v in value]
    return fn(value)


def _items_to_pairs(items: Any) -> Any:
    if not isinstance(items, list):
        return items  # left for validation to reject
    counts: dict[Any, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    try:
        return [[i, n] for i, n in sorted(counts.items())]
    except TypeError:  # mixed id types: left for validation to reject
        return [[i, n] for i, n in counts.items()]


def upgrade_replay(data: Any) -> Any:
    """A replay written by an earlier metta (objects with ``position``) in today's shape; others unchanged.

    Those files recorded the state at the episode's start as frame 0; the upgrade keeps their frames as
    they are.
    """
    if not (isinstance(data, dict) and "metta_version" in data and isinstance(data.get("objects"), list)):
        return data
    if not any(isinstance(o, dict) and "position" in o for o in data["objects"]):
        return data
    out = {k: v for k, v in data.items() if k not in _DRAFT_ADDITIONS}
    names = data.get("type_names")
    if isinstance(names, list):
        out["type_names"] = [n or f"type_{i}" for i, n in enumerate(names)]
    groups = data.get("group_names")
    if isinstance(groups, list):
        out["group_names"] = [n or f"group_{i}" for i, n in enumerate(groups)]
    matrix = data.get("reward_sharing_matrix")
    if isinstance(matrix, list) and all(isinstance(row, list) for row in matrix):
        # The draft's M[i][j] was the share of j's reward that i got; upstream's is [actor][receiver], no diagonal.
        out["reward_sharing_matrix"] = [
            [0.0 if i == j else matrix[j][i] for j in range(len(matrix))] for i in range(len(matrix))
        ]
    config = data.get("env_config") if isinstance(data.get("env_config"), dict) else {}
    vision = ((config.get("game") or {}).get("obs_width")) or 11
    metta = {k: data[k] for k in _DRAFT_ADDITIONS if k in data}
    out["env_config"] = {**config, "label": config.get("label") or data.get("task") or "mettagrid", "metta": metta}
    out["objects"] = [_upgrade_object(o, out.get("type_names"), vision) for o in data["objects"]]
    return out


def _upgrade_object(obj: Any, type_names: Any, vision: int) -> Any:
    if not isinstance(obj, dict):
        return obj
    is_agent = "agent_id" in obj
    is_converter = any(key in obj for key in _DRAFT_CONVERTER_KEYS)  # keys at their defaults were left out
    new: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "position":
            layer = AGENT_LAYER if is_agent else OBJECT_LAYER
            new["location"] = _map_values(value, lambda p, z=layer: [*p, z] if isinstance(p, list) else p)
        elif key in ("inventory", "recipe_input", "recipe_output"):
            name = {"recipe_input": "input_resources", "recipe_output": "output_resources"}.get(key, key)
            new[name] = _map_values(value, _items_to_pairs)
        else:
            new[_DRAFT_RENAMES.get(key, key)] = value
    keys = dict(COMMON_KEYS)
    if is_agent:
        keys.update(AGENT_KEYS)
        new.setdefault("is_agent", True)
        new.setdefault("vision_size", int(vision))
    if is_converter:
        keys.update(CONVERTER_KEYS)
    for alias, source in _ALIASES.items():
        if alias in keys and source in new:
            new.setdefault(alias, new[source])
    if is_converter:
        new.setdefault("output_limit", max(new.get("recipe_max", 0), 0) if _is_int(new.get("recipe_max", 0)) else 0)
    for key in keys:
        new.setdefault(key, default_value(key))
    return new


# --------------------------------------------------------------------------------------------------------
# Validation
def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_names(value: Any, allow_empty_list: bool) -> bool:
    return (
        isinstance(value, list)
        and (allow_empty_list or len(value) > 0)
        and all(isinstance(n, str) and n for n in value)
    )


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) and len(str(value)) < 200 else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_replay(data: Any) -> None:
    """Raise ``ReplayFormatError`` naming the key, object and expectation at the first problem found.

    Unknown keys (top level or in objects) are allowed: readers ignore them.
    """
    if not isinstance(data, dict):
        raise ReplayFormatError(f"replay: the top level must be a JSON object, got {_type(data)}")
    if "version" not in data:
        raise ReplayFormatError("replay: missing top-level key 'version' (expected 2)")
    version = data["version"]
    if not _is_int(version) or version != REPLAY_VERSION:
        raise ReplayFormatError(
            f"replay: 'version' is {_short(version)}; this reader reads version {REPLAY_VERSION} only"
        )
    for key, meaning in REQUIRED_TOP_KEYS.items():
        if key not in data:
            raise ReplayFormatError(f"replay: missing top-level key {key!r} ({meaning})")
    num_agents, max_steps = data["num_agents"], data["max_steps"]
    if not _is_int(num_agents) or num_agents < 1:
        raise ReplayFormatError(f"replay: 'num_agents' must be an integer >= 1, got {_short(num_agents)}")
    if not _is_int(max_steps) or max_steps < 1:
        raise ReplayFormatError(
            f"replay: 'max_steps' (the number of frames) must be an integer >= 1, got {_short(max_steps)}"
        )
    map_size = data["map_size"]
    if not (isinstance(map_size, list) and len(map_size) == 2 and all(_is_int(v) and v >= 1 for v in map_size)):
        raise ReplayFormatError(
            f"replay: 'map_size' must be [width, height] with integers >= 1, got {_short(map_size)}"
        )
    file_name = data.get("file_name", REPLAY_SUFFIX)
    if not (isinstance(file_name, str) and file_name.endswith(REPLAY_SUFFIX) and len(file_name) > len(REPLAY_SUFFIX)):
        raise ReplayFormatError(
            f"replay: 'file_name' must be a name ending in {REPLAY_SUFFIX!r}, got {_short(file_name)}"
        )
    for key in ("type_names", "action_names", "item_names"):
        if not _is_names(data[key], allow_empty_list=False):
            raise ReplayFormatError(
                f"replay: {key!r} must be a non-empty list of non-empty strings, got {_short(data[key])}"
            )
    if "group_names" in data and not _is_names(data["group_names"], allow_empty_list=True):
        raise ReplayFormatError(
            f"replay: 'group_names' must be a list of non-empty strings, got {_short(data['group_names'])}"
        )
    _check_matrix(data.get("reward_sharing_matrix"), num_agents)
    _check_env_config(data.get("env_config"), num_agents, max_steps)

    objects = data["objects"]
    if not isinstance(objects, list) or not objects:
        raise ReplayFormatError(f"replay: 'objects' must be a non-empty list, got {_short(objects)}")
    ctx = {
        "max_steps": max_steps,
        "map_size": map_size,
        "num_agents": num_agents,
        "type_names": data["type_names"],
        "action_names": data["action_names"],
        "item_names": data["item_names"],
        "group_names": data.get("group_names"),
    }
    ids: set[int] = set()
    agent_ids: set[int] = set()
    for i, obj in enumerate(objects):
        _check_object(i, obj, ctx, ids, agent_ids)
    if len(agent_ids) != num_agents:
        raise ReplayFormatError(
            f"replay: 'num_agents' is {num_agents} but {len(agent_ids)} objects are agents; every agent_id in "
            f"0..num_agents-1 must have exactly one agent object"
        )


def _check_matrix(matrix: Any, num_agents: int) -> None:
    if matrix is None:
        return
    rows_ok = isinstance(matrix, list) and len(matrix) == num_agents
    if not (rows_ok and all(isinstance(r, list) and len(r) == num_agents and all(map(_is_number, r)) for r in matrix)):
        raise ReplayFormatError(
            f"replay: 'reward_sharing_matrix' must be a {num_agents}x{num_agents} list of lists of numbers"
        )
    if any(matrix[i][i] != 0 for i in range(num_agents)):
        raise ReplayFormatError(
            "replay: 'reward_sharing_matrix' is [actor][receiver] with a zero diagonal (agents do not share with "
            "themselves)"
        )


def _check_env_config(config: Any, num_agents: int, max_steps: int) -> None:
    if config is None:
        return  # optional for readers; upstream's loader needs it, so the writer always writes it
    if not isinstance(config, dict):
        raise ReplayFormatError(f"replay: 'env_config' must be an object, got {_type(config)}")
    if not isinstance(config.get("label"), str):
        raise ReplayFormatError(f"replay: 'env_config.label' must be a string, got {_short(config.get('label'))}")
    metta = config.get("metta")
    if metta is None:
        return
    if not isinstance(metta, dict):
        raise ReplayFormatError(f"replay: 'env_config.metta' must be an object, got {_type(metta)}")
    for key in ("metta_version", "episode_id", "task"):
        if metta.get(key) is not None and not isinstance(metta[key], str):
            raise ReplayFormatError(
                f"replay: 'env_config.metta.{key}' must be a string or null, got {_type(metta[key])}"
            )
    if "start_step" in metta and not (_is_int(metta["start_step"]) and metta["start_step"] >= 0):
        raise ReplayFormatError(
            f"replay: 'env_config.metta.start_step' must be an integer >= 0, got {_short(metta['start_step'])}"
        )
    if "orientation_names" in metta and not _is_names(metta["orientation_names"], allow_empty_list=False):
        raise ReplayFormatError("replay: 'env_config.metta.orientation_names' must be a list of strings")
    _check_episode_end(metta.get("episode_end"), num_agents, max_steps)


def _check_episode_end(end: Any, num_agents: int, max_steps: int) -> None:
    if end is None:
        return
    if not isinstance(end, dict):
        raise ReplayFormatError(f"replay: 'episode_end' must be an object or null, got {_type(end)}")

    def numbers(v: Any) -> bool:
        return isinstance(v, list) and len(v) == num_agents and all(map(_is_number, v))

    for key, check, expected in (
        ("step", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        ("terminated", lambda v: isinstance(v, bool), "a boolean"),
        ("truncated", lambda v: isinstance(v, bool), "a boolean"),
        ("rewards", numbers, f"a list of {num_agents} numbers"),
        ("total_rewards", numbers, f"a list of {num_agents} numbers"),
    ):
        if key not in end or not check(end[key]):
            raise ReplayFormatError(f"replay: 'episode_end.{key}' must be {expected}, got {_short(end.get(key))}")
    if end["step"] not in (max_steps - 1, max_steps):
        raise ReplayFormatError(
            f"replay: 'episode_end.step' is {end['step']}; it must be max_steps ({max_steps}, the terminal state "
            f"was not recorded) or max_steps - 1 ({max_steps - 1}, the last frame is the terminal state)"
        )


def _check_object(i: int, obj: Any, ctx: dict, ids: set[int], agent_ids: set[int]) -> None:
    where = f"objects[{i}]"
    if not isinstance(obj, dict):
        raise ReplayFormatError(f"replay: {where} must be an object, got {_type(obj)}")
    oid = obj.get("id")
    if not _is_int(oid) or oid < 1:
        raise ReplayFormatError(f"replay: {where}: 'id' must be a constant integer >= 1, got {_short(oid)}")
    where = f"{where} (id {oid})"
    if oid in ids:
        raise ReplayFormatError(f"replay: {where}: duplicate id {oid}")
    ids.add(oid)
    type_id, type_names = obj.get("type_id"), ctx["type_names"]
    if not _is_int(type_id) or not 0 <= type_id < len(type_names):
        raise ReplayFormatError(
            f"replay: {where}: 'type_id' must be a constant integer naming a type in type_names "
            f"(0..{len(type_names) - 1}), got {_short(type_id)}"
        )
    is_agent = type_names[type_id] == "agent"
    if "agent_id" in obj and not is_agent:
        raise ReplayFormatError(f"replay: {where}: has 'agent_id' but its type is {type_names[type_id]!r}, not 'agent'")
    required = dict(COMMON_KEYS)
    if is_agent:
        required.update(AGENT_KEYS)
    if "input_resources" in obj:
        required.update(CONVERTER_KEYS)
    missing = [key for key in required if key not in obj]
    if missing:
        raise ReplayFormatError(f"replay: {where}: missing key(s) {', '.join(map(repr, missing))}")
    if is_agent:
        agent_id = obj["agent_id"]
        if not _is_int(agent_id) or not 0 <= agent_id < ctx["num_agents"]:
            raise ReplayFormatError(
                f"replay: {where}: an agent needs a constant 'agent_id' in 0..{ctx['num_agents'] - 1}, "
                f"got {_short(agent_id)}"
            )
        if agent_id in agent_ids:
            raise ReplayFormatError(f"replay: {where}: agent_id {agent_id} is used by two agents")
        agent_ids.add(agent_id)
        if obj["is_agent"] is not True:
            raise ReplayFormatError(f"replay: {where}: an agent's 'is_agent' must be true")
    for key, value in obj.items():
        spec = OBJECT_KEYS.get(key)
        if spec is None or key in ("id", "type_id", "agent_id"):
            continue  # unknown keys are allowed; the ids were checked above
        if is_series(value, key):
            if spec.const:
                raise ReplayFormatError(
                    f"replay: {where} key {key!r}: must be a constant (upstream's loader reads it as a plain value)"
                )
            _check_series(where, key, spec, value, ctx)
        else:
            problem = _value_problem(key, spec, value, ctx)
            if problem:
                raise ReplayFormatError(f"replay: {where} key {key!r}: {problem} (as a constant), got {_short(value)}")


def _check_series(where: str, key: str, spec: Key, series: list, ctx: dict) -> None:
    max_steps = ctx["max_steps"]
    previous = -1
    for n, entry in enumerate(series):
        if not (isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0])):
            raise ReplayFormatError(
                f"replay: {where} key {key!r}: series entry {n} must be [step, value] with an integer step, "
                f"got {_short(entry)}"
            )
        step, value = entry
        if n == 0 and step != 0:
            raise ReplayFormatError(f"replay: {where} key {key!r}: a series must start at step 0, got step {step}")
        # A last entry at step max_steps that repeats the value before it is padding no frame shows: the writer
        # uses it for a constant inventory of 2+ items in a one-frame replay (upstream's loader needs 2 entries).
        padding = n == len(series) - 1 and n > 0 and step == max_steps and value == series[n - 1][1]
        if not 0 <= step < max_steps and not padding:
            raise ReplayFormatError(
                f"replay: {where} key {key!r}: series entry {n} has step {step}, outside 0..{max_steps - 1} (max_steps)"
            )
        if step <= previous:
            raise ReplayFormatError(
                f"replay: {where} key {key!r}: series entry {n} has step {step} after step {previous}; "
                "steps must strictly increase"
            )
        previous = step
        problem = _value_problem(key, spec, value, ctx)
        if problem:
            raise ReplayFormatError(
                f"replay: {where} key {key!r}: series entry {n} (step {step}): {problem}, got {_short(value)}"
            )


def _value_problem(key: str, spec: Key, value: Any, ctx: dict) -> str | None:
    """What is wrong with one value of ``key``, or None."""
    kind = spec.kind
    if kind == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if kind == "number":
        return None if _is_number(value) else "expected a finite number"
    if kind == "int":
        if not _is_int(value) or value < spec.low:
            return f"expected an integer >= {spec.low}"
        limit = {"orientation": len(ORIENTATION_NAMES), "action_id": len(ctx["action_names"]), "color": 256}.get(key)
        if limit is not None and value >= limit:
            return f"expected an integer in 0..{limit - 1}"
        groups = ctx["group_names"]
        if key == "group_id" and groups is not None and value >= len(groups):
            return f"expected a group_id that indexes group_names (0..{len(groups) - 1})"
        return None
    if kind == "location":
        width, height = ctx["map_size"]
        if not (isinstance(value, list) and len(value) == 3 and all(map(_is_int, value))):
            return "expected [x, y, z] with integers"
        if not (0 <= value[0] < width and 0 <= value[1] < height and value[2] >= 0):
            return f"expected [x, y, z] inside the map (0 <= x < {width}, 0 <= y < {height}, z >= 0)"
        return None
    if kind == "pairs":
        n_items = len(ctx["item_names"])
        if not (isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value)):
            return "expected [[item_id, count], ...]"
        if not all(_is_int(i) and 0 <= i < n_items and _is_number(n) and n >= 0 for i, n in value):
            return f"expected item ids in 0..{n_items - 1} with counts >= 0"
        if len({i for i, _ in value}) != len(value):
            return "expected each item id at most once"
        return None
    return f"unknown kind {kind!r}"


def write_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over ``path``; returns ``path``."""
    path = Path(path)
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
    return path
