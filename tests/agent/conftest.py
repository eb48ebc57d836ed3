from __future__ import annotations

import pytest
import torch

from metta.mettagrid.env import MettaGridEnv

SMALL_ENV = {
    "game": {
        "num_agents": 2,
        "max_steps": 30,
        "map_builder": {
            "type": "random",
            "width": 8,
            "height": 8,
            "agents": 2,
            "objects": {"altar": 2},
            "border_width": 1,
        },
    }
}


@pytest.fixture(scope="session")
def env() -> MettaGridEnv:
    return MettaGridEnv(SMALL_ENV, num_envs=4, seed=0)


@pytest.fixture(scope="session")
def rollout_obs(env: MettaGridEnv) -> torch.Tensor:
    """Real observations ``[steps=6, agents=8, 200, 3]`` from random actions."""
    rng = torch.Generator().manual_seed(0)
    obs, _ = env.reset(0)
    frames = [torch.from_numpy(obs.copy())]
    nvec = env.single_action_space.nvec
    for _ in range(5):
        types = torch.randint(0, int(nvec[0]), (env.num_agents,), generator=rng)
        args = torch.tensor([torch.randint(0, env.max_action_args[t] + 1, (1,), generator=rng).item() for t in types])
        obs, *_ = env.step(torch.stack([types, args], 1).numpy().astype("int32"))
        frames.append(torch.from_numpy(obs.copy()))
    return torch.stack(frames)
