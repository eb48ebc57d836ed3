"""How a run went, as one self-contained HTML page: ``{run_dir}/index.html``.

    write_run_report("train_dir/my_run")                       # -> train_dir/my_run/index.html
    write_comparison(["train_dir/a", "train_dir/b"], "ab.html")  # runs side by side

    python -m metta.common.run_report report RUN_DIR
    python -m metta.common.run_report compare RUN_DIR RUN_DIR ... --out compare.html

The report reads what a run directory holds: ``metrics.jsonl`` (one JSON object per epoch, written by
``StatsLogger``), ``run_config.json`` or ``config.yaml``, and the replays with their viewer pages, under
``replays/`` and under the run's ``trainer.simulation.replay_dir`` when that points elsewhere. It shows
learning curves (reward, SPS, losses, the timing split, evaluation scores per terrain), the config, and
links to each replay page by epoch. The charts are SVG drawn here, and a short script of ours
(``run_report.js``, inlined) adds a smoothing control and the values under the mouse: the page needs no
library, no network and no server, opens straight from disk, and shows the raw curves without script.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metta.common.evaluation_db import EvaluationDBError, database_path, latest_run_evaluation
from metta.common.fs import atomic_write_text

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
MAX_POINTS = 600  # points per curve; longer runs are thinned evenly (first and last kept)
MAIN_KEYS = ("overview/reward", "overview/sps")
LOSS_PREFIX = "losses/"
TIMING_PREFIX = "timing/frac/"
EVAL_PREFIX = "eval/"
EPOCH_DIR = re.compile(r"epoch_(\d+)")


# --------------------------------------------------------------------------------------------------------
# Reading a run directory
def read_metrics(run_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``metrics.jsonl`` and how many lines could not be read (a line cut by a crash, say)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    bad = 0
    if not path.is_file():
        return rows, bad
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def series(rows: list[dict[str, Any]], key: str, x_key: str = "agent_step") -> list[tuple[float, float]]:
    """(x, value) of every row with a finite number under ``key``, in file order."""
    out = []
    for row in rows:
        x, y = row.get(x_key), row.get(key)
        if _finite(x) and _finite(y):
            out.append((float(x), float(y)))
    return out


def eval_series(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """An evaluation score: rows repeat the last score until the next evaluation, so keep where it changes."""
    points = series(rows, key)
    kept = [p for i, p in enumerate(points) if i == 0 or p[1] != points[i - 1][1]]
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


@dataclass
class ReplayLink:
    epoch: int | None
    href: str  # relative to the run directory
    name: str
    has_page: bool


def _load_record(path: Path) -> dict[str, Any]:
    """The mapping in a run's ``run_config.json`` or ``config.yaml``; {} when absent or unreadable."""
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml  # PyYAML, which omegaconf brings

            data = yaml.safe_load(text)
    except Exception:  # a damaged record only costs the report its replay folder
        return {}
    return data if isinstance(data, dict) else {}


def configured_replay_dir(run_dir: str | os.PathLike) -> Path | None:
    """The run's ``trainer.simulation.replay_dir`` as recorded in ``run_config.json`` (else ``config.yaml``).

    A relative folder is relative to where run.py was started: found from ``config.yaml``'s ``run_dir`` (as
    run.py saw it) and where the run directory is now, else taken from the current directory.
    """
    root = Path(run_dir)
    records = [_load_record(root / "run_config.json"), _load_record(root / "config.yaml")]
    replay_dir = None
    for record in records:
        trainer = record.get("trainer")
        simulation = trainer.get("simulation") if isinstance(trainer, dict) else None
        value = simulation.get("replay_dir") if isinstance(simulation, dict) else None
        if isinstance(value, str) and value:
            replay_dir = Path(value)
            break
    if replay_dir is None or replay_dir.is_absolute():
        return replay_dir
    recorded = records[1].get("run_dir")
    if isinstance(recorded, str) and recorded and not Path(recorded).is_absolute():
        here, parts = root.resolve().parts, Path(recorded).parts
        if len(here) > len(parts) and here[-len(parts) :] == parts:
            return Path(*here[: -len(parts)]) / replay_dir
    return Path.cwd() / replay_dir


