"""Fixed numbers of the game: observation feature ids, normalizations, orientations, action handlers.

Feature ids are part of the saved-policy contract (policies remap by name when they move, but keep them
stable anyway). They follow upstream MettaGrid.
"""

from __future__ import annotations

# Observation feature ids.
TYPE_ID = 0
GROUP = 1
HP = 2
FROZEN = 3
ORIENTATION = 4
COLOR = 5
CONVERTING = 6
SWAPPABLE = 7
EPISODE_COMPLETION_PCT = 8
LAST_ACTION = 9
LAST_ACTION_ARG = 10
LAST_REWARD = 11
GLYPH = 12
RESOURCE_REWARDS = 13
INVENTORY_BASE = 14  # inv:<item i> is INVENTORY_BASE + i; recipe inputs/outputs follow the inventory block

FEATURE_NAMES = {
    TYPE_ID: "type_id",
    GROUP: "agent:group",
    HP: "hp",
    FROZEN: "agent:frozen",
    ORIENTATION: "agent:orientation",
    COLOR: "agent:color",
    CONVERTING: "converting",
    SWAPPABLE: "swappable",
    EPISODE_COMPLETION_PCT: "episode_completion_pct",
    LAST_ACTION: "last_action",
    LAST_ACTION_ARG: "last_action_arg",
    LAST_REWARD: "last_reward",
    GLYPH: "agent:glyph",
    RESOURCE_REWARDS: "resource_rewards",
}

# Values the agent divides each feature by (upstream's FeatureNormalizations).
FEATURE_NORMALIZATIONS = {
    TYPE_ID: 1.0,
    GROUP: 10.0,
    HP: 30.0,
    FROZEN: 1.0,
    ORIENTATION: 1.0,
    COLOR: 255.0,
    CONVERTING: 1.0,
    SWAPPABLE: 1.0,
    EPISODE_COMPLETION_PCT: 255.0,
    LAST_ACTION: 10.0,
    LAST_ACTION_ARG: 10.0,
    LAST_REWARD: 100.0,
    GLYPH: 255.0,
    RESOURCE_REWARDS: 255.0,
}
INVENTORY_NORMALIZATION = 100.0

# Orientations (also the rotate action's argument).
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
ORIENTATION_NAMES = ["up", "down", "left", "right"]

# Action handlers, by config key. The action-type index a policy sees is the position of the name in the
# alphabetical list of enabled actions; the handler id below is what the kernel dispatches on.
H_NOOP, H_MOVE, H_ROTATE, H_PUT, H_GET, H_ATTACK, H_SWAP, H_CHANGE_COLOR, H_CHANGE_GLYPH = range(9)
ACTION_HANDLERS = {
    "noop": H_NOOP,
    "move": H_MOVE,
    "rotate": H_ROTATE,
    "put_items": H_PUT,
    "get_items": H_GET,
    "attack": H_ATTACK,
    "swap": H_SWAP,
    "change_color": H_CHANGE_COLOR,
    "change_glyph": H_CHANGE_GLYPH,
}
# Attacks resolve before everything else in a step.
ACTION_PRIORITY = {"attack": 1}

# Cell contents of the object layer: 0 empty; > 0 converter (local index + 1); < 0 a static object whose
# type id is -value (walls, blocks: they have no state beyond their position).
