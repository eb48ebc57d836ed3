"""The one reader and writer of typed configs: YAML files, dicts, dotted overrides and ``--help``, over OmegaConf.

    python run.py --config my.yaml trainer.total_timesteps=20000 device=cpu

- ``--config FILE.yaml`` loads a YAML file first (keys as in the config model);
- ``a.b.c=value`` sets one field; the value is parsed as YAML (``1e-3``, ``true``, ``[1, 2]``, ``null``);
- ``--help`` lists every field with its default, its type or allowed values, and a one-line description.

Every config of a run goes through here: ``parse_config`` (run.py's command line), ``read_yaml`` and ``validate``
(``TrainingConfig.from_yaml``, ``TrainerConfig.from_yaml``, ``load_yaml_config``), ``merge`` (``from_dict``: a
partial dict laid over a base) and ``to_yaml`` (``config.yaml``, ``to_yaml()``). Nested models merge key by key;
dict-valued fields and the fields a model lists in ``WHOLE_FIELDS`` (the agent graph) are replaced whole, so two
graphs never mix. Every key is checked against the model before any work starts: an unknown key names the
closest known ones, a bad value names the key, the value and what the field accepts.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from omegaconf import OmegaConf
from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from metta.common.fs import atomic_write_text

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ValueError):
    """A config that cannot be read or does not validate; the message names the file, the fields and values."""


class ConfigCliError(ConfigFileError):
    """A command-line configuration problem; its message is meant for the user as is."""


# ----------------------------------------------------------------------------------------------------
# The fields of a model
def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds directly (``Model`` or ``Model | None``), not one inside a dict or list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _whole(model: type[BaseModel], name: str) -> bool:
    """A field set as one value: a dict or list, or a model the owner lists in ``WHOLE_FIELDS``."""
    annotation = model.model_fields[name].annotation
    containers = [a for a in (annotation, *get_args(annotation)) if get_origin(a) in (dict, list, tuple)]
    return bool(containers) or name in getattr(model, "WHOLE_FIELDS", ())


def _accepted_names(model: type[BaseModel]) -> dict[str, str]:
    """Every key ``model`` accepts (field names, aliases, validation aliases) -> the field's name."""
    names: dict[str, str] = {}
    for name, field in model.model_fields.items():
        names[name] = name
        if field.alias:
            names[field.alias] = name
        if isinstance(field.validation_alias, AliasChoices):
            names.update({str(choice): name for choice in field.validation_alias.choices})
        elif isinstance(field.validation_alias, str):
            names[field.validation_alias] = name
    return names


def _dump_key(model: type[BaseModel], name: str) -> str:
    """The key ``model_dump(by_alias=True)`` writes for field ``name``."""
    return model.model_fields[name].alias or name


def _type_text(annotation: Any) -> str:
    """What a field accepts, for ``--help``: ``one of: a, b`` for choices, else the type's name."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    nullable = len(args) < len(get_args(annotation))
    if get_origin(annotation) is Literal:
        return "one of: " + ", ".join(str(v) for v in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        inner = " or ".join(_type_text(a) for a in args)
        return f"{inner} or null" if nullable else inner
    if get_origin(annotation) in (dict, Mapping):
        return "mapping"
    if get_origin(annotation) in (list, tuple):
        return "list"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def field_paths(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``(dotted key, type or choices, default, description)`` of every key of ``model``, depth first."""
    rows = []
    for name, field in model.model_fields.items():
        if field.alias and field.alias.startswith("_"):
            continue  # bookkeeping fields such as _target_ are not for the command line
        key = f"{prefix}{_dump_key(model, name)}"
        sub = _submodel(field.annotation)
        if sub is not None and not _whole(model, name):
            rows += field_paths(sub, key + ".")
            continue
        default = field.get_default(call_default_factory=True)
        kind = f"{sub.__name__}: a name or a mapping" if sub is not None else _type_text(field.annotation)
        rows.append((key, kind, default, _description(field)))
    return rows


def _description(field: FieldInfo) -> str:
    return " ".join((field.description or "").split())


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            raise KeyError(dotted)
        tree = tree[part]
    return tree


def _shown(value: Any) -> str:
    """A default as ``--help`` prints it: a whole model by its ``name`` (the agent graph), else its repr."""
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    if isinstance(value, dict) and "name" in value and len(value) > 3:
        return repr(value["name"])
    return repr(value)


