"""``metta.stats.accumulate_rollout_stats``, the documented import path; it lives in ``metta.rl.training`` with
``rollout()``, its user."""

from metta.rl.training import accumulate_rollout_stats, unroll_nested_dict

__all__ = ["accumulate_rollout_stats", "unroll_nested_dict"]
