"""Evaluation and replays for training scripts: re-exported from ``metta.sim.evaluation``, where they live."""

from metta.sim.evaluation import (
    EVAL_TERRAINS,
    NAVIGATION_TEMPLATE,
    create_evaluation_config_suite,
    create_replay_config,
    evaluate_policy_suite,
    generate_replay_simple,
    suite_scores,
)

__all__ = [
    "EVAL_TERRAINS",
    "NAVIGATION_TEMPLATE",
    "create_evaluation_config_suite",
    "create_replay_config",
    "evaluate_policy_suite",
    "generate_replay_simple",
    "suite_scores",
]
