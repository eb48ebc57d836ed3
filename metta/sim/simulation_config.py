"""Typed configs for evaluation runs: one simulation, one simulation on a named env, a suite of them.

``max_time_s`` is a guard against a hang, not a budget: by default there is none, and every episode runs to its
``game.max_steps``, so a score never depends on how busy the machine is. A simulation that outlasts a guard
that is set has no score at all (the results say it timed out), rather than the mean of the episodes that
happened to finish.

``SimulationSuiteConfig`` fields that are also ``SimulationConfig`` fields (``num_episodes``, ``max_time_s``,
``env_overrides``, ``npc_policy_uri``, ``policy_agents_pct``) act as defaults for every simulation of the
suite, but only when they are given explicitly: a simulation's own values win, and ``env_overrides`` are
merged (the suite's first, then the simulation's). So ``SimulationSuiteConfig(num_episodes=10, simulations=
{"a": {"env": ..., "num_episodes": 5}, "b": {"env": ...}})`` runs 5 episodes of ``a`` and 10 of ``b``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.config_loader import resolve_config_path


class SimulationConfig(BaseModel):
    """How to run a policy: how many episodes, how long at most, and who controls which agents."""

    model_config = ConfigDict(extra="forbid")

    num_episodes: int = Field(ge=1, description="episodes to run, split over min(num_episodes, cpu count) envs")
    max_time_s: float | None = Field(
        default=None,
        gt=0,
        description="wall-clock guard: a simulation still running after it has no score (missing, never partial); "
        "None: episodes run to game.max_steps",
    )
    env_overrides: dict[str, Any] = Field(
        default_factory=dict, description="overrides for the env config, dotted ('game.max_steps') or nested keys"
    )
    npc_policy_uri: str | None = Field(
        default=None, description="policy (file:// or wandb:// URI) for the agents the candidate does not run"
    )
    policy_agents_pct: float = Field(
        default=1.0, gt=0.0, le=1.0, description="share of each env's agents (the first, >= 1) run by the candidate"
    )

    @model_validator(mode="after")
    def _npc_needed(self) -> SimulationConfig:
        if self.policy_agents_pct < 1.0 and self.npc_policy_uri is None:
            raise ValueError(
                f"policy_agents_pct={self.policy_agents_pct} leaves agents to an NPC policy, but npc_policy_uri is "
                "not set; set npc_policy_uri='file://...' or use policy_agents_pct=1.0"
            )
        return self


class SingleEnvSimulationConfig(SimulationConfig):
    """A simulation on one env: a config path (packaged ``/env/...`` or a YAML file), an env config or a dict."""

    env: str | MettaGridConfig | dict[str, Any]

    @field_validator("env")
    @classmethod
    def _env_exists(cls, env: Any) -> Any:
        # Resolve paths now, so a typo fails when the config is built, not minutes into a training run.
        if isinstance(env, str):
            resolve_config_path(env)
        return env


class SimulationSuiteConfig(SimulationConfig):
    """Named simulations run one after another on the same policy (see the module docstring for defaults)."""

    name: str
    simulations: dict[str, SingleEnvSimulationConfig]
    num_episodes: int | None = Field(
        default=None, ge=1, description="default for simulations that set none (needed only if one sets none)"
    )
    episode_tags: list[str] = Field(default_factory=list, description="tags written into every episode's stats")
    categories: list[str] | None = Field(
        default=None,
        description="category scores: the mean over the sims whose name contains the category; None: one per "
        "name prefix ('navigation/x' -> 'navigation'), names without one under the suite's name",
    )

    @model_validator(mode="before")
    @classmethod
    def _propagate_suite_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("simulations"), dict):
            return data  # pydantic reports the type error
        given = {k: v for k, v in data.items() if k in SimulationConfig.model_fields and v is not None}
        if not given:
            return data
        simulations = {}
        for sim_name, sim in data["simulations"].items():
            if isinstance(sim, BaseModel):
                own = sim.model_dump(exclude_unset=True)
                if "env" in own and isinstance(getattr(sim, "env", None), MettaGridConfig):
                    own["env"] = sim.env  # keep the object rather than a dump of it
            elif isinstance(sim, dict):
                own = dict(sim)
            else:
                simulations[sim_name] = sim  # pydantic reports the type error
                continue
            merged = {**given, **own}
            if isinstance(given.get("env_overrides"), dict) and isinstance(own.get("env_overrides"), dict):
                merged["env_overrides"] = {**given["env_overrides"], **own["env_overrides"]}
            simulations[sim_name] = merged
        return {**data, "simulations": simulations}

    @field_validator("simulations")
    @classmethod
    def _not_empty(cls, simulations: dict[str, SingleEnvSimulationConfig]) -> dict[str, SingleEnvSimulationConfig]:
        if not simulations:
            raise ValueError("a suite needs at least one simulation, e.g. {'navigation/terrain_small': {...}}")
        return simulations
