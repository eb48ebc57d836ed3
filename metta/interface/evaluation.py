"""Evaluation and replays for training scripts: re-exported from ``metta.sim.evaluation``, where they live."""

from metta.sim.evaluation import (
    NAVIGATION_TEMPLATE,
    create_evaluation_config_suite,
    create_replay_config,
    evaluate_policy_suite,
    format_scores,
    generate_replay_simple,
    live_policy_record,
    suite_scores,
)
from metta.sim.suites import EVAL_TERRAINS, SUITE_NAMES, suite_config

__all__ = [
    "EVAL_TERRAINS",
    "NAVIGATION_TEMPLATE",
    "create_evaluation_config_suite",
    "create_replay_config",
    "SUITE_NAMES",
    "evaluate_policy_suite",
    "format_scores",
    "generate_replay_simple",
    "live_policy_record",
    "suite_config",
    "suite_scores",
]
