"""Replays recorded from the real env that more than one test file reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.replay import ReplayWriter


def record_one_frame_mine_replay(directory: Path) -> tuple[dict[int, int], Path]:
    """One agent, one step, and a mine holding two kinds of ore that never change: the constant inventory of
    2+ items that a one-frame replay must pad (docs/replay_format.md 4.1). Returns the mine's inventory
    ``{item id: count}`` after the step and the replay's path (episode id "one-frame")."""
    cfg = {
        "game": {
            "num_agents": 1,
            "max_steps": 8,
            "objects": {
                "wall": {"type_id": 1},
                "mine_red": {
                    "type_id": 2,
                    "output_resources": {"ore_red": 1, "ore_blue": 2},
                    "cooldown": 50,
                    "initial_resource_count": 1,
                },
            },
            "map_builder": {"type": "ascii", "map_data": "#####\n#@.m#\n#####"},
        }
    }
    env = MettaGridEnv(cfg, seed=0)
    env.reset(0)
    writer = ReplayWriter(directory)
    writer.start_episode(env, episode_id="one-frame")
    env.step(np.zeros((1, 2), dtype=np.int32))
    writer.log_step(env)
    held = {o["type_id"]: o["inventory"] for o in env.grid_objects(0).values()}[2]
    return held, writer.end_episode()
