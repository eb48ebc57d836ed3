"""``PolicyEvaluator``: score a policy on a simulation suite, over ``metta.sim.evaluation.evaluate_policy_suite``.

    evaluator = PolicyEvaluator(suite_config, policy_store, device="cpu", stats_dir=dirs.stats_dir)
    scores = evaluator.evaluate(policy_or_record)     # {"navigation/terrain_small": 0.8, "navigation/score": ...}
    evaluator.last_results                             # the SimulationResults of each simulation

``suite_config`` is a ``SimulationSuiteConfig`` (``metta.sim.suites.suite_config(name)`` builds the named
suites). The scores are ``metta.sim.evaluation.evaluate_policy_suite``'s, the evaluation every loop runs: each
simulation's score (the candidate's mean episode reward, ``SimulationResults.score``) under ``{prefix}/{sim}``
and each category's mean under ``{category}/score``; a simulation stopped by its ``max_time_s`` guard scores NaN
(missing), and so do its categories. With ``database`` (an evaluation database path) every episode is also
stored there; ``evaluate`` then needs a ``PolicyRecord`` that names the policy
(``metta.sim.evaluation.live_policy_record``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from metta.agent.policy_record import PolicyRecord
from metta.sim.evaluation import evaluate_policy_suite
from metta.sim.simulation import SimulationResults
from metta.sim.simulation_config import SimulationSuiteConfig


class PolicyEvaluator:
    def __init__(
        self,
        suite_config: SimulationSuiteConfig,
        policy_store: Any = None,
        device: torch.device | str = "cpu",
        stats_dir: str | os.PathLike | None = None,
        replay_dir: str | os.PathLike | None = None,
        vectorization: str = "serial",
        seed: int = 0,
        database: str | os.PathLike | None = None,
    ):
        if isinstance(suite_config, dict):
            suite_config = SimulationSuiteConfig.model_validate(suite_config)
        if not isinstance(suite_config, SimulationSuiteConfig):
            raise TypeError(
                f"suite_config is a {type(suite_config).__name__}; pass a SimulationSuiteConfig, e.g. "
                "metta.interface.create_evaluation_config_suite()"
            )
        self.suite_config = suite_config
        self.policy_store = policy_store
        self.device = device
        self.stats_dir = stats_dir
        self.replay_dir = replay_dir
        self.vectorization = vectorization
        self.seed = seed
        self.database = database
        self.last_results: dict[str, SimulationResults] = {}

    def evaluate(self, policy: PolicyRecord | nn.Module) -> dict[str, float]:
        """Run every simulation of the suite on ``policy`` (a record or the agent itself): the scores."""
        if not isinstance(policy, (PolicyRecord, nn.Module)):
            raise TypeError(f"policy is a {type(policy).__name__}; pass a PolicyRecord or the agent (an nn.Module)")
        self.last_results = {}
        return evaluate_policy_suite(
            policy,
            self.policy_store,
            self.suite_config,
            self.device,
            self.vectorization,
            self.stats_dir,
            replay_dir=self.replay_dir,
            seed=self.seed,
            database=self.database,
            results=self.last_results,
        )
