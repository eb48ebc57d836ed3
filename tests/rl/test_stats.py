import numpy as np
import torch

from metta.stats import accumulate_rollout_stats


def test_accumulate_flattens_with_slashes():
    stats = {}
    infos = [
        {"game": {"objects.wall": 3.0}, "agent": {"action.move.success": np.float32(2)}, "episode_rewards": [0.5, 1.0]},
        {"game": {"objects.wall": 5.0}, "agent": {"action.move.success": torch.tensor(4.0)}, "episode_length": 7},
    ]
    accumulate_rollout_stats(infos, stats)
    assert stats["game/objects.wall"] == [3.0, 5.0]
    assert stats["agent/action.move.success"] == [2.0, 4.0] and all(
        type(v) is float for v in stats["agent/action.move.success"]
    )
    assert stats["episode_rewards"] == [[0.5, 1.0]] and stats["episode_length"] == [7]
    accumulate_rollout_stats([], stats)
    assert len(stats) == 4