def replay_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Where the run's replays are: ``{run_dir}/replays`` and the configured ``replay_dir`` when elsewhere."""
    dirs = [Path(run_dir) / "replays"]
    configured = configured_replay_dir(run_dir)
    if configured is not None and configured.resolve() != dirs[0].resolve():
        dirs.append(configured)
    return dirs


def _href(target: Path, root: Path) -> str:
    """``target`` as a link from the report in ``root``: a relative path, or a file:// URL across drives."""
    try:
        return Path(os.path.relpath(target.resolve(), root.resolve())).as_posix()
    except ValueError:
        return target.resolve().as_uri()


def find_replays(run_dir: str | os.PathLike) -> list[ReplayLink]:
    """Every replay under ``{run_dir}/replays`` and under the run's ``trainer.simulation.replay_dir`` when that
    is elsewhere (``configured_replay_dir``), by epoch (from its ``epoch_NNNN`` folder), newest first."""
    root = Path(run_dir)
    links = []
    for folder in replay_dirs(root):
        for replay in sorted(folder.rglob("*.json.z")) if folder.is_dir() else ():
            match = EPOCH_DIR.search(replay.relative_to(folder).parent.as_posix())
            page = replay.with_name(replay.name[: -len(".json.z")] + ".html")
            target = page if page.is_file() else replay
            epoch = int(match.group(1)) if match else None
            links.append(ReplayLink(epoch, _href(target, root), replay.name, page.is_file()))
    return sorted(links, key=lambda r: (-(r.epoch if r.epoch is not None else -1), r.href))


def read_config(run_dir: str | os.PathLike) -> tuple[str, str] | None:
    """(file name, text) of the run's config: run.py's ``run_config.json``, else ``config.yaml``."""
    root = Path(run_dir)
    for name in ("run_config.json", "config.yaml"):
        path = root / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            if name.endswith(".json"):
                try:
                    text = json.dumps(json.loads(text), indent=2)
                except json.JSONDecodeError:
                    pass
            return name, text
    return None


def run_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a run recorded: ``run_config.json`` (run.py), else ``config.yaml``; {} when it has neither."""
    root = Path(run_dir)
    return _load_record(root / "run_config.json") or _load_record(root / "config.yaml")


def total_timesteps(record: dict[str, Any]) -> float | None:
    """``trainer.total_timesteps`` of a run's record, if it has one."""
    trainer = record.get("trainer")
    value = trainer.get("total_timesteps") if isinstance(trainer, dict) else None
    return float(value) if _finite(value) and value > 0 else None


@dataclass
class RunStatus:
    """Where a run stands: ``state`` is "running" (a live process holds its run.lock), "finished" (it trained its
    total_timesteps), "stopped" (neither) or "not running" (neither, and its total is not recorded)."""

    state: str
    agent_step: float | None
    total: float | None

    @property
    def fraction(self) -> float | None:
        if self.agent_step is None or self.total is None:
            return None
        return self.agent_step / self.total

    def text(self) -> str:
        steps = "no steps yet" if self.agent_step is None else f"{fmt_number(self.agent_step)} steps"
        if self.fraction is None:
            return f"{self.state}, {steps}"
        of = f"{fmt_number(self.agent_step or 0)} of {fmt_number(self.total or 0)} steps"
        if self.state == "finished":
            return f"finished, {of}"
        if self.state == "stopped":
            return f"stopped at {percent(self.fraction)}, {of}"
        return f"running, {percent(self.fraction)} done: {of}"


def run_status(run_dir: str | os.PathLike, rows: list[dict[str, Any]] | None = None) -> RunStatus:
    """The status of a run directory from its lock, its record and its last metrics row (``rows``: read if None)."""
    from metta.common.run_lock import lock_holder

    if rows is None:
        rows, _ = read_metrics(run_dir)
    steps = next((float(r["agent_step"]) for r in reversed(rows) if _finite(r.get("agent_step"))), None)
    total = total_timesteps(run_record(run_dir))
    if lock_holder(run_dir) is not None:
        state = "running"
    elif total is None:
        state = "not running"
    else:
        state = "finished" if steps is not None and steps >= total else "stopped"
    return RunStatus(state, steps, total)


