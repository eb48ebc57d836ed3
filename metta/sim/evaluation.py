"""Evaluation and replays for training scripts: the terrain suite, scores per simulation and category, replays.

    suite = create_evaluation_config_suite()
    scores = evaluate_policy_suite(policy_record, policy_store, suite, device="cpu", stats_dir=dirs.stats_dir)
    # {"navigation/terrain_small": 0.8, "navigation/terrain_medium": 0.5, "navigation/terrain_large": 0.3,
    #  "navigation/score": 0.53}
    path = generate_replay_simple(policy_record, policy_store, create_replay_config(), device="cpu",
                                  replay_dir=dirs.replay_dir, epoch=epoch)

The work is done by ``Simulation`` and ``SimulationSuite`` (``metta.sim.simulation``); this module builds the
configs and turns results into scores. ``metta.interface`` re-exports it. Named suites (``terrain``,
``navigation``, ``smoke``) are in ``metta.sim.suites``.

A score is missing, never partial: a simulation stopped by its ``max_time_s`` guard scores NaN, and so does every
category it belongs to (``format_scores`` prints NaN as "missing"; metrics.jsonl stores it as null).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_store import PolicyStore
from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.config_loader import load_config_dict
from metta.mettagrid.map.terrain import TERRAIN_DIRS
from metta.sim.simulation import Simulation, SimulationResults, SimulationSuite
from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig
from metta.sim.suites import terrain_suite

NAVIGATION_TEMPLATE = "/env/mettagrid/navigation/training/terrain_from_numpy_defaults"

_logger = logging.getLogger(__name__)


def create_evaluation_config_suite() -> SimulationSuiteConfig:
    """The interface's navigation suite: balanced small/medium/large terrain, 5 episodes each, each episode run
    to its end (``metta.sim.suites.terrain_suite``; ``suite_config(name)`` gives the other suites)."""
    return terrain_suite()


def create_replay_config(terrain_dir: str = "varied_terrain/balanced_medium") -> SingleEnvSimulationConfig:
    """One episode of the navigation template on the terrain set ``terrain_dir``, recorded for 60 s at most.

    A replay is for watching, not scoring: recording reads the whole grid every step (about 50 ms per step on
    this 176 x 180 map), so the 60 s guard keeps a training run's replays from costing minutes; a replay it cuts
    is written as far as it got.
    """
    if terrain_dir not in TERRAIN_DIRS:
        raise ValueError(f"terrain_dir={terrain_dir!r} is not a terrain set; use one of {TERRAIN_DIRS}")
    return SingleEnvSimulationConfig(
        env=NAVIGATION_TEMPLATE,
        num_episodes=1,
        max_time_s=60,
        env_overrides={"game.map_builder.room.dir": terrain_dir},
    )


def live_policy_record(
    policy: nn.Module,
    checkpoint_dir: str | os.PathLike,
    epoch: int,
    agent_step: int,
    run_name: str | None = None,
    run_dir: str | os.PathLike | None = None,
) -> PolicyRecord:
    """A record naming a training run's live policy for the evaluation database: its uri is the checkpoint file of
    ``epoch`` in ``checkpoint_dir`` (``model_{epoch:04d}.pt``, the file a checkpoint at this epoch writes); the run
    directory ``run_dir`` (default: the folder above ``checkpoint_dir``) and ``run_name`` (default: its name) say
    which run it belongs to."""
    path = Path(checkpoint_dir).absolute() / PolicyStore.make_model_name(epoch)
    run_dir = Path(run_dir).absolute() if run_dir is not None else path.parent.parent
    metadata = {"epoch": epoch, "agent_step": agent_step, "run_dir": str(run_dir)}
    record = PolicyRecord(None, run_name or run_dir.name, f"file://{path}", metadata)
    record.policy = policy
    return record


def replay_env_label(config: SingleEnvSimulationConfig) -> str:
    """The env's name a replay records (its viewer shows it): the env config's own label, else its path (or
    "custom_env") followed by the overrides applied. The simulation's name, "replay", does not name the env."""
    env = config.env
    if isinstance(env, str):
        own = load_config_dict(env).get("label")
    else:
        own = env.label if isinstance(env, MettaGridConfig) else env.get("label")
    if config.env_overrides.get("label") or own:
        return str(config.env_overrides.get("label") or own)
    base = env if isinstance(env, str) else "custom_env"
    overrides = ", ".join(f"{key}={value}" for key, value in config.env_overrides.items())
    return f"{base} ({overrides})" if overrides else base


