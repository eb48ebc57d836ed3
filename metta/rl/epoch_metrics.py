"""The metrics of one epoch (a rollout and its update), in the shared vocabulary every loop logs.

    metrics = epoch_metrics(episode_stats, losses, experience, optimizer, steps, seconds, timer=timer,
                            phase_before=phase_before, system_monitor=monitor, memory_monitor=memory)

Keys: ``overview/sps`` (``steps`` over ``seconds``: pass every rank's steps for the run's rate),
``overview/reward`` and ``overview/episodes`` when episodes finished, ``env_<stat>`` (episode statistics'
means), ``losses/*``, ``experience/*``, ``parameters/minibatches`` (forward/backward passes of the update),
``parameters/learning_rate``, ``parameters/optimizer_steps`` (steps taken so far), ``grad/norm`` (the last
optimizer step's clipped-before norm), ``timing/frac/{env,forward,advantage,learn,other}`` (shares of the
epoch's wall time, from a ``Stopwatch`` and its ``get_all_elapsed()`` taken at the epoch's start), and the
monitors' own keys (``monitor/*``, ``memory/*``) as they name them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from metta.common.distributed import unwrap_agent
from metta.rl.intervals import crossed

TIMED_PHASES = {
    "env": "_rollout.env",
    "forward": "_rollout.forward",
    "advantage": "_train.advantage",
    "learn": "_train.learn",
}
EPOCH_PHASES = ("_rollout", "_train", "_process_stats")


def epoch_metrics(
    episode_stats: Mapping[str, list],
    losses: Any,
    experience: Any,
    optimizer: Any,
    steps: int,
    seconds: float,
    *,
    timer: Any = None,
    phase_before: Mapping[str, float] | None = None,
    system_monitor: Any = None,
    memory_monitor: Any = None,
) -> dict[str, float]:
    metrics: dict[str, float] = {"overview/sps": steps / max(seconds, 1e-9)}
    rewards = episode_stats.get("episode_reward", [])
    if rewards:
        metrics["overview/reward"] = float(np.mean(rewards))
        metrics["overview/episodes"] = float(len(rewards))
    metrics.update(
        {f"env_{k}": float(np.mean(v)) for k, v in episode_stats.items() if v and isinstance(v[0], (int, float))}
    )
    metrics.update({f"losses/{k}": v for k, v in losses.stats().items()})
    metrics.update({f"experience/{k}": v for k, v in experience.stats().items()})
    metrics["parameters/learning_rate"] = float(optimizer.param_groups[0]["lr"])
    if hasattr(optimizer, "steps"):
        metrics["parameters/optimizer_steps"] = float(optimizer.steps)
    metrics["parameters/minibatches"] = float(losses.minibatches_processed)
    grad_norm = getattr(optimizer, "last_grad_norm", None)
    if grad_norm is not None:
        metrics["grad/norm"] = float(grad_norm)
    if timer is not None:
        metrics.update(timing_fractions(timer, phase_before or {}))
    if system_monitor is not None:
        metrics.update(system_monitor.stats())
    if memory_monitor is not None:
        metrics.update(memory_monitor.stats())
    return metrics


def timing_fractions(timer: Any, phase_before: Mapping[str, float]) -> dict[str, float]:
    """``timing/frac/<phase>``: each phase's share of the time spent in the epoch's phases since ``phase_before``."""
    now = timer.get_all_elapsed()
    spent = {k: now.get(k, 0.0) - phase_before.get(k, 0.0) for k in now}
    total = max(sum(spent.get(k, 0.0) for k in EPOCH_PHASES), 1e-9)
    phases = {name: spent.get(key, 0.0) for name, key in TIMED_PHASES.items()}
    phases["other"] = max(0.0, total - sum(phases.values()))
    return {f"timing/frac/{k}": v / total for k, v in phases.items()}


def interval_metrics(
    agent: Any, optimizer: Any, trainer_cfg: Any, epoch_before: int, epoch_after: int
) -> dict[str, float]:
    """The metrics that come at intervals (``metta.rl.intervals.crossed``): ``grad/mean|variance|norm`` of the
    update's last optimizer step every ``trainer_cfg.grad_mean_variance_interval`` epochs (the optimizer records
    them when ``optimizer.record_grad_stats`` was set for the update), and ``weights/<layer>/<stat>`` (singular
    values, effective rank, norms of each analysed layer) every ``analyze_weights_interval`` epochs of the agent's
    config. ``agent`` may be wrapped for DDP."""
    agent = unwrap_agent(agent)
    out: dict[str, float] = {}
    stats = getattr(optimizer, "last_grad_stats", None)
    if crossed(trainer_cfg.grad_mean_variance_interval, epoch_before, epoch_after) and stats:
        out.update({k: float(v) for k, v in stats.items()})
    config = getattr(agent, "config", None)
    if config is not None and crossed(getattr(config, "analyze_weights_interval", 0), epoch_before, epoch_after):
        for layer in agent.compute_weight_metrics():
            out.update({f"weights/{layer['name']}/{k}": float(v) for k, v in layer.items() if k != "name"})
    return out