def help_text(model: type[BaseModel], prog: str, doc: str = "") -> str:
    lines = [f"usage: {prog} [--config FILE.yaml] [key=value ...]", ""]
    if doc:
        lines += [doc.strip(), ""]
    lines.append("Fields (key=value, value parsed as YAML):")
    try:  # the defaults a run really gets, nested default factories included
        actual = model().model_dump(by_alias=True)
    except ValidationError:
        actual = {}
    for key, type_text, default, description in field_paths(model):
        try:
            default = _lookup(actual, key)
        except KeyError:
            pass
        text = f"  {key}={_shown(default)}  ({type_text})"
        if description:
            text += f"  {description}"
        lines.append(text)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Values, files and merging
def parse_value(raw: str) -> Any:
    """One command-line value, parsed as YAML the way OmegaConf reads files (``1e-3`` is a float, ``''`` null)."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]), resolve=True)["value"]
    except Exception:  # not YAML (an unbalanced bracket, ...): the text itself, for the model to judge
        return raw


def read_yaml(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """The mapping in the YAML file at ``path`` (OmegaConf interpolations resolved; an empty file is ``{}``).

    Raises ``FileNotFoundError`` for a missing file and ``ConfigFileError`` for one that is not YAML (with line
    and column) or not a mapping; the messages start with ``{what} {path}``.
    """
    path = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path!r} does not exist; check the path (cwd is {os.getcwd()})")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigFileError(f"{what} {path}: not valid YAML{where}: {problem}; fix the file") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigFileError(f"{what} {path}: cannot be read as a UTF-8 YAML file ({err})") from None
    except Exception as err:  # omegaconf's own errors (an interpolation to a missing key, ...)
        raise ConfigFileError(f"{what} {path}: cannot read YAML: {type(err).__name__}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{what} {path}: the file must hold a mapping of fields, not a {type(data).__name__}")
    return data


def plain(data: Any) -> Any:
    """A DictConfig (interpolations resolved) or a model as plain dicts and lists; anything else as it is."""
    if OmegaConf.is_config(data):
        return OmegaConf.to_container(data, resolve=True)
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json", by_alias=True)
    return data


def to_yaml(data: Mapping[str, Any] | BaseModel) -> str:
    """YAML text of a config (a model or a mapping of plain values)."""
    return OmegaConf.to_yaml(OmegaConf.create(plain(data)))


def write_yaml(path: str | os.PathLike, data: Mapping[str, Any] | BaseModel) -> str:
    """Write ``to_yaml(data)`` to ``path`` atomically (its folder is created); returns the text."""
    text = to_yaml(data)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(os.fspath(path), text)
    return text


def merge(model: type[BaseModel], base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` laid over ``base`` (both dicts of ``model``'s fields): nested models merge key by key, whole
    fields (dicts, lists, ``WHOLE_FIELDS``) and values are replaced. Keys are written under the name the dump
    uses, so an alias (``run`` for ``experiment_name``) replaces the base's value instead of sitting beside it."""
    out = dict(base)
    names = _accepted_names(model)
    for key, value in update.items():
        name = names.get(key)
        if name is None:  # unknown: kept for validation to report with its close matches
            out[key] = value
            continue
        dump_key = _dump_key(model, name)
        sub = _submodel(model.model_fields[name].annotation)
        if sub is not None and not _whole(model, name) and isinstance(value, Mapping):
            current = out.get(dump_key)
            out[dump_key] = merge(sub, current if isinstance(current, Mapping) else {}, value)
        else:
            out[dump_key] = value
    return out


def validate(model: type[M], data: Any, source: str) -> M:
    """``model`` from ``data``; a ``ConfigFileError`` with one line per problem naming ``source``."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigFileError(format_validation_error(err, model, source)) from None


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: ``field key=value: what is wrong`` (and close field names for an unknown key)."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "(top level)"
        value = e.get("input")
        shown = f"={value!r}" if not isinstance(value, (dict, list)) else ""  # a whole group would drown it
        if e["type"] == "extra_forbidden":
            known = _names_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=3)
            if close:
                hint = f"; did you mean {', '.join(close)}?"
            else:
                hint = f"; known fields here: {', '.join(known)}" if known else ""
            lines.append(f"field {key}{shown}: unknown field{hint}")
        else:
            lines.append(f"field {key}{shown}: {e['msg']}")
    return f"{source}: invalid {model.__name__}:\n  " + "\n  ".join(lines)


def _names_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names (as dumped) of the model at ``loc`` under ``model``; [] when unknown."""
    current: type[BaseModel] | None = model
    skip_key = False
    for part in loc:
        if skip_key:  # a key of a dict[str, Model] field: the model stays the dict's value model
            skip_key = False
            continue
        if current is None:
            return []
        name = _accepted_names(current).get(part)
        if name is None:
            return []
        annotation = current.model_fields[name].annotation
        current = _submodel(annotation)
        if current is None and get_origin(annotation) is dict and len(get_args(annotation)) == 2:
            current = _submodel(get_args(annotation)[1])
            skip_key = current is not None
    if current is None:
        return []
    return sorted(_dump_key(current, n) for n in current.model_fields)


