"""Bucketed curriculum: a grid of tasks cut from one env template, chosen by learning progress.

``buckets`` maps dotted env-config keys to the values they take::

    game.map_builder.room.dir: {values: [terrain_a, terrain_b]}     # one bucket per value ("choice" also works)
    game.map_builder.room.objects.altar: {range: [2, 18], bins: 4}  # four equal sub-ranges
    game.max_steps: [500, [800, 1000]]                              # a list: one bucket per item; a nested
                                                                    # list is a choice made per episode
    game.num_agents: 4                                              # one fixed value

The tasks are the Cartesian product of the parameters' buckets (16 x 4 = 64 for navigation). A task id is
``<last 3 key parts>=<bucket>;`` per parameter, floats rounded to 3 decimals. Each ``get_task`` picks a task
(learning progress), then draws concrete values inside its buckets with the curriculum's RNG: uniform in a
range (an integer when both ends are integers) or a choice.

Tasks are drawn at every episode reset, so validated ``MettaGridConfig`` objects are cached per tuple of
concrete values (LRU, ``cache_size`` entries): a repeated draw costs a few microseconds, a new one a deep copy
and a validation (about 0.3 ms). A float range draws a fresh value every episode, so it always pays that cost.
Returned configs are shared between episodes: treat them as read-only (``model_copy(deep=True)`` before
changing one).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.config_loader import apply_overrides, env_config_from_dict, load_config_dict
from metta.mettagrid.curriculum.core import Task
from metta.mettagrid.curriculum.learning_progress import LearningProgressCurriculum

# A bucket is ("value", v), ("choice", [v, ...]) or ("range", lo, hi, want_int); integer ranges include hi.
Bucket = tuple


def _range_bins(key: str, spec: Mapping[str, Any]) -> list[Bucket]:
    rng = spec["range"]
    if not isinstance(rng, (list, tuple)) or len(rng) != 2:
        raise ValueError(f"buckets[{key!r}].range={rng!r}; write it as [low, high]")
    lo, hi = rng
    if isinstance(lo, bool) or isinstance(hi, bool) or not all(isinstance(x, (int, float)) for x in (lo, hi)):
        raise ValueError(f"buckets[{key!r}].range={rng!r}; both ends must be numbers")
    if hi < lo:
        raise ValueError(f"buckets[{key!r}].range={rng!r}; the low end must not exceed the high end")
    bins = spec.get("bins", 1)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"buckets[{key!r}].bins={bins!r}; it must be a positive integer")
    if isinstance(lo, int) and isinstance(hi, int):
        # Integer ranges include both ends; the bins split those integers into near-equal, disjoint runs:
        # [2, 18] in 4 bins is [2, 5], [6, 9], [10, 13], [14, 18].
        count = hi - lo + 1
        if bins > count:
            raise ValueError(
                f"buckets[{key!r}]: {bins} bins do not fit the {count} integers of {rng!r}; use fewer bins"
            )
        starts = [lo + (count * i) // bins for i in range(bins + 1)]
        return [("range", starts[i], starts[i + 1] - 1, True) for i in range(bins)]
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    return [("range", float(edges[i]), float(edges[i + 1]), False) for i in range(bins)]


def expand_buckets(buckets: Mapping[str, Any]) -> dict[str, list[Bucket]]:
    """Each parameter's list of buckets (see the module docstring for the accepted forms)."""
    if not isinstance(buckets, Mapping) or not buckets:
        raise ValueError(f"buckets must be a non-empty mapping of dotted env keys to values, got {buckets!r}")
    out: dict[str, list[Bucket]] = {}
    for key, spec in buckets.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"bucket key {key!r} must be a dotted env-config key like 'game.max_steps'")
        if isinstance(spec, Mapping):
            kinds = [k for k in ("values", "choice", "range") if k in spec]
            extra = set(spec) - {"values", "choice", "range", "bins"}
            if len(kinds) != 1 or extra or ("bins" in spec and "range" not in spec):
                raise ValueError(
                    f"buckets[{key!r}]={dict(spec)!r}; give exactly one of values: [...], choice: [...] or "
                    "range: [low, high] (with optional bins: n)"
                )
            if kinds[0] == "range":
                out[key] = _range_bins(key, spec)
                continue
            values = spec[kinds[0]]
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"buckets[{key!r}].{kinds[0]}={values!r}; it must be a non-empty list")
            out[key] = [("value", v) for v in values]
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError(f"buckets[{key!r}] is an empty list; give at least one value")
            out[key] = [("choice", list(v)) if isinstance(v, (list, tuple)) else ("value", v) for v in spec]
        else:
            out[key] = [("value", spec)]
    return out


def _show(value: Any) -> str:
    if isinstance(value, float):
        return str(round(value, 3))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def bucket_label(bucket: Bucket) -> str:
    """How a bucket appears in task ids: the value, ``[a, b]`` for a choice, ``[lo, hi]`` for a range."""
    if bucket[0] == "value":
        return _show(bucket[1])
    if bucket[0] == "choice":
        return _show(list(bucket[1]))
    return _show([bucket[1], bucket[2]])


