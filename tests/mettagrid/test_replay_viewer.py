"""The replay viewer page: written by the library and the command, then driven in headless Chromium.

One browser for the module. Every expectation comes from the replay's own data (positions, inventories,
rewards at a step), read in Python and compared with what the page shows or drew.
"""

from __future__ import annotations

import io
import json
import math
import re
import zlib
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
from replay_cases import record_one_frame_mine_replay

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
    "label": "viewer_test_room",
    "game": {
        "num_agents": 3,
        "max_steps": 60,
        "groups": {"team_1": {"id": 1}, "team_2": {"id": 2}},
        "agent": {"rewards": {"inventory": {"ore_red": 1.0}}},
        "objects": {
            "wall": {"type_id": 1},
            "mine_red": {"type_id": 2, "output_resources": {"ore_red": 1}, "cooldown": 3, "initial_resource_count": 1},
        },
        "map_builder": {
            "type": "ascii",
            "map_data": "##########\n#........#\n#.1....2.#\n#........#\n#m1......#\n##########",
        },
    },
}
MINER = 2
RECORDED = 40  # steps recorded, out of the episode's 60: the recording stops before the episode ends

# The large map: 176x180 cells with 4 agents, which a laptop screen fits at about 4 pixels per cell.
# Altars start holding a heart (the badge once drew them as yellow dots); the episode ends after 30 steps.
BIG_STEPS = 30
BIG_CFG = {
    "label": "big_map",
    "game": {
        "num_agents": 4,
        "max_steps": BIG_STEPS,
        "objects": {
            "wall": {"type_id": 1},
            "altar": {"type_id": 8, "output_resources": {"heart": 1}, "initial_resource_count": 1, "cooldown": 5},
            "mine_red": {"type_id": 2, "output_resources": {"ore_red": 1}, "cooldown": 3},
        },
        "map_builder": {
            "type": "random",
            "width": 174,
            "height": 178,
            "agents": 4,
            "objects": {"wall": 1500, "altar": 60, "mine_red": 40},
            "border_width": 1,
        },
    },
}


@pytest.fixture(scope="module")
def replay_path(tmp_path_factory) -> Path:
    env = MettaGridEnv(VIEWER_CFG, seed=7)
    env.reset(7)
    rng = np.random.default_rng(7)
    names = env.action_names
    writer = ReplayWriter(tmp_path_factory.mktemp("replays"))
    writer.start_episode(env, episode_id="viewer-test")
    for step in range(RECORDED):
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
def big_replay_path(tmp_path_factory) -> Path:
    env = MettaGridEnv(BIG_CFG, seed=3)
    rng = np.random.default_rng(3)
    names = env.action_names
    moves = [names.index("move"), names.index("rotate")]

    def wander(_obs: np.ndarray) -> np.ndarray:
        kinds = rng.choice(moves, size=env.num_agents, p=[0.7, 0.3])
        return np.stack([kinds, np.where(kinds == moves[0], 0, rng.integers(0, 4, env.num_agents))], 1).astype(np.int32)

    return ReplayWriter(tmp_path_factory.mktemp("big")).record_episode(env, wander)


@pytest.fixture(scope="module")
def big_replay(big_replay_path) -> dict:
    return read_replay(big_replay_path)


@pytest.fixture(scope="module")
def big_page(browser, big_replay_path):
    p = browser.open(write_viewer_page(big_replay_path).resolve().as_uri())
    assert p.wait_for("window.metta.ready || window.metta.error") is True
    return p


def front(page) -> None:
    """Bring a page's tab to the front: a tab opened since would hold back its frames."""
    page.send("Page.bringToFront")


