"""Compile a ``GameConfig`` into the numeric tables the simulation kernel reads.

Two kinds of facts come out of a config:

- the *batch layout* (``BatchLayout``): what every env of one ``MettaGridEnv`` must share because it fixes
  buffer shapes, action meanings and stat names (agents per env, items, enabled actions, observation window,
  groups);
- the *episode tables* (``EpisodeTables``): what may differ between episodes of a curriculum (objects and
  their recipes, rewards, limits, max_steps). They are written into the kernel's per-env arrays at reset.

Both are cached per config object, since curricula hand out the same config objects again and again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from metta.mettagrid import constants as K
from metta.mettagrid.config import AttackActionConfig, ChangeGlyphActionConfig, ConverterConfig, GameConfig
from metta.mettagrid.map.level import cell_code, cell_name, code_table_size

# Stat blocks, in layout order. Each entry: (key, size function of (n_actions, n_items, n_groups)).
_STAT_BLOCKS = [
    ("act_success", lambda a, i, g: a),
    ("act_failed", lambda a, i, g: a),
    ("invalid_type", lambda a, i, g: 1),
    ("invalid_arg", lambda a, i, g: 1),
    ("invalid_arg_type", lambda a, i, g: a),
    ("failure_penalty", lambda a, i, g: 1),
    ("gained", lambda a, i, g: i),
    ("lost", lambda a, i, g: i),
    ("put", lambda a, i, g: i),
    ("get", lambda a, i, g: i),
    ("frozen", lambda a, i, g: 1),
    ("frozen_group", lambda a, i, g: g),
    ("move_dir", lambda a, i, g: 4),
    ("rot_to", lambda a, i, g: 4),
    ("seq_rot", lambda a, i, g: 1),
    ("swap_type", lambda a, i, g: 256),
    ("att_hit", lambda a, i, g: g * g),
    ("att_hit_by", lambda a, i, g: g * g),
    ("att_ff", lambda a, i, g: g),
    ("att_steal", lambda a, i, g: g * i * g),
    ("att_wasted", lambda a, i, g: g),
    ("att_blocked", lambda a, i, g: g * g),
]
STAT_BLOCK_INDEX = {key: n for n, (key, _) in enumerate(_STAT_BLOCKS)}


def _stat_names(key: str, actions: list[str], items: list[str], groups: list[str], type_names: dict[int, str]):
    if key == "act_success":
        return [f"action.{a}.success" for a in actions]
    if key == "act_failed":
        return [f"action.{a}.failed" for a in actions]
    if key == "invalid_type":
        return ["action.invalid_type"]
    if key == "invalid_arg":
        return ["action.invalid_arg"]
    if key == "invalid_arg_type":
        return [f"action.invalid_arg.{a}" for a in actions]
    if key == "failure_penalty":
        return ["action.failure_penalty"]
    if key in ("gained", "lost", "put", "get"):
        return [f"{item}.{key}" for item in items]
    if key == "frozen":
        return ["status.frozen.ticks"]
    if key == "frozen_group":
        return [f"status.frozen.ticks.{g}" for g in groups]
    if key == "move_dir":
        return [f"movement.direction.{d}" for d in K.ORIENTATION_NAMES]
    if key == "rot_to":
        return [f"movement.rotation.to_{d}" for d in K.ORIENTATION_NAMES]
    if key == "seq_rot":
        return ["movement.sequential_rotations"]
    if key == "swap_type":
        return [f"action.swap.{type_names.get(t, f'type_{t}')}" for t in range(256)]
    if key == "att_hit":
        return [f"action.attack.{a}.hit.{b}" for a in groups for b in groups]
    if key == "att_hit_by":
        return [f"action.attack.{a}.hit_by.{b}" for a in groups for b in groups]
    if key == "att_ff":
        return [f"action.attack.{a}.friendly_fire" for a in groups]
    if key == "att_steal":
        return [f"action.attack.{a}.steals.{item}.from.{b}" for a in groups for item in items for b in groups]
    if key == "att_wasted":
        return [f"action.attack.{a}.wasted_on_frozen" for a in groups]
    if key == "att_blocked":
        return [f"action.attack.{a}.blocked_by.{b}" for a in groups for b in groups]
    raise KeyError(key)


@dataclass
class BatchLayout:
    """What all envs of one MettaGridEnv share. Two configs with different layouts cannot share a batch."""

    num_agents: int
    items: list[str]
    action_names: list[str]
    max_action_args: list[int]
    obs_width: int
    obs_height: int
    num_tokens: int
    group_names: list[str]  # dense group index -> name
    group_ids: list[int]  # dense group index -> configured id (what observations show)
    global_obs: tuple[bool, bool, bool, bool]
    recipe_details_obs: bool
    track_movement: bool
    # Kernel tables.
    action_table: np.ndarray = field(repr=False)  # int32[n_actions, 3]: handler, max arg, priority
    action_resources: np.ndarray = field(repr=False)  # int32[n_actions, 2, n_items]: required, consumed
    defense_resources: np.ndarray = field(repr=False)  # int32[n_items]
    stat_offsets: np.ndarray = field(repr=False)  # int64[len(_STAT_BLOCKS) + 1]
    obs_offsets: np.ndarray = field(repr=False)  # int32[cells, 3]: dr, dc, packed location (distance order)
    obs_rank: np.ndarray = field(repr=False)  # int64[obs_height * obs_width]: each window cell's index in obs_offsets
    type_names: dict[int, str] = field(default_factory=dict)

    def signature(self) -> tuple:
        return (
            self.num_agents,
            tuple(self.items),
            tuple(self.action_names),
            tuple(self.max_action_args),
            self.obs_width,
            self.obs_height,
            self.num_tokens,
            tuple(self.group_names),
            tuple(self.group_ids),
            self.global_obs,
            self.recipe_details_obs,
            self.action_resources.tobytes(),
            self.defense_resources.tobytes(),
        )

    @property
    def num_stats(self) -> int:
        return int(self.stat_offsets[-1])

    def stat_names(self) -> list[str]:
        names: list[str] = []
        for key, _ in _STAT_BLOCKS:
            names += _stat_names(key, self.action_names, self.items, self.group_names, self.type_names)
        return names

    def feature_ids(self) -> dict[str, int]:
        """Observation feature name -> id, as the agent sees them."""
        features = {name: fid for fid, name in K.FEATURE_NAMES.items()}
        n = len(self.items)
        for i, item in enumerate(self.items):
            features[f"inv:{item}"] = K.INVENTORY_BASE + i
            if self.recipe_details_obs:
                features[f"input:{item}"] = K.INVENTORY_BASE + n + i
                features[f"output:{item}"] = K.INVENTORY_BASE + 2 * n + i
        return features

    def feature_normalizations(self) -> dict[int, float]:
        norms = dict(K.FEATURE_NORMALIZATIONS)
        for fid in self.feature_ids().values():
            if fid >= K.INVENTORY_BASE:
                norms[fid] = K.INVENTORY_NORMALIZATION
        return norms


def window_offsets(obs_height: int, obs_width: int) -> np.ndarray:
    """Cells of the observation window in token order: by Manhattan distance, then row, then column.

    Returns ``int32[cells, 3]`` of (row offset, column offset, packed location ``row << 4 | col``).
    """
    hr, hc = obs_height // 2, obs_width // 2
    cells = []
    for d in range(hr + hc + 1):
        for dr in range(-d, d + 1):
            dc = d - abs(dr)
            for c in (0,) if dc == 0 else (-dc, dc):
                if abs(dr) <= hr and abs(c) <= hc:
                    cells.append((dr, c, ((dr + hr) << 4) | (c + hc)))
    return np.array(cells, dtype=np.int32)


def window_ranks(offsets: np.ndarray, obs_height: int, obs_width: int) -> np.ndarray:
    """The inverse of ``window_offsets``: for the window cell at (row, col), ``rank[row * obs_width + col]`` is
    its index in token order (the observation scan orders occupied cells by it)."""
    rank = np.zeros(obs_height * obs_width, dtype=np.int64)
    rows = offsets[:, 0] + obs_height // 2
    cols = offsets[:, 1] + obs_width // 2
    rank[rows * obs_width + cols] = np.arange(len(offsets))
    return rank


def build_layout(game: GameConfig) -> BatchLayout:
    items = list(game.inventory_item_names)
    item_index = {name: i for i, name in enumerate(items)}
    actions = game.actions.enabled_names()
    n_items = len(items)

    action_table = np.zeros((len(actions), 3), dtype=np.int32)
    action_resources = np.zeros((len(actions), 2, n_items), dtype=np.int32)
    defense = np.zeros(n_items, dtype=np.int32)
    max_args = []
    for a, name in enumerate(actions):
        cfg = getattr(game.actions, name)
        if name == "move":
            max_arg = 1
        elif name in ("rotate", "change_color"):
            max_arg = 3
        elif name == "attack":
            max_arg = 8
        elif name == "change_glyph":
            assert isinstance(cfg, ChangeGlyphActionConfig)
            max_arg = cfg.number_of_glyphs - 1
        else:
            max_arg = 0
        max_args.append(max_arg)
        action_table[a] = (K.ACTION_HANDLERS[name], max_arg, K.ACTION_PRIORITY.get(name, 0))
        required = {**cfg.consumed_resources, **cfg.required_resources}
        for item, n in required.items():
            action_resources[a, 0, item_index[item]] = n
        for item, n in cfg.consumed_resources.items():
            action_resources[a, 1, item_index[item]] = n
        if isinstance(cfg, AttackActionConfig):
            for item, n in cfg.defense_resources.items():
                defense[item_index[item]] = n

    groups = sorted(game.groups.items(), key=lambda kv: kv[1].id)
    group_names = [name for name, _ in groups]
    sizes = [size(len(actions), n_items, len(group_names)) for _, size in _STAT_BLOCKS]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    go = game.global_obs
    recipe_obs = game.recipe_details_obs or any(
        isinstance(o, ConverterConfig) and o.recipe_details_obs for o in game.objects.values()
    )
    offsets_in_window = window_offsets(game.obs_height, game.obs_width)
    return BatchLayout(
        num_agents=game.num_agents,
        items=items,
        action_names=actions,
        max_action_args=max_args,
        obs_width=game.obs_width,
        obs_height=game.obs_height,
        num_tokens=game.num_observation_tokens,
        group_names=group_names,
        group_ids=[g.id for _, g in groups],
        global_obs=(go.episode_completion_pct, go.last_action, go.last_reward, go.resource_rewards),
        recipe_details_obs=recipe_obs,
        track_movement=game.track_movement_metrics,
        action_table=action_table,
        action_resources=action_resources,
        defense_resources=defense,
        stat_offsets=offsets,
        obs_offsets=offsets_in_window,
        obs_rank=window_ranks(offsets_in_window, game.obs_height, game.obs_width),
        type_names={0: "agent", **{o.type_id: name for name, o in game.objects.items()}},
    )


# Converter template columns (int32).
CT_TYPE, CT_MAXOUT, CT_TICKS, CT_COOLDOWN, CT_INIT, CT_COLOR, CT_RECIPE_OBS = range(7)
# Agent template columns: ints, then floats.
AT_GROUP, AT_GROUP_ID, AT_FREEZE, AT_RW_MASK = range(4)
AF_PENALTY, AF_GROUP_PCT = range(2)

# What a map cell code means in one game: empty, a static object, a converter, or an agent.
KIND_EMPTY, KIND_STATIC, KIND_CONVERTER, KIND_AGENT = 0, 1, 2, 3


@dataclass
class EpisodeTables:
    """Per-episode facts of one config, ready to copy into the kernel's arrays."""

    layout: BatchLayout
    max_steps: int
    conv_int: np.ndarray  # int32[n_templates, 7]
    conv_recipe: np.ndarray  # int32[n_templates, 2, n_items]: input, output
    agent_int: np.ndarray  # int32[n_groups, 4]: AT_* columns
    agent_float: np.ndarray  # float32[n_groups, 2]
    agent_limits: np.ndarray  # int32[n_groups, n_items]
    agent_rewards: np.ndarray  # float32[n_groups, 2, n_items]: per unit, cap
    stat_rewards: np.ndarray  # float32[n_groups, 2, n_stats]: per unit, cap (empty second dim if unused)
    swappable: np.ndarray  # uint8[256] by type id
    names: dict[str, tuple[int, int]]  # cell name -> (kind, index: type id / template / group)
    _code_lookup: tuple[int, np.ndarray] | None = None

    def code_lookup(self) -> np.ndarray:
        """``int32[codes, 2]``: (kind, index) for every cell code registered so far."""
        n = code_table_size()
        if self._code_lookup is None or self._code_lookup[0] != n:
            table = np.full((n, 2), -1, dtype=np.int32)
            table[0] = (KIND_EMPTY, 0)
            for name, value in self.names.items():
                table[cell_code(name)] = value
            self._code_lookup = (code_table_size(), table)
        return self._code_lookup[1]

    def unknown_cell_error(self, code: int) -> ValueError:
        name = cell_name(code)
        if name.startswith("agent."):
            return ValueError(
                f"the map has an agent of group {name[6:]!r}, but game.groups only has {self.layout.group_names}"
            )
        known = sorted(n for n in self.names if not n.startswith("agent."))
        return ValueError(f"the map has a {name!r} cell, but game.objects has no {name!r} (objects: {known})")


