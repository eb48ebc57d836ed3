"""How fast the replay viewer page opens and plays in headless Chromium, printed as one JSON line.

The workload is the issue's: a 1000-step replay of 24 agents (two teams) on a 100x100 map with every
building type, random actions. The script records it, writes the viewer page, opens the page and plays it
at 60 steps per second.

    python benchmarks/viewer_fps.py [--steps 1000] [--agents 24] [--size 100] [--seconds 4] [--keep DIR]

Smaller sizes (the smoke test runs ``--steps 10 --agents 2 --size 12``) keep every building type: the counts
below are for the 100x100 map and scale with the map's area, at least one of each.

Numbers: ``open_s`` is from navigation to the viewer being ready (decompress, parse, build, first frame), as
seen from Python; ``ready_ms`` the same inside the page; ``fps`` frames drawn per second while playing
(Chromium paints at most 60); ``steps_per_s`` how fast the step counter advanced; ``render_ms`` the mean time
of one frame's drawing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's metta, wherever it is run from

BUILDINGS = {
    "altar": 8,
    "mine_red": 10,
    "mine_blue": 10,
    "mine_green": 10,
    "generator_red": 6,
    "generator_blue": 6,
    "generator_green": 6,
    "armory": 2,
    "lasery": 2,
    "lab": 2,
    "factory": 2,
    "temple": 2,
}


def buildings(size: int) -> dict[str, int]:
    """BUILDINGS (for a 100x100 map) scaled to a ``size`` x ``size`` map's inner area, at least one of each."""
    scale = (size - 2) ** 2 / 98**2
    return {name: max(1, round(n * scale)) for name, n in BUILDINGS.items()}


def workload_config(steps: int, agents: int, size: int) -> dict:
    """The packaged base env (every object type defined) on a random map with two teams."""
    from metta.mettagrid.config_loader import load_config_dict

    cfg = load_config_dict("/env/mettagrid/mettagrid")
    cfg["game"].update(
        num_agents=agents,
        max_steps=steps + 1,
        groups={"team_1": {"id": 1}, "team_2": {"id": 2}},
        map_builder={
            "type": "random",
            "width": size - 2,
            "height": size - 2,
            "agents": {"team_1": agents // 2, "team_2": agents - agents // 2},
            "objects": {"wall": size * size // 12, "block": size, **buildings(size)},
            "border_width": 1,
        },
    )
    return cfg


def record(out_dir: Path, steps: int, agents: int, size: int) -> Path:
    from metta.mettagrid.env import MettaGridEnv
    from metta.mettagrid.replay import ReplayWriter

    env = MettaGridEnv(workload_config(steps, agents, size), seed=0)
    rng = np.random.default_rng(0)
    max_args = np.array(env.max_action_args)

    def policy(_obs: np.ndarray) -> np.ndarray:
        kinds = rng.integers(0, len(max_args), env.num_agents)
        return np.stack([kinds, rng.integers(0, max_args[kinds] + 1)], 1).astype(np.int32)

    return ReplayWriter(out_dir).record_episode(env, policy, max_steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=24)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0, help="how long to play")
    parser.add_argument("--keep", type=Path, default=None, help="write the replay and its page here")
    args = parser.parse_args()

    from headless_browser import HeadlessBrowser  # beside this script

    from metta.mettagrid.replay import write_viewer_page

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.keep or Path(tmp)
        t0 = time.perf_counter()
        replay = record(out_dir, args.steps, args.agents, args.size)
        record_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        page_path = write_viewer_page(replay)
        page_s = time.perf_counter() - t0
        replay_bytes, page_bytes = replay.stat().st_size, page_path.stat().st_size
        with HeadlessBrowser(width=1600, height=1000, timeout=60) as browser:
            page = browser.open("about:blank")
            t0 = time.perf_counter()
            page.navigate(page_path.resolve().as_uri(), wait_load=False)
            page.wait_for("window.metta && (window.metta.ready || window.metta.error)", interval=0.005)
            open_s = time.perf_counter() - t0
            if page.evaluate("window.metta.error"):
                raise SystemExit(f"the page shows an error: {page.evaluate('window.metta.error')}")
            ready_ms = page.evaluate("window.metta.readyAt")
            page.evaluate("metta.setSpeed(60); metta.selectAgent(0); metta.play()")
            browser.pump(0.5)  # let playback settle
            start = page.evaluate("[performance.now(), metta.frames, metta.state.step, metta.renderMs]")
            browser.pump(args.seconds)
            end = page.evaluate("[performance.now(), metta.frames, metta.state.step, metta.renderMs]")
            seconds = (end[0] - start[0]) / 1000
            errors = page.console_errors
    print(
        json.dumps(
            {
                "steps": args.steps,
                "agents": args.agents,
                "map": f"{args.size}x{args.size}",
                "replay_bytes": replay_bytes,
                "page_bytes": page_bytes,
                "record_s": round(record_s, 2),
                "page_write_s": round(page_s, 3),
                "open_s": round(open_s, 3),
                "ready_ms": round(ready_ms, 1),
                "fps": round((end[1] - start[1]) / seconds, 1),
                "steps_per_s": round((end[2] - start[2]) / seconds, 1),
                "render_ms": round(end[3], 2),
                "console_errors": len(errors),
            }
        )
    )


if __name__ == "__main__":
    main()
