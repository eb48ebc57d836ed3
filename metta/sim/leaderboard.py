"""The leaderboard: every evaluated policy against every sim of a suite, as one self-contained HTML page.

    python -m metta.sim.leaderboard --suite navigation --out board.html      # from {data_dir}/evaluations.sqlite
    write_leaderboard(database_path("train_dir"), "navigation", "board.html")

Rows are policies (a training run shows its newest evaluated checkpoint, ``--all-checkpoints`` shows each one;
the scripted baselines are rows too), columns the suite's categories and then its sims. Each cell is the
policy's mean episode reward on the sim (its newest evaluation there) with the half-width of the 95%
confidence interval, coloured by value; "missing" where the sim's wall-time guard cut the evaluation or it never
ran. Only evaluations played on the suite's current envs count (the env config hash must match), so a map
changed since does not mix with the new one. A policy's name links to its run report (``{run_dir}/index.html``)
when it has one; a cell's ▶ links to the viewer page of that sim's replay (``evaluate --replays``).

Like the run report, the page needs no script, no network and no server.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from metta.common.evaluation_db import EvaluationDB, SimScore, category_scores, database_path, sim_scores
from metta.common.fs import atomic_write_text
from metta.common.run_report import STYLE
from metta.mettagrid.replay.viewer import page_path_for
from metta.sim.baselines import BASELINE_SCHEME
from metta.sim.simulation_config import SimulationSuiteConfig
from metta.sim.suites import SUITE_NAMES, suite_categories, suite_config, suite_env_hashes

BOARD_STYLE = """
table.board td, table.board th { padding: 3px 6px; font-size: 12px; white-space: nowrap; }
table.board th.sim { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; max-height: 200px; }
table.board td.score { text-align: right; min-width: 58px; }
table.board td.score .ci { display: block; color: #4a5060; font-size: 10px; }
table.board td.missing { color: #8a92a3; background: repeating-linear-gradient(45deg, #f4f5f7, #f4f5f7 4px,
  #e9ebef 4px, #e9ebef 8px); text-align: center; }
table.board td.category { font-weight: 600; }
table.board tr.baseline td.policy { font-style: italic; }
.tag { font-size: 10px; color: #fff; background: #8a92a3; border-radius: 3px; padding: 0 4px; margin-left: 4px; }
.legend span { display: inline-block; width: 60px; text-align: center; font-size: 11px; padding: 2px 0; }
"""


@dataclass
class PolicyRow:
    """One row of the board: a policy and its scores per sim and per category."""

    uri: str
    name: str
    epoch: int | None
    agent_step: int | None
    run_dir: str | None
    sims: dict[str, SimScore] = field(default_factory=dict)
    categories: dict[str, float | None] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.uri.startswith(BASELINE_SCHEME)


def leaderboard_rows(
    db: EvaluationDB, config: SimulationSuiteConfig, all_checkpoints: bool = False
) -> tuple[list[PolicyRow], list[str]]:
    """The board's rows (best first by the first category) and its categories, from the database."""
    hashes = suite_env_hashes(config)
    scores = sim_scores(db, sims=hashes)
    categories = suite_categories(config)
    rows: dict[tuple[str, int | None], PolicyRow] = {}
    for s in scores:
        row = rows.setdefault(s.policy_key, PolicyRow(s.policy_uri, s.policy_name, s.epoch, s.agent_step, s.run_dir))
        row.sims[s.sim] = s
    if not all_checkpoints:  # a training run's newest evaluated checkpoint stands for the run
        newest: dict[str, PolicyRow] = {}
        for row in rows.values():
            if row.run_dir is None:
                continue
            kept = newest.get(row.run_dir)
            if kept is None or (row.epoch or 0) > (kept.epoch or 0):
                newest[row.run_dir] = row
        rows = {k: r for k, r in rows.items() if r.run_dir is None or newest[r.run_dir] is r}
    per_policy = category_scores(scores, categories, sims=list(config.simulations))
    for key, row in rows.items():
        row.categories = per_policy.get(key, {})
    first = categories[0] if categories else None

    def rank(row: PolicyRow) -> tuple:
        value = row.categories.get(first) if first else None
        return (value is None, -(value or 0.0), row.name, row.epoch or 0)

    return sorted(rows.values(), key=rank), categories


def _color(value: float, top: float) -> str:
    """White (0) to green (``top`` and above)."""
    t = max(0.0, min(1.0, value / top)) if top > 0 else 0.0
    r, g, b = (int(255 + (c - 255) * t) for c in (46, 160, 90))
    return f"rgb({r},{g},{b})"


def _rel(target: str | os.PathLike, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(target).absolute(), out_dir.absolute())).as_posix()


def leaderboard_html(
    database: str | os.PathLike, suite: str, out_dir: str | os.PathLike, all_checkpoints: bool = False
) -> str:
    """The page for ``suite`` from the database at ``database``; links are relative to ``out_dir``."""
    config = suite_config(suite)
    out_dir = Path(out_dir)
    if Path(database).is_file():
        with EvaluationDB(database) as db:
            rows, categories = leaderboard_rows(db, config, all_checkpoints)
    else:
        rows, categories = [], suite_categories(config)
    sims = list(config.simulations)
    scale = 1.0  # rewards of the navigation suites reach about 1 (three altars of 0.333)
    head = ["<th>policy</th><th>epoch</th><th>agent steps</th>"]
    head += [f'<th class="sim category">{html.escape(c)}/score</th>' for c in categories]
    head += [f'<th class="sim">{html.escape(s.split("/", 1)[-1])}</th>' for s in sims]
    body = []
    for row in rows:
        name = html.escape(row.name)
        report = Path(row.run_dir, "index.html") if row.run_dir else None
        if report is not None and report.is_file():
            name = f'<a href="{html.escape(_rel(report, out_dir))}">{name}</a>'
        if row.is_baseline:
            name += '<span class="tag">baseline</span>'
        cells = [
            f'<td class="policy" title="{html.escape(row.uri)}">{name}</td>',
            f"<td>{'-' if row.epoch is None else row.epoch}</td>",
            f"<td>{'-' if row.agent_step is None else f'{row.agent_step:,}'}</td>",
        ]
        for c in categories:
            value = row.categories.get(c)
            cells.append(_score_cell(row, c, value, None, None, f"category {c}", extra="category"))
        for sim in sims:
            s = row.sims.get(sim)
            if s is None:
                cells.append(_score_cell(row, sim, None, None, None, "never evaluated on this env"))
                continue
            replay = None
            if s.replay_path and page_path_for(s.replay_path).is_file():
                replay = _rel(page_path_for(s.replay_path), out_dir)
            what = (
                f"{s.num_episodes} episodes, seed {s.seed}, evaluated "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(s.created_at))}"
            )
            if not s.complete:
                what = "stopped by its max_time_s guard: " + what
            cells.append(_score_cell(row, sim, s.score, s.ci95, replay, what))
        body.append(f'<tr class="{"baseline" if row.is_baseline else "policy"}">{"".join(cells)}</tr>')
    legend = "".join(f'<span style="background:{_color(v, scale)}">{v:.2f}</span>' for v in (0.0, 0.25, 0.5, 0.75, 1.0))
    if rows:
        table = f'<table class="board"><tr>{"".join(head)}</tr>{"".join(body)}</table>'
    else:
        table = (
            f'<p class="note">No evaluations of the {html.escape(suite)} suite in {html.escape(str(database))} yet.</p>'
        )
    intro = (
        f"<p>Mean episode reward per sim (newest evaluation of each policy on the suite's current envs), "
        f"± the 95% interval over episodes. A category is the mean over the sims whose name contains it; it is "
        f'missing when one of them is. Colour scale: <span class="legend">{legend}</span></p>'
    )
    body_html = f"<section>{intro}{table}</section>"
    subtitle = (
        f"{html.escape(str(Path(database).absolute()))} · {len(rows)} policies · {len(sims)} sims · written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>leaderboard: {html.escape(suite)}</title>'
        f"<style>{STYLE}{BOARD_STYLE}</style></head><body><header><h1>Leaderboard: {html.escape(suite)}</h1>"
        f'<div class="sub">{subtitle}</div></header><main>{body_html}</main></body></html>'
    )


