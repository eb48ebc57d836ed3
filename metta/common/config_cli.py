"""Command-line configuration for scripts: a typed pydantic config, a YAML file, and dotted overrides.

    python run.py --config my.yaml trainer.total_timesteps=20000 device=cpu

- ``--config FILE.yaml`` loads a YAML file first (keys as in the config model);
- ``a.b.c=value`` sets one field; the value is parsed as YAML (``1e-3``, ``true``, ``[1, 2]``, ``null``);
- ``--help`` lists every field with its type and default.

Every override is checked against the model before any work starts: an unknown key names the closest known
ones, a bad value names the key, the value and what the field accepts.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigCliError(ValueError):
    """A command-line configuration problem; its message is meant for the user as is."""


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _is_container(annotation: Any) -> bool:
    """A dict or list field (also inside Optional): set whole, as one key, never field by field."""
    if get_origin(annotation) in (dict, list, tuple):
        return True
    return any(_is_container(arg) for arg in get_args(annotation) if arg is not type(None))


def field_paths(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``(dotted key, type, default, description)`` of every leaf field of ``model``, depth first."""
    rows = []
    for name, field in model.model_fields.items():
        if field.alias and field.alias.startswith("_"):
            continue  # bookkeeping fields such as _target_ are not for the command line
        key = f"{prefix}{field.alias or name}"
        sub = _submodel(field.annotation)
        if sub is not None and not _is_container(field.annotation):
            rows += field_paths(sub, key + ".")
            continue
        default = field.get_default(call_default_factory=True)
        type_name = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        rows.append((key, type_name, default, field.description or ""))
    return rows


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            raise KeyError(dotted)
        tree = tree[part]
    return tree


def help_text(model: type[BaseModel], prog: str, doc: str = "") -> str:
    lines = [f"usage: {prog} [--config FILE.yaml] [key=value ...]", ""]
    if doc:
        lines += [doc.strip(), ""]
    lines.append("Fields (key=value, value parsed as YAML):")
    try:  # the defaults a run really gets, nested default factories included
        actual = model().model_dump(by_alias=True)
    except ValidationError:
        actual = {}
    for key, type_name, default, description in field_paths(model):
        try:
            default = _lookup(actual, key)
        except KeyError:
            pass
        text = f"  {key}={default!r}  ({type_name})"
        if description:
            text += f"  {description}"
        lines.append(text)
    return "\n".join(lines)


def _moved_to(model: type[BaseModel], name: str) -> str | None:
    """The nested keys whose last part is ``name`` (a top-level key that lives one level down), if any."""
    matches = [key for key, *_ in field_paths(model) if key.endswith("." + name)]
    return ", ".join(matches) or None


def _set(tree: dict, dotted: str, value: Any, model: type[BaseModel]) -> None:
    parts = dotted.split(".")
    node: Any = tree
    current: type[BaseModel] | None = model
    for depth, part in enumerate(parts):
        if current is not None:
            fields = {f.alias or n: n for n, f in current.model_fields.items()} | {n: n for n in current.model_fields}
            if part not in fields:
                removed = getattr(current, "REMOVED_KEYS", {})  # keys a model dropped on purpose, with why
                if part in removed:
                    raise ConfigCliError(f"config key {dotted!r} is not a metta setting: {removed[part]}")
                moved = _moved_to(model, part) if depth == 0 else None
                if moved:
                    raise ConfigCliError(f"unknown config key {dotted!r}: did you mean {moved}?")
                known = sorted(k for k in fields if not k.startswith("_"))
                close = difflib.get_close_matches(part, known, n=3)
                where = ".".join(parts[:depth]) or "the top level"
                hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys at {where}: {known}"
                raise ConfigCliError(f"unknown config key {dotted!r}: {part!r} is not a field of {where}{hint}")
            field = current.model_fields[fields[part]]
            current = _submodel(field.annotation) if get_origin(field.annotation) is not dict else None
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigCliError(f"config key {dotted!r}: {'.'.join(parts[: depth + 1])} is not a group of fields")


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml_file(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as stream:  # a stream, so YAML's marks carry the file's name
            return yaml.safe_load(stream)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        message = f"--config {path}: not valid YAML{where}: {problem}; fix the file (keys as in --help)"
        raise ConfigCliError(message) from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigCliError(f"--config {path}: cannot be read as a UTF-8 YAML file ({err})") from None


def parse_config(model: type[M], argv: list[str] | None = None, prog: str | None = None, doc: str = "") -> M:
    """Build ``model`` from ``argv`` (default ``sys.argv[1:]``). ``--help`` prints the fields and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or Path(sys.argv[0]).name
    if "-h" in argv or "--help" in argv:
        print(help_text(model, prog, doc))
        raise SystemExit(0)
    # Start from the defaults (including nested default factories), so an override changes one field only.
    try:
        data: dict = model().model_dump(by_alias=True)
    except ValidationError:  # the model has required fields: they must come from --config or key=value
        data = {}
    overrides: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in arg else 2
            if not path or not Path(path).is_file():
                raise ConfigCliError(f"--config {path!r}: no such file; give a YAML file with the fields of --help")
            loaded = _read_yaml_file(path) or {}
            if not isinstance(loaded, dict):
                raise ConfigCliError(
                    f"--config {path}: the file must hold a mapping of fields, not {type(loaded).__name__}"
                )
            data = _merge(data, loaded)
            continue
        if "=" not in arg or arg.startswith("-"):
            raise ConfigCliError(f"argument {arg!r} is not key=value or --config FILE.yaml (see --help)")
        key, raw = arg.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set(overrides, key.strip(), value, model)
        i += 1
    try:
        return model.model_validate(_merge(data, overrides))
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "config"
            value = e.get("input")
            shown = (
                f"={value!r}" if not isinstance(value, (dict, list)) else ""
            )  # a whole group would drown the message
            problems.append(f"{key}{shown}: {e['msg']}")
        raise ConfigCliError("invalid configuration:\n  " + "\n  ".join(problems)) from None
