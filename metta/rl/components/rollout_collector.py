"""``RolloutCollector``: fills an ``Experience`` buffer from a vecenv, over ``functional_trainer.rollout``.

collector = RolloutCollector(vecenv, policy, experience, device)
stats, steps = collector.collect()   # stats: {key: [value per finished episode]}; steps: agent steps taken
"""

from __future__ import annotations

from typing import Any

import torch

from metta.rl.experience import Experience
from metta.rl.training import rollout


class RolloutCollector:
    def __init__(
        self,
        vecenv: Any,
        policy: torch.nn.Module,
        experience: Experience,
        device: torch.device | str,
        timer: Any = None,
    ):
        if not (callable(getattr(vecenv, "recv", None)) and callable(getattr(vecenv, "send", None))):
            raise TypeError(
                f"vecenv is a {type(vecenv).__name__}; pass the vectorized env from Environment(...) or "
                "make_vecenv(...)"
            )
        if not isinstance(policy, torch.nn.Module):
            raise TypeError(f"policy is a {type(policy).__name__}; pass the agent (an nn.Module), e.g. Agent(env)")
        if not isinstance(experience, Experience):
            raise TypeError(
                f"experience is a {type(experience).__name__}; pass an Experience, e.g. make_experience(env, policy, "
                "cfg)"
            )
        self.vecenv = vecenv
        self.policy = policy
        self.experience = experience
        self.device = device
        self.timer = timer
        self.total_steps = 0  # agent steps over every collect() call

    def collect(self) -> tuple[dict[str, list], int]:
        """Run the policy until the buffer is full. Returns ``(episode stats, agent steps of this call)``."""
        steps, stats = rollout(self.policy, self.vecenv, self.experience, self.device, 0, self.timer)
        self.total_steps += steps
        return stats, steps