def redraw(page, script: str) -> dict:
    """Run ``script`` (which changes what the map shows) and return what the next frame drew."""
    frames = page.evaluate(f"(() => {{ const f = metta.frames; {script}; return f; }})()")
    return page.wait_for(f"window.metta.frames > {frames} && window.metta.lastDraw")


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
    page.evaluate(
        f"(() => {{ const s = document.getElementById('scrubber'); s.value = '{k}';"
        f" s.dispatchEvent(new Event('input')); }})()"
    )
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
    # Bytes after the zlib stream: rejected by both commands like any other damaged file.
    appended = tmp_path / "appended.json.z"
    appended.write_bytes(replay_path.read_bytes() + b"more")
    assert replay_cli(["view", str(appended), "--no-open"]) == 1
    assert "appended.json.z: replay: 4 bytes after the end of its zlib stream" in capsys.readouterr().err
    assert replay_cli(["check", str(appended)]) == 1
    assert "invalid: " in capsys.readouterr().out


def test_page_loads_without_console_errors(page, replay):
    assert page.evaluate("window.metta.error") is None
    page.browser.pump(0.3)
    assert page.console_errors == []
    n = replay["max_steps"]
    assert n == RECORDED and replay["env_config"]["metta"]["episode_end"] is None
    assert page.evaluate("document.getElementById('step-label').textContent") == f"step 1 / {RECORDED}"
    assert page.evaluate("window.metta.replay.n") == n
    # The environment's name, from the replay, in the top bar, the summary and the page's title.
    assert page.evaluate("document.getElementById('env-name').textContent") == "viewer_test_room"
    assert page.evaluate("document.getElementById('sum-env').textContent") == "viewer_test_room"
    assert page.evaluate("document.title").startswith("viewer_test_room")
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
    assert int(label.split()[1]) > 1


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


def js_fixed(x: float, digits: int) -> str:
    """JavaScript's Number.toFixed: the exact value of the double, rounded half up."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def success_rate(ok: int, count: int) -> str:
    """The page's success rate: a percentage with enough decimals that neither none nor all reads 0% or 100%."""
    if count == 0:
        return "-"
    digits = 0
    while 0 < ok < count and digits < 6 and Decimal(js_fixed(100 * ok / count, digits)) in (0, 100):
        digits += 1
    return js_fixed(100 * ok / count, digits) + "%"