def differing_config_keys(run_dirs: list[Path]) -> list[tuple[str, list[str | None]]]:
    """The dotted config keys whose values differ between runs (``run_record``), with each run's value as text
    (None where a run lacks the key). The run's own name and folders inside its directory are not differences."""
    from metta.mettagrid.config_loader import flatten_dotted

    flat = []
    for run_dir in run_dirs:
        own = str(Path(run_dir).resolve())
        values = {}
        for key, value in flatten_dotted(run_record(run_dir)).items():
            if key in ("run", "run_dir"):  # the run's own name and directory (config.yaml records both)
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            values[key] = text.replace(own, "{run_dir}")
        flat.append(values)
    keys = sorted({k for values in flat for k in values})
    return [(k, [v.get(k) for v in flat]) for k in keys if len({v.get(k) for v in flat}) > 1]


# --------------------------------------------------------------------------------------------------------
# SVG charts
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    step = (len(points) - 1) / (MAX_POINTS - 1)
    return [points[round(i * step)] for i in range(MAX_POINTS)]


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    # A range within float rounding (a metric that is constant up to its last bit) gets one tick: a step that
    # small would not move ``t`` below, and the loop would never end.
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_labels(ticks: list[float]) -> list[str]:
    """Labels that tell neighbouring ticks apart (more digits for a narrow range)."""
    labels = [fmt_number(t) for t in ticks]
    digits = 4
    while len(set(labels)) < len(labels) and digits <= 10:
        labels = [f"{t:.{digits}g}" for t in ticks]
        digits += 1
    return labels


def percent(fraction: float) -> str:
    """A percentage with the decimals it needs: only none and all read 0% and 100% (0.996 is 99.6%)."""
    digits = 0
    while 0 < fraction < 1 and digits < 4 and round(100 * fraction, digits) in (0, 100):
        digits += 1
    return f"{100 * fraction:.{digits}f}%"


def fmt_number(v: float) -> str:
    """Short labels: 1.5k, 2M, 0.013, 3.2e-05."""
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    if a >= 0.01:
        return f"{v:.3g}"
    return f"{v:.2g}"


@dataclass
class Curve:
    label: str
    points: list[tuple[float, float]]
    color: str
    markers: bool = False
    line: bool = True  # False: the points alone (a scatter)


LEGEND_ROW = 14  # pixels per legend row
CHAR_WIDTH = 6.2  # an upper estimate of a 10 px label character's width, to lay out legends before any browser


def _legend_rows(labels: list[str], width: float) -> list[list[int]]:
    """Legend entries (indices) packed into rows that fit ``width``: a swatch and a label each."""
    rows: list[list[int]] = [[]]
    used = 0.0
    for i, label in enumerate(labels):
        w = 22 + CHAR_WIDTH * len(label)
        if rows[-1] and used + w > width:
            rows.append([])
            used = 0.0
        rows[-1].append(i)
        used += w
    return rows


