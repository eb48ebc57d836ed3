"""Seed 003 (the pipeline slides), its numbers from the real objects: the env factory's sizing (slides 3 and 10), an
Experience built with the seed's sizes (slides 4, 7 and 9) and its observation buffer (slide 11, for token
observations)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from metta.interface.environment import default_env_config, envs_for_target_batch
from metta.mettagrid.curriculum.core import SingleTaskCurriculum
from metta.rl.experience import Experience, calculate_batch_sizes
from metta.rl.trainer_config import TrainerConfig

TOKENS = 200  # the default env's observation tokens


def curriculum(agents: int) -> SingleTaskCurriculum:
    return SingleTaskCurriculum(f"{agents}_agents", default_env_config(num_agents=agents))


def test_slide_3_envs_for_4096_agents_per_forward_pass():
    # 4,096 / 3 agents = 1,365 envs; rounded down to the 16 workers: 1,360 per batch; x2 async: 2,720 envs.
    assert calculate_batch_sizes(4096, num_agents=3, num_workers=16, async_factor=2) == (1365, 1360, 2720)
    num_envs, batch_envs = envs_for_target_batch(curriculum(3), 4096, num_workers=16, async_factor=2)
    assert (num_envs, batch_envs) == (2720, 1360) and num_envs // 16 == 170  # envs per worker


@pytest.mark.parametrize("agents,envs", [(3, 2720), (4, 2048), (8, 1024), (24, 320)])
def test_slide_10_agents_against_envs(agents, envs):
    """The table's Agents and Envs columns (its step columns assume 192 steps per env, which a batch of 524,288
    agent steps does not give for every row; the envs are what the sizing decides)."""
    assert envs_for_target_batch(curriculum(agents), 4096, num_workers=16, async_factor=2)[0] == envs


def test_slides_4_7_9_and_11_from_an_experience_of_the_seeds_sizes():
    cfg = TrainerConfig(batch_size=524_288, minibatch_size=16_384, bptt_horizon=64)
    total_agents = 2720 * 3  # slide 3's envs of 3 agents: every agent gets a row
    exp = Experience(
        total_agents=total_agents,
        batch_size=cfg.batch_size,
        bptt_horizon=cfg.bptt_horizon,
        minibatch_size=cfg.minibatch_size,
        obs_space=spaces.Box(0, 255, (TOKENS, 3), np.uint8),
        atn_space=spaces.MultiDiscrete([9, 10]),
        device="cpu",
        hidden_size=128,
    )
    assert exp.segments == 8192 and exp.obs.shape[:2] == (8192, 64)  # slide 4: 8,192 sequences of 64 steps
    assert exp.minibatch_segments == 256 and exp.num_minibatches == 32  # slides 4 and 7: 32 updates of 256 rows
    assert exp.minibatch_size == 16_384 and exp.segments * exp.bptt_horizon == 524_288  # slide 9
    # Slide 11's formula, segments x steps x observation bytes, for token observations: 200 tokens of 3 bytes
    # (the seed's 11 x 11 x 4-byte box would be 253 MB; tokens are 315 MB here).
    assert exp.obs.nbytes == 8192 * 64 * TOKENS * 3 == 314_572_800
    batches = list(exp.iter_minibatches())
    assert len(batches) == 32 and all(mb["obs"].shape[:2] == (256, 64) for mb in batches)