def test_minimap_converter_panel_vision_toggle_and_summary(page, replay):
    page.send("Page.bringToFront")  # a tab opened since (another test's) would hold back this one's frames
    n = replay["max_steps"]
    k = 20
    set_step(page, k)
    page.evaluate("metta.select(null); metta.fit()")
    page.wait_for(f"window.metta.lastDraw.step === {k} && window.metta.lastDraw.vision === null")
    # The minimap: the whole map at a fixed scale, each agent a square of its group's colour where the replay puts it.
    mini = page.evaluate(
        "(() => { const r = document.getElementById('minimap').getBoundingClientRect();"
        " return {hidden: document.getElementById('minimap').hidden, left: r.left, top: r.top,"
        " w: r.width, h: r.height}; })()"
    )
    width, height = replay["map_size"]
    assert not mini["hidden"] and mini["w"] > 0
    scale = page.evaluate("document.getElementById('minimap').clientWidth") / width
    assert page.evaluate("document.getElementById('minimap').clientHeight") == pytest.approx(height * scale, abs=1)
    for agent in agents_at(replay, k).values():
        x, y = agent["location"][:2]
        pixel = page.evaluate(
            f"Array.from(document.getElementById('minimap').getContext('2d')"
            f".getImageData({int((x + 0.5) * scale)}, {int((y + 0.5) * scale)}, 1, 1).data).slice(0, 3)"
        )
        assert tuple(pixel) == tuple(page.evaluate(f"metta.groupColor({agent['group_id']})")), agent["agent_id"]
    # A click on the minimap centres the map view on that cell.
    target = (width - 2, 1)
    before = page.evaluate(f"metta.cellToClient({target[0]}, {target[1]})")
    border = page.evaluate("document.getElementById('minimap').clientLeft")
    page.click(mini["left"] + border + (target[0] + 0.5) * scale, mini["top"] + border + (target[1] + 0.5) * scale)
    centre = page.evaluate(
        "(() => { const r = document.getElementById('map').getBoundingClientRect();"
        " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
    )
    after = page.evaluate(f"metta.cellToClient({target[0]}, {target[1]})")
    cell = page.evaluate("metta.view.s")
    assert abs(after[0] - centre[0]) < cell / 2 and abs(after[1] - centre[1]) < cell / 2, (after, centre)
    assert abs(before[0] - centre[0]) > cell, "the cell was not at the centre before the click"
    page.evaluate("metta.fit()")

    # A converter: click the mine; its panel shows the recipe and its state at this step, and follows the timeline.
    mine = next(o for o in replay["objects"] if replay["type_names"][o["type_id"]] == "mine_red")
    mx, my = mine["location"][:2]
    states = {}
    for s in range(n):
        cooling, converting = (expand_series(mine[key], n)[s] for key in ("is_cooling_down", "is_converting"))
        states[s] = (
            f"cooling down ({expand_series(mine['cooldown_progress'], n)[s]} / {mine['cooldown_time']})"
            if cooling
            else f"converting ({expand_series(mine['production_progress'], n)[s]} / {mine['production_time']})"
            if converting
            else "idle"
        )
    assert len(set(states.values())) >= 2, "the mine changes state while the miner works it"
    inventories = expand_series(mine["inventory"], n, key="inventory")
    steps = sorted(
        {next(s for s in range(n) if states[s].startswith(kind)) for kind in {v.split()[0] for v in states.values()}}
        | {next(s for s in range(n) if inventories[s])}
    )
    set_step(page, steps[0])
    x, y = page.evaluate(f"metta.cellToClient({mx}, {my})")
    page.click(x, y)
    page.wait_for("!!document.getElementById('sel-recipe')")
    assert page.evaluate("metta.state.selected") == {"kind": "converter", "id": mine["id"]}
    names = replay["item_names"]
    output = ", ".join(f"{count} {names[item]}" for item, count in mine["output_resources"])
    recipe = page.evaluate("document.getElementById('sel-recipe').textContent")
    assert recipe == f"nothing → {output}" and "ore_red" in recipe
    for s in steps:
        set_step(page, s)
        assert page.evaluate("document.getElementById('sel-state').textContent") == states[s], s
        held = pairs_to_counts(inventories[s])
        rows = page.evaluate("[...document.querySelectorAll('#sel-inventory tr')].map(r => r.innerText)")
        assert sorted(rows) == sorted(f"{names[i]}\t{c}" for i, c in held.items()) or (
            not held and rows == ["empty"]
        ), (s, rows)

    # The observation window: drawn around the selected agent, V turns it off and on again.
    set_step(page, k)
    page.evaluate(f"metta.selectAgent({MINER})")
    miner = agents_at(replay, k)[MINER]
    obs_w, obs_h = replay["env_config"]["metta"]["obs_width"], replay["env_config"]["metta"]["obs_height"]
    expected = {
        "agent_id": MINER,
        "x": miner["location"][0] - obs_w // 2,
        "y": miner["location"][1] - obs_h // 2,
        "w": obs_w,
        "h": obs_h,
    }
    assert page.wait_for("window.metta.lastDraw.vision") == expected
    page.evaluate("document.getElementById('map').focus()")
    page.press("v", code="KeyV", key_code=86, text="v")
    page.wait_for("window.metta.lastDraw.vision === null")
    assert page.evaluate("[metta.state.showVision, document.getElementById('opt-vision').checked]") == [False, False]
    page.press("v", code="KeyV", key_code=86, text="v")
    assert page.wait_for("window.metta.lastDraw.vision") == expected
    assert page.evaluate("[metta.state.showVision, document.getElementById('opt-vision').checked]") == [True, True]

    # The episode summary: rewards per agent and per group, and how often each action was taken and succeeded.
    agents = {
        i: {
            key: expand_series(a[key], n, key=key)
            for key in ("total_reward", "action_id", "action_success", "group_id")
        }
        for i, a in ((o["agent_id"], o) for o in replay["objects"] if "agent_id" in o)
    }
    totals = {i: a["total_reward"][n - 1] for i, a in agents.items()}
    shown = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#sum-agents tr')]"
        ".map(r => [r.dataset.agent, r.cells[1].textContent]))"
    )
    assert shown == {str(i): fmt(t) for i, t in totals.items()}
    groups: dict[int, list[float]] = {}
    for i in sorted(agents):
        groups.setdefault(agents[i]["group_id"][0], []).append(totals[i])
    shown = page.evaluate(
        "[...document.querySelectorAll('#sum-groups tr[data-group]')]"
        ".map(r => [Number(r.dataset.group), r.cells[0].textContent, ...[...r.cells].slice(1).map(c => c.textContent)])"
    )
    assert shown == [
        [g, replay["group_names"][g], str(len(v)), fmt(sum(v)), fmt(sum(v) / len(v))] for g, v in sorted(groups.items())
    ]
    assert sum(totals.values()) > 0 and {row[1] for row in shown} == {"team_1", "team_2"}
    shown = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#sum-actions tr[data-action]')]"
        ".map(r => [r.dataset.action, [Number(r.cells[1].textContent), r.cells[2].textContent]]))"
    )
    for a_id, name in enumerate(replay["action_names"]):
        taken = [(a["action_success"][s]) for a in agents.values() for s in range(n) if a["action_id"][s] == a_id]
        assert shown[name] == [len(taken), success_rate(sum(taken), len(taken))], name
    assert shown["get_items"][0] > 0 and shown["move"][0] > 0


