"""Run a policy on an env for a number of episodes: per-episode stats, optional NPC opponents, optional replays.

``Simulation(name, config, policy, policy_store).simulate()`` builds ``min(num_episodes, 64)`` envs of
``config.env`` in one vecenv (``is_training=False``: no episode desync), gives env ``i`` its share of the
episodes (the shares add up to exactly ``num_episodes``), and steps all envs together until every env has
finished its share. Envs that finished their share keep stepping (the vecenv steps all envs at once) but their
further episodes are not counted. Episodes end at the env's ``game.max_steps``, so how long a simulation takes
never changes what it measures. A ``max_time_s`` guard, when set, stops a simulation whose stepping (timed from
the first step, after the envs are built and the policies loaded) outlasts it; its result then has no score
(``SimulationResults.score`` is NaN), not the mean of the episodes that finished.

Reproducible: the envs are seeded from ``seed`` and torch's generator is reseeded with it for the simulation's
duration (and restored after), so the same policy, config and seed give the same episodes on any machine load.

Agents: in every env the first ``max(1, floor(policy_agents_pct * agents_per_env))`` agents are run by the
candidate policy and the rest by the NPC policy (``npc_policy_uri``, loaded through the PolicyStore). Each
policy sees only its own rows and keeps its own LSTM state, zeroed for the agents whose episode just ended
(the env auto-resets, so their next observation already belongs to the new episode).

Outputs:

- ``stats_dir``: ``{stats_dir}/{sim name, '/' -> '__'}.{simulation_id}.jsonl``, one JSON object per counted
  episode (see ``EPISODE_RECORD_KEYS``), written atomically when the simulation ends.
- ``database``: the evaluation database (``metta.common.evaluation_db``): one ``evaluations`` row for the
  simulation and one ``episodes`` row per counted episode and agent, keyed by the policy record's uri and
  epoch, the sim name, the seed and the env config's hash (``env_config_hash``), with the training run the
  policy belongs to (the record's ``run_dir`` metadata, else ``run_dir_of(uri)``). It needs a ``PolicyRecord``
  that names the policy (a bare module has no uri).
- ``replay_dir``: ``{replay_dir}/{sim name}/{episode_id}.json.z``, one replay per counted episode
  (``metta.mettagrid.replay.ReplayWriter``, format in docs/replay_format.md); at the time limit the episodes
  being recorded are written too, as partial replays (no ``episode_end``, ``partial_replay_paths``).
  Recording reads each env's grid in this process, so it needs ``vectorization="serial"``.

The candidate policy is a ``PolicyRecord`` or a policy module. A ``MettaAgent`` (also a record's) is copied
before it is bound to the evaluation env, so evaluating never changes the live training agent (its feature
remapping, active actions or train/eval mode). A scripted baseline (``metta.sim.baselines``) is bound to the
env's action and feature ids. Any other ``nn.Module`` with the ``policy(obs, state)`` interface is used as is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metta.agent.metta_agent import MettaAgent
from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_state import PolicyState
from metta.common.evaluation_db import EpisodeRow, Evaluation, EvaluationDB
from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.curriculum.core import Curriculum, SingleTaskCurriculum
from metta.mettagrid.curriculum.loader import curriculum_from_any
from metta.mettagrid.replay import ReplayWriter
from metta.mettagrid.vecenv import VECTORIZATIONS, VecEnv, make_vecenv
from metta.sim.baselines import BASELINE_SCHEME, ScriptedPolicy
from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig

logger = logging.getLogger(__name__)

EPISODE_RECORD_KEYS = (
    "simulation_id",  # one id per Simulation.simulate() call
    "sim_name",
    "suite_name",
    "env",  # the config path, or the env config's label
    "episode_index",  # 0..num_episodes-1 in order of completion
    "env_index",  # which env of the batch ran it
    "episode_tags",
    "policy_name",
    "policy_uri",
    "npc_policy_uri",
    "candidate_agents",  # agent ids (rows within the env) run by the candidate
    "npc_agents",
    "agent_rewards",  # episode return of every agent, by agent id
    "reward",  # mean return of the candidate's agents: the episode's score
    "npc_reward",  # mean return of the NPC's agents, or null
    "episode_length",
    "replay_path",  # or null
    "infos",  # the env's episode infos (game and agent stats, attributes, ...)
)


@dataclass
class SimulationResults:
    """What ``Simulation.simulate()`` returns; one entry per counted episode, in order of completion."""

    name: str
    simulation_id: str
    num_episodes_requested: int
    rewards: list[float] = field(default_factory=list)  # the candidate's mean return per episode
    npc_rewards: list[float | None] = field(default_factory=list)
    agent_rewards: list[list[float]] = field(default_factory=list)  # every agent's return per episode
    episode_lengths: list[int] = field(default_factory=list)
    replay_paths: list[Path] = field(default_factory=list)
    # Replays of episodes cut by max_time_s (``episode_end`` null); those episodes have no stats record.
    partial_replay_paths: list[Path] = field(default_factory=list)
    stats_path: Path | None = None
    timed_out: bool = False  # the max_time_s guard stopped it: no score
    duration_s: float = 0.0

    @property
    def num_episodes(self) -> int:
        return len(self.rewards)

    @property
    def complete(self) -> bool:
        """Every requested episode ran to its end."""
        return not self.timed_out and self.num_episodes == self.num_episodes_requested

    @property
    def mean_reward(self) -> float:
        """The candidate's mean return over the counted episodes (NaN if none)."""
        return float(np.mean(self.rewards)) if self.rewards else math.nan

    @property
    def score(self) -> float:
        """The simulation's score: ``mean_reward`` of a complete simulation; NaN (missing) otherwise."""
        return self.mean_reward if self.complete else math.nan


