"""The evaluation database: schema version, concurrent writer processes, and the score queries."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from metta.common.evaluation_db import (
    SCHEMA_VERSION,
    EpisodeRow,
    Evaluation,
    EvaluationDB,
    EvaluationDBError,
    category_scores,
    database_path,
    latest_run_evaluation,
    sim_scores,
)


def evaluation(eval_id: str, uri: str = "file:///r/checkpoints/model_0010.pt", sim: str = "nav/a", **kw) -> Evaluation:
    fields = dict(
        eval_id=eval_id,
        policy_uri=uri,
        policy_name="r",
        sim=sim,
        env_hash="h",
        seed=0,
        episodes_requested=2,
        complete=True,
        epoch=10,
        run_dir="/r",
    )
    fields.update(kw)
    return Evaluation(**fields)


def episodes(*per_episode: list[float], candidates: int = 1) -> list[EpisodeRow]:
    """Rows for episodes given as each agent's reward; the first ``candidates`` agents are the policy's."""
    return [
        EpisodeRow(episode=e, agent=a, candidate=a < candidates, reward=r, episode_length=10)
        for e, rewards in enumerate(per_episode)
        for a, r in enumerate(rewards)
    ]


def test_a_new_file_gets_the_schema_and_a_newer_one_is_refused(tmp_path):
    path = database_path(tmp_path)
    assert path == tmp_path / "evaluations.sqlite"
    with EvaluationDB(path) as db:
        assert db.execute("PRAGMA user_version")[0]["user_version"] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    EvaluationDB(path).close()  # opening again keeps it
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(EvaluationDBError, match=f"schema version {SCHEMA_VERSION + 1}, newer than .*upgrade metta"):
        EvaluationDB(path)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(EvaluationDBError, match="no evaluation schema"):
        EvaluationDB(other)
    (tmp_path / "junk.sqlite").write_text("not a database at all " * 100)
    with pytest.raises(EvaluationDBError, match="not a usable evaluation database"):
        EvaluationDB(tmp_path / "junk.sqlite")


WRITER = textwrap.dedent(
    """
    import sys
    from metta.common.evaluation_db import EpisodeRow, Evaluation, EvaluationDB
    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(count):
        with EvaluationDB(path) as db:  # a fresh connection each time, as every simulation opens its own
            db.add_evaluation(
                Evaluation(f"{name}-{i}", f"file:///{name}.pt", name, "nav/a", "h", 0, 5, True),
                [EpisodeRow(e, a, True, float(i), 10) for e in range(5) for a in range(4)],
            )
    """
)


def test_two_writer_processes_at_once_lose_nothing(tmp_path):
    path = tmp_path / "evaluations.sqlite"  # both processes race to create it, too
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "60"], stderr=subprocess.PIPE, text=True)
        for name in ("run", "command")
    ]
    for w in writers:
        _, err = w.communicate(timeout=240)
        assert w.returncode == 0, err
    with EvaluationDB(path) as db:
        counts = db.execute("SELECT policy_name, COUNT(*) AS n FROM evaluations GROUP BY policy_name")
        assert {c["policy_name"]: c["n"] for c in counts} == {"run": 60, "command": 60}
        assert db.execute("SELECT COUNT(*) AS n FROM episodes")[0]["n"] == 2 * 60 * 5 * 4


def test_a_failed_write_leaves_nothing(tmp_path):
    with EvaluationDB(tmp_path / "e.sqlite") as db:
        db.add_evaluation(evaluation("a"), episodes([1.0], [0.0]))
        with pytest.raises(sqlite3.IntegrityError):  # the same episode row twice: the whole evaluation is refused
            db.add_evaluation(evaluation("b"), episodes([1.0]) + episodes([1.0]))
        assert [e["eval_id"] for e in db.execute("SELECT eval_id FROM evaluations")] == ["a"]


def test_score_per_policy_per_sim(tmp_path):
    with EvaluationDB(tmp_path / "e.sqlite") as db:
        # Two agents, one of them the candidate: the score is the candidate's mean over episodes.
        db.add_evaluation(evaluation("old", created_at=1.0), episodes([0.0, 9.0], [0.0, 9.0], candidates=1))
        db.add_evaluation(evaluation("new", created_at=2.0), episodes([1.0, 9.0], [0.5, 9.0], candidates=1))
        db.add_evaluation(evaluation("b", sim="nav/b", created_at=2.0), episodes([0.25], [0.25]))
        db.add_evaluation(evaluation("other-env", sim="nav/c", env_hash="h2", created_at=1.5), episodes([1.0], [1.0]))
        # A guard cut: its episodes are stored, its score is missing.
        db.add_evaluation(evaluation("cut", sim="nav/c", created_at=3.0, complete=False), episodes([1.0]))
        db.add_evaluation(
            evaluation("base", uri="baseline://random", sim="nav/a", epoch=None, run_dir=None), episodes([0.0], [0.0])
        )
        scores = {(s.policy_uri, s.sim): s for s in sim_scores(db)}
        a = scores[("file:///r/checkpoints/model_0010.pt", "nav/a")]
        assert (a.eval_id, a.num_episodes, a.complete) == ("new", 2, True)  # the newest evaluation
        assert a.score == pytest.approx(0.75)
        assert a.ci95 == pytest.approx(1.96 * math.sqrt(0.125 / 2))  # sample variance of [1, 0.5] over sqrt(2)
        assert scores[("file:///r/checkpoints/model_0010.pt", "nav/b")].score == 0.25
        cut = scores[("file:///r/checkpoints/model_0010.pt", "nav/c")]
        assert cut.eval_id == "cut" and cut.score is None and cut.ci95 is None and not cut.complete
        assert scores[("baseline://random", "nav/a")].epoch is None
        # Only evaluations on the given env configs.
        only = sim_scores(db, sims={"nav/c": "h2", "nav/a": "h"}, policy_uris=["file:///r/checkpoints/model_0010.pt"])
        assert {(s.sim, s.eval_id) for s in only} == {("nav/c", "other-env"), ("nav/a", "new")}
        assert [s.sim for s in sim_scores(db, run_dir="/r")] == ["nav/a", "nav/b", "nav/c"]
        assert sim_scores(db, sims=[]) == [] and sim_scores(db, policy_uris=[]) == []


def test_category_scores_and_missing_ones(tmp_path):
    with EvaluationDB(tmp_path / "e.sqlite") as db:
        for i, (sim, reward) in enumerate((("nav/radial_a", 1.0), ("nav/radial_b", 0.5), ("nav/walls", 0.0))):
            db.add_evaluation(evaluation(f"e{i}", sim=sim, episodes_requested=1), episodes([reward]))
        db.add_evaluation(
            evaluation("x", uri="file:///x.pt", sim="nav/radial_a", episodes_requested=1, complete=False, run_dir=None),
            [],
        )
        db.add_evaluation(
            evaluation("y", uri="file:///x.pt", sim="nav/walls", episodes_requested=1, run_dir=None), episodes([1.0])
        )
        scores = sim_scores(db)
    sims = ["nav/radial_a", "nav/radial_b", "nav/walls"]
    categories = category_scores(scores, ["nav", "radial", "walls", "memory"], sims=sims)
    r = categories[("file:///r/checkpoints/model_0010.pt", 10)]
    assert r["nav"] == pytest.approx(0.5) and r["radial"] == pytest.approx(0.75) and r["walls"] == 0.0
    assert r["memory"] is None  # no sim of that category
    x = categories[("file:///x.pt", 10)]
    assert x["walls"] == 1.0 and x["radial"] is None and x["nav"] is None  # a missing sim makes its categories missing


def test_latest_run_evaluation(tmp_path):
    path = tmp_path / "e.sqlite"
    assert latest_run_evaluation(path, "/r") == []  # no database yet
    with EvaluationDB(path) as db:
        for epoch in (10, 20):
            uri = f"file:///r/checkpoints/model_{epoch:04d}.pt"
            for sim in ("nav/a", "nav/b"):
                db.add_evaluation(
                    evaluation(f"{epoch}{sim}", uri=uri, sim=sim, epoch=epoch, episodes_requested=1), episodes([1.0])
                )
        db.add_evaluation(evaluation("elsewhere", uri="file:///q.pt", run_dir="/q", epoch=99), episodes([1.0]))
    latest = latest_run_evaluation(path, "/r")
    assert [(s.epoch, s.sim) for s in latest] == [(20, "nav/a"), (20, "nav/b")]