def test_a_one_frame_replay_with_a_padded_inventory_series_opens(browser, tmp_path):
    """The writer pads a constant inventory of 2+ items in a one-frame replay with an entry at step max_steps
    (docs/replay_format.md 4.1); the page reads it as that inventory, with no error."""
    data = read_replay(record_one_frame_mine_replay(tmp_path)[1])
    mine = next(o for o in data["objects"] if o["type_id"] == 2)
    assert data["max_steps"] == 1 and len(mine["inventory"]) == 2 and mine["inventory"][1][0] == 1  # the padding
    page = browser.open(write_viewer_page(tmp_path / "one-frame.json.z").resolve().as_uri())
    assert page.wait_for("window.metta.ready || window.metta.error") is True
    page.evaluate(f"metta.select({{kind: 'converter', id: {mine['id']}}})")
    rows = page.wait_for("[...document.querySelectorAll('#sel-inventory tr')].map(r => r.innerText)")
    assert sorted(rows) == sorted(f"{data['item_names'][i]}\t{c}" for i, c in mine["inventory"][0][1])
    assert page.console_errors == []


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


# --------------------------------------------------------------------------------------------------------
# Steps, rates and names
def test_one_step_count_everywhere(big_page, big_replay, replay, page):
    """A finished episode of T env steps (auto-reset: T-1 frames) and a recording cut short both count env steps:
    frame k is step k+1, and the step label, the top bar and the summary give the same total."""
    front(big_page)
    n, end = big_replay["max_steps"], big_replay["env_config"]["metta"]["episode_end"]
    assert n == BIG_STEPS - 1 and end["step"] == n  # the terminal state is not in the file
    text = lambda el: big_page.evaluate(f"document.getElementById('{el}').textContent")  # noqa: E731
    big_page.evaluate("metta.setStep(0)")
    assert big_page.wait_for("document.getElementById('step-label').textContent") == f"step 1 / {BIG_STEPS}"
    big_page.evaluate(f"metta.setStep({n - 1})")
    assert big_page.wait_for(f"window.metta.lastDraw.step === {n - 1}")
    assert text("step-label") == f"step {n} / {BIG_STEPS}"
    how = "terminated" if end["terminated"] else "truncated"
    assert text("episode-label") == f"{BIG_STEPS} steps, {how} (step {BIG_STEPS} not drawn)"
    assert text("sum-steps").startswith(f"{BIG_STEPS} steps, {how}; step {BIG_STEPS} reset the env")
    for where in ("step-label", "episode-label", "sum-steps"):  # no other total anywhere
        assert {int(v) for v in re.findall(r"\d+", text(where))} <= {n, BIG_STEPS}, where
    # The recording that stopped before the episode ended counts the steps it holds.
    front(page)
    assert page.evaluate("document.getElementById('episode-label').textContent") == (
        f"{RECORDED} steps recorded, the episode had not ended"
    )
    set_step(page, RECORDED - 1)
    assert page.evaluate("document.getElementById('step-label').textContent") == f"step {RECORDED} / {RECORDED}"
    assert page.evaluate("document.getElementById('env-name').textContent") == "viewer_test_room"


