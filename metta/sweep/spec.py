"""The sweep spec: what to search over, what to optimize, and how long each trial trains (a YAML file).

    spec = load_spec("recipes/sweep_navigation_cpu.yaml")   # SpecError naming the key on any problem
    args, config = spec.trial_args("trial_0003", sweep_dir, {"trainer.optimizer.learning_rate": 3e-4})

A spec is checked twice before any trial starts: its own fields (this module's pydantic models), then every
run.py key in ``base``, ``params`` and ``enqueue`` against run.py's config, by building that config from the
same ``key=value`` arguments run.py will get (``metta.common.config_cli.parse_config``, the parser run.py
uses), with each parameter at each end of its range and at each of its choices (with the base settings, or
with another parameter at one of its own ends or choices where the value needs that, as a minibatch size needs
a batch size at least as large). A combination of values that fails together is found when a trial draws it:
that trial is marked failed with run.py's message and does not count.

run.py's config type (``metta.rl.run_config.TrainingConfig``) is named in one place, ``run_config_model()``;
everything else goes through run.py's command-line keys, which ``python run.py --help`` lists.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from metta.common.config_cli import ConfigCliError, _lookup, parse_config
from metta.rl.run_config import TrainingConfig

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"
# Keys the sweep sets for every trial: each trial is run ``trial_NNNN`` under the sweep's folder.
RESERVED_KEYS = {
    "run": "the sweep names each trial's run trial_NNNN",
    "experiment_name": "the sweep names each trial's run trial_NNNN",
    "data_dir": "each trial's run directory is {data_dir}/sweeps/{name}/trial_NNNN (set the spec's data_dir)",
}
TOTAL_STEPS_KEY = "trainer.total_timesteps"
EVALUATE_KEY = "evaluate"
EVALUATE_INTERVAL_KEY = "trainer.simulation.evaluate_interval"
CHECKPOINT_INTERVAL_KEY = "trainer.checkpoint.checkpoint_interval"
BATCH_KEY = "trainer.batch_size"
UPDATE_EPOCHS_KEY = "trainer.update_epochs"
EVAL_PREFIX = "eval/"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the spec file, the key and the value."""


def run_config_model() -> type[BaseModel]:
    """The pydantic model run.py parses its arguments into: ``metta.rl.run_config.TrainingConfig``, the run config
    of run.py and the functional faces. The sweep launches run.py itself, so it must be there."""
    if not RUN_PY.is_file():
        raise SpecError(f"run.py is not at {RUN_PY}: the sweep runs run.py from a source checkout of metta")
    return TrainingConfig


def cli_arg(key: str, value: Any) -> str:
    """``key=value`` as run.py reads it (the value is parsed as YAML there, so it is written as YAML here)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31).strip()
    if text.endswith("\n..."):  # PyYAML ends a document that is a bare scalar with an explicit end marker
        text = text[: -len("\n...")].rstrip()
    return f"{key}={text}"


# ----------------------------------------------------------------------------------------------------
# Search space
class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        """The trial's value of ``key``: sampled, or the fixed one of an enqueued or retried trial."""
        raise NotImplementedError

    def corners(self) -> list[Any]:
        """The values checked against run.py's config before the sweep starts."""
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError


