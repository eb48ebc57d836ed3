"""Build a curriculum from a config path, a dict, an env config or a curriculum.

A YAML file with ``_target_: metta.mettagrid.curriculum.<module>.<Class>`` instantiates that class with the
file's other keys as arguments (only curriculum classes of this package: a config file must not be able to
run arbitrary code). Any other YAML file is an env config and becomes a ``SingleTaskCurriculum``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.config_loader import (
    ConfigError,
    apply_overrides,
    env_config_from_dict,
    load_config_dict,
    resolve_config_path,
)
from metta.mettagrid.curriculum.core import Curriculum, SingleTaskCurriculum
from metta.mettagrid.default_env import (
    DEFAULT_HEIGHT,
    DEFAULT_NUM_AGENTS,
    DEFAULT_WIDTH,
    apply_size_overrides,
    default_env_config,
)

_ALLOWED_PREFIX = "metta.mettagrid.curriculum."


def _curriculum_class(target: Any, source: str) -> type[Curriculum]:
    if not isinstance(target, str) or not target.startswith(_ALLOWED_PREFIX) or target.count(".") < 4:
        raise ConfigError(
            f"{source}: _target_={target!r} is not allowed; it must name a curriculum class under "
            f"{_ALLOWED_PREFIX}, e.g. metta.mettagrid.curriculum.bucketed.BucketedCurriculum"
        )
    module_name, _, class_name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{source}: _target_={target!r}: cannot import module {module_name!r} ({err})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Curriculum)):
        raise ConfigError(
            f"{source}: _target_={target!r}: {module_name} has no Curriculum subclass named {class_name!r}"
        )
    return cls


def _instantiate(cfg: Mapping[str, Any], source: str, env_overrides: Mapping[str, Any] | None) -> Curriculum:
    cls = _curriculum_class(cfg["_target_"], source)
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if env_overrides:
        if "env_overrides" not in params and not takes_any:
            raise ConfigError(
                f"{source}: {cls.__name__} takes no env_overrides, so {dict(env_overrides)!r} cannot apply"
            )
        kwargs["env_overrides"] = {**(kwargs.get("env_overrides") or {}), **env_overrides}
    if not takes_any:
        allowed = [n for n in params if n != "self"]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ConfigError(f"{source}: {cls.__name__} has no argument(s) {unknown}; allowed keys: {allowed}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"{source}: cannot build {cls.__name__}: {err}") from err


def curriculum_from_config_path(
    path: str | Path, env_overrides: Mapping[str, Any] | None = None, task_id: str | None = None
) -> Curriculum:
    """The curriculum a config path describes (``_target_`` curricula, or one env as a single task)."""
    file = resolve_config_path(path)
    raw = load_config_dict(file)
    if "_target_" in raw:
        return _instantiate(raw, str(file), env_overrides)
    cfg = load_config_dict(file, env_overrides) if env_overrides else raw
    return SingleTaskCurriculum(task_id or str(path), env_config_from_dict(cfg, source=str(file)))


def curriculum_from_any(
    x: Curriculum | MettaGridConfig | Mapping[str, Any] | str | Path,
    env_overrides: Mapping[str, Any] | None = None,
    task_id: str | None = None,
) -> Curriculum:
    """A curriculum from a curriculum (returned as is), an env config, a dict (curriculum or env) or a path."""
    if isinstance(x, Curriculum):
        if env_overrides:
            raise ValueError(
                "env_overrides cannot be applied to an already built curriculum; apply them when building it"
            )
        return x
    if isinstance(x, (str, Path)):
        return curriculum_from_config_path(x, env_overrides, task_id=task_id)
    if isinstance(x, MettaGridConfig):
        if env_overrides:
            x = env_config_from_dict(apply_overrides(x.model_dump(), env_overrides), source="env config")
        return SingleTaskCurriculum(task_id or x.label or "env", x)
    if isinstance(x, Mapping):
        if "_target_" in x:
            return _instantiate(x, "curriculum dict", env_overrides)
        cfg = env_config_from_dict(apply_overrides(dict(x), env_overrides), source="env config dict")
        return SingleTaskCurriculum(task_id or cfg.label or "env", cfg)
    raise TypeError(
        f"expected a Curriculum, a MettaGridConfig, a dict or a config path, got {type(x).__name__}; "
        "for example curriculum_from_any('/env/mettagrid/curriculum/navigation/bucketed')"
    )


def build_curriculum(
    curriculum_path: str | None, env_config: Any, num_agents: int | None, width: int | None, height: int | None
) -> Curriculum:
    """The curriculum ``metta.interface.Environment`` trains on: ``curriculum_path`` (with ``env_config`` a mapping
    of overrides for every task, and ``num_agents``), else ``env_config`` as one task (resized by ``num_agents``,
    ``width``, ``height``), else the default navigation env of that size."""
    for name, value in (("num_agents", num_agents), ("width", width), ("height", height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(
                f"{name}={value!r} is not allowed; use a positive integer, or None for the env's own {name}"
            )
    if curriculum_path is None:
        if env_config is None:
            cfg = default_env_config(
                DEFAULT_NUM_AGENTS if num_agents is None else num_agents,
                DEFAULT_WIDTH if width is None else width,
                DEFAULT_HEIGHT if height is None else height,
            )
            return SingleTaskCurriculum("default_navigation", cfg)
        cfg = apply_size_overrides(MettaGridConfig.from_any(env_config), num_agents, width, height)
        return SingleTaskCurriculum(cfg.label or "custom_env", cfg)

    # With a curriculum path, env_config is a mapping of overrides for every task's env (dotted or nested keys).
    if env_config is not None and not isinstance(env_config, Mapping):
        raise ValueError(
            f"env_config of type {type(env_config).__name__} cannot be combined with "
            f"curriculum_path={curriculum_path!r}; "
            "with a curriculum path, env_config must be a dict of overrides such as {'game.max_steps': 200}"
        )
    if width is not None or height is not None:
        raise ValueError(
            f"width/height cannot be applied to curriculum_path={curriculum_path!r} (its tasks build their own maps); "
            "set the size in the curriculum's YAML or pass env_config={'game.map_builder.<field>': value}"
        )
    overrides = dict(env_config or {})
    if num_agents is not None:
        overrides["game.num_agents"] = num_agents
    return curriculum_from_config_path(curriculum_path, overrides or None)