def test_success_rates_have_enough_digits(page):
    cases = {(1, 223): "0.4%", (222, 223): "99.6%", (0, 5): "0%", (5, 5): "100%", (1, 3): "33%", (1, 100000): "0.001%"}
    for (ok, count), text in cases.items():
        assert page.evaluate(f"metta.formatRate({ok}, {count})") == text == success_rate(ok, count)


# --------------------------------------------------------------------------------------------------------
# Drawing: agents visible at any zoom, buildings in their legend colours
def screenshot(page):
    from PIL import Image

    return Image.open(io.BytesIO(page.screenshot())).convert("RGB")


@pytest.mark.parametrize("scale", [None, 30.0])  # fit zoom (about 3.5 px per cell here), then zoomed in
def test_agents_are_visible_with_a_halo_at_any_zoom(big_page, big_replay, scale):
    front(big_page)
    k = 10
    a = agents_at(big_replay, k)[0]["location"]
    zoom = "" if scale is None else f"metta.view.s = {scale}; metta.centerOn({a[0]}, {a[1]})"
    drawn = redraw(big_page, f"metta.select(null); metta.fit(); metta.setStep({k}); {zoom}")["agents"]
    assert len(drawn) == (4 if scale is None else 1)
    s = big_page.evaluate("metta.view.s")
    if scale is None:
        assert s < 5, "the map is fitted at a few pixels per cell"
    image = screenshot(big_page)
    colors = {
        a["agent_id"]: tuple(big_page.evaluate(f"metta.groupColor({a['group_id']})"))
        for a in big_replay["objects"]
        if "agent_id" in a
    }
    for agent in drawn:
        r, halo = agent["radius"], agent["halo"]
        assert r >= 5 and r >= 0.42 * s and halo >= 3
        cx, cy = big_page.evaluate(f"metta.cellToClient({agent['x']}, {agent['y']})")
        body = [
            (round(cx + dx), round(cy + dy))
            for dx in range(-int(r), int(r) + 1)
            for dy in range(-int(r), int(r) + 1)
            if math.hypot(dx, dy) <= r - 1.5
        ]
        filled = sum(image.getpixel(p) == colors[agent["agent_id"]] for p in body)
        assert filled >= 0.6 * len(body), (agent, filled, len(body))  # the notch takes the rest
        ring = [
            image.getpixel((round(cx + (r + halo / 2) * math.cos(t)), round(cy + (r + halo / 2) * math.sin(t))))
            for t in [i * math.pi / 12 for i in range(24)]
        ]
        light = sum(min(p) > 150 for p in ring)
        assert light >= 18, (agent, ring)


def test_buildings_are_drawn_in_their_legend_colours(big_page, big_replay):
    """At fit zoom an altar holding a heart is an altar-coloured square (not the badge's yellow), and zoomed in
    its face keeps the legend colour around the state marks."""
    front(big_page)
    k = 2
    legend = big_page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#legend tr[data-type]')].map(r => [r.dataset.type,"
        " getComputedStyle(r.querySelector('.swatch')).backgroundColor.match(/\\d+/g).map(Number)]))"
    )
    types = big_replay["type_names"]
    agents = [a["location"][:2] for a in agents_at(big_replay, k).values()]
    buildings = [o for o in big_replay["objects"] if "input_resources" in o]
    holding = [o for o in buildings if expand_series(o["inventory"], big_replay["max_steps"], key="inventory")[k]]
    near_agent = lambda x, y: any(abs(x - ax) <= 4 and abs(y - ay) <= 4 for ax, ay in agents)  # noqa: E731
    altar = next(o for o in holding if types[o["type_id"]] == "altar" and not near_agent(*o["location"][:2]))
    for scale in (None, 24.0):
        zoom = (
            ""
            if scale is None
            else f"metta.view.s = {scale}; metta.centerOn({altar['location'][0]}, {altar['location'][1]})"
        )
        redraw(big_page, f"metta.select(null); metta.fit(); metta.setStep({k}); {zoom}")
        s = big_page.evaluate("metta.view.s")
        image = screenshot(big_page)
        rect = big_page.evaluate(
            "(() => { const r = document.getElementById('map').getBoundingClientRect();"
            " return [r.left, r.top, r.right, r.bottom]; })()"
        )
        checked = []
        for o in buildings:
            x, y = o["location"][:2]
            if near_agent(x, y):
                continue  # an agent's halo may cover it
            cx, cy = big_page.evaluate(f"metta.cellToClient({x}, {y})")
            # At fit zoom the centre; zoomed in, a point of the face away from the marks (centre, badge).
            px, py = (cx, cy) if scale is None else (cx - 0.3 * s, cy + 0.3 * s)
            if not (rect[0] + 2 <= px < rect[2] - 2 and rect[1] + 2 <= py < rect[3] - 2) or (
                px > rect[2] - 200 and py > rect[3] - 200
            ):
                continue  # off the map view, or under the minimap
            assert list(image.getpixel((int(px), int(py)))) == legend[types[o["type_id"]]], (scale, o["id"])
            checked.append(o["id"])
        assert altar["id"] in checked and len(checked) >= (10 if scale is None else 1), scale


