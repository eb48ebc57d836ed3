"""Seed 003 (the pipeline slides): its numbers from the real objects that compute them."""

from __future__ import annotations

from gymnasium import spaces

from metta.rl.experience import Experience, calculate_batch_sizes
from metta.rl.trainer_config import TrainerConfig


def test_pipeline_numbers():
    # Slide 3: 4,096 agents per forward pass / 3 agents = 1,365 envs, rounded to 16 workers = 1,360; x2 async.
    target, batch_envs, num_envs = calculate_batch_sizes(4096, num_agents=3, num_workers=16, async_factor=2)
    assert (target, batch_envs, num_envs) == (1365, 1360, 2720)
    assert num_envs // 16 == 170  # envs per worker
    # Slides 4 and 7: 524,288 steps in segments of 64; minibatches of 16,384 steps.
    cfg = TrainerConfig(batch_size=524_288, minibatch_size=16_384, bptt_horizon=64)
    segments = cfg.batch_size // cfg.bptt_horizon
    assert segments == 8192 and cfg.minibatch_size // cfg.bptt_horizon == 256
    assert segments // (cfg.minibatch_size // cfg.bptt_horizon) == 32  # gradient updates per batch
    # The same arithmetic inside Experience, at a size a test can allocate.
    exp = Experience(
        total_agents=3, batch_size=512, bptt_horizon=64, minibatch_size=128, obs_space=spaces.Box(0, 255, (200, 3), "uint8"),
        atn_space=spaces.MultiDiscrete([4, 4]), device="cpu", hidden_size=8,
    )  # fmt: skip
    assert (exp.segments, exp.minibatch_segments, exp.num_minibatches) == (8, 2, 4)