def resource_reward_bits(inventory_rewards: dict[str, float], items: list[str]) -> int:
    """The ``resource_rewards`` token of an agent, as upstream packs it: item i of the first 8 is bit 7 - i
    (item 0 is the high bit), set when the agent's reward per unit of that item is positive."""
    bits = 0
    for i, item in enumerate(items[:8]):
        if inventory_rewards.get(item, 0.0) > 0:
            bits |= 1 << (7 - i)
    return bits


def build_episode_tables(game: GameConfig, layout: BatchLayout) -> EpisodeTables:
    items = layout.items
    item_index = {name: i for i, name in enumerate(items)}
    n_items = len(items)
    names: dict[str, tuple[int, int]] = {"empty": (KIND_EMPTY, 0)}
    swappable = np.zeros(256, dtype=np.uint8)
    templates = []
    for name, obj in game.objects.items():
        if isinstance(obj, ConverterConfig):
            names[name] = (KIND_CONVERTER, len(templates))
            templates.append(obj)
        else:
            # The kernel stores a static object as -index in the grid; swappable ones are offset by 256.
            names[name] = (KIND_STATIC, obj.type_id + 256 * int(obj.swappable))
            swappable[obj.type_id] = int(obj.swappable)
    conv_int = np.zeros((len(templates), 7), dtype=np.int32)
    conv_recipe = np.zeros((len(templates), 2, n_items), dtype=np.int32)
    for t, obj in enumerate(templates):
        conv_int[t] = (
            obj.type_id,
            obj.max_output,
            obj.conversion_ticks,
            obj.cooldown,
            obj.initial_resource_count,
            obj.color,
            int(obj.recipe_details_obs or game.recipe_details_obs),
        )
        for item, n in obj.input_resources.items():
            conv_recipe[t, 0, item_index[item]] = n
        for item, n in obj.output_resources.items():
            conv_recipe[t, 1, item_index[item]] = n

    stat_index = {name: i for i, name in enumerate(layout.stat_names())}
    G = len(layout.group_names)
    agent_int = np.zeros((G, 4), dtype=np.int32)
    agent_float = np.zeros((G, 2), dtype=np.float32)
    limits = np.zeros((G, n_items), dtype=np.int32)
    rewards = np.zeros((G, 2, n_items), dtype=np.float32)
    any_stat_reward = any(game.group_agent_config(g).rewards.stats for g in layout.group_names)
    stat_rewards = np.zeros((G, 2, layout.num_stats if any_stat_reward else 0), dtype=np.float32)
    for g, gname in enumerate(layout.group_names):
        names[f"agent.{gname}"] = (KIND_AGENT, g)
        cfg = game.group_agent_config(gname)
        rw_bits = resource_reward_bits(cfg.rewards.inventory, items)
        agent_int[g] = (g, game.groups[gname].id, cfg.freeze_duration, rw_bits)
        agent_float[g] = (cfg.action_failure_penalty, game.groups[gname].group_reward_pct)
        limits[g] = cfg.default_resource_limit
        for item, n in cfg.resource_limits.items():
            limits[g, item_index[item]] = n
        rewards[g, 1] = np.inf
        for key, value in cfg.rewards.inventory.items():
            if key.endswith("_max") and key[:-4] in item_index:
                rewards[g, 1, item_index[key[:-4]]] = value
            else:
                rewards[g, 0, item_index[key]] = value
        if any_stat_reward:
            stat_rewards[g, 1] = np.inf
            for key, value in cfg.rewards.stats.items():
                is_cap = key.endswith("_max") and key[:-4] in stat_index
                stat = key[:-4] if is_cap else key
                if stat not in stat_index:
                    raise ValueError(
                        f"agent.rewards.stats refers to stat {stat!r}, which this game never records; "
                        f"examples of known stats: {list(stat_index)[:8]}"
                    )
                stat_rewards[g, 1 if is_cap else 0, stat_index[stat]] = value
    return EpisodeTables(
        layout=layout,
        max_steps=game.max_steps,
        conv_int=conv_int,
        conv_recipe=conv_recipe,
        agent_int=agent_int,
        agent_float=agent_float,
        agent_limits=limits,
        agent_rewards=rewards,
        stat_rewards=stat_rewards,
        swappable=swappable,
        names=names,
    )