# --------------------------------------------------------------------------------------------------------
# The camera, the tooltip and the table
def test_follow_camera_keeps_the_selected_agent_in_view(big_page, big_replay):
    front(big_page)
    n = big_replay["max_steps"]
    path = {
        i: [expand_series(o["location"], n)[s][:2] for s in range(n)]
        for i, o in ((o["agent_id"], o) for o in big_replay["objects"] if "agent_id" in o)
    }
    mover = max(path, key=lambda i: len(set(map(tuple, path[i]))))
    inside = (
        f"(() => {{ const a = metta.replay.agents[{mover}], k = metta.state.step; const [x, y] = metta.cellToClient("
        "a.xs[k], a.ys[k]); const r = document.getElementById('map').getBoundingClientRect();"
        " return x >= r.left && x < r.right && y >= r.top && y < r.bottom; })()"
    )
    # Follow off: the camera stays where it was put, away from the agent.
    redraw(
        big_page,
        f"metta.setFollow(false); metta.setStep(0); metta.selectAgent({mover}); metta.view.s = 40; "
        "metta.centerOn(5, 5)",
    )
    assert big_page.evaluate(inside) is False
    # Follow on (the default): the next frame brings it into view, and it stays there on every step.
    big_page.press("c", code="KeyC", key_code=67, text="c")
    assert big_page.wait_for("window.metta.lastDraw.follow && document.getElementById('opt-follow').checked")
    for k in range(n):
        big_page.evaluate(f"metta.setStep({k})")
        big_page.wait_for(f"window.metta.lastDraw.step === {k}")
        assert big_page.evaluate(inside), k
    # ... and while playing.
    big_page.evaluate("metta.setStep(0); metta.setSpeed(60); metta.play()")
    while big_page.evaluate("metta.state.playing"):
        assert big_page.evaluate(inside)
        big_page.browser.pump(0.05)
    # Zoom keys zoom around the followed agent: it stays where it is on screen.
    for key, code, factor in (("+", "Equal", 1.25), ("-", "Minus", 0.8)):
        before = big_page.evaluate(
            f"[metta.view.s, ...metta.cellToClient(...[{path[mover][-1][0]}, {path[mover][-1][1]}])]"
        )
        big_page.press(key, code=code, key_code=187 if key == "+" else 189, text=key)
        after = big_page.evaluate(
            f"[metta.view.s, ...metta.cellToClient(...[{path[mover][-1][0]}, {path[mover][-1][1]}])]"
        )
        assert after[0] == pytest.approx(before[0] * factor)
        assert after[1:] == pytest.approx(before[1:], abs=1), key
    # Dragging the map takes the camera back: follow turns off.
    x, y = big_page.evaluate(
        "(() => { const r = document.getElementById('map').getBoundingClientRect();"
        " return [r.left + 100, r.top + 100]; })()"
    )
    for kind, dx in (("mousePressed", 0), ("mouseMoved", 30), ("mouseReleased", 30)):
        big_page.send(
            "Input.dispatchMouseEvent", {"type": kind, "x": x + dx, "y": y, "button": "left", "clickCount": 1}
        )
    assert big_page.evaluate("[metta.state.follow, document.getElementById('opt-follow').checked]") == [False, False]
    big_page.evaluate("metta.setFollow(true); metta.select(null); metta.fit()")