def candidate_agent_count(agents_per_env: int, policy_agents_pct: float) -> int:
    """How many agents of each env the candidate runs: the ``policy_agents_pct`` share, at least 1."""
    # The epsilon keeps 0.29 * 100 = 28.999... from losing an agent to floating point.
    return max(1, min(agents_per_env, math.floor(policy_agents_pct * agents_per_env + 1e-9)))


def episode_quotas(num_episodes: int, num_envs: int) -> list[int]:
    """Episodes each env must finish; they add up to exactly ``num_episodes``."""
    base, extra = divmod(num_episodes, num_envs)
    return [base + (1 if e < extra else 0) for e in range(num_envs)]


def env_config_hash(curriculum: Curriculum, env: Any, env_overrides: dict[str, Any] | None) -> str:
    """A short hash naming what a simulation ran on: the resolved env config of a single-task env (maps given
    as text, like the navigation suite's, are part of it), else the env's description and overrides."""
    if isinstance(curriculum, SingleTaskCurriculum):
        text = curriculum.get_task().env_cfg().model_dump_json()
    else:
        text = json.dumps(
            {"curriculum": type(curriculum).__name__, "env": _env_label(env), "overrides": env_overrides or {}},
            sort_keys=True,
            default=repr,
        )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_dir_of(uri: str | None) -> str | None:
    """The training run a saved policy belongs to: ``{run_dir}/checkpoints/<file>`` gives ``run_dir`` (the layout
    ``metta.interface.setup_run_directories`` makes); None for anything else."""
    if uri is None or ("://" in uri and not uri.startswith("file://")):
        return None
    path = Path(uri.removeprefix("file://")).absolute()
    return str(path.parent.parent) if path.parent.name == "checkpoints" else None


def _safe_name(name: str) -> str:
    return name.replace("/", "__").replace(os.sep, "__") or "sim"


def _env_label(env: Any) -> str:
    if isinstance(env, str):
        return env
    if isinstance(env, MettaGridConfig):
        return env.label or "custom_env"
    if isinstance(env, dict):
        return str(env.get("label") or "custom_env")
    return type(env).__name__