def _score_cell(
    row: PolicyRow, column: str, value: float | None, ci: float | None, replay: str | None, what: str, extra: str = ""
) -> str:
    epoch = "" if row.epoch is None else row.epoch
    data = f'data-policy="{html.escape(row.uri)}" data-epoch="{epoch}" data-column="{html.escape(column)}"'
    if value is None:
        return f'<td class="missing {extra}" {data} data-score="" title="{html.escape(what)}">missing</td>'
    link = f' <a class="replay" href="{html.escape(replay)}" title="replay">▶</a>' if replay else ""
    interval = f'<span class="ci">± {ci:.3f}</span>' if ci is not None else ""
    return (
        f'<td class="score {extra}" {data} data-score="{value!r}" title="{html.escape(what)}" '
        f'style="background:{_color(value, 1.0)}">{value:.3f}{link}{interval}</td>'
    )


def write_leaderboard(
    database: str | os.PathLike, suite: str, out: str | os.PathLike, all_checkpoints: bool = False
) -> Path:
    """Write the page atomically and return its path."""
    out = Path(out)
    atomic_write_text(str(out), leaderboard_html(database, suite, out.parent, all_checkpoints))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metta.sim.leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="navigation", choices=SUITE_NAMES, help="the suite (default: navigation)")
    parser.add_argument("--data-dir", default=None, help="where the database is (default: DATA_DIR or ./train_dir)")
    parser.add_argument("--out", default=None, help="the page to write (default: {data_dir}/leaderboard_{suite}.html)")
    parser.add_argument("--all-checkpoints", action="store_true", help="a row per evaluated checkpoint of each run")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or os.environ.get("DATA_DIR") or "./train_dir"
    database = database_path(data_dir)
    if not database.is_file():
        parser.error(f"no evaluation database at {database}; run python -m metta.sim.evaluate or a training run first")
    out = args.out or os.path.join(data_dir, f"leaderboard_{args.suite}.html")
    path = write_leaderboard(database, args.suite, out, args.all_checkpoints)
    print(path.resolve().as_uri())
    return 0


if __name__ == "__main__":
    sys.exit(main())