def hover(page, x: float, y: float) -> None:
    page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y, "button": "none"})


def test_hover_tooltip_follows_the_step_shown(page, replay):
    front(page)
    n = replay["max_steps"]
    page.evaluate("metta.select(null); metta.fit()")
    set_step(page, 5)
    miner = agents_at(replay, 5)[MINER]
    hover(page, *page.evaluate(f"metta.cellToClient({miner['location'][0]}, {miner['location'][1]})"))
    text = page.wait_for("window.metta.hoverText")
    assert text.startswith(f"agent {MINER} · step 6: reward {fmt(miner['total_reward'])}, ")
    assert page.evaluate("document.getElementById('hover').hidden") is False
    # The mouse stays; the step changes: the tooltip tells the new step's values (the miner stays put).
    later = agents_at(replay, 30)[MINER]
    assert later["location"] == miner["location"] and later["total_reward"] != miner["total_reward"]
    set_step(page, 30)
    assert page.evaluate("window.metta.hoverText").startswith(
        f"agent {MINER} · step 31: reward {fmt(later['total_reward'])}, "
    )
    # Over a building: its state at the step shown.
    mine = next(o for o in replay["objects"] if replay["type_names"][o["type_id"]] == "mine_red")
    mx, my = mine["location"][:2]
    hover(page, *page.evaluate(f"metta.cellToClient({mx}, {my})"))
    cooling = expand_series(mine["is_cooling_down"], n)
    for s in (next(s for s in range(n) if cooling[s]), next(s for s in range(n) if not cooling[s])):
        set_step(page, s)
        text = page.evaluate("window.metta.hoverText")
        assert text.startswith(f"mine_red ({mx}, {my}) · step {s + 1}: ")
        assert ("cooling down" in text) == cooling[s], (s, text)
    hover(page, 1, 1)  # off the map
    assert page.wait_for("document.getElementById('hover').hidden")


def test_agents_table_fits_a_1280x720_screen(browser, replay_path, tmp_path):
    """Every agent holding every item, long group and env names: the side panel still needs no sideways scrolling."""
    data = json.loads(zlib.decompress(replay_path.read_bytes()))
    data["group_names"] = [f"a_rather_long_group_name_{i}" for i in range(len(data["group_names"]))]
    data["env_config"]["label"] = (
        "/env/mettagrid/navigation/training/terrain_from_numpy_defaults (game.map_builder.room.dir=x)"
    )
    everything = [[i, 255] for i in range(len(data["item_names"]))]
    for o in data["objects"]:
        if "agent_id" in o:
            o["inventory"] = [[0, []], [1, everything]]
    path = tmp_path / "full.html"
    path.write_text(viewer_page_html(zlib.compress(json.dumps(data).encode()), "full"))
    page = browser.open(path.resolve().as_uri())
    page.send(
        "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": False}
    )
    assert page.wait_for("window.metta.ready && innerWidth === 1280")
    page.evaluate("metta.setStep(5)")
    page.wait_for("window.metta.lastDraw.step === 5")
    overflow = page.evaluate(
        "['side', 'agents-box', 'controls', 'topbar'].map(id => document.getElementById(id))"
        ".concat([document.querySelector('.table-wrap'), document.documentElement])"
        ".map(el => [el.id || el.className || el.tagName, el.scrollWidth - el.clientWidth])"
    )
    assert all(excess <= 0 for _, excess in overflow), overflow
    cells = page.evaluate(
        "[...document.querySelectorAll('#agent-table tbody tr')[0].cells].map(c => c.title || c.textContent)"
    )
    assert f"255 {data['item_names'][0]}" in cells[-1] and len(cells) == 5
    assert page.console_errors == []
