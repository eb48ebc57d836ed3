"""Typed configuration of a MettaGrid environment.

``MettaGridConfig`` is the whole env config (``{"game": {...}, ...}`` in YAML). Every model forbids unknown
keys, and cross-field rules (items that exist, agent cells on the map, observation window sizes) are checked
here, before any simulation starts, with messages that name the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from metta.mettagrid.map import MapBuilderConfig, RandomMap, upgrade_legacy_builder

DEFAULT_ITEMS = [
    "ore_red",
    "ore_blue",
    "ore_green",
    "battery_red",
    "battery_blue",
    "battery_green",
    "heart",
    "armor",
    "laser",
]

# The most observation tokens a window can address: locations pack row and column into 4 bits each.
MAX_OBS_SIZE = 15


def _problems(err: ValidationError) -> str:
    """A nested model's validation errors as one line: each field, the value given (if a plain value) and why."""
    parts = []
    for e in err.errors():
        value = e.get("input")
        shown = f"={value!r}" if isinstance(value, (int, float, str, bool)) else ""
        parts.append(f"{'.'.join(map(str, e['loc']))}{shown}: {e['msg']}")
    return "; ".join(parts)


class Config(BaseModel):
    """Base of every env config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class WallConfig(Config):
    type_id: int = Field(ge=1, le=255)
    swappable: bool = False


class ConverterConfig(Config):
    type_id: int = Field(ge=1, le=255)
    input_resources: dict[str, int] = Field(default_factory=dict)
    output_resources: dict[str, int] = Field(default_factory=dict)
    max_output: int = Field(default=5, ge=-1, description="-1 means unlimited")
    conversion_ticks: int = Field(default=1, ge=0)
    cooldown: int = Field(default=0, ge=0)
    initial_resource_count: int = Field(default=0, ge=0, le=255)
    color: int = Field(default=0, ge=0, le=255)
    recipe_details_obs: bool = False

    @field_validator("input_resources", "output_resources")
    @classmethod
    def _non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        for item, n in v.items():
            if n < 0 or n > 255:
                raise ValueError(f"resource count for {item!r} is {n}; it must be between 0 and 255")
        return v


ObjectConfig = WallConfig | ConverterConfig
_CONVERTER_KEYS = set(ConverterConfig.model_fields) - {"type_id"}


class ActionConfig(Config):
    enabled: bool = True
    required_resources: dict[str, int] = Field(default_factory=dict)
    consumed_resources: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _required_covers_consumed(self) -> ActionConfig:
        for item, n in self.consumed_resources.items():
            if self.required_resources.get(item, n) < n:
                raise ValueError(
                    f"required_resources[{item!r}]={self.required_resources[item]} is less than "
                    f"consumed_resources[{item!r}]={n}; an action cannot consume more than it requires"
                )
        return self


class AttackActionConfig(ActionConfig):
    consumed_resources: dict[str, int] = Field(default_factory=lambda: {"laser": 1})
    defense_resources: dict[str, int] = Field(default_factory=lambda: {"armor": 1})


class ChangeGlyphActionConfig(ActionConfig):
    enabled: bool = False
    number_of_glyphs: int = Field(default=4, ge=1, le=256)


class DisabledByDefaultActionConfig(ActionConfig):
    enabled: bool = False


class ActionsConfig(Config):
    noop: ActionConfig = Field(default_factory=ActionConfig)
    move: ActionConfig = Field(default_factory=ActionConfig)
    rotate: ActionConfig = Field(default_factory=ActionConfig)
    put_items: ActionConfig = Field(default_factory=ActionConfig)
    get_items: ActionConfig = Field(default_factory=ActionConfig)
    attack: AttackActionConfig = Field(default_factory=AttackActionConfig)
    swap: ActionConfig = Field(default_factory=ActionConfig)
    change_color: DisabledByDefaultActionConfig = Field(default_factory=DisabledByDefaultActionConfig)
    change_glyph: ChangeGlyphActionConfig = Field(default_factory=ChangeGlyphActionConfig)

    def enabled_names(self) -> list[str]:
        """Enabled action names in alphabetical order: that order is the action-type index (as upstream)."""
        return sorted(name for name in type(self).model_fields if getattr(self, name).enabled)


class RewardsConfig(Config):
    """``inventory: {item: reward_per_unit, item_max: cap}``; ``stats: {stat: reward_per_unit, stat_max: cap}``."""

    inventory: dict[str, float] = Field(default_factory=dict)
    stats: dict[str, float] = Field(default_factory=dict)

    @field_validator("inventory", "stats")
    @classmethod
    def _finite(cls, v: dict[str, float], info) -> dict[str, float]:
        for key, value in v.items():
            is_cap = key.endswith("_max")
            if math.isnan(value) or (math.isinf(value) and not (is_cap and value > 0)):
                raise ValueError(
                    f"rewards.{info.field_name}[{key!r}]={value} is not allowed; a reward per unit must be a finite "
                    "number (a cap named <item>_max may also be .inf, meaning no cap)"
                )
        return v


class AgentConfig(Config):
    default_resource_limit: int = Field(default=50, ge=0, le=255)
    resource_limits: dict[str, int] = Field(default_factory=lambda: {"heart": 255})
    freeze_duration: int = Field(default=10, ge=0)
    action_failure_penalty: float = Field(default=0.0, allow_inf_nan=False)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)

    @model_validator(mode="before")
    @classmethod
    def _migrate_flat_rewards(cls, data: Any) -> Any:
        # Old configs wrote ``rewards: {heart: 1}``; that means inventory rewards.
        if isinstance(data, dict) and isinstance(data.get("rewards"), dict):
            rewards = data["rewards"]
            if rewards and not set(rewards) <= {"inventory", "stats"}:
                data = {**data, "rewards": {"inventory": dict(rewards)}}
        return data


class GroupConfig(Config):
    id: int = Field(ge=0, le=255)
    sprite: int | None = None
    group_reward_pct: float = Field(default=0.0, ge=0.0, le=1.0)
    props: dict[str, Any] = Field(default_factory=dict, description="AgentConfig fields overridden for this group")


class GlobalObsConfig(Config):
    episode_completion_pct: bool = True
    last_action: bool = True
    last_reward: bool = True
    resource_rewards: bool = False


def default_objects() -> dict[str, ObjectConfig]:
    return {
        "wall": WallConfig(type_id=1),
        "block": WallConfig(type_id=14, swappable=True),
        "altar": ConverterConfig(
            type_id=8, input_resources={"battery_red": 3}, output_resources={"heart": 1}, cooldown=10, color=1
        ),
    }


class GameConfig(Config):
    num_agents: int = Field(default=4, ge=1, le=32767)
    obs_width: int = 11
    obs_height: int = 11
    num_observation_tokens: int = Field(default=200, ge=1)
    max_steps: int = Field(default=1000, ge=0, description="0 means no limit")
    episode_truncates: bool = False
    inventory_item_names: list[str] = Field(default_factory=lambda: list(DEFAULT_ITEMS))
    groups: dict[str, GroupConfig] = Field(default_factory=lambda: {"agent": GroupConfig(id=0)})
    agent: AgentConfig = Field(default_factory=AgentConfig)
    actions: ActionsConfig = Field(default_factory=ActionsConfig)
    objects: dict[str, ObjectConfig] = Field(default_factory=default_objects)
    global_obs: GlobalObsConfig = Field(default_factory=GlobalObsConfig)
    track_movement_metrics: bool = True
    recipe_details_obs: bool = False
    map_builder: MapBuilderConfig = Field(
        default_factory=lambda: RandomMap(width=25, height=25, agents=4, border_width=1)
    )

    @field_validator("map_builder", mode="before")
    @classmethod
    def _upgrade_legacy_map_builder(cls, v: Any) -> Any:
        # Upstream YAML names builders by Hydra ``_target_``; map those to our ``type`` tags.
        return upgrade_legacy_builder(v)

    @field_validator("objects", mode="before")
    @classmethod
    def _pick_object_kind(cls, v: Any) -> Any:
        # YAML has no tag for the object kind: anything with converter keys is a converter, else a wall.
        if not isinstance(v, dict):
            return v
        out = {}
        for name, obj in v.items():
            if isinstance(obj, dict):
                is_converter = bool(set(obj) & _CONVERTER_KEYS) or name not in ("wall", "block")
                if "swappable" in obj:
                    is_converter = False
                kind = ConverterConfig if is_converter else WallConfig
                try:
                    obj = kind.model_validate(obj)
                except ValidationError as err:
                    problems = _problems(err)
                    raise ValueError(f"objects.{name} ({kind.__name__}): {problems}") from None
            out[name] = obj
        return out

    @field_validator("obs_width", "obs_height")
    @classmethod
    def _odd_window(cls, v: int, info) -> int:
        if v < 3 or v > MAX_OBS_SIZE or v % 2 == 0:
            raise ValueError(f"{info.field_name}={v} is not allowed; use an odd size from 3 to {MAX_OBS_SIZE}")
        return v

    @model_validator(mode="after")
    def _check_references(self) -> GameConfig:
        items = self.inventory_item_names
        if len(items) != len(set(items)):
            raise ValueError(f"inventory_item_names has duplicates: {items}")
        if len(items) > 64:
            raise ValueError(f"inventory_item_names has {len(items)} items; at most 64 are supported")
        known = set(items)

        def check_items(where: str, names) -> None:
            for name in names:
                base = name[:-4] if name.endswith("_max") else name
                if base not in known:
                    raise ValueError(f"{where} refers to item {base!r}, which is not in inventory_item_names {items}")

        for action in self.actions.enabled_names():
            cfg = getattr(self.actions, action)
            check_items(f"actions.{action}.required_resources", cfg.required_resources)
            check_items(f"actions.{action}.consumed_resources", cfg.consumed_resources)
            if isinstance(cfg, AttackActionConfig):
                check_items("actions.attack.defense_resources", cfg.defense_resources)
        type_ids: dict[int, str] = {}
        for name, obj in self.objects.items():
            if obj.type_id in type_ids:
                raise ValueError(f"objects.{name}.type_id={obj.type_id} is already used by {type_ids[obj.type_id]!r}")
            type_ids[obj.type_id] = name
            if isinstance(obj, ConverterConfig):
                check_items(f"objects.{name}.input_resources", obj.input_resources)
                check_items(f"objects.{name}.output_resources", obj.output_resources)
        check_items("agent.resource_limits", self.agent.resource_limits)
        check_items("agent.rewards.inventory", self.agent.rewards.inventory)
        group_ids: dict[int, str] = {}
        for name, group in self.groups.items():
            if group.id in group_ids:
                raise ValueError(f"groups.{name}.id={group.id} is already used by group {group_ids[group.id]!r}")
            group_ids[group.id] = name
            bad = set(group.props) - set(AgentConfig.model_fields)
            if bad:
                raise ValueError(
                    f"groups.{name}.props has unknown keys {sorted(bad)}; allowed: {sorted(AgentConfig.model_fields)}"
                )
            if group.props:
                try:
                    agent = self.group_agent_config(name)
                except ValidationError as err:
                    problems = _problems(err)
                    raise ValueError(f"groups.{name}.props: {problems}") from None
                check_items(f"groups.{name}.props.resource_limits", agent.resource_limits)
                check_items(f"groups.{name}.props.rewards.inventory", agent.rewards.inventory)
        if not self.actions.enabled_names():
            raise ValueError("actions: every action is disabled; enable at least one (e.g. actions.noop.enabled=true)")
        return self

    def group_agent_config(self, group: str) -> AgentConfig:
        """The agent config of one group: ``agent`` with the group's ``props`` applied."""
        props = self.groups[group].props
        if not props:
            return self.agent
        merged = self.agent.model_dump()
        for key, value in props.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return AgentConfig.model_validate(merged)


class MettaGridConfig(Config):
    """A whole MettaGrid env config."""

    game: GameConfig = Field(default_factory=GameConfig)
    sampling: float = Field(default=0.0, ge=0.0, le=1.0, description="kept for upstream YAML; unused")
    desync_episodes: bool = Field(
        default=True, description="when training, cut the first episode of each env to U[1, max_steps] steps"
    )
    label: str | None = Field(default=None, description="a short name for stats; defaults to the task name")

    @classmethod
    def from_any(cls, value: MettaGridConfig | dict | Any) -> MettaGridConfig:
        """Accept a config object, a plain dict or an OmegaConf node."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            try:
                from omegaconf import OmegaConf

                value = OmegaConf.to_container(value, resolve=True)
            except Exception as err:  # noqa: BLE001 - report what we were given
                raise TypeError(
                    f"expected a MettaGridConfig, a dict or a config node, got {type(value).__name__}"
                ) from err
        return cls.model_validate(value)