def line_chart(
    title: str, curves: list[Curve], key: str, x_label: str = "agent steps", width: int = 440, height: int = 220
) -> str:
    """An SVG line chart; a legend below the plot when it has several curves (never over the data).

    Each polyline carries its values (``data-y``) and the chart its plot box and value ranges (``data-box``,
    ``data-domain``), so the page's script (``run_report.js``) can smooth the curves and show the values under
    the mouse; the SVG alone shows the raw curves, with a ``<title>`` per curve. A curve with ``line=False`` is
    its markers alone (a scatter).
    """
    curves = [Curve(c.label, _thin(c.points), c.color, c.markers, c.line) for c in curves if c.points]
    left, right, top, bottom = 56, 12, 26, 34
    pw, ph = width - left - right, height - top - bottom
    legend = _legend_rows([c.label for c in curves], pw) if len(curves) > 1 else []
    total_height = height + LEGEND_ROW * len(legend) + (4 if legend else 0)
    if not curves:
        return (
            f'<svg class="chart" data-metric="{html.escape(key)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{html.escape(title)}">'
            f'<text class="title" x="{left}" y="16">{html.escape(title)}</text>'
            f'<text class="empty" x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle">no data</text></svg>'
        )
    xs = [x for c in curves for x, _ in c.points]
    ys = [y for c in curves for _, y in c.points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x_ticks = _nice_ticks(x0, x1, 4) if x1 > x0 else [x0]
    if x1 == x0:
        x0, x1 = x0 - max(1.0, abs(x0) * 0.05), x1 + max(1.0, abs(x1) * 0.05)
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.06
        y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [
        f'<svg class="chart" data-metric="{html.escape(key)}" viewBox="0 0 {width} {total_height}" '
        f'width="{width}" height="{total_height}" role="img" aria-label="{html.escape(title)}" '
        f'data-box="{left} {top} {pw} {ph}" data-domain="{x0!r} {x1!r} {y0!r} {y1!r}" '
        f'data-x-label="{html.escape(x_label)}">',
        f'<text class="title" x="{left}" y="16">{html.escape(title)}</text>',
        f'<rect class="plot" x="{left}" y="{top}" width="{pw}" height="{ph}"/>',
    ]
    y_ticks = _nice_ticks(y0, y1)
    for t, label in zip(y_ticks, _tick_labels(y_ticks)):
        out.append(
            f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
            f'<text class="tick" x="{left - 5}" y="{sy(t) + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for t, label in zip(x_ticks, _tick_labels(x_ticks)):
        out.append(f'<text class="tick" x="{sx(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{label}</text>')
    out.append(
        f'<text class="axis" x="{left + pw / 2}" y="{height - 3}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    for c in curves:
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in c.points)
        values = " ".join(f"{y:.4g}" for _, y in c.points)  # the 4 digits the values on hover show
        label = html.escape(c.label)
        if c.line:
            out.append(
                f'<polyline class="curve" data-label="{label}" data-y="{values}" '
                f'data-smooth="{0 if c.markers else 1}" points="{pts}" stroke="{c.color}">'
                f"<title>{label}: last {fmt_number(c.points[-1][1])}</title></polyline>"
            )
        if c.markers or not c.line or len(c.points) == 1:
            for x, y in c.points:
                out.append(
                    f'<circle class="marker" data-label="{label}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" '
                    f'fill="{c.color}">'
                    f"<title>{label} at {fmt_number(x)}: {y:.4g}</title></circle>"
                )
    for row, entries in enumerate(legend):
        ly = height + 9 + LEGEND_ROW * row
        lx = float(left)
        for i in entries:
            c = curves[i]
            out.append(
                f'<rect class="swatch" x="{lx:.1f}" y="{ly - 5}" width="12" height="3" fill="{c.color}"/>'
                f'<text class="legend" x="{lx + 16:.1f}" y="{ly}">{html.escape(c.label)}</text>'
            )
            lx += 22 + CHAR_WIDTH * len(c.label)
    out.append("</svg>")
    return "".join(out)


def stacked_chart(
    title: str, layers: list[tuple[str, list[tuple[float, float]]]], key: str, width: int = 440, height: int = 220
) -> str:
    """Fractions that add up to 1 per x (the timing split) as stacked areas."""
    layers = [(name, _thin(points)) for name, points in layers if points]
    left, right, top, bottom = 56, 110, 26, 34
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg class="chart" data-metric="{html.escape(key)}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{html.escape(title)}">',
        f'<text class="title" x="{left}" y="16">{html.escape(title)}</text>',
    ]
    xs = sorted({x for _, pts in layers for x, _ in pts})
    if not xs:
        out.append(
            f'<text class="empty" x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle">no data</text></svg>'
        )
        return "".join(out)
    x0, x1 = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - y) * ph

    out.append(f'<rect class="plot" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    values = [dict(points) for _, points in layers]
    base = [0.0] * len(xs)
    for i, (name, _) in enumerate(layers):
        upper = [b + values[i].get(x, 0.0) for b, x in zip(base, xs)]
        if len(xs) == 1:
            pts = [
                (sx(x0) - 3, sy(upper[0])),
                (sx(x0) + 3, sy(upper[0])),
                (sx(x0) + 3, sy(base[0])),
                (sx(x0) - 3, sy(base[0])),
            ]
        else:
            pts = [(sx(x), sy(u)) for x, u in zip(xs, upper)] + [
                (sx(x), sy(b)) for x, b in reversed(list(zip(xs, base)))
            ]
        color = PALETTE[i % len(PALETTE)]
        mean = sum(values[i].get(x, 0.0) for x in xs) / len(xs)
        out.append(
            f'<polygon class="area" data-label="{html.escape(name)}" fill="{color}" points="'
            + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            + f'"><title>{html.escape(name)}: {mean:.0%} on average</title></polygon>'
        )
        out.append(
            f'<rect x="{left + pw + 8}" y="{top + 14 * i}" width="10" height="10" fill="{color}"/>'
            f'<text class="legend" x="{left + pw + 22}" y="{top + 9 + 14 * i}">{html.escape(name)} {mean:.0%}</text>'
        )
        base = upper
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<text class="tick" x="{left - 5}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.0%}</text>')
    x_ticks = _nice_ticks(x0, x1, 4)
    for t, label in zip(x_ticks, _tick_labels(x_ticks)):
        out.append(f'<text class="tick" x="{sx(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{label}</text>')
    out.append(f'<text class="axis" x="{left + pw / 2}" y="{height - 3}" text-anchor="middle">agent steps</text></svg>')
    return "".join(out)


# --------------------------------------------------------------------------------------------------------
# Pages
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       background: #f6f7f9; color: #1f2430; font-size: 14px; }
header { background: #1f2430; color: #e5e9f0; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; }
header .sub { color: #9aa3b5; margin-top: 4px; }
main { padding: 12px 24px 40px; }
section { margin-top: 18px; }
h2 { font-size: 16px; border-bottom: 1px solid #d8dce3; padding-bottom: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #d8dce3; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card .k { color: #6b7385; font-size: 12px; }
.card .v { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { background: #fff; border: 1px solid #d8dce3; border-radius: 6px; }
svg .title { font-size: 13px; font-weight: 600; fill: #1f2430; }
svg .tick, svg .axis, svg .legend { font-size: 10px; fill: #6b7385; }
svg .empty { font-size: 12px; fill: #9aa3b5; }
svg .plot { fill: #fbfcfd; stroke: #e3e6eb; }
svg .grid { stroke: #eceef2; }
svg .curve { fill: none; stroke-width: 1.8; }
svg .raw { fill: none; stroke-width: 1.2; opacity: 0.25; }
svg .guide { stroke: #9aa3b5; stroke-dasharray: 3 3; }
svg .dot { stroke: #fff; stroke-width: 1.5; pointer-events: none; }
.toolbar { position: sticky; top: 0; z-index: 2; background: #f6f7f9; padding: 8px 0; display: flex; gap: 10px;
           align-items: center; border-bottom: 1px solid #d8dce3; }
.toolbar input { vertical-align: middle; width: 160px; }
#smoothing-value { font-variant-numeric: tabular-nums; width: 3em; }
.chart-tip { position: absolute; z-index: 3; pointer-events: none; background: #fff; border: 1px solid #c8ced8;
             border-radius: 4px; padding: 5px 8px; font-size: 12px; box-shadow: 0 2px 8px rgba(0,0,0,0.12);
             white-space: nowrap; font-variant-numeric: tabular-nums; }
.chart-tip .x { color: #6b7385; margin-bottom: 2px; }
.chart-tip .swatch { display: inline-block; width: 10px; height: 3px; margin-right: 5px; vertical-align: middle; }
.chart-tip .smoothed { color: #6b7385; }
.status-running { color: #2e6fd1; }
.status-finished { color: #2e8b57; }
.status-stopped, .status-not-running { color: #b5651d; }
table { border-collapse: collapse; background: #fff; }
td, th { border: 1px solid #d8dce3; padding: 4px 10px; text-align: left; font-variant-numeric: tabular-nums; }
th { background: #eef0f4; }
pre { background: #fff; border: 1px solid #d8dce3; padding: 10px; overflow: auto; max-height: 480px; font-size: 12px; }
.note { color: #6b7385; }
a { color: #2e6fd1; }
"""


# The charts' smoothing control and values on hover: our own ~150 lines of script, beside this module, in the page.
SCRIPT_PATH = Path(__file__).with_name("run_report.js")
TOOLBAR = (
    '<div class="toolbar"><label>smoothing <input id="smoothing" type="range" min="0" max="0.99" step="0.01" '
    'value="0"></label> <span id="smoothing-value">0.00</span><span class="note">hover a chart for its values'
    "</span></div>"
)


def _page(title: str, subtitle: str, body: str) -> str:
    script = SCRIPT_PATH.read_text(encoding="utf-8")
    if "</script" in script.lower():
        raise RuntimeError(f"{SCRIPT_PATH} must not contain a closing script tag")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1>"
        f'<div class="sub">{subtitle}</div></header><main>{TOOLBAR}{body}</main>'
        f'<div id="chart-tip" class="chart-tip" hidden></div><script>{script}</script></body></html>'
    )


def _card(label: str, value: str) -> str:
    return f'<div class="card"><div class="k">{html.escape(label)}</div><div class="v">{html.escape(value)}</div></div>'


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        if _finite(row.get(key)):
            return float(row[key])
    return None


def _numeric_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if _finite(v) and k not in ("epoch", "agent_step", "time"):
                keys.setdefault(k, None)
    return list(keys)


def _short_name(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def _all_zero(points: list[tuple[float, float]]) -> bool:
    return bool(points) and all(y == 0 for _, y in points)


def _zero_note(keys: list[str], prefix: str, lead: str = "Zero for the whole run") -> str:
    """One line for the metrics that were zero all along (a chart each would only show a flat line)."""
    if not keys:
        return ""
    names = ", ".join(html.escape(_short_name(k, prefix)) for k in keys)
    return f'<p class="note zero" data-keys="{html.escape(" ".join(keys))}">{lead}: {names}.</p>'


def run_report_html(run_dir: str | os.PathLike) -> str:
    """The report page of one run directory."""
    root = Path(run_dir)
    rows, bad = read_metrics(root)
    keys = _numeric_keys(rows)
    name = root.resolve().name
    updated = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((root / "metrics.jsonl").stat().st_mtime)) if rows else "-"
    )
    subtitle = f"{html.escape(str(root.resolve()))} · metrics updated {updated}"
    parts = []
    last_row = rows[-1] if rows else {}
    cards = [
        _card("epoch", str(last_row.get("epoch", "-"))),
        _card("agent steps", fmt_number(last_row["agent_step"]) if _finite(last_row.get("agent_step")) else "-"),
    ]
    for key, label in (("overview/reward", "reward"), ("overview/sps", "steps / s")):
        value = _last(rows, key)
        cards.append(_card(label, "-" if value is None else fmt_number(value)))
    if _finite(last_row.get("time")):
        cards.append(_card("wall time", f"{last_row['time'] / 60:.1f} min"))
    total = total_timesteps(run_record(root))
    if total is not None and _finite(last_row.get("agent_step")):
        share = percent(last_row["agent_step"] / total)
        cards.append(_card("trained", f"{share} of {fmt_number(total)} steps"))
    parts.append(f'<section><div class="cards">{"".join(cards)}</div></section>')
    if not rows:
        parts.append('<section><p class="note">No metrics yet: metrics.jsonl is missing or empty.</p></section>')
    if bad:
        parts.append(f'<p class="note">{bad} line(s) of metrics.jsonl could not be read and are left out.</p>')

    # Learning curves
    charts = [
        line_chart(title, [Curve(title, series(rows, key), PALETTE[i])], key)
        for i, (key, title) in enumerate(
            (("overview/reward", "reward per episode"), ("overview/sps", "agent steps per second"))
        )
    ]
    eval_keys = [k for k in keys if k.startswith(EVAL_PREFIX)]
    if eval_keys:
        curves = [
            Curve(_short_name(k, EVAL_PREFIX), eval_series(rows, k), PALETTE[i % len(PALETTE)], markers=True)
            for i, k in enumerate(eval_keys)
        ]
        charts.append(line_chart("evaluation score per terrain", curves, "eval"))
    timing = [(_short_name(k, TIMING_PREFIX), series(rows, k)) for k in keys if k.startswith(TIMING_PREFIX)]
    if timing:
        charts.append(stacked_chart("where the time goes", timing, "timing"))
    parts.append(f'<section><h2>Learning curves</h2><div class="charts">{"".join(charts)}</div></section>')

    loss_keys = [k for k in keys if k.startswith(LOSS_PREFIX)]
    if loss_keys:
        zero = [k for k in loss_keys if _all_zero(series(rows, k))]
        loss_charts = [
            line_chart(
                _short_name(k, LOSS_PREFIX),
                [Curve(k, series(rows, k), PALETTE[i % len(PALETTE)])],
                k,
                width=340,
                height=190,
            )
            for i, k in enumerate(loss_keys)
            if k not in zero
        ]
        parts.append(
            f'<section><h2>Losses</h2><div class="charts">{"".join(loss_charts)}</div>'
            f"{_zero_note(zero, LOSS_PREFIX)}</section>"
        )

    if eval_keys:
        table = "".join(
            f"<tr><td>{html.escape(_short_name(k, EVAL_PREFIX))}</td><td>{_last(rows, k):.4f}</td></tr>"
            for k in eval_keys
        )
        parts.append(
            "<section><h2>Latest "
            f"evaluation</h2><table><tr><th>simulation</th><th>score</th></tr>{table}</table></section>"
        )

    parts.append(database_evaluation_section(root))

    replays = find_replays(root)
    if replays:
        items = "".join(
            f"<tr><td>{'-' if r.epoch is None else r.epoch}</td><td><a "
            f'href="{html.escape(r.href)}">{html.escape(r.name)}</a>'
            f"{'' if r.has_page else ' (no viewer page: <code>python -m metta.mettagrid.replay view</code>)'}</td></tr>"
            for r in replays
        )
        parts.append(
            "<section><h2>Replays</h2><table "
            f'class="replays"><tr><th>epoch</th><th>replay</th></tr>{items}</table></section>'
        )
    else:
        where = " or ".join(html.escape(str(d)) for d in replay_dirs(root))
        parts.append(f'<section><h2>Replays</h2><p class="note">No replays in {where} yet.</p></section>')

    config = read_config(root)
    if config is not None:
        parts.append(
            f"<section><h2>Config ({html.escape(config[0])})</h2><pre>{html.escape(config[1])}</pre></section>"
        )

    shown = set(MAIN_KEYS) | set(eval_keys) | set(loss_keys) | {k for k in keys if k.startswith(TIMING_PREFIX)}
    others = [k for k in keys if k not in shown]
    if others:
        small = [
            line_chart(k, [Curve(k, series(rows, k), PALETTE[i % len(PALETTE)])], k, width=300, height=170)
            for i, k in enumerate(others)
        ]
        parts.append(
            f"<section><details><summary>All other metrics ({len(others)})</summary>"
            f'<div class="charts">{"".join(small)}</div></details></section>'
        )
    return _page(f"run {name}", subtitle, "".join(parts))


def database_evaluation_section(run_dir: Path) -> str:
    """The run's newest evaluation as the evaluation database ({data_dir}/evaluations.sqlite) holds it: a score
    per sim with its 95% interval, "missing" where the sim's wall-time guard cut it; empty when there is none."""
    try:
        scores = latest_run_evaluation(database_path(run_dir.resolve().parent), run_dir.resolve())
    except EvaluationDBError as err:
        return f'<section><h2>Evaluation database</h2><p class="note">{html.escape(str(err))}</p></section>'
    if not scores:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(s.sim)}</td>"
        + (
            f"<td>{s.score:.4f}</td><td>{'-' if s.ci95 is None else f'± {s.ci95:.4f}'}</td>"
            if s.score is not None
            else '<td class="missing">missing</td><td>stopped by its max_time_s guard</td>'
        )
        + f"<td>{s.num_episodes}</td></tr>"
        for s in scores
    )
    epoch = scores[0].epoch
    return (
        f"<section><h2>Latest evaluation in the database (epoch {epoch}, suite {html.escape(str(scores[0].suite))})"
        f'</h2><table class="db-eval"><tr><th>simulation</th><th>mean reward</th><th>95% interval</th>'
        f"<th>episodes</th></tr>{rows}</table></section>"
    )


def write_run_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``{run_dir}/index.html`` (or ``out``) atomically and return its path."""
    path = Path(run_dir) / "index.html" if out is None else Path(out)
    atomic_write_text(str(path), run_report_html(run_dir))
    return path


COMPARE_KEYS = (
    "overview/reward",
    "overview/sps",
    "losses/policy_loss",
    "losses/value_loss",
    "losses/entropy",
    "losses/approx_kl",
    "losses/explained_variance",
)


def comparison_html(run_dirs: Iterable[str | os.PathLike]) -> str:
    """One page with several runs side by side, a colour per run: their status, the config keys whose values
    differ, and the curves of the main metrics, losses and evaluation scores."""
    runs = []
    for i, run_dir in enumerate(run_dirs):
        root = Path(run_dir)
        rows, _ = read_metrics(root)
        runs.append((root.resolve().name, root, rows, PALETTE[i % len(PALETTE)]))
    eval_keys: dict[str, None] = {}
    for _, _, rows, _ in runs:
        for k in _numeric_keys(rows):
            if k.startswith(EVAL_PREFIX):
                eval_keys.setdefault(k, None)
    charts, zero = [], []
    for key in (*COMPARE_KEYS, *eval_keys):
        getter = eval_series if key.startswith(EVAL_PREFIX) else series
        curves = [
            Curve(name, getter(rows, key), color, markers=key.startswith(EVAL_PREFIX)) for name, _, rows, color in runs
        ]
        if key.startswith(LOSS_PREFIX) and all(_all_zero(c.points) or not c.points for c in curves):
            zero += [key] if any(c.points for c in curves) else []
        elif any(c.points for c in curves):
            charts.append(line_chart(key, curves, key))
    header = "".join(
        f"<th>{html.escape(k)}</th>" for k in ("run", "status", "epoch", "agent steps", "reward", "steps / s")
    )
    body = ""
    for name, root, rows, color in runs:
        last = rows[-1] if rows else {}
        report = root / "index.html"
        link = (
            f'<a href="{html.escape(report.resolve().as_uri())}">{html.escape(name)}</a>'
            if report.is_file()
            else html.escape(name)
        )
        status = run_status(root, rows)
        values = [
            str(last.get("epoch", "-")),
            fmt_number(last["agent_step"]) if _finite(last.get("agent_step")) else "-",
        ]
        values += ["-" if (v := _last(rows, k)) is None else fmt_number(v) for k in MAIN_KEYS]
        cells = "".join(f"<td>{html.escape(v)}</td>" for v in values)
        body += (
            f'<tr data-run="{html.escape(name)}"><td><span style="color:{color}">■</span> {link}</td>'
            f'<td class="status status-{status.state.replace(" ", "-")}" data-state="{status.state}">'
            f"{html.escape(status.text())}</td>{cells}</tr>"
        )
    table = f'<section><table class="runs"><tr>{header}</tr>{body}</table></section>'
    differences = differing_config_keys([root for _, root, _, _ in runs])
    if differences:
        head = "".join(
            f'<th><span style="color:{color}">■</span> {html.escape(name)}</th>' for name, _, _, color in runs
        )
        rows_html = "".join(
            f'<tr data-key="{html.escape(key)}"><td>{html.escape(key)}</td>'
            + "".join(f"<td>{'-' if v is None else html.escape(v)}</td>" for v in values)
            + "</tr>"
            for key, values in differences
        )
        config = (
            f"<section><h2>Config differences ({len(differences)} key{'s' if len(differences) > 1 else ''})</h2>"
            '<table class="config-diff">'
            f"<tr><th>key</th>{head}</tr>{rows_html}</table></section>"
        )
    else:
        config = (
            '<section><h2>Config differences</h2><p class="note">The runs\' recorded configs are the same.</p>'
            "</section>"
        )
    subtitle = " · ".join(html.escape(str(root.resolve())) for _, root, _, _ in runs)
    return _page(
        f"{len(runs)} runs compared",
        subtitle,
        table
        + config
        + f'<section><div class="charts">{"".join(charts)}</div>'
        + f"{_zero_note(zero, '', 'Zero for the whole of every run')}</section>",
    )


def write_comparison(run_dirs: Iterable[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write the comparison page of several run directories to ``out`` and return its path."""
    atomic_write_text(str(out), comparison_html(run_dirs))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metta.common.run_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_report = sub.add_parser("report", help="write {run_dir}/index.html")
    p_report.add_argument("run_dir", type=Path)
    p_compare = sub.add_parser("compare", help="one page with several runs' curves side by side")
    p_compare.add_argument("run_dirs", type=Path, nargs="+")
    p_compare.add_argument("--out", type=Path, default=Path("compare.html"))
    args = parser.parse_args(argv)
    dirs = [args.run_dir] if args.command == "report" else args.run_dirs
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    path = write_run_report(args.run_dir) if args.command == "report" else write_comparison(args.run_dirs, args.out)
    print(path.resolve().as_uri())
    return 0


if __name__ == "__main__":
    sys.exit(main())
