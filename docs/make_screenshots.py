"""Take the screenshots of docs/API.md in headless Chromium: docs/viewer.png, docs/viewer_large.png,
docs/run_report.png and docs/compare.png.

    python benchmarks/viewer_fps.py --keep /tmp/bench        # a 24-agent replay with every building type
    python run.py run=a trainer.total_timesteps=600000 trainer.simulation.evaluate_interval=12 \\
        trainer.checkpoint.checkpoint_interval=12             # a run with evaluations and 176x180 replays
    python run.py run=b ... trainer.optimizer.learning_rate=0.0003     # another, stopped with Ctrl-C
    python docs/make_screenshots.py --replay /tmp/bench/<id>.json.z --run-dir train_dir/a --compare train_dir/b

viewer.png: the replay at ``--step`` with the best-rewarded agent (then the one holding most items) away from
the map's edge selected, zoomed in around it, every agent's action drawn. viewer_large.png: the run's newest
replay (a 176x180 map with 4 agents) at fit zoom, on a 1280x720 screen, with one agent selected. run_report.png:
the run directory's ``index.html``, rewritten first, with the curves smoothed and the values under the mouse on
the reward chart. compare.png: the comparison of ``--run-dir`` and ``--compare``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's metta
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # its headless-browser driver


def open_viewer(browser, replay: Path, tmp: str):
    from metta.mettagrid.replay import write_viewer_page

    page = browser.open(write_viewer_page(replay, Path(tmp) / "page.html").resolve().as_uri())
    page.wait_for("window.metta.ready || window.metta.error")
    if page.evaluate("window.metta.error"):
        raise SystemExit(page.evaluate("window.metta.error"))
    return page


def viewer_shot(replay: Path, out: Path, step: int, zoom: float) -> None:
    from headless_browser import HeadlessBrowser

    with tempfile.TemporaryDirectory() as tmp, HeadlessBrowser(width=1400, height=860) as browser:
        page = open_viewer(browser, replay, tmp)
        page.evaluate(f"""(() => {{
            const R = metta.replay, k = Math.min({step}, R.n - 1);
            metta.setStep(k);
            const held = (a) => a.inventory[k].reduce((t, [, n]) => t + n, 0);
            const inside = R.agents.filter(
                (a) => a.xs[k] > 12 && a.xs[k] < R.W - 12 && a.ys[k] > 8 && a.ys[k] < R.H - 8);
            const score = (a) => a.total[k] * 1000 + held(a);
            const best = (inside.length ? inside : R.agents).reduce((a, b) => (score(b) > score(a) ? b : a));
            metta.selectAgent(best.agentId);
            metta.view.s = {zoom};
            metta.centerOn(best.xs[k], best.ys[k]);
            document.getElementById('opt-actions').click();
        }})()""")
        browser.pump(0.5)
        out.write_bytes(page.screenshot())


def large_viewer_shot(run_dir: Path, out: Path) -> None:
    from headless_browser import HeadlessBrowser

    replays = list(run_dir.glob("replays/epoch_*/replay/*.json.z"))
    if not replays:
        raise SystemExit(f"no replay under {run_dir}/replays")
    newest = max(replays, key=lambda path: path.stat().st_mtime)
    with tempfile.TemporaryDirectory() as tmp, HeadlessBrowser(width=1280, height=720) as browser:
        page = open_viewer(browser, newest, tmp)
        page.evaluate("metta.setStep(Math.floor(metta.replay.n / 2)); metta.selectAgent(0); metta.fit()")
        browser.pump(0.5)
        out.write_bytes(page.screenshot())


def report_shot(run_dir: Path, out: Path) -> None:
    from headless_browser import HeadlessBrowser

    from metta.common.run_report import write_run_report

    with HeadlessBrowser(width=1300, height=1500) as browser:
        page = browser.open(write_run_report(run_dir).resolve().as_uri())
        page.evaluate(
            "(() => { const s = document.getElementById('smoothing'); s.value = '0.6';"
            " s.dispatchEvent(new Event('input')); })()"
        )
        x, y = page.evaluate(
            "(() => { const line = document.querySelector('svg[data-metric=\"overview/reward\"] polyline.curve');"
            " const r = line.ownerSVGElement.getBoundingClientRect(), p = line.points.getItem("
            "Math.floor(line.points.numberOfItems * 0.6)); return [r.left + p.x, r.top + p.y]; })()"
        )
        page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y, "button": "none"})
        browser.pump(0.3)
        out.write_bytes(page.screenshot())


def compare_shot(run_dirs: list[Path], out: Path) -> None:
    from headless_browser import HeadlessBrowser

    from metta.common.run_report import write_comparison

    with tempfile.TemporaryDirectory() as tmp, HeadlessBrowser(width=1300, height=1100) as browser:
        page = browser.open(write_comparison(run_dirs, Path(tmp) / "compare.html").resolve().as_uri())
        browser.pump(0.3)
        out.write_bytes(page.screenshot())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replay", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--compare", type=Path, required=True, help="a second run directory for compare.png")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--step", type=int, default=400)
    parser.add_argument("--zoom", type=float, default=26.0, help="pixels per cell")
    args = parser.parse_args()
    shots = {name: args.out / f"{name}.png" for name in ("viewer", "viewer_large", "run_report", "compare")}
    viewer_shot(args.replay, shots["viewer"], args.step, args.zoom)
    large_viewer_shot(args.run_dir, shots["viewer_large"])
    report_shot(args.run_dir, shots["run_report"])
    compare_shot([args.run_dir, args.compare], shots["compare"])
    print(*shots.values())


if __name__ == "__main__":
    main()
