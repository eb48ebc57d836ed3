"""``python -m metta.sim.evaluate`` end to end (two worker processes), the leaderboard page in headless Chromium,
and the run report's section from the evaluation database. One evaluation for the module."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from sim_helpers import save_new_policy

from metta.agent.policy_store import PolicyStore
from metta.common.evaluation_db import EpisodeRow, Evaluation, EvaluationDB, category_scores, database_path, sim_scores
from metta.common.run_report import write_run_report
from metta.sim.leaderboard import write_leaderboard
from metta.sim.suites import suite_config, suite_env_hashes


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run directory with one saved policy, evaluated with the baselines on the smoke suite (with replays)."""
    root = tmp_path_factory.mktemp("evaluate")
    run_dir = root / "data" / "my_run"
    store = PolicyStore(device="cpu", checkpoint_dir=str(run_dir / "checkpoints"))
    record = save_new_policy(store, "model_0001.pt")
    write_run_report(run_dir)  # the page the leaderboard links the run to
    args = [str(run_dir), "--suite", "smoke", "--episodes", "2", "--workers", "2", "--data-dir", str(root / "data")]
    return root / "data", run_dir, record, args


@pytest.fixture(scope="module")
def command_output(evaluated) -> subprocess.CompletedProcess:
    data, run_dir, record, args = evaluated
    proc = subprocess.run(
        [sys.executable, "-m", "metta.sim.evaluate", *args, "--replays"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_every_policy_and_baseline_plays_every_sim(evaluated, command_output):
    data, run_dir, record, _ = evaluated
    with EvaluationDB(database_path(data)) as db:
        rows = db.execute("SELECT policy_uri, policy_name, sim, seed, epoch, run_dir, complete FROM evaluations")
        n_episodes = db.execute("SELECT COUNT(*) AS n FROM episodes")[0]["n"]
    assert sorted((r["policy_name"], r["sim"]) for r in rows) == sorted(
        (name, sim) for name in ("model_0001.pt", "random", "nearest_altar") for sim in ("smoke/open", "smoke/wall")
    )
    assert all(r["seed"] == 0 and r["complete"] == 1 for r in rows)
    mine = [r for r in rows if r["policy_uri"] == record.uri]
    assert all(r["epoch"] == 1 and r["run_dir"] == str(run_dir.absolute()) for r in mine)
    assert n_episodes == 6 * 2  # 3 policies x 2 sims x 2 episodes x 1 agent
    # The table: sims and the category down, the policies across.
    out = command_output.stdout
    for text in ("smoke/open", "smoke/wall", "smoke/score", "random", "nearest_altar", "model_0001.pt@1", "0.333"):
        assert text in out
    assert "6 simulations in" in command_output.stderr and "6 replay viewer pages" in command_output.stderr
    pages = list((data / "eval_replays").rglob("*.html"))
    assert len(pages) == 6 and all(p.with_name(p.name.removesuffix(".html") + ".json.z").is_file() for p in pages)


def test_the_leaderboard_shows_the_heat_map_of_the_database(evaluated, command_output, browser):
    data, run_dir, record, _ = evaluated
    db_path = database_path(data)
    config = suite_config("smoke")
    hashes = suite_env_hashes(config)
    # Another policy whose wall-time guard cut one sim: that cell, and the category, read "missing".
    with EvaluationDB(db_path) as db:
        for sim, complete in (("smoke/open", False), ("smoke/wall", True)):
            db.add_evaluation(
                Evaluation(
                    f"cut-{sim}", "file:///x/model_0005.pt", "cut_run", sim, hashes[sim], 0, 2, complete, "smoke", 5
                ),
                [EpisodeRow(e, 0, True, 0.333, 60) for e in range(2)],
            )
        scores = sim_scores(db, sims=hashes)
    out = write_leaderboard(db_path, "smoke", data / "board.html")
    page = browser.open(out.resolve().as_uri())
    cells = page.evaluate(
        "[...document.querySelectorAll('td[data-column]')].map(td => [td.dataset.policy, td.dataset.column, "
        "td.dataset.score, td.textContent, getComputedStyle(td).backgroundColor])"
    )
    shown = {(policy, column): (score, text, color) for policy, column, score, text, color in cells}
    categories = category_scores(scores, ["smoke"], sims=list(config.simulations))
    assert len(shown) == 4 * 3  # 4 policies x (2 sims + 1 category)
    for s in scores:
        score, text, color = shown[(s.policy_uri, s.sim)]
        if s.score is None:
            assert score == "" and text == "missing"
        else:
            assert float(score) == pytest.approx(s.score) and f"{s.score:.3f}" in text
            assert (color != "rgb(255, 255, 255)") == (s.score > 0)  # the heat map colours what scored
    for (uri, _epoch), values in categories.items():
        score, text, _ = shown[(uri, "smoke")]
        assert (score == "" and values["smoke"] is None) or float(score) == pytest.approx(values["smoke"])
    assert shown[("file:///x/model_0005.pt", "smoke")][1] == "missing"
    assert shown[("file:///x/model_0005.pt", "smoke/open")][1] == "missing"
    # Rows: best first; the baselines are marked; links go to the run report and to each sim's replay page.
    names = page.evaluate("[...document.querySelectorAll('td.policy')].map(td => td.textContent)")
    assert names[0].startswith("nearest_altar") and "baseline" in names[0]
    links = page.evaluate("[...document.querySelectorAll('a')].map(a => a.href)")
    assert (run_dir / "index.html").resolve().as_uri() in links
    replays = [link for link in links if link.endswith(".html") and "eval_replays" in link]
    assert len(replays) == 6 and all(Path(link.removeprefix("file://")).is_file() for link in replays)


def test_the_run_report_shows_the_runs_latest_evaluation_from_the_database(evaluated, command_output):
    data, run_dir, record, _ = evaluated
    html = write_run_report(run_dir).read_text()
    assert "Latest evaluation in the database (epoch 1, suite smoke)" in html
    with EvaluationDB(database_path(data)) as db:
        for s in sim_scores(db, policy_uris=[record.uri]):
            assert f"<td>{s.sim}</td><td>{s.score:.4f}</td>" in html
            assert not math.isnan(s.score)
