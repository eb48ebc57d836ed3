"""The replay viewer page: written by the library and the command, then driven in headless Chromium.

One browser for the module. Every expectation comes from the replay's own data (positions, inventories,
rewards at a step), read in Python and compared with what the page shows or drew.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from metta.mettagrid.env import MettaGridEnv
from metta.mettagrid.replay import (
    ReplayWriter,
    expand_series,
    pairs_to_counts,
    read_replay,
    viewer_page_html,
    write_viewer_page,
)
from metta.mettagrid.replay.__main__ import main as replay_cli

# Two teams on a walled map; agent 2 stands right of a mine and mines it, the others wander.
VIEWER_CFG = {
    "game": {
        "num_agents": 3,
        "max_steps": 60,
        "groups": {"team_1": {"id": 1}, "team_2": {"id": 2}},
        "agent": {"rewards": {"inventory": {"ore_red": 1.0}}},
        "objects": {
            "wall": {"type_id": 1},
            "mine_red": {"type_id": 2, "output_resources": {"ore_red": 1}, "cooldown": 3, "initial_resource_count": 1},
        },
        "map_builder": {"type": "ascii", "map_data": "##########\n#........#\n#.1....2.#\n#........#\n#m1......#\n##########"},
    }
}
MINER = 2


@pytest.fixture(scope="module")
def replay_path(tmp_path_factory) -> Path:
    env = MettaGridEnv(VIEWER_CFG, seed=7)
    env.reset(7)
    rng = np.random.default_rng(7)
    names = env.action_names
    writer = ReplayWriter(tmp_path_factory.mktemp("replays"))
    writer.start_episode(env, episode_id="viewer-test")
    for step in range(40):
        kinds = rng.choice([names.index("move"), names.index("rotate")], size=3)
        args = rng.integers(0, 4, size=3) % (np.array(env.max_action_args)[kinds] + 1)
        actions = np.stack([kinds, args], 1).astype(np.int32)
        actions[MINER] = [names.index("rotate"), 2] if step == 0 else [names.index("get_items"), 0]
        env.step(actions)
        writer.log_step(env)
    return writer.end_episode()


@pytest.fixture(scope="module")
def replay(replay_path) -> dict:
    return read_replay(replay_path)


@pytest.fixture(scope="module")
def page(browser, replay_path):
    url = write_viewer_page(replay_path).resolve().as_uri()
    p = browser.open(url)
    p.wait_for("window.metta.ready || window.metta.error")
    return p


def agents_at(replay: dict, step: int) -> dict[int, dict]:
    """agent_id -> its values at ``step``, from the replay's data."""
    n = replay["max_steps"]
    out = {}
    for o in replay["objects"]:
        if "agent_id" in o:
            out[o["agent_id"]] = {k: expand_series(v, n, key=k)[step] for k, v in o.items()}
    return out


