"""Replays from the command line.

    python -m metta.mettagrid.replay view PATH.json.z [--out PAGE.html] [--no-open]
    python -m metta.mettagrid.replay check PATH.json.z [PATH.json.z ...]

``view`` writes a self-contained HTML page for the replay (beside it by default) and opens it in a browser
when one is available; a replay that fails validation gets a page that shows the error, and the command
exits with status 1. ``check`` validates files against the format and prints a line per file.
"""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from pathlib import Path

from metta.mettagrid.replay.format import ReplayFormatError, read_replay, replay_metadata, write_atomic
from metta.mettagrid.replay.viewer import build_viewer_page, page_path_for


def _can_open_browser() -> bool:
    """A graphical browser can start: on macOS and Windows always, elsewhere only with a display."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("BROWSER"))


def view(replay: Path, out: Path | None, open_browser: bool) -> int:
    page, problem = build_viewer_page(replay)
    path = write_atomic(page_path_for(replay) if out is None else out, page.encode("utf-8"))
    url = path.resolve().as_uri()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        print(f"a page that shows the error: {url}")
        return 1
    print(url)
    if open_browser and _can_open_browser():
        try:
            webbrowser.open(url)
        except webbrowser.Error as err:
            print(f"could not open a browser ({err}); open the URL above", file=sys.stderr)
    return 0


def check(paths: list[Path]) -> int:
    status = 0
    for path in paths:
        try:
            data = read_replay(path)
        except ReplayFormatError as err:
            print(f"invalid: {err}")
            status = 1
            continue
        end = replay_metadata(data).get("episode_end")
        ending = f"ended at step {end['step']}" if end else "no episode end"
        print(
            f"ok: {path}: {data['max_steps']} frames, {data['num_agents']} agents, "
            f"{data['map_size'][0]}x{data['map_size'][1]} map, {len(data['objects'])} objects, {ending}"
        )
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metta.mettagrid.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_view = sub.add_parser("view", help="write the replay's HTML page and open it")
    p_view.add_argument("replay", type=Path, help="a .json.z replay file")
    p_view.add_argument("--out", type=Path, default=None, help="where to write the page (default: beside the replay)")
    p_view.add_argument("--no-open", action="store_true", help="only write the page")
    p_check = sub.add_parser("check", help="validate replay files")
    p_check.add_argument("replays", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "view":
        return view(args.replay, args.out, not args.no_open)
    return check(args.replays)


if __name__ == "__main__":
    sys.exit(main())
