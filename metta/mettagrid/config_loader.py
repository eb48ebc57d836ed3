"""Config paths: from ``/env/mettagrid/...`` or a YAML file on disk to a merged dict or a ``MettaGridConfig``.

A *config path* names either a YAML file on disk (read as is) or a config packaged with metta:
``/env/mettagrid/curriculum/navigation/bucketed`` is ``metta/mettagrid/configs/env/mettagrid/curriculum/
navigation/bucketed.yaml``. The leading slash and the ``.yaml`` suffix are optional.

A YAML file may inherit from others with a ``defaults`` list, in the spirit of Hydra but without it::

    defaults:
      - /env/mettagrid/mettagrid     # deep-merged first
      - _self_                       # then this file's own keys (the default position is last)
    game:
      num_agents: 4

Entries that do not start with ``/`` are looked up next to the including file first. Merging is a deep
merge of mappings; anything else is replaced. One exception keeps map builders sane: when both sides are
mappings with different ``type`` tags (say ``random`` and ``multi_room``), the new mapping replaces the old
one instead of inheriting its now meaningless keys. OmegaConf interpolations (``${game.num_agents}``) are
resolved after the merge and after overrides, so an override of ``game.num_agents`` reaches every field that
refers to it.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

CONFIGS_ROOT = Path(__file__).resolve().parent / "configs"

_SELF = "_self_"


class ConfigError(ValueError):
    """A config file or override that cannot be loaded; the message names the file and the key."""


# --------------------------------------------------------------------------------------------------------------
# Paths


def packaged_config_paths() -> list[str]:
    """Every packaged config as a config path (``/env/mettagrid/...``), sorted."""
    return sorted("/" + p.relative_to(CONFIGS_ROOT).with_suffix("").as_posix() for p in CONFIGS_ROOT.rglob("*.yaml"))


def _packaged_candidate(path: str) -> Path:
    rel = path.strip().lstrip("/")
    if rel.endswith(".yaml"):
        rel = rel[: -len(".yaml")]
    return CONFIGS_ROOT / (rel + ".yaml")


def resolve_config_path(path: str | Path, relative_to: Path | None = None) -> Path:
    """The YAML file a config path names.

    Order: an existing file on disk; then (for entries of a ``defaults`` list) a file next to the including
    file; then the packaged configs. The error lists the closest packaged config paths.
    """
    text = str(path)
    if not text.strip():
        raise ConfigError("config path is empty; give a packaged path like /env/mettagrid/mettagrid or a .yaml file")
    on_disk = Path(text).expanduser()
    if on_disk.is_file():
        return on_disk
    if relative_to is not None and not text.startswith("/"):
        for candidate in (relative_to / text, relative_to / (text + ".yaml")):
            if candidate.is_file():
                return candidate
    packaged = _packaged_candidate(text)
    if packaged.is_file():
        return packaged
    known = packaged_config_paths()
    wanted = "/" + text.strip().lstrip("/").removesuffix(".yaml")
    close = difflib.get_close_matches(wanted, known, n=5, cutoff=0.5)
    if not close:
        # Also try matching on the last part only ("bucketed" -> ".../navigation/bucketed").
        tail = wanted.rsplit("/", 1)[-1]
        close = [k for k in known if k.rsplit("/", 1)[-1] == tail][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; packaged configs live under {CONFIGS_ROOT}"
    raise ConfigError(f"config {text!r} is neither a YAML file on disk nor a packaged config ({packaged}){hint}")


# --------------------------------------------------------------------------------------------------------------
# Merging and overrides


def deep_merge(base: Any, update: Any) -> Any:
    """``update`` merged into a copy of ``base`` (mappings recursively; a different ``type`` tag replaces)."""
    if not isinstance(base, Mapping) or not isinstance(update, Mapping):
        return copy.deepcopy(update)
    if "type" in base and "type" in update and base["type"] != update["type"]:
        return copy.deepcopy(dict(update))
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
    return out


def flatten_dotted(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys, the inverse of applying overrides: ``{"game": {"max_steps": 5}}`` ->
    ``{"game.max_steps": 5}``; an empty mapping is a leaf."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set_dotted(cfg: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{source}: override key {dotted!r} has an empty part; write keys like 'game.max_steps'")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"{source}: override {dotted!r} goes through {where!r}, which is {child!r}, not a mapping; "
                f"override {where!r} itself or fix the key"
            )
        node = child
    last = parts[-1]
    if isinstance(value, Mapping) and isinstance(node.get(last), Mapping):
        node[last] = deep_merge(node[last], value)
    else:
        node[last] = copy.deepcopy(value)


def apply_overrides(cfg_dict: dict, overrides: Mapping[str, Any] | None, source: str = "overrides") -> dict:
    """A copy of ``cfg_dict`` with ``overrides`` applied.

    Keys may be dotted (``{"game.max_steps": 100}``) or nested (``{"game": {"max_steps": 100}}``); mapping
    values are deep-merged into what is there, other values replace it. Missing intermediate keys are created
    (validation reports keys the config does not know).
    """
    out = copy.deepcopy(cfg_dict)
    if not overrides:
        return out
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"{source}: overrides must be a mapping of dotted keys to values, got {type(overrides).__name__}"
        )
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: override key {key!r} is not a string")
        _set_dotted(out, key, value, source)
    return out


# --------------------------------------------------------------------------------------------------------------
# Loading


def _read_yaml(file: Path) -> dict:
    try:
        with open(file, encoding="utf-8") as stream:  # a stream, so YAML's marks carry the file's name
            data = yaml.safe_load(stream)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context:
            started = f" at line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
            problem = f"{problem} ({context}{started})"
        raise ConfigError(f"{file}: not valid YAML{where}: {problem}; fix the file") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{file}: cannot be read as a UTF-8 YAML file ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _load_merged(file: Path, stack: tuple[Path, ...]) -> dict:
    file = file.resolve()
    if file in stack:
        chain = " -> ".join(str(p) for p in (*stack, file))
        raise ConfigError(f"{file}: circular defaults: {chain}")
    data = _read_yaml(file)
    defaults = data.pop("defaults", None) or []
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list):
        raise ConfigError(f"{file}: 'defaults' must be a list of config paths, got {defaults!r}")
    if _SELF not in defaults:
        defaults = [*defaults, _SELF]
    merged: dict = {}
    for entry in defaults:
        if entry == _SELF:
            merged = deep_merge(merged, data)
            continue
        if not isinstance(entry, str):
            raise ConfigError(
                f"{file}: defaults entry {entry!r} is not a config path; write entries like '/env/mettagrid/mettagrid'"
            )
        name = entry.split("@", 1)[0]  # Hydra's "path@_here_" package suffix means the same thing here
        try:
            parent = resolve_config_path(name, relative_to=file.parent)
        except ConfigError as err:
            raise ConfigError(f"{file}: defaults entry {entry!r}: {err}") from None
        merged = deep_merge(merged, _load_merged(parent, (*stack, file)))
    return merged


def _resolve_interpolations(cfg: dict, source: str) -> dict:
    if "${" not in repr(cfg):
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{source}: cannot resolve the interpolation at {key}: {err}") from None


def load_config_dict(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict:
    """The config at ``path`` as a plain dict: defaults merged, ``overrides`` applied, interpolations resolved."""
    file = resolve_config_path(path)
    merged = _load_merged(file, ())
    merged = apply_overrides(merged, overrides, source=f"{file} (overrides)")
    return _resolve_interpolations(merged, str(file))


def format_validation_error(err: Exception, source: str) -> str:
    """A pydantic ``ValidationError`` as lines of ``<dotted key>: <problem> (got <value>)`` with hints."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return f"{source}: {err}"
    lines = []
    for e in err.errors():
        parts, allowed = _walk_location(e["loc"][:-1] if e["type"] == "extra_forbidden" else e["loc"])
        if e["type"] == "extra_forbidden":
            bad = str(e["loc"][-1])
            loc = ".".join([*parts, bad])
            close = difflib.get_close_matches(bad, allowed, n=3) if allowed else []
            if close:
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?"
            elif allowed:
                hint = f"; allowed keys here: {', '.join(allowed)}"
            else:
                hint = ""
            lines.append(f"  {loc}: unknown key{hint}")
            continue
        value = e.get("input")
        shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
        lines.append(f"  {'.'.join(parts)}: {e['msg']}{shown}")
    return f"{source}: invalid env config:\n" + "\n".join(lines)


