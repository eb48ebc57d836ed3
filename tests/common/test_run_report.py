"""The run report and the run comparison: pages built from a real run directory's files, then shown in headless
Chromium (one browser for the module)."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from metta.common.run_lock import RunLock
from metta.common.run_report import (
    Curve,
    find_replays,
    line_chart,
    main,
    read_metrics,
    write_comparison,
    write_run_report,
)
from metta.common.stats_logger import StatsLogger
from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.replay import ReplayWriter, write_viewer_page

EPOCHS = 12
REPLAY_ENV = {
    "game": {
        "num_agents": 2,
        "max_steps": 20,
        "map_builder": {
            "type": "random",
            "width": 8,
            "height": 8,
            "agents": 2,
            "objects": {"altar": 1},
            "border_width": 1,
        },
    }
}


def make_run(
    root: Path, name: str, reward_scale: float = 1.0, replays: bool = True, total: int = EPOCHS * 1024, lr: float = 1e-3
) -> Path:
    """A run directory as run.py leaves it: metrics.jsonl from StatsLogger, run_config.json, replays with pages."""
    run_dir = root / name
    logger = StatsLogger(run_dir, console=False)
    for epoch in range(1, EPOCHS + 1):
        metrics = {
            "overview/reward": reward_scale * math.log(epoch + 1),
            "overview/sps": 1000 + 10 * epoch,
            "losses/policy_loss": 0.1 / epoch,
            "losses/value_loss": 0.5 / epoch,
            "losses/entropy": 2.0 - 0.05 * epoch,
            "losses/l2_reg_loss": 0.0,  # zero all run long, as with the defaults
            "losses/ks_value_loss": 0.0,
            "timing/frac/env": 0.2,
            "timing/frac/forward": 0.3,
            "timing/frac/learn": 0.4,
            "timing/frac/other": 0.1,
            "env_agent/heart.gained": 0.01 * epoch,
        }
        if epoch >= 4:  # run.py carries the last evaluation's scores until the next one
            last_eval = 4 * (epoch // 4)
            metrics |= {
                "eval/navigation/terrain_small": last_eval / 20,
                "eval/navigation/terrain_large": last_eval / 40,
            }
        logger.log(epoch, epoch * 1024, metrics)
    logger.close()
    record = {
        "run": name,
        "data_dir": str(root),
        "trainer": {
            "batch_size": 1024,
            "total_timesteps": total,
            "optimizer": {"learning_rate": lr},
            "checkpoint": {"checkpoint_dir": str(run_dir / "checkpoints")},
        },
    }
    (run_dir / "run_config.json").write_text(json.dumps(record))
    if replays:
        env = MettaGridEnv(REPLAY_ENV, seed=1)
        noops = np.tile([env.action_names.index("noop"), 0], (env.num_agents, 1)).astype(np.int32)
        for epoch in (4, 8):
            writer = ReplayWriter(run_dir / "replays" / f"epoch_{epoch:04d}" / "replay")
            path = writer.record_episode(env, lambda obs: noops, max_steps=5)
            if epoch == 4:
                write_viewer_page(path)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    # alpha trained all its total_timesteps; beta half of its total, with another learning rate.
    return [
        make_run(root, "alpha"),
        make_run(root, "beta", reward_scale=2.0, replays=False, total=2 * EPOCHS * 1024, lr=3e-4),
    ]


def polylines(html: str, metric: str) -> list[list[tuple[float, float]]]:
    chart = re.search(rf'<svg class="chart" data-metric="{re.escape(metric)}".*?</svg>', html, re.S)
    assert chart, f"no chart for {metric}"
    return [
        [tuple(map(float, p.split(","))) for p in pts.split()]
        for pts in re.findall(r'<polyline[^>]*points="([^"]*)"', chart.group(0))
    ]


def test_report_is_built_from_the_run_directory(runs):
    run_dir = runs[0]
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 13, "agent_st')  # a line cut by a crash
    path = write_run_report(run_dir)
    assert path == run_dir / "index.html"
    html = path.read_text()
    rows, bad = read_metrics(run_dir)
    assert len(rows) == EPOCHS and bad == 1 and "1 line(s) of metrics.jsonl could not be read" in html
    (reward,) = polylines(html, "overview/reward")
    assert len(reward) == EPOCHS
    ys = [y for _, y in reward]
    assert ys == sorted(ys, reverse=True), "reward rises every epoch, so its SVG y falls"
    small, large = polylines(html, "eval")
    assert len(small) == len(large) == 3  # evaluations at epochs 4, 8 and 12: where the score changed
    assert {"policy_loss", "value_loss", "entropy"} <= set(re.findall(r'<text class="title"[^>]*>([^<]*)<', html))
    assert 'data-metric="timing"' in html and "learn 40%" in html
    assert "terrain_small" in html and "&quot;batch_size&quot;: 1024" in html
    assert '<div class="k">trained</div><div class="v">100% of 12.3k steps</div>' in html  # of total_timesteps
    # Replays by epoch, newest first: a viewer page where one was written, the .json.z otherwise.
    links = find_replays(run_dir)
    assert [(r.epoch, r.has_page) for r in links] == [(8, False), (4, True)]
    assert links[1].href.endswith(".html") and (run_dir / links[1].href).is_file()
    assert f'href="{links[1].href}"' in html and f'href="{links[0].href}"' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html)


def _replay_with_page(folder: Path) -> Path:
    env = MettaGridEnv(REPLAY_ENV, seed=1)
    noops = np.tile([env.action_names.index("noop"), 0], (env.num_agents, 1)).astype(np.int32)
    return write_viewer_page(ReplayWriter(folder).record_episode(env, lambda obs: noops, max_steps=3))


def test_report_finds_replays_in_the_configured_replay_dir(tmp_path, monkeypatch):
    """trainer.simulation.replay_dir outside the run directory: recorded in run_config.json (absolute, as run.py
    writes it), or only in config.yaml with a path relative to where run.py ran."""
    run_dir = tmp_path / "data" / "elsewhere_run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 2, "agent_step": 2048, "overview/reward": 0.5}) + "\n")
    outside = tmp_path / "data" / "elsewhere_replays"
    page = _replay_with_page(outside / "epoch_0002" / "replay")
    inside = _replay_with_page(run_dir / "replays" / "epoch_0001" / "replay")
    (run_dir / "run_config.json").write_text(json.dumps({"trainer": {"simulation": {"replay_dir": str(outside)}}}))
    links = find_replays(run_dir)
    assert [(r.epoch, r.has_page) for r in links] == [(2, True), (1, True)]
    assert (run_dir / links[0].href).resolve() == page.resolve() and links[0].href.startswith("../")
    assert (run_dir / links[1].href).resolve() == inside.resolve()
    html = write_run_report(run_dir).read_text()
    assert f'href="{links[0].href}"' in html and f'href="{links[1].href}"' in html
    # The default folder named explicitly is not listed twice.
    (run_dir / "run_config.json").write_text(
        json.dumps({"trainer": {"simulation": {"replay_dir": str(run_dir / "replays")}}})
    )
    assert [r.epoch for r in find_replays(run_dir)] == [1]

    # config.yaml only, with run.py's relative paths: resolved against where run.py ran, not today's cwd.
    (run_dir / "run_config.json").unlink()
    (run_dir / "config.yaml").write_text(
        "run_dir: data/elsewhere_run\ntrainer:\n  simulation:\n    replay_dir: data/elsewhere_replays\n"
    )
    monkeypatch.chdir(run_dir)
    assert [(r.epoch, (run_dir / r.href).resolve()) for r in find_replays(run_dir)] == [
        (2, page.resolve()),
        (1, inside.resolve()),
    ]


def test_commands(runs, tmp_path, capsys):
    assert main(["report", str(runs[1])]) == 0
    assert capsys.readouterr().out.strip() == (runs[1] / "index.html").resolve().as_uri()
    out = tmp_path / "cmp.html"
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No metrics yet" in write_run_report(empty).read_text()


def test_report_renders_its_curves_in_a_browser(browser, runs):
    page = browser.open(write_run_report(runs[0]).resolve().as_uri())
    browser.pump(0.2)
    assert page.console_errors == []
    drawn = page.evaluate("""[...document.querySelectorAll('svg.chart')].map(svg => ({
        metric: svg.dataset.metric,
        curves: [...svg.querySelectorAll('polyline.curve')].map(p => {
            const b = p.getBBox(); return {points: p.points.numberOfItems, w: b.width, h: b.height,
                                           stroke: getComputedStyle(p).stroke}; }),
        areas: svg.querySelectorAll('polygon.area').length}))""")
    charts = {c["metric"]: c for c in drawn}
    reward = charts["overview/reward"]["curves"][0]
    assert reward["points"] == EPOCHS and reward["w"] > 100 and reward["h"] > 50 and reward["stroke"] != "none"
    assert len(charts["eval"]["curves"]) == 2 and charts["timing"]["areas"] == 4
    assert all(c["curves"] and all(p["points"] >= 1 for p in c["curves"]) for m, c in charts.items() if m != "timing")
    # The replay link opens the replay's viewer page.
    href = page.evaluate("document.querySelector('table.replays a[href$=\".html\"]').href")
    viewer = browser.open(href)
    assert viewer.wait_for("window.metta.ready || window.metta.error") is True
    assert viewer.console_errors == []


def test_comparison_shows_each_run_in_its_colour(browser, runs, tmp_path):
    path = write_comparison(runs, tmp_path / "compare.html")
    page = browser.open(path.resolve().as_uri())
    browser.pump(0.2)
    assert page.console_errors == []
    labels = page.evaluate(
        "[...document.querySelectorAll('svg[data-metric=\"overview/reward\"] polyline')].map(p => p.dataset.label)"
    )
    assert labels == ["alpha", "beta"]
    rewards = page.evaluate("[...document.querySelectorAll('table.runs tr')].slice(1).map(r => r.cells[4].textContent)")
    assert rewards == [f"{math.log(EPOCHS + 1):.3g}", f"{2 * math.log(EPOCHS + 1):.3g}"]


# --------------------------------------------------------------------------------------------------------
# Legends, folded losses, smoothing and values on hover, status and config differences
LEGENDS_AND_PLOTS = """[...document.querySelectorAll('svg.chart')].map(svg => ({
    metric: svg.dataset.metric, width: svg.viewBox.baseVal.width, height: svg.viewBox.baseVal.height,
    plot: (r => r && [r.x, r.y, r.x + r.width, r.y + r.height])(svg.querySelector('rect.plot')?.getBBox()),
    legends: [...svg.querySelectorAll('text.legend')].map(t => { const b = t.getBBox();
        return [b.x, b.y, b.x + b.width, b.y + b.height]; })}))"""


def assert_legends_outside_the_plots(page) -> int:
    """Every legend entry lies in its chart, clear of the plot area; returns how many there are."""
    count = 0
    for chart in page.evaluate(LEGENDS_AND_PLOTS):
        for x0, y0, x1, y1 in chart["legends"]:
            px0, py0, px1, py1 = chart["plot"]
            assert x1 <= px0 or x0 >= px1 or y1 <= py0 or y0 >= py1, chart["metric"]
            assert 0 <= x0 and x1 <= chart["width"] + 1 and 0 <= y0 and y1 <= chart["height"] + 1, chart["metric"]
            count += 1
    return count


def test_report_legends_zero_losses_smoothing_and_hover(browser, runs):
    page = browser.open(write_run_report(runs[0]).resolve().as_uri())
    browser.pump(0.2)
    assert page.console_errors == []
    assert assert_legends_outside_the_plots(page) >= 2 + 4  # evaluation (2 terrains) and the timing split
    # Losses that were zero for the whole run: one line, no chart.
    charts = page.evaluate("[...document.querySelectorAll('svg.chart')].map(s => s.dataset.metric)")
    assert "losses/l2_reg_loss" not in charts and "losses/ks_value_loss" not in charts
    assert "losses/policy_loss" in charts
    zero = page.evaluate("document.querySelector('p.zero').textContent")
    assert zero == "Zero for the whole run: l2_reg_loss, ks_value_loss."

    # Smoothing: an exponential moving average (with TensorBoard's bias correction) of the curve's values.
    reward = "document.querySelector('svg[data-metric=\"overview/reward\"] polyline.curve')"
    raw_points = page.evaluate(f"{reward}.getAttribute('points')")
    values = [float(v) for v in page.evaluate(f"{reward}.dataset.y").split()]
    assert values == pytest.approx([math.log(e + 1) for e in range(1, EPOCHS + 1)], rel=1e-3)
    left, top, width, height = map(float, page.evaluate(f"{reward}.ownerSVGElement.dataset.box").split())
    _, _, y0, y1 = map(float, page.evaluate(f"{reward}.ownerSVGElement.dataset.domain").split())
    page.evaluate(
        "(() => { const s = document.getElementById('smoothing'); s.value = '0.8';"
        " s.dispatchEvent(new Event('input')); })()"
    )
    smoothed, last = [], 0.0
    for i, v in enumerate(values):
        last = 0.8 * last + 0.2 * v
        smoothed.append(last / (1 - 0.8 ** (i + 1)))
    drawn = [float(p.split(",")[1]) for p in page.evaluate(f"{reward}.getAttribute('points')").split()]
    assert drawn == pytest.approx([top + (1 - (v - y0) / (y1 - y0)) * height for v in smoothed], abs=0.06)
    assert page.evaluate("document.getElementById('smoothing-value').textContent") == "0.80"
    assert page.evaluate(f"{reward}.previousElementSibling.getAttribute('class')") == "raw"  # the raw curve, faint

    # Values on hover: the point under the mouse, raw and smoothed, and its x.
    i = 4
    x, y = page.evaluate(
        f"(() => {{ const r = {reward}.ownerSVGElement.getBoundingClientRect();"
        f" const p = {reward}.points.getItem({i}); return [r.left + p.x, r.top + p.y]; }})()"
    )
    page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y, "button": "none"})
    tip = page.wait_for(
        "!document.getElementById('chart-tip').hidden && document.getElementById('chart-tip').innerText"
    )
    assert tip.splitlines()[0] == f"{(i + 1) * 1024 / 1000:.3g}k agent steps"
    assert tip.splitlines()[1] == f"reward per episode: {values[i]:.4g} (smoothed {float(f'{smoothed[i]:.4g}'):g})"
    page.evaluate(
        "(() => { const s = document.getElementById('smoothing'); s.value = '0';"
        " s.dispatchEvent(new Event('input')); })()"
    )
    assert page.evaluate(f"{reward}.getAttribute('points')") == raw_points


def test_comparison_shows_status_and_config_differences(browser, runs, tmp_path):
    alpha, beta = runs
    status = (
        "Object.fromEntries([...document.querySelectorAll('table.runs tr[data-run]')]"
        ".map(r => [r.dataset.run, [r.cells[1].dataset.state, r.cells[1].textContent]]))"
    )

    def compare() -> dict:
        page = browser.open(write_comparison(runs, tmp_path / "compare.html").resolve().as_uri())
        assert page.console_errors == []
        return page, page.evaluate(status)

    page, shown = compare()
    assert shown == {
        "alpha": ["finished", "finished, 12.3k of 12.3k steps"],
        "beta": ["stopped", "stopped at 50%, 12.3k of 24.6k steps"],
    }
    assert assert_legends_outside_the_plots(page) >= 2
    # The keys whose values differ; the run's name and its own folders are not differences.
    diff = page.evaluate(
        "[...document.querySelectorAll('table.config-diff tr[data-key]')]"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    assert diff == [
        ["trainer.optimizer.learning_rate", "0.001", "0.0003"],
        ["trainer.total_timesteps", str(EPOCHS * 1024), str(2 * EPOCHS * 1024)],
    ]
    # A live process holds beta's run.lock: running. One that was killed left its record behind: stopped.
    with RunLock(beta):
        assert compare()[1]["beta"] == ["running", "running, 50% done: 12.3k of 24.6k steps"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    (beta / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    assert compare()[1]["beta"][0] == "stopped"
    (beta / "run.lock").write_text("")


def test_a_metric_constant_up_to_float_rounding_gets_a_chart():
    """Values equal but for their last bit (a timing ratio, say) make a y range below float resolution: the
    chart draws them on one tick."""
    curve = Curve("m", [(0.0, 7.1), (64.0, 7.099999999999999), (128.0, 7.1)], "#000")
    svg = line_chart("m", [curve], "m")
    assert svg.startswith("<svg") and 'data-y="' in svg