def _json_default(value: Any) -> Any:
    # Episode infos come from NumPy arrays in places; anything else odd is written as text, not lost.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, default=_json_default, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_episode_stats(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The episode records of one stats file (or of every ``*.jsonl`` file under a directory)."""
    path = Path(path)
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    records = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


class _PolicyRunner:
    """One policy bound to its agent rows of the vecenv, with its own LSTM state."""

    def __init__(self, policy: nn.Module, rows: np.ndarray | None, device: torch.device):
        self.policy = policy
        self.rows = rows  # None: every row
        self.device = device
        self.state = PolicyState()

    def act(self, obs: np.ndarray, done: np.ndarray, actions: np.ndarray) -> None:
        rows = self.rows
        o = obs if rows is None else obs[rows]
        d = done if rows is None else done[rows]
        self.state.reset_done(torch.from_numpy(d).to(self.device))
        out = self.policy(torch.from_numpy(o).to(self.device), self.state)
        a = out[0].to("cpu", torch.int32).numpy()
        if a.shape != (o.shape[0], 2):
            raise RuntimeError(f"the policy returned actions of shape {list(a.shape)}; expected [{o.shape[0]}, 2]")
        if rows is None:
            actions[:] = a
        else:
            actions[rows] = a


def _bind_policy(policy: nn.Module, vecenv: VecEnv, device: torch.device) -> nn.Module:
    """A MettaAgent copy bound to this env (features, actions) in eval mode; other modules as they are."""
    policy = getattr(policy, "module", policy)  # DistributedDataParallel
    if isinstance(policy, MettaAgent):
        policy = copy.deepcopy(policy).to(device)
        policy.initialize_to_environment(
            vecenv.get_observation_features(), vecenv.action_names, vecenv.max_action_args, device, is_training=False
        )
    elif isinstance(policy, ScriptedPolicy):
        policy = copy.copy(policy).bind(vecenv)
    return policy.eval()


