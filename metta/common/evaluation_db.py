"""The evaluation database: every evaluation's episodes, one row per episode and agent, in one SQLite file.

    db = EvaluationDB(database_path(data_dir))          # {data_dir}/evaluations.sqlite, created on first use
    db.add_evaluation(Evaluation(...), episodes)        # one transaction: all of it or nothing
    scores = sim_scores(db, sims={"navigation/labyrinth": env_hash})
    categories = category_scores(scores, ["navigation", "radial"])

Training runs (run.py, the components' evaluator) and ``python -m metta.sim.evaluate`` write here; the
leaderboard (``python -m metta.sim.leaderboard``) and the run report read it.

Why SQLite and not DuckDB (upstream's choice): a training run and the evaluate command write to the same file
at the same time, from different processes. SQLite serialises writers with file locks and waits for them
(``busy_timeout``), and in WAL mode readers never block writers, so concurrent writers lose nothing. DuckDB
allows one writing process per file: the second process fails to open it. SQLite also ships with Python, so
the database adds no dependency; the data is small (a 26-sim suite with 5 episodes is 130 rows per policy).

Layout (``SCHEMA_VERSION`` 1; ``PRAGMA user_version`` holds it, and a newer file is refused with a clear error):

- ``evaluations``: one row per simulation run of one policy: ``eval_id``, ``created_at`` (unix time),
  ``policy_uri``, ``policy_name``, ``epoch``, ``agent_step``, ``run_dir`` (the training run the policy
  belongs to, when known), ``suite``, ``sim``, ``env_hash`` (of the env config), ``seed``,
  ``episodes_requested``, ``complete`` (0 when the simulation's wall-time guard cut it: its score is missing,
  never the mean of the episodes that happened to finish), ``npc_policy_uri``, ``duration_s``.
- ``episodes``: ``(eval_id, episode, agent)`` -> ``candidate`` (1 if the evaluated policy ran this agent),
  ``reward`` (the agent's episode return), ``episode_length``, ``replay_path``.

A simulation's score is the mean over its episodes of the candidate agents' mean return; ``sim_scores`` gives it
with the half-width of a 95% confidence interval (normal approximation, 1.96 standard errors).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
DB_FILENAME = "evaluations.sqlite"

_SCHEMA = """
CREATE TABLE evaluations (
    eval_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    policy_uri TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    epoch INTEGER,
    agent_step INTEGER,
    run_dir TEXT,
    suite TEXT,
    sim TEXT NOT NULL,
    env_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    episodes_requested INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    npc_policy_uri TEXT,
    duration_s REAL
);
CREATE TABLE episodes (
    eval_id TEXT NOT NULL REFERENCES evaluations(eval_id),
    episode INTEGER NOT NULL,
    agent INTEGER NOT NULL,
    candidate INTEGER NOT NULL,
    reward REAL NOT NULL,
    episode_length INTEGER NOT NULL,
    replay_path TEXT,
    PRIMARY KEY (eval_id, episode, agent)
);
CREATE INDEX evaluations_by_policy ON evaluations (policy_uri, epoch, sim, created_at);
CREATE INDEX evaluations_by_run ON evaluations (run_dir, created_at);
"""


class EvaluationDBError(RuntimeError):
    """The file is not an evaluation database this version of metta can use."""


def database_path(data_dir: str | os.PathLike) -> Path:
    """Where a data directory's evaluation database lives: ``{data_dir}/evaluations.sqlite``."""
    return Path(data_dir) / DB_FILENAME


@dataclass(frozen=True)
class Evaluation:
    """One simulation of one policy, as stored in the ``evaluations`` table."""

    eval_id: str
    policy_uri: str
    policy_name: str
    sim: str
    env_hash: str
    seed: int
    episodes_requested: int
    complete: bool
    suite: str | None = None
    epoch: int | None = None
    agent_step: int | None = None
    run_dir: str | None = None
    npc_policy_uri: str | None = None
    duration_s: float | None = None
    created_at: float | None = None  # None: now


@dataclass(frozen=True)
class EpisodeRow:
    """One agent of one episode, as stored in the ``episodes`` table."""

    episode: int
    agent: int
    candidate: bool
    reward: float
    episode_length: int
    replay_path: str | None = None


@dataclass(frozen=True)
class SimScore:
    """A policy's score on one simulation (its newest evaluation there); ``score`` is None when missing."""

    policy_uri: str
    policy_name: str
    epoch: int | None
    agent_step: int | None
    run_dir: str | None
    suite: str | None
    sim: str
    env_hash: str
    seed: int
    eval_id: str
    created_at: float
    complete: bool
    num_episodes: int
    score: float | None  # mean over episodes of the candidate agents' mean return; None when not complete
    ci95: float | None  # half-width of the 95% confidence interval; None with fewer than two episodes
    replay_path: str | None  # the first episode's replay, when one was recorded

    @property
    def policy_key(self) -> tuple[str, int | None]:
        return self.policy_uri, self.epoch


