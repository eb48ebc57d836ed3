"""Evaluation and replays for training scripts: the terrain suite, scores per simulation and category, replays.

    suite = create_evaluation_config_suite()
    scores = evaluate_policy_suite(policy_record, policy_store, suite, device="cpu", stats_dir=dirs.stats_dir)
    # {"navigation/terrain_small": 0.8, "navigation/terrain_medium": 0.5, "navigation/terrain_large": 0.3,
    #  "navigation/score": 0.53}
    path = generate_replay_simple(policy_record, policy_store, create_replay_config(), device="cpu",
                                  replay_dir=dirs.replay_dir, epoch=epoch)

The work is done by ``Simulation`` and ``SimulationSuite`` (``metta.sim.simulation``); this module builds the
configs and turns results into scores. ``metta.interface`` re-exports it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metta.agent.policy_record import PolicyRecord
from metta.mettagrid.map.terrain import TERRAIN_DIRS
from metta.sim.simulation import Simulation, SimulationResults, SimulationSuite
from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig

EVAL_TERRAINS = ("terrain_small", "terrain_medium", "terrain_large")
NAVIGATION_TEMPLATE = "/env/mettagrid/navigation/training/terrain_from_numpy_defaults"

_logger = logging.getLogger(__name__)


def create_evaluation_config_suite() -> SimulationSuiteConfig:
    """The interface's navigation suite: balanced small/medium/large terrain, 5 episodes each, 30 s limit.

    The envs are the packaged ``/env/mettagrid/navigation/evals/terrain_{small,medium,large}`` configs (the
    navigation template with ``room.dir`` set to ``varied_terrain/balanced_{size}``), where upstream patched
    the template through ``env_overrides``. The suite-level ``num_episodes=10`` is upstream's; every
    simulation sets its own 5, which wins.
    """
    return SimulationSuiteConfig(
        name="evaluation",
        num_episodes=10,
        simulations={
            f"navigation/{terrain}": SingleEnvSimulationConfig(
                env=f"/env/mettagrid/navigation/evals/{terrain}", num_episodes=5, max_time_s=30
            )
            for terrain in EVAL_TERRAINS
        },
    )


def create_replay_config(terrain_dir: str = "varied_terrain/balanced_medium") -> SingleEnvSimulationConfig:
    """One episode (60 s at most) of the navigation template on the terrain set ``terrain_dir``."""
    if terrain_dir not in TERRAIN_DIRS:
        raise ValueError(f"terrain_dir={terrain_dir!r} is not a terrain set; use one of {TERRAIN_DIRS}")
    return SingleEnvSimulationConfig(
        env=NAVIGATION_TEMPLATE,
        num_episodes=1,
        max_time_s=60,
        env_overrides={"game.map_builder.room.dir": terrain_dir},
    )


def _check_policy(policy_record: Any) -> None:
    if not isinstance(policy_record, (PolicyRecord, nn.Module)):
        raise TypeError(
            f"policy_record is a {type(policy_record).__name__}; pass a PolicyRecord (policy_store.policy_record(uri) "
            "or the record save_checkpoint returned) or a MettaAgent"
        )


def suite_scores(config: SimulationSuiteConfig, results: dict[str, SimulationResults]) -> dict[str, float]:
    """``"{category}/{sim}"``: the candidate's mean episode reward; ``"{category}/score"``: the mean over its sims.

    A simulation's category is the part of its name before the first ``/`` (``navigation/terrain_small`` ->
    ``navigation``); a name without one is filed under the suite's name. Simulations that finished no episode
    before their time limit get no score and do not count toward their category.
    """
    scores: dict[str, float] = {}
    by_category: dict[str, list[float]] = {}
    for name, result in results.items():
        category, _, sim = name.partition("/")
        if not sim:
            category, sim = config.name, name
        if result.num_episodes == 0:
            continue
        scores[f"{category}/{sim}"] = result.mean_reward
        by_category.setdefault(category, []).append(result.mean_reward)
    for category, values in by_category.items():
        scores[f"{category}/score"] = sum(values) / len(values)
    return scores


def evaluate_policy_suite(
    policy_record: PolicyRecord | nn.Module,
    policy_store: Any,
    evaluation_config: SimulationSuiteConfig,
    device: torch.device | str,
    vectorization: str = "serial",
    stats_dir: str | os.PathLike | None = None,
    logger: logging.Logger | None = None,
    *,
    replay_dir: str | os.PathLike | None = None,
    seed: int = 0,
    results: dict[str, SimulationResults] | None = None,
) -> dict[str, float]:
    """Run every simulation of ``evaluation_config`` and return the scores (see ``suite_scores``): the one
    evaluation of run.py, the trainer, ``PolicyEvaluator`` and the interface, so every one logs the same keys.

    Per-episode stats go to ``stats_dir`` (one ``.jsonl`` file per simulation) and a replay of every counted
    episode to ``replay_dir`` when they are given; ``seed`` seeds the episodes; ``results``, when given, is filled
    with each simulation's ``SimulationResults``. To let the PolicyStore's ``top`` selector pick by these scores,
    store them in the record before saving it: ``policy_record.metadata["eval_scores"] = scores``.
    """
    log = logger or _logger
    _check_policy(policy_record)
    if not isinstance(evaluation_config, SimulationSuiteConfig):
        raise TypeError(
            f"evaluation_config is a {type(evaluation_config).__name__}; pass a SimulationSuiteConfig, e.g. "
            "create_evaluation_config_suite()"
        )
    suite = SimulationSuite(
        evaluation_config, policy_record, policy_store, device, vectorization, stats_dir, replay_dir, seed=seed
    )
    simulated = suite.simulate()
    if results is not None:
        results.update(simulated)
    scores = suite_scores(evaluation_config, simulated)
    for name, result in simulated.items():
        if result.num_episodes == 0:
            log.warning("evaluation %s: no episode finished within max_time_s; it has no score", name)
    log.info("evaluation %s: %s", evaluation_config.name, ", ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    return scores


def generate_replay_simple(
    policy_record: PolicyRecord | nn.Module,
    policy_store: Any,
    replay_config: SingleEnvSimulationConfig,
    device: torch.device | str,
    vectorization: str = "serial",
    replay_dir: str | os.PathLike = "./replays",
    epoch: int | None = None,
    logger: logging.Logger | None = None,
) -> Path | None:
    """Record one episode of ``replay_config`` and return the replay file's path.

    If the episode does not finish within ``max_time_s``, the part recorded so far is written (no
    ``episode_end``) and its path returned, with a warning; None only if nothing was recorded.

    The file is ``{replay_dir}[/epoch_{epoch:04d}]/replay/{episode_id}.json.z`` (docs/replay_format.md).
    Upstream returned a MettaScope URL; this returns the local path. ``metta.mettagrid.replay.write_viewer_page``
    writes a page that shows it (``python -m metta.mettagrid.replay view PATH``); ``read_replay(path)`` reads it.
    The episode is recorded from the env in this process, so ``vectorization`` must be "serial" (the simulation
    says so otherwise).
    """
    log = logger or _logger
    _check_policy(policy_record)
    if not isinstance(replay_config, SingleEnvSimulationConfig):
        raise TypeError(
            f"replay_config is a {type(replay_config).__name__}; pass a SingleEnvSimulationConfig, e.g. "
            "create_replay_config()"
        )
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ValueError(f"epoch={epoch!r} must be a non-negative integer or None")
    out_dir = Path(replay_dir) if epoch is None else Path(replay_dir) / f"epoch_{epoch:04d}"
    config = replay_config.model_copy(update={"num_episodes": 1})
    sim = Simulation("replay", config, policy_record, policy_store, device, vectorization, replay_dir=out_dir)
    result = sim.simulate()
    if result.replay_paths:
        path = result.replay_paths[0]
    elif result.partial_replay_paths:
        path = result.partial_replay_paths[0]
        log.warning("replay: the episode outlasted max_time_s=%.1f; %s holds its start", config.max_time_s, path)
    else:
        log.warning("replay: nothing recorded within max_time_s=%.1f", config.max_time_s)
        return None
    log.info("replay written to %s", path)
    return path