def from_data(model: type[M], data: Any, base: BaseModel | None, source: str) -> M:
    """``model`` from a partial dict or DictConfig laid over ``base`` (default: ``model()``)."""
    data = plain(data)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigFileError(f"{source}: a {model.__name__} is read from a mapping, not a {type(data).__name__}")
    base_data = (base if base is not None else model()).model_dump(by_alias=True)
    return validate(model, merge(model, base_data, data), source)


def load_yaml_config(path: str | os.PathLike, model: type[M]) -> M:
    """``model`` (any pydantic model) validated from the YAML file at ``path`` (OmegaConf interpolations resolved).

    Raises ``FileNotFoundError`` for a missing file and ``ConfigFileError`` for a file that is not YAML, not a
    mapping, or does not validate; the message names the file, each bad field and its value.
    """
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"model={model!r} must be a pydantic model class, e.g. PPOConfig")
    return validate(model, read_yaml(path), source=os.fspath(path))


# ----------------------------------------------------------------------------------------------------
# The command line
def _moved_to(model: type[BaseModel], name: str) -> str | None:
    """The nested keys whose last part is ``name`` (a top-level key that lives one level down), if any."""
    matches = [key for key, *_ in field_paths(model) if key.endswith("." + name)]
    return ", ".join(matches) or None


def _set(tree: dict, dotted: str, value: Any, model: type[BaseModel]) -> None:
    """``tree[a][b][c] = value`` for ``dotted`` = ``a.b.c``, each part checked against ``model`` and written under
    its dump name."""
    parts = dotted.split(".")
    node: Any = tree
    current: type[BaseModel] | None = model
    for depth, part in enumerate(parts):
        key = part
        if current is not None:
            names = _accepted_names(current)
            if part not in names:
                removed = getattr(current, "REMOVED_KEYS", {})  # keys a model dropped on purpose, with why
                if part in removed:
                    raise ConfigCliError(f"config key {dotted!r} is not a metta setting: {removed[part]}")
                moved = _moved_to(model, part) if depth == 0 else None
                if moved:
                    raise ConfigCliError(f"unknown config key {dotted!r}: did you mean {moved}?")
                known = sorted(_dump_key(current, n) for n in current.model_fields if not n.startswith("_"))
                close = difflib.get_close_matches(part, known, n=3)
                where = ".".join(parts[:depth]) or "the top level"
                hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys at {where}: {known}"
                raise ConfigCliError(f"unknown config key {dotted!r}: {part!r} is not a field of {where}{hint}")
            name = names[part]
            key = _dump_key(current, name)
            whole = _whole(current, name)
            if whole and depth < len(parts) - 1:
                head = ".".join(parts[: depth + 1])
                raise ConfigCliError(
                    f"config key {dotted!r}: {head} is set as one value, e.g. {head}={{{parts[depth + 1]}: ...}} "
                    "(with the other keys it should have)"
                )
            current = None if whole else _submodel(current.model_fields[name].annotation)
        if depth == len(parts) - 1:
            node[key] = value
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigCliError(f"config key {dotted!r}: {'.'.join(parts[: depth + 1])} is not a group of fields")


def parse_config(model: type[M], argv: list[str] | None = None, prog: str | None = None, doc: str = "") -> M:
    """Build ``model`` from ``argv`` (default ``sys.argv[1:]``): its defaults, then each ``--config`` file, then
    each ``key=value``. ``--help`` prints the fields and exits."""
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
            try:
                data = merge(model, data, read_yaml(path, what="--config"))
            except ConfigFileError as err:
                raise ConfigCliError(f"{err} (keys as in --help)") from None
            continue
        if "=" not in arg or arg.startswith("-"):
            raise ConfigCliError(f"argument {arg!r} is not key=value or --config FILE.yaml (see --help)")
        key, raw = arg.split("=", 1)
        _set(overrides, key.strip(), parse_value(raw), model)
        i += 1
    try:
        return model.model_validate(merge(model, data, overrides))
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "config"
            value = e.get("input")
            shown = f"={value!r}" if not isinstance(value, (dict, list)) else ""
            problems.append(f"{key}{shown}: {e['msg']}")
        raise ConfigCliError("invalid configuration:\n  " + "\n  ".join(problems)) from None