class EvaluationDB:
    """An open evaluation database (created with the current schema when the file is new).

    Safe to use from several processes at once: each write is one ``BEGIN IMMEDIATE`` transaction, and a writer
    that finds the file locked waits up to ``timeout_s`` for its turn.
    """

    def __init__(self, path: str | os.PathLike, timeout_s: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        except sqlite3.Error as err:
            raise EvaluationDBError(f"cannot open the evaluation database {self.path}: {err}") from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._prepare_waiting(timeout_s)
        except BaseException:
            self._conn.close()
            raise

    def _prepare_waiting(self, timeout_s: float) -> None:
        # Switching a new file to WAL needs every other connection out of it, and SQLite reports a conflict there
        # as "database is locked" at once instead of calling the busy handler; so when two processes create the
        # file at the same moment, the one that loses waits and tries again, as busy_timeout does elsewhere.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._prepare()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise EvaluationDBError(f"{self.path} is not a usable evaluation database: {err}") from None
                time.sleep(0.05)

    def _prepare(self) -> None:
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # WAL: readers (the leaderboard, a report) never block a writer (a run) and the other way round.
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have created the schema while this one waited for the lock.
                    version = self._conn.execute("PRAGMA user_version").fetchone()[0]
                    if version == 0:
                        tables = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
                        if tables:
                            raise EvaluationDBError(
                                f"{self.path} is an SQLite file with tables {[t[0] for t in tables]} but no "
                                "evaluation schema; point data_dir elsewhere or move the file"
                            )
                        # One statement at a time: executescript() would commit the open transaction first.
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                self._conn.execute(statement)
                        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                        version = SCHEMA_VERSION
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.OperationalError:
            raise  # _prepare_waiting retries a locked file
        except sqlite3.DatabaseError as err:
            raise EvaluationDBError(f"{self.path} is not a usable evaluation database: {err}") from None
        if version > SCHEMA_VERSION:
            raise EvaluationDBError(
                f"the evaluation database {self.path} has schema version {version}, newer than this metta's "
                f"({SCHEMA_VERSION}); upgrade metta, or use another data_dir"
            )
        if version < SCHEMA_VERSION:  # no older version has existed; a file claiming one is not ours
            raise EvaluationDBError(f"{self.path} has schema version {version}, which metta never wrote")

    # ------------------------------------------------------------------------------------------------
    def add_evaluation(self, evaluation: Evaluation, episodes: Iterable[EpisodeRow]) -> None:
        """Store one evaluation and its episode rows in one transaction."""
        e = evaluation
        created = time.time() if e.created_at is None else e.created_at
        rows = [
            (
                e.eval_id,
                int(r.episode),
                int(r.agent),
                int(bool(r.candidate)),
                float(r.reward),
                int(r.episode_length),
                r.replay_path,
            )
            for r in episodes
        ]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    e.eval_id,
                    created,
                    e.policy_uri,
                    e.policy_name,
                    e.epoch,
                    e.agent_step,
                    e.run_dir,
                    e.suite,
                    e.sim,
                    e.env_hash,
                    int(e.seed),
                    int(e.episodes_requested),
                    int(bool(e.complete)),
                    e.npc_policy_uri,
                    e.duration_s,
                ),
            )
            conn.executemany("INSERT INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def execute(self, sql: str, params: Sequence | Mapping = ()) -> list[dict]:
        """A read query; each row a dict of column name to value."""
        cursor = self._conn.execute(sql, params)
        columns = [d[0] for d in cursor.description or ()]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EvaluationDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------
# Queries


def _mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, 1.96 * math.sqrt(var / len(values))


def sim_scores(
    db: EvaluationDB,
    sims: Mapping[str, str | None] | Iterable[str] | None = None,
    policy_uris: Iterable[str] | None = None,
    run_dir: str | os.PathLike | None = None,
) -> list[SimScore]:
    """The score per policy per simulation: for each (policy uri, epoch, sim), its newest evaluation.

    ``sims``: only these simulations; a mapping ``{sim: env_hash}`` also keeps only evaluations on that exact env
    config (a map or a setting changed since is a different test). ``policy_uris`` and ``run_dir`` narrow the
    policies. An evaluation that its wall-time guard cut has ``score=None`` (missing), whatever its episodes
    were.
    """
    where, params = [], []
    if sims is not None:
        sims = dict(sims) if isinstance(sims, Mapping) else dict.fromkeys(sims)
        if not sims:
            return []
        clauses = []
        for sim, env_hash in sims.items():
            if env_hash is None:
                clauses.append("sim = ?")
                params.append(sim)
            else:
                clauses.append("(sim = ? AND env_hash = ?)")
                params += [sim, env_hash]
        where.append("(" + " OR ".join(clauses) + ")")
    if policy_uris is not None:
        uris = list(policy_uris)
        if not uris:
            return []
        where.append(f"policy_uri IN ({','.join('?' * len(uris))})")
        params += uris
    if run_dir is not None:
        where.append("run_dir = ?")
        params.append(os.path.abspath(os.fspath(run_dir)))
    condition = ("WHERE " + " AND ".join(where)) if where else ""
    # PARTITION BY puts NULL epochs (the scripted baselines) in one group, as wanted.
    evaluations = db.execute(
        f"""
        SELECT * FROM (
            SELECT *, ROW_NUMBER() OVER (
                PARTITION BY policy_uri, epoch, sim ORDER BY created_at DESC, eval_id DESC) AS newest
            FROM evaluations {condition}
        ) WHERE newest = 1 ORDER BY policy_name, policy_uri, epoch, sim
        """,
        params,
    )
    if not evaluations:
        return []
    ids = [e["eval_id"] for e in evaluations]
    per_episode: dict[str, list[float]] = {i: [] for i in ids}
    first_replay: dict[str, str | None] = {}
    for start in range(0, len(ids), 500):  # SQLite's limit on query parameters
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for row in db.execute(
            f"""SELECT eval_id, episode, AVG(reward) AS reward, MIN(replay_path) AS replay_path
                FROM episodes WHERE candidate = 1 AND eval_id IN ({marks})
                GROUP BY eval_id, episode ORDER BY eval_id, episode""",
            chunk,
        ):
            per_episode[row["eval_id"]].append(float(row["reward"]))
            if row["replay_path"] is not None:
                first_replay.setdefault(row["eval_id"], row["replay_path"])
    out = []
    for e in evaluations:
        values = per_episode[e["eval_id"]]
        complete = bool(e["complete"]) and len(values) == e["episodes_requested"]
        mean, ci = _mean_ci(values) if complete else (None, None)
        out.append(
            SimScore(
                policy_uri=e["policy_uri"],
                policy_name=e["policy_name"],
                epoch=e["epoch"],
                agent_step=e["agent_step"],
                run_dir=e["run_dir"],
                suite=e["suite"],
                sim=e["sim"],
                env_hash=e["env_hash"],
                seed=e["seed"],
                eval_id=e["eval_id"],
                created_at=e["created_at"],
                complete=complete,
                num_episodes=len(values),
                score=mean,
                ci95=ci,
                replay_path=first_replay.get(e["eval_id"]),
            )
        )
    return out


def category_scores(
    scores: Iterable[SimScore], categories: Iterable[str], sims: Iterable[str] | None = None
) -> dict[tuple[str, int | None], dict[str, float | None]]:
    """Per policy (``(uri, epoch)``), each category's score: the mean over the simulations whose name contains the
    category (upstream's rule). It is None (missing) when one of those simulations has no score for the policy,
    since a mean over the rest would be a different, easier test. ``sims`` lists the simulations that make up
    the suite (default: every simulation in ``scores``)."""
    scores = list(scores)
    names = sorted({s.sim for s in scores}) if sims is None else list(sims)
    by_policy: dict[tuple[str, int | None], dict[str, float | None]] = {}
    for s in scores:
        by_policy.setdefault(s.policy_key, {})[s.sim] = s.score
    out: dict[tuple[str, int | None], dict[str, float | None]] = {}
    for key, per_sim in by_policy.items():
        out[key] = {}
        for category in categories:
            members = [n for n in names if category in n]
            values = [per_sim.get(n) for n in members]
            if not members or any(v is None for v in values):
                out[key][category] = None
            else:
                out[key][category] = sum(values) / len(values)
    return out


def latest_run_evaluation(path: str | os.PathLike, run_dir: str | os.PathLike) -> list[SimScore]:
    """The newest evaluation of a training run: the scores of its highest evaluated epoch (empty when the
    database does not exist or holds nothing of the run)."""
    if not Path(path).is_file():
        return []
    with EvaluationDB(path) as db:
        scores = sim_scores(db, run_dir=run_dir)
    if not scores:
        return []
    newest = max(scores, key=lambda s: (s.epoch if s.epoch is not None else -1, s.created_at))
    return [s for s in scores if s.policy_key == newest.policy_key]