class Simulation:
    """A policy (optionally with an NPC policy) on one env for ``config.num_episodes`` episodes."""

    def __init__(
        self,
        name: str,
        config: SingleEnvSimulationConfig,
        policy_record_or_policy: PolicyRecord | nn.Module,
        policy_store: Any = None,
        device: torch.device | str = "cpu",
        vectorization: str = "serial",
        stats_dir: str | os.PathLike | None = None,
        replay_dir: str | os.PathLike | None = None,
        *,
        suite_name: str | None = None,
        episode_tags: list[str] | None = None,
        seed: int = 0,
        database: str | os.PathLike | None = None,
    ):
        if not isinstance(name, str) or not name:
            raise ValueError(f"simulation name={name!r} must be a non-empty string such as 'navigation/terrain_small'")
        if isinstance(config, dict):
            config = SingleEnvSimulationConfig.model_validate(config)
        if not isinstance(config, SingleEnvSimulationConfig):
            raise TypeError(
                f"config for simulation {name!r} is a {type(config).__name__}; pass a SingleEnvSimulationConfig "
                "(or a dict of its fields)"
            )
        if vectorization not in VECTORIZATIONS:
            raise ValueError(f"vectorization={vectorization!r} is not supported; use one of {list(VECTORIZATIONS)}")
        if replay_dir is not None and vectorization != "serial":
            raise ValueError(
                f"simulation {name!r}: replays are recorded from the envs in this process, so replay_dir needs "
                f"vectorization='serial' (got {vectorization!r})"
            )
        if isinstance(policy_record_or_policy, PolicyRecord):
            self._record: PolicyRecord | None = policy_record_or_policy
        elif isinstance(policy_record_or_policy, nn.Module):
            self._record = None
        else:
            raise TypeError(
                f"simulation {name!r}: the policy is a {type(policy_record_or_policy).__name__}; pass a PolicyRecord "
                "(e.g. policy_store.policy_record(uri)) or a policy module such as a MettaAgent"
            )
        if config.npc_policy_uri is not None and policy_store is None:
            raise ValueError(
                f"simulation {name!r} has npc_policy_uri={config.npc_policy_uri!r} but no policy_store to load it with"
            )
        if database is not None and (self._record is None or not self._record.uri):
            raise ValueError(
                f"simulation {name!r}: writing to the evaluation database needs a PolicyRecord that names the policy "
                "(its uri and epoch); pass one, e.g. metta.sim.evaluation.live_policy_record(agent, policy_store, "
                "epoch, agent_step)"
            )
        self.name = name
        self.config = config
        self._policy = policy_record_or_policy
        self._policy_store = policy_store
        self.device = torch.device(device)
        self.vectorization = vectorization
        self.stats_dir = None if stats_dir is None else Path(stats_dir)
        self.replay_dir = None if replay_dir is None else Path(replay_dir) / _safe_name(name)
        self.suite_name = suite_name
        self.episode_tags = list(episode_tags or [])
        self.seed = int(seed)
        self.database = None if database is None else Path(database)
        # Build the env config now, so a bad override or map fails here rather than after the policy loads.
        self._curriculum = curriculum_from_any(config.env, config.env_overrides or None, task_id=name)
        if isinstance(self._curriculum, SingleTaskCurriculum) and config.max_time_s is None:
            if self._curriculum.get_task().env_cfg().game.max_steps == 0:
                raise ValueError(
                    f"simulation {name!r}: the env has game.max_steps=0 (episodes never end) and max_time_s is None; "
                    "set game.max_steps (env_overrides={'game.max_steps': 1000}) or a max_time_s guard"
                )
        self.env_hash = env_config_hash(self._curriculum, config.env, config.env_overrides)
        # All episodes at once (up to 64 envs): one kernel call steps them all and the policy sees one batch,
        # which is far cheaper than upstream's min(num_episodes, cpu_count) envs run in rounds.
        self.num_envs = min(config.num_episodes, 64)

    # ------------------------------------------------------------------------------------------------
    def _candidate_module(self) -> nn.Module:
        if self._record is not None:
            return self._record.policy
        return self._policy  # type: ignore[return-value]

    def _npc_module(self) -> nn.Module:
        record = self._policy_store.policy_record(self.config.npc_policy_uri)
        return record.policy

    def _make_vecenv(self) -> VecEnv:
        # Serial: one MettaGridEnv steps all envs in one kernel call. Multiprocessing: one env per worker.
        num_workers = 1 if self.vectorization == "serial" else self.num_envs
        return make_vecenv(
            self._curriculum,
            vectorization=self.vectorization,
            num_envs=self.num_envs,
            num_workers=num_workers,
            is_training=False,
        )

    def simulate(self) -> SimulationResults:
        cfg = self.config
        simulation_id = uuid.uuid4().hex[:12]
        results = SimulationResults(self.name, simulation_id, cfg.num_episodes)
        start = time.monotonic()
        vecenv = self._make_vecenv()
        # The policy's action sampling draws from torch's generator: seed it for this simulation only (in _run), so
        # the episodes depend on the seed alone and the caller's random stream (a training run's) is left as it was.
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                records = self._run(vecenv, results)
        finally:
            vecenv.close()
        results.duration_s = time.monotonic() - start
        if self.stats_dir is not None:
            results.stats_path = self.stats_dir / f"{_safe_name(self.name)}.{simulation_id}.jsonl"
            _write_jsonl_atomic(results.stats_path, records)
        if self.database is not None:
            self._write_database(results, records)
        if results.timed_out:
            logger.warning(
                "simulation %s hit its guard max_time_s=%.1f after %d of %d episodes: its score is missing",
                self.name,
                cfg.max_time_s,
                results.num_episodes,
                cfg.num_episodes,
            )
        return results

    def _write_database(self, results: SimulationResults, records: list[dict[str, Any]]) -> None:
        record = self._record
        assert record is not None  # checked in __init__
        meta = record.metadata
        trained = not record.uri.startswith(BASELINE_SCHEME)  # scripted baselines have no training counters
        evaluation = Evaluation(
            eval_id=results.simulation_id,
            policy_uri=record.uri,
            policy_name=record.run_name,
            epoch=int(meta.get("epoch", 0)) if trained else None,
            agent_step=int(meta.get("agent_step", 0)) if trained else None,
            run_dir=meta.get("run_dir") or run_dir_of(record.uri),
            suite=self.suite_name,
            sim=self.name,
            env_hash=self.env_hash,
            seed=self.seed,
            episodes_requested=self.config.num_episodes,
            complete=results.complete,
            npc_policy_uri=self.config.npc_policy_uri,
            duration_s=results.duration_s,
        )
        rows = [
            EpisodeRow(
                episode=rec["episode_index"],
                agent=agent,
                candidate=agent in rec["candidate_agents"],
                reward=reward,
                episode_length=rec["episode_length"],
                replay_path=rec["replay_path"],
            )
            for rec in records
            for agent, reward in enumerate(rec["agent_rewards"])
        ]
        with EvaluationDB(self.database) as db:
            db.add_evaluation(evaluation, rows)

    def _run(self, vecenv: VecEnv, results: SimulationResults) -> list[dict[str, Any]]:
        cfg = self.config
        num_envs, ape = vecenv.num_envs, vecenv.agents_per_env
        n_cand = candidate_agent_count(ape, cfg.policy_agents_pct)
        use_npc = cfg.npc_policy_uri is not None and n_cand < ape
        local = np.arange(vecenv.num_agents) % ape
        candidate = _bind_policy(self._candidate_module(), vecenv, self.device)
        if use_npc:
            npc = _bind_policy(self._npc_module(), vecenv, self.device)
            runners = [
                _PolicyRunner(candidate, np.flatnonzero(local < n_cand), self.device),
                _PolicyRunner(npc, np.flatnonzero(local >= n_cand), self.device),
            ]
        else:
            runners = [_PolicyRunner(candidate, None, self.device)]
        candidate_ids = list(range(n_cand)) if use_npc else list(range(ape))
        npc_ids = list(range(n_cand, ape)) if use_npc else []
        # Seeded after the policies are loaded and bound (building a policy draws random weights), so the first
        # simulation of a record samples the same actions as the next ones.
        torch.manual_seed(self.seed)

        quotas = episode_quotas(cfg.num_episodes, num_envs)
        finished = [0] * num_envs
        base = {
            "simulation_id": results.simulation_id,
            "sim_name": self.name,
            "suite_name": self.suite_name,
            "env": _env_label(cfg.env),
            "episode_tags": self.episode_tags,
            "policy_name": self._record.run_name if self._record is not None else type(self._policy).__name__,
            "policy_uri": self._record.uri if self._record is not None else None,
            "npc_policy_uri": cfg.npc_policy_uri if use_npc else None,
            "candidate_agents": candidate_ids,
            "npc_agents": npc_ids,
        }
        records: list[dict[str, Any]] = []

        vecenv.async_reset(self.seed)
        obs = vecenv.recv()[0]
        # Serial vecenv with one worker: env e of the batch is env e of vecenv.envs[0].
        writers: list[ReplayWriter | None] = [None] * num_envs
        if self.replay_dir is not None:
            for e in range(num_envs):
                writers[e] = ReplayWriter(self.replay_dir)
                writers[e].start_episode(vecenv.envs[0], e)
        actions = np.zeros((vecenv.num_agents, 2), dtype=np.int32)
        done = np.zeros(vecenv.num_agents, dtype=np.bool_)  # nothing to reset before the first step

        start = time.monotonic()  # the guard times the episodes, not building the envs and loading the policies
        with torch.no_grad():
            while any(f < q for f, q in zip(finished, quotas)):
                if cfg.max_time_s is not None and time.monotonic() - start > cfg.max_time_s:
                    results.timed_out = True
                    break
                for runner in runners:
                    runner.act(obs, done, actions)
                vecenv.send(actions)
                obs, _, terminals, truncations, infos, _, _ = vecenv.recv()
                done = terminals | truncations
                for e in range(num_envs):
                    if writers[e] is not None:
                        writers[e].log_step(vecenv.envs[0], e)
                ended = np.flatnonzero(done.reshape(num_envs, ape).any(axis=1))
                if len(ended) != len(infos):
                    raise RuntimeError(
                        f"simulation {self.name}: {len(ended)} envs ended an episode but the vecenv reported "
                        f"{len(infos)} episode infos"
                    )
                for e, info in zip(ended.tolist(), infos):  # both in ascending env order
                    if finished[e] >= quotas[e]:
                        continue  # this env's share is done; its writer was dropped with its last episode
                    replay_path = None
                    writer = writers[e]
                    if writer is not None:
                        written = writer.end_episode()  # None when the episode ended before any frame
                        replay_path = None if written is None else str(written)
                        if finished[e] + 1 < quotas[e]:
                            writer.start_episode(vecenv.envs[0], e)  # the env auto-reset: frame 0 of the next
                        else:
                            writers[e] = None
                    finished[e] += 1
                    rec = self._episode_record(base, len(records), e, info, candidate_ids, npc_ids, replay_path)
                    records.append(rec)
                    results.rewards.append(rec["reward"])
                    results.npc_rewards.append(rec["npc_reward"])
                    results.agent_rewards.append(rec["agent_rewards"])
                    results.episode_lengths.append(rec["episode_length"])
                    if replay_path is not None:
                        results.replay_paths.append(Path(replay_path))
        if results.timed_out:
            # Recording is the slow part on big maps; keep what was recorded rather than throw it away.
            partial = [w.end_episode() for w in writers if w is not None]
            results.partial_replay_paths = [p for p in partial if p is not None]
        return records

    @staticmethod
    def _episode_record(
        base: dict[str, Any],
        index: int,
        env_index: int,
        info: dict[str, Any],
        candidate_ids: list[int],
        npc_ids: list[int],
        replay_path: str | None,
    ) -> dict[str, Any]:
        rewards = [float(r) for r in info["episode_rewards"]]
        return {
            **base,
            "episode_index": index,
            "env_index": env_index,
            "agent_rewards": rewards,
            "reward": float(np.mean([rewards[i] for i in candidate_ids])),
            "npc_reward": float(np.mean([rewards[i] for i in npc_ids])) if npc_ids else None,
            "episode_length": int(info.get("episode_length", 0)),
            "replay_path": replay_path,
            "infos": info,
        }


