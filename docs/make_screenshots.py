"""Take the screenshots of docs/API.md in headless Chromium: docs/viewer.png and docs/run_report.png.

    python benchmarks/viewer_fps.py --keep /tmp/bench        # a 24-agent replay with every building type
    python docs/make_screenshots.py --replay /tmp/bench/<id>.json.z --run-dir train_dir/<run>

The viewer is shown at ``--step`` with the best-rewarded agent (then the one holding most items) away from the
map's edge selected, zoomed in around it, every agent's action drawn; the report is the run directory's
``index.html``, rewritten first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's metta
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # its headless-browser driver


def viewer_shot(replay: Path, out: Path, step: int, zoom: float) -> None:
    from headless_browser import HeadlessBrowser

    from metta.mettagrid.replay import write_viewer_page

    with tempfile.TemporaryDirectory() as tmp, HeadlessBrowser(width=1400, height=860) as browser:
        page = browser.open(write_viewer_page(replay, Path(tmp) / "page.html").resolve().as_uri())
        page.wait_for("window.metta.ready || window.metta.error")
        if page.evaluate("window.metta.error"):
            raise SystemExit(page.evaluate("window.metta.error"))
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


def report_shot(run_dir: Path, out: Path) -> None:
    from headless_browser import HeadlessBrowser

    from metta.common.run_report import write_run_report

    with HeadlessBrowser(width=1300, height=1500) as browser:
        page = browser.open(write_run_report(run_dir).resolve().as_uri())
        browser.pump(0.3)
        out.write_bytes(page.screenshot())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replay", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--step", type=int, default=400)
    parser.add_argument("--zoom", type=float, default=26.0, help="pixels per cell")
    args = parser.parse_args()
    viewer_shot(args.replay, args.out / "viewer.png", args.step, args.zoom)
    report_shot(args.run_dir, args.out / "run_report.png")
    print(args.out / "viewer.png", args.out / "run_report.png")


if __name__ == "__main__":
    main()