def _check_policy(policy_record: Any) -> None:
    if not isinstance(policy_record, (PolicyRecord, nn.Module)):
        raise TypeError(
            f"policy_record is a {type(policy_record).__name__}; pass a PolicyRecord (policy_store.policy_record(uri) "
            "or the record save_checkpoint returned) or a MettaAgent"
        )


def _sim_key(config: SimulationSuiteConfig, name: str) -> tuple[str, str]:
    category, _, sim = name.partition("/")
    return (category, sim) if sim else (config.name, name)


def suite_scores(config: SimulationSuiteConfig, results: dict[str, SimulationResults]) -> dict[str, float]:
    """``"{prefix}/{sim}"``: the candidate's mean episode reward; ``"{category}/score"``: the mean over its sims.

    A simulation's key is its name (``navigation/terrain_small``); a name without a ``/`` is filed under the
    suite's name. Categories are ``config.categories`` (each the mean over the sims whose name contains it,
    upstream's rule) or, when not given, the name prefixes (each the mean over the sims filed under it). A
    simulation stopped by its ``max_time_s`` guard scores NaN (missing), and so does every category it is in:
    a mean over the other sims would be a different test.
    """
    scores: dict[str, float] = {}
    members: dict[str, list[float]] = {}
    for name, result in results.items():
        category, sim = _sim_key(config, name)
        scores[f"{category}/{sim}"] = result.score
        if config.categories is None:
            members.setdefault(category, []).append(result.score)
    for category in config.categories or ():
        members[category] = [result.score for name, result in results.items() if category in name]
    for category, values in members.items():
        scores[f"{category}/score"] = math.fsum(values) / len(values) if values else math.nan
    return scores


def format_scores(scores: dict[str, float]) -> str:
    """``key 0.123`` pairs for a log line; a missing score (NaN) reads ``missing``."""
    return ", ".join(f"{k} {'missing' if math.isnan(v) else f'{v:.3f}'}" for k, v in sorted(scores.items()))


def evaluate_policy_suite(
    policy_record: PolicyRecord | nn.Module,
    policy_store: Any,
    evaluation_config: SimulationSuiteConfig,
    device: torch.device | str,
    vectorization: str = "serial",
    stats_dir: str | os.PathLike | None = None,
    logger: logging.Logger | None = None,
    *,
    database: str | os.PathLike | None = None,
    replay_dir: str | os.PathLike | None = None,
    seed: int = 0,
    results: dict[str, SimulationResults] | None = None,
) -> dict[str, float]:
    """Run every simulation of ``evaluation_config`` and return the scores (see ``suite_scores``; NaN: missing):
    the one evaluation of run.py, the trainer, ``PolicyEvaluator`` and the interface, so every one logs the same
    keys.

    Per-episode stats go to ``stats_dir`` (one ``.jsonl`` file per simulation) when it is given, and to the
    evaluation database ``database`` (``metta.common.evaluation_db``, e.g. ``database_path(data_dir)``) when it
    is given; that needs a ``PolicyRecord`` naming the policy (``live_policy_record`` for a training run's
    agent). A replay of every counted episode goes to ``replay_dir`` when it is given. ``seed`` seeds the envs and
    the policy's sampling; ``results``, when given, is filled with each simulation's ``SimulationResults``. To
    let the PolicyStore's ``top`` selector pick by these scores, store them in the record before saving it:
    ``policy_record.metadata["eval_scores"] = scores``.
    """
    log = logger or _logger
    _check_policy(policy_record)
    if not isinstance(evaluation_config, SimulationSuiteConfig):
        raise TypeError(
            f"evaluation_config is a {type(evaluation_config).__name__}; pass a SimulationSuiteConfig, e.g. "
            "create_evaluation_config_suite()"
        )
    suite = SimulationSuite(
        evaluation_config,
        policy_record,
        policy_store,
        device,
        vectorization,
        stats_dir,
        replay_dir,
        seed=seed,
        database=database,
    )
    simulated = suite.simulate()
    if results is not None:
        results.update(simulated)
    scores = suite_scores(evaluation_config, simulated)
    for name, result in simulated.items():
        if not result.complete:
            log.warning(
                "evaluation %s: score missing (the max_time_s guard stopped it after %d of %d episodes)",
                name,
                result.num_episodes,
                result.num_episodes_requested,
            )
    # Callers say the scores with their context (run.py's "evaluation at epoch N: ..."); here only for debugging.
    log.debug("suite %s: %s", evaluation_config.name, format_scores(scores))
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

    The episode runs to its end. If it outlasts a ``max_time_s`` guard, the part recorded so far is written (no
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
    env_overrides = {**replay_config.env_overrides, "label": replay_env_label(replay_config)}
    config = replay_config.model_copy(update={"num_episodes": 1, "env_overrides": env_overrides})
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