def _model_classes(annotation: Any) -> list[type]:
    """The pydantic model classes an annotation allows (through Optional, Union and Annotated)."""
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type] = []
    for arg in get_args(annotation):
        out.extend(_model_classes(arg))
    return out


def _walk_location(loc: tuple) -> tuple[list[str], list[str]]:
    """A pydantic error location as the user's dotted key, and the field names allowed at its end.

    Pydantic puts the tag of a tagged union into the location (``map_builder.multi_room.room``); the user
    wrote ``map_builder.room``, so tags are dropped.
    """
    from typing import get_args, get_origin

    from metta.mettagrid.config import MettaGridConfig

    parts: list[str] = []
    models: list[type] = [MettaGridConfig]
    i = 0
    while i < len(loc):
        part = str(loc[i])
        parts.append(part)
        field = models[0].model_fields.get(part) if len(models) == 1 else None
        if field is None:
            models = []
            i += 1
            continue
        models = _model_classes(field.annotation)
        if get_origin(field.annotation) is dict and i + 1 < len(loc):
            i += 1
            parts.append(str(loc[i]))  # a key of a mapping field (objects.altar): kept, not a field name
        if len(models) > 1 and i + 1 < len(loc):
            tag = str(loc[i + 1])
            tagged = [
                m for m in models if "type" in m.model_fields and tag in get_args(m.model_fields["type"].annotation)
            ]
            if len(tagged) == 1:
                models = tagged
                i += 1  # skip the tag
        i += 1
    allowed = sorted(models[0].model_fields) if len(models) == 1 else []
    return parts, allowed


def env_config_from_dict(cfg: Mapping[str, Any], source: str = "env config"):
    """Validate a plain dict as a ``MettaGridConfig``, with an error that names the source and each bad key."""
    from pydantic import ValidationError

    from metta.mettagrid.config import MettaGridConfig

    if "_target_" in cfg:
        raise ConfigError(
            f"{source}: has _target_={cfg['_target_']!r}, so it is a curriculum, not an env config; "
            "load it with metta.mettagrid.curriculum.curriculum_from_config_path"
        )
    try:
        return MettaGridConfig.model_validate(dict(cfg))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_env_config(path: str | Path, overrides: Mapping[str, Any] | None = None):
    """The ``MettaGridConfig`` at ``path`` with ``overrides`` (dotted or nested keys) applied."""
    file = resolve_config_path(path)
    return env_config_from_dict(load_config_dict(file, overrides), source=str(file))