def task_id_for(keys: list[str], combo: tuple[Bucket, ...]) -> str:
    return "".join(f"{'.'.join(k.split('.')[-3:])}={bucket_label(b)};" for k, b in zip(keys, combo))


class BucketedCurriculum(LearningProgressCurriculum):
    """Tasks from ``buckets`` over one template (a config path or a config), weighted by learning progress.

    ``env_overrides`` apply to the template before its interpolations are resolved; bucket values apply after.
    ``lp_kwargs`` go to ``LearningProgressCurriculum`` (``ema_timescale``, ``num_active_tasks``, ...).
    """

    def __init__(
        self,
        env_cfg_template_path: str | None = None,
        env_cfg_template: MettaGridConfig | Mapping[str, Any] | None = None,
        buckets: Mapping[str, Any] | None = None,
        env_overrides: Mapping[str, Any] | None = None,
        cache_size: int = 1024,
        **lp_kwargs: Any,
    ):
        if (env_cfg_template_path is None) == (env_cfg_template is None):
            raise ValueError(
                "BucketedCurriculum: give exactly one of env_cfg_template_path (a config path) or "
                "env_cfg_template (a MettaGridConfig or dict)"
            )
        if buckets is None:
            raise ValueError(
                "BucketedCurriculum: buckets is required, e.g. {'game.max_steps': {'values': [500, 1000]}}"
            )
        if cache_size < 1:
            raise ValueError(f"BucketedCurriculum: cache_size={cache_size}; it must be at least 1")
        if env_cfg_template_path is not None:
            source = str(env_cfg_template_path)
            template = load_config_dict(env_cfg_template_path, env_overrides)
        else:
            source = "env_cfg_template"
            if isinstance(env_cfg_template, MettaGridConfig):
                raw = env_cfg_template.model_dump()
            else:
                raw = dict(env_cfg_template)
            template = apply_overrides(raw, env_overrides, source=source)
        self._template = template
        self._source = source
        self._params = list(expand_buckets(buckets).items())
        self._keys = [k for k, _ in self._params]
        self._cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, MettaGridConfig] = OrderedDict()

        combos = list(itertools.product(*(b for _, b in self._params)))
        self._combos: dict[str, tuple[Bucket, ...]] = {}
        for combo in combos:
            task_id = task_id_for(self._keys, combo)
            if task_id in self._combos:
                raise ValueError(
                    f"BucketedCurriculum: two buckets give the same task id {task_id!r}; make the values distinct"
                )
            self._combos[task_id] = combo
        # Validate one representative config per task now, so a bad key fails at startup, not mid-run.
        tasks = {task_id: self._config_for(self._representative(combo)) for task_id, combo in self._combos.items()}
        super().__init__(tasks, **lp_kwargs)
        # Tasks are sampled here (``_task_for``), so the per-task sub-curricula the base class built from the
        # representative configs are not needed; dropping them keeps pickles (shipped to workers) small.
        self._curricula = {}

    # -- values and configs ----------------------------------------------------------------------------------

    @staticmethod
    def _representative(combo: tuple[Bucket, ...]) -> tuple:
        values = []
        for b in combo:
            if b[0] == "value":
                values.append(b[1])
            elif b[0] == "choice":
                values.append(b[1][0])
            else:
                values.append(b[1])
        return tuple(values)

    def _sample(self, combo: tuple[Bucket, ...]) -> tuple:
        rng = self.rng
        values = []
        for b in combo:
            kind = b[0]
            if kind == "value":
                values.append(b[1])
            elif kind == "choice":
                values.append(b[1][rng.randrange(len(b[1]))])
            elif b[3]:
                values.append(rng.randint(b[1], b[2]))
            else:
                values.append(rng.uniform(b[1], b[2]))
        return tuple(values)

    def _config_for(self, values: tuple) -> MettaGridConfig:
        try:
            key: Any = values
            cfg = self._cache.get(key)
        except TypeError:  # a bucket value that is a list or a mapping
            key = repr(values)
            cfg = self._cache.get(key)
        if cfg is not None:
            self._cache.move_to_end(key)
            return cfg
        described = ", ".join(f"{k}={v!r}" for k, v in zip(self._keys, values))
        source = f"{self._source} with buckets {described}"
        data = apply_overrides(self._template, dict(zip(self._keys, values)), source=source)
        cfg = env_config_from_dict(data, source=source)
        self._cache[key] = cfg
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return cfg

    def _task_for(self, task_id: str) -> Task:
        values = self._sample(self._combos[task_id])
        return Task(task_id, self, self._config_for(values))

    @property
    def cache_info(self) -> dict[str, int]:
        return {"size": len(self._cache), "max_size": self._cache_size}

    # The cache is a speed-up only: do not ship it to worker processes.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state