def fmt(value: float) -> str:
    """How the page prints a number: integers plainly, others with 3 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def set_step(page, k: int) -> None:
    """Scrub the timeline as a user does (the range input's input event) and wait for the frame."""
    page.evaluate(f"(() => {{ const s = document.getElementById('scrubber'); s.value = '{k}';"
                  f" s.dispatchEvent(new Event('input')); }})()")  # fmt: skip
    page.wait_for(f"window.metta.lastDraw && window.metta.lastDraw.step === {k}")


# --------------------------------------------------------------------------------------------------------
def test_page_is_self_contained(replay_path):
    page_path = write_viewer_page(replay_path)
    assert page_path == replay_path.with_name("viewer-test.html")
    html = page_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must load nothing from a network"
    assert "fetch(" not in html and "XMLHttpRequest" not in html
    # The replay travels as its own compressed bytes (base64), so the page is about 4/3 of them plus the code.
    code_size = len(viewer_page_html(None, "x").encode())
    assert len(html.encode()) - code_size < replay_path.stat().st_size * 4 / 3 + 200


def test_view_command(replay_path, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert replay_cli(["view", str(replay_path), "--out", str(out), "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == out.resolve().as_uri()
    bad = tmp_path / "bad.json.z"
    bad.write_bytes(replay_path.read_bytes()[:100])
    assert replay_cli(["view", str(bad), "--no-open"]) == 1
    assert "zlib stream" in capsys.readouterr().err
    assert (tmp_path / "bad.html").is_file()
    assert replay_cli(["check", str(replay_path), str(bad)]) == 1
    assert "ok:" in capsys.readouterr().out


def test_page_loads_without_console_errors(page, replay):
    assert page.evaluate("window.metta.error") is None
    page.browser.pump(0.3)
    assert page.console_errors == []
    n = replay["max_steps"]
    assert page.evaluate("document.getElementById('step-label').textContent") == f"step 0 / {n - 1}"
    assert page.evaluate("window.metta.replay.n") == n
    assert page.evaluate("document.querySelectorAll('#agent-table tbody tr').length") == replay["num_agents"]
    legend = page.evaluate("document.getElementById('legend').textContent")
    assert "mine_red" in legend and "wall" in legend and "team_1" in legend and "team_2" in legend


def test_playing_advances_the_step_counter(page):
    set_step(page, 0)
    page.press(" ", code="Space", key_code=32, text=" ")
    assert page.evaluate("window.metta.state.playing") is True
    page.wait_for("window.metta.state.step >= 3", timeout=10)
    label = page.evaluate("document.getElementById('step-label').textContent")
    page.press(" ", code="Space", key_code=32, text=" ")
    assert page.evaluate("window.metta.state.playing") is False
    assert int(label.split()[1]) > 0


def test_keys_step_and_scrubbing_shows_that_steps_positions(page, replay):
    for k in (0, 7, 23, replay["max_steps"] - 1):
        set_step(page, k)
        drawn = {a["agent_id"]: (a["x"], a["y"]) for a in page.evaluate("window.metta.lastDraw.agents")}
        expected = {i: tuple(a["location"][:2]) for i, a in agents_at(replay, k).items()}
        assert drawn == expected, k
    set_step(page, 10)
    page.press("ArrowRight", key_code=39)
    page.wait_for("window.metta.lastDraw.step === 11")
    page.press("ArrowLeft", key_code=37)
    page.wait_for("window.metta.lastDraw.step === 10")


def test_clicking_an_agent_selects_it_and_shows_inventory_and_reward(page, replay):
    k = 30
    miner = agents_at(replay, k)[MINER]
    counts = pairs_to_counts(miner["inventory"])
    assert counts and miner["total_reward"] > 0, "the miner holds ore by step 30"
    set_step(page, k)
    x, y = page.evaluate(f"window.metta.cellToClient({miner['location'][0]}, {miner['location'][1]})")
    page.click(x, y)
    page.wait_for("!!document.getElementById('sel-total')")  # the panel of the agent, drawn with the next frame
    assert page.evaluate("window.metta.state.selected.agentId") == MINER
    panel = page.evaluate("document.getElementById('selection').innerText")
    assert page.evaluate("document.getElementById('sel-total').textContent") == fmt(miner["total_reward"])
    assert page.evaluate("document.getElementById('sel-reward').textContent") == fmt(miner["current_reward"])
    rows = page.evaluate("[...document.querySelectorAll('#sel-inventory tr')].map(r => r.innerText)")
    for item, count in counts.items():
        name = replay["item_names"][item]
        assert any(name in row and f"{count} / {miner['inventory_max']}" in row for row in rows), (name, rows)
    action = replay["action_names"][miner["action_id"]]
    assert f"{action}({miner['action_param']})" in panel
    assert page.evaluate("document.querySelector('#agent-table tr.selected').dataset.agent") == str(MINER)
    # The panel follows the timeline: one step earlier it shows that step's values.
    set_step(page, k - 1)
    earlier = agents_at(replay, k - 1)[MINER]
    assert page.evaluate("document.getElementById('sel-total').textContent") == fmt(earlier["total_reward"])


def test_table_sorts_and_trace_click_jumps(page, replay):
    set_step(page, 30)
    page.evaluate("document.querySelector(\"#agent-table th[data-key='total']\").click()")
    page.browser.pump(0.1)
    order = page.evaluate("[...document.querySelectorAll('#agent-table tbody tr')].map(r => Number(r.dataset.agent))")
    totals = {i: a["total_reward"] for i, a in agents_at(replay, 30).items()}
    assert [totals[i] for i in order] == sorted(totals.values(), reverse=(page.evaluate("metta.state.sort.dir") < 0))
    # A click on the trace: the agent's row at a step, as the row and column say.
    x, y = page.evaluate("""(() => { const r = document.getElementById('trace').getBoundingClientRect();
        const rows = metta.replay.agents.length, rowH = Math.min(r.height / rows, 14);
        return [r.left + 28 + (r.width - 28) * (12.5 / metta.replay.n), r.top + rowH * 1.5]; })()""")
    page.click(x, y)
    page.wait_for("window.metta.state.step === 12")
    assert page.evaluate("window.metta.state.selected.agentId") == 1


def test_screenshot_at_a_known_step_has_agent_colours_where_the_replay_puts_agents(page, replay):
    from PIL import Image

    k = 25
    set_step(page, k)
    page.evaluate("metta.select(null)")
    page.browser.pump(0.1)
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    agents = agents_at(replay, k)
    colors = {g: tuple(page.evaluate(f"metta.groupColor({g})")) for g in (1, 2)}
    assert colors[1] != colors[2]
    occupied = set()
    for agent in agents.values():
        x, y = agent["location"][:2]
        occupied.add((x, y))
        cx, cy = page.evaluate(f"metta.cellToClient({x}, {y})")
        assert image.getpixel((round(cx), round(cy))) == colors[agent["group_id"]], agent["agent_id"]
    # A floor cell the replay leaves empty shows no agent colour.
    for x, y in [(3, 1), (5, 3), (8, 1)]:
        if (x, y) not in occupied:
            cx, cy = page.evaluate(f"metta.cellToClient({x}, {y})")
            assert image.getpixel((round(cx), round(cy))) not in colors.values()


def test_bad_replays_show_their_error(browser, replay_path, tmp_path):
    truncated = tmp_path / "cut.json.z"
    truncated.write_bytes(replay_path.read_bytes()[:200])
    page = browser.open(write_viewer_page(truncated).resolve().as_uri())
    page.wait_for("window.metta.error")
    assert page.evaluate("document.getElementById('error').hidden") is False
    text = page.evaluate("document.getElementById('error-text').textContent")
    assert "cut.json.z" in text and "zlib stream" in text
    # Data that only the page's own checks catch (the page was not written by write_viewer_page).
    data = json.loads(zlib.decompress(replay_path.read_bytes()))
    data["objects"][0]["location"] = [[0, [99, 0, 0]]] + data["objects"][0]["location"][1:]
    html = viewer_page_html(zlib.compress(json.dumps(data).encode()), "hand-made")
    hand_made = tmp_path / "hand.html"
    hand_made.write_text(html)
    page = browser.open(hand_made.resolve().as_uri())
    message = page.wait_for("window.metta.error")
    assert "key 'location'" in message and "inside the 10x6 map" in message
    assert page.evaluate("document.getElementById('error').hidden") is False