class SimulationSuite:
    """Every simulation of a ``SimulationSuiteConfig``, one after another, on the same policy."""

    def __init__(
        self,
        config: SimulationSuiteConfig,
        policy_record: PolicyRecord | nn.Module,
        policy_store: Any = None,
        device: torch.device | str = "cpu",
        vectorization: str = "serial",
        stats_dir: str | os.PathLike | None = None,
        replay_dir: str | os.PathLike | None = None,
        *,
        seed: int = 0,
        database: str | os.PathLike | None = None,
    ):
        if isinstance(config, dict):
            config = SimulationSuiteConfig.model_validate(config)
        if not isinstance(config, SimulationSuiteConfig):
            raise TypeError(
                f"config is a {type(config).__name__}; pass a SimulationSuiteConfig (or a dict of its fields)"
            )
        self.config = config
        # Built up front, so every simulation's env config is checked before the first one runs.
        self.simulations = {
            name: Simulation(
                name,
                sim_cfg,
                policy_record,
                policy_store,
                device,
                vectorization,
                stats_dir,
                replay_dir,
                suite_name=config.name,
                episode_tags=config.episode_tags,
                seed=seed,
                database=database,
            )
            for name, sim_cfg in config.simulations.items()
        }

    def simulate(self) -> dict[str, SimulationResults]:
        return {name: sim.simulate() for name, sim in self.simulations.items()}