class _Range(_Param):
    @model_validator(mode="after")
    def _check_order(self):
        if self.low > self.high:
            raise ValueError(f"low={self.low} is above high={self.high}; swap them")
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class LogUniform(_Range):
    """A float drawn on a log scale between ``low`` and ``high`` (learning rates, coefficients)."""

    type: Literal["log"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    def suggest(self, trial: optuna.Trial, key: str) -> float:
        return trial.suggest_float(key, self.low, self.high, log=True)


class Uniform(_Range):
    """A float drawn uniformly between ``low`` and ``high``."""

    type: Literal["uniform"]
    low: float
    high: float

    def suggest(self, trial: optuna.Trial, key: str) -> float:
        return trial.suggest_float(key, self.low, self.high)


class IntRange(_Range):
    """An integer from ``low`` to ``high``, both included."""

    type: Literal["int"]
    low: int
    high: int

    def suggest(self, trial: optuna.Trial, key: str) -> int:
        return trial.suggest_int(key, self.low, self.high)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and super().contains(value)


class Categorical(_Param):
    """One of ``choices`` (numbers, strings, booleans or null)."""

    type: Literal["categorical"]
    choices: list[bool | int | float | str | None] = Field(min_length=1)

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        return trial.suggest_categorical(key, self.choices)

    def corners(self) -> list[Any]:
        return list(self.choices)

    def contains(self, value: Any) -> bool:
        return any(value == c and type(value) is type(c) for c in self.choices)


Param = Annotated[LogUniform | Uniform | IntRange | Categorical, Field(discriminator="type")]


# ----------------------------------------------------------------------------------------------------
# Budget, objective, pruner, sampler
class TrialBudget(BaseModel):
    """How long each trial trains: ``agent_steps`` or ``minutes`` (exactly one), in ``reports`` equal parts.

    The trial reports the objective to Optuna after each part (the pruner's steps are 1 to ``reports``)."""

    model_config = ConfigDict(extra="forbid")
    agent_steps: int | None = Field(default=None, gt=0, description="sets trainer.total_timesteps of every trial")
    minutes: float | None = Field(
        default=None,
        gt=0,
        description="training time (metrics.jsonl's clock, which goes on across resumes); then SIGTERM",
    )
    reports: int = Field(default=10, ge=1, description="intermediate reports per trial, at equal parts of the budget")

    @model_validator(mode="after")
    def _exactly_one(self) -> TrialBudget:
        if (self.agent_steps is None) == (self.minutes is None):
            raise ValueError("give exactly one of agent_steps and minutes (the budget of each trial)")
        return self

    def describe(self) -> str:
        return f"{self.agent_steps:,} agent steps" if self.agent_steps else f"{self.minutes:g} min"


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str = Field(
        default="overview/reward",
        min_length=1,
        description="a metrics.jsonl key: overview/reward (mean episode reward) or an eval/ score",
    )
    direction: Literal["maximize", "minimize"] = "maximize"


class MedianPrunerSpec(BaseModel):
    """Optuna's MedianPruner: stop a trial whose best report so far is worse than the median of the finished
    trials' reports at the same step."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["median"]
    n_startup_trials: int = Field(default=5, ge=0, description="finished trials before any pruning")
    n_warmup_steps: int = Field(default=1, ge=0, description="a trial is never pruned before this report")

    def build(self, reports: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials, n_warmup_steps=self.n_warmup_steps)


class HyperbandPrunerSpec(BaseModel):
    """Optuna's HyperbandPruner over the reports (resources 1 to ``trial.reports``)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["hyperband"]
    min_resource: int = Field(default=1, ge=1, description="reports every trial gets before it can be pruned")
    reduction_factor: int = Field(default=3, ge=2)

    def build(self, reports: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.HyperbandPruner(
            min_resource=self.min_resource, max_resource=reports, reduction_factor=self.reduction_factor
        )


class NoPrunerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["none"]

    def build(self, reports: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()


PrunerSpec = Annotated[MedianPrunerSpec | HyperbandPrunerSpec | NoPrunerSpec, Field(discriminator="type")]


class SamplerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["tpe", "random"] = "tpe"
    seed: int | None = Field(
        default=None, description="reproducible draws for one worker; leave it out with several (they would draw alike)"
    )

    def build(self) -> optuna.samplers.BaseSampler:
        if self.type == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed)


# ----------------------------------------------------------------------------------------------------
# The spec
class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="names the study and the folder {data_dir}/sweeps/{name}/")
    trials: int = Field(ge=1, description="finished (complete or pruned) trials the study gets, over all workers")
    trial: TrialBudget
    objective: Objective = Field(default_factory=Objective)
    params: dict[str, Param] = Field(min_length=1, description="run.py key -> its search range")
    base: dict[str, Any] = Field(default_factory=dict, description="run.py key -> value, the same for every trial")
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="settings tried first (e.g. today's defaults), each a params subset"
    )
    pruner: PrunerSpec = Field(default_factory=lambda: MedianPrunerSpec(type="median"))
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    worker_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="a trial whose worker sent no heartbeat for this long is failed and retried, resuming its run",
    )
    data_dir: str | None = Field(default=None, description="default: $DATA_DIR or ./train_dir, as for run.py")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"name={self.name!r} must be 1-128 letters, digits, '.', '_', '=' or '-' (a folder name)")
        if len(self.enqueue) > self.trials:
            raise ValueError(f"enqueue has {len(self.enqueue)} settings, more than trials={self.trials}")
        return self

    # ------------------------------------------------------------------------------------------------
    def sweep_dir(self) -> Path:
        data_dir = self.data_dir or os.environ.get("DATA_DIR") or "./train_dir"
        return Path(data_dir).resolve() / "sweeps" / self.name

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's value of every parameter."""
        return {key: param.suggest(trial, key) for key, param in self.params.items()}

    def identity(self) -> dict[str, Any]:
        """What every worker of one study must agree on (``trials``, the pruner and the sampler may differ)."""
        return self.model_dump(mode="json", include={"trial", "objective", "params", "base"})

    def budget_args(self) -> list[str]:
        return [cli_arg(TOTAL_STEPS_KEY, self.trial.agent_steps)] if self.trial.agent_steps else []

    def trial_args(self, run_name: str, sweep_dir: Path, params: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """run.py's arguments for one trial and the config they build (as a dict of run.py's keys).

        With an ``eval/`` objective and an agent-step budget, the evaluation interval is set so that about
        ``trial.reports`` evaluations fall in each trial (and checkpoints at least as often, since an
        evaluation reads the saved policy), unless the spec sets it. Raises ``ConfigCliError`` with run.py's
        message when these values do not make a valid config together.
        """
        args = [cli_arg("run", run_name), cli_arg("data_dir", str(sweep_dir))]
        args += [cli_arg(k, v) for k, v in self.base.items()]
        args += [cli_arg(k, v) for k, v in params.items()] + self.budget_args()
        config = parse_config(run_config_model(), args, prog="run.py").model_dump(mode="json", by_alias=True)
        user_keys = set(self.base) | set(params)
        if (
            self.objective.metric.startswith(EVAL_PREFIX)
            and self.trial.agent_steps
            and EVALUATE_INTERVAL_KEY not in user_keys
        ):
            iterations = math.ceil(self.trial.agent_steps / _lookup(config, BATCH_KEY))
            interval = max(1, iterations * _lookup(config, UPDATE_EPOCHS_KEY) // self.trial.reports)
            args.append(cli_arg(EVALUATE_INTERVAL_KEY, interval))
            if CHECKPOINT_INTERVAL_KEY not in user_keys:
                args.append(cli_arg(CHECKPOINT_INTERVAL_KEY, min(interval, _lookup(config, CHECKPOINT_INTERVAL_KEY))))
            config = parse_config(run_config_model(), args, prog="run.py").model_dump(mode="json", by_alias=True)
        return args, config

    def _refusal(self, base_args: list[str], key: str, value: Any) -> str | None:
        """run.py's message when it refuses ``key=value`` with the base settings alone and with each other
        parameter at each of its corners in turn; None when any of these fits. (A value that fits only with
        another parameter's value, a minibatch that needs a larger batch, is for the trials to find.)"""
        others = [[]] + [[cli_arg(k, v)] for k, p in self.params.items() if k != key for v in p.corners()]
        first = None
        for extra in others:
            try:
                parse_config(run_config_model(), [*base_args, *extra, cli_arg(key, value)], prog="run.py")
                return None
            except ConfigCliError as err:
                first = first or str(err)
        return first

    def check_against_run_config(self, source: str) -> None:
        """Every run.py key and value of the spec, checked by building run.py's config (see the module doc)."""
        for section, keys in (("base", self.base), ("params", self.params)):
            for key in keys:
                if key in RESERVED_KEYS:
                    raise SpecError(f"{source}: {section}.{key}: set by the sweep ({RESERVED_KEYS[key]}); remove it")
                if key == TOTAL_STEPS_KEY and self.trial.agent_steps:
                    raise SpecError(
                        f"{source}: {section}.{key}: trial.agent_steps sets it for every trial; remove one of them"
                    )
        duplicated = set(self.base) & set(self.params)
        if duplicated:
            raise SpecError(f"{source}: base.{sorted(duplicated)[0]}: also in params; keep it in one of them")
        model = run_config_model()
        base_args = [cli_arg(k, v) for k, v in self.base.items()] + self.budget_args()
        try:
            base = parse_config(model, base_args, prog="run.py").model_dump(mode="json", by_alias=True)
        except ConfigCliError as err:
            raise SpecError(f"{source}: base: {err}") from None
        for key, param in self.params.items():
            for value in param.corners():
                refusal = self._refusal(base_args, key, value)
                if refusal is not None:
                    raise SpecError(f"{source}: params.{key} at {value!r}: {refusal}")
        for i, settings in enumerate(self.enqueue):
            for key, value in settings.items():
                if key not in self.params:
                    raise SpecError(f"{source}: enqueue[{i}].{key}: not a key of params; enqueue only sets params")
                if not self.params[key].contains(value):
                    raise SpecError(
                        f"{source}: enqueue[{i}].{key}={value!r}: outside params.{key} "
                        f"({self.params[key].model_dump(exclude={'type'})})"
                    )
        metric = self.objective.metric
        if metric.startswith(EVAL_PREFIX):
            if base.get(EVALUATE_KEY) is False:
                raise SpecError(
                    f"{source}: objective.metric={metric!r} is an evaluation score but base.evaluate is false; "
                    "set evaluate: true or optimize overview/reward"
                )
            user_keys = set(self.base) | set(self.params)
            if self.trial.minutes and EVALUATE_INTERVAL_KEY not in user_keys:
                raise SpecError(
                    f"{source}: objective.metric={metric!r} is an evaluation score and trials are timed "
                    f"(trial.minutes), so the sweep cannot place the evaluations: set base.{EVALUATE_INTERVAL_KEY} "
                    f"(epochs) so that each trial has several"
                )


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """The spec in the YAML file at ``path``, checked against run.py's config; ``name`` defaults to the file's
    stem. Raises ``SpecError`` naming the file, the key and the value."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SpecError(f"{source}: no such file; give a sweep spec (see docs/training.md, 'Hyperparameter sweeps')")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SpecError(f"{source}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a sweep spec is a mapping of keys, not a {type(data).__name__}")
    data.setdefault("name", path.stem)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = _spec_key(e["loc"])
            value = e.get("input")
            shown = f"={value!r}" if not isinstance(value, (dict, list)) else ""
            problems.append(f"{key}{shown}: {e['msg']}")
        raise SpecError(f"{source}: invalid sweep spec:\n  " + "\n  ".join(problems)) from None
    spec.check_against_run_config(source)
    return spec


def _spec_key(loc: tuple) -> str:
    """The spec key of a validation error: pydantic puts a tagged union's tag into the location
    (``params.KEY.log.low``, ``pruner.median.n_startup_trials``), which is not a key of the file."""
    parts = [str(p) for p in loc]
    if parts[:1] == ["params"] and len(parts) > 2 and parts[2] in {"log", "uniform", "int", "categorical"}:
        del parts[2]
    if parts[:1] == ["pruner"] and len(parts) > 1 and parts[1] in {"median", "hyperband", "none"}:
        del parts[1]
    return ".".join(parts) or "spec"
