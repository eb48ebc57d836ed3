"""Config paths, inheritance, overrides and the packaged YAML configs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from metta.mettagrid.config import ConverterConfig, MettaGridConfig, WallConfig
from metta.mettagrid.config_loader import (
    CONFIGS_ROOT,
    ConfigError,
    apply_overrides,
    load_config_dict,
    load_env_config,
    packaged_config_paths,
    resolve_config_path,
)

SEED_PATHS = [
    "/env/mettagrid/curriculum/navigation/bucketed",
    "/env/mettagrid/navigation/training/terrain_from_numpy_defaults",
    "/env/mettagrid/curriculum/simple",
    "/env/mettagrid/mettagrid",
    "/env/mettagrid/curriculum/navigation/learning_progress",
]
EVAL_PATHS = [f"/env/mettagrid/navigation/evals/terrain_{size}" for size in ("small", "medium", "large")]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _map_builder_types_available(*types: str) -> bool:
    from typing import get_args

    from metta.mettagrid.map import MapBuilderConfig

    union = get_args(MapBuilderConfig)[0]
    tags = set()
    for cls in get_args(union):
        tags.update(get_args(cls.model_fields["type"].annotation))
    return set(types) <= tags


needs_nav_builders = pytest.mark.skipif(
    not _map_builder_types_available("multi_room", "terrain"),
    reason="the multi_room and terrain map builders have not landed yet",
)


# -- paths ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SEED_PATHS + EVAL_PATHS)
def test_packaged_paths_resolve(path):
    file = resolve_config_path(path)
    assert file.is_file() and file.suffix == ".yaml"
    assert file.is_relative_to(CONFIGS_ROOT)
    # The leading slash and the suffix are optional.
    assert resolve_config_path(path.lstrip("/")) == file
    assert resolve_config_path(path + ".yaml") == file


def test_file_on_disk_is_read_as_is(tmp_path):
    path = _write(tmp_path, "env.yaml", "game:\n  max_steps: 7\n")
    assert resolve_config_path(str(path)) == path
    assert load_env_config(path).game.max_steps == 7


def test_unknown_path_suggests_close_matches():
    with pytest.raises(ConfigError) as err:
        resolve_config_path("/env/mettagrid/curriculum/navigation/buckted")
    msg = str(err.value)
    assert "buckted" in msg and "/env/mettagrid/curriculum/navigation/bucketed" in msg


def test_packaged_config_listing():
    paths = packaged_config_paths()
    for path in SEED_PATHS + EVAL_PATHS:
        assert path in paths


# -- inheritance and overrides -------------------------------------------------------------------------------


def test_defaults_merge_in_order(tmp_path):
    _write(tmp_path, "base.yaml", "game:\n  max_steps: 10\n  num_agents: 2\n  obs_width: 9\n")
    _write(tmp_path, "mid.yaml", "defaults: [base]\ngame:\n  max_steps: 20\n")
    child = _write(tmp_path, "child.yaml", "defaults:\n  - mid\n  - _self_\ngame:\n  obs_width: 7\n")
    cfg = load_config_dict(child)
    assert cfg["game"] == {"max_steps": 20, "num_agents": 2, "obs_width": 7}
    # _self_ first: the inherited keys win.
    first = _write(tmp_path, "first.yaml", "defaults:\n  - _self_\n  - mid\ngame:\n  max_steps: 99\n")
    assert load_config_dict(first)["game"]["max_steps"] == 20


def test_inherits_packaged_default_and_interpolates(tmp_path):
    child = _write(tmp_path, "c.yaml", "defaults: [/env/mettagrid/mettagrid]\ngame:\n  num_agents: 3\n")
    cfg = load_env_config(child)
    assert cfg.game.num_agents == 3
    assert cfg.game.map_builder.agents == 3  # ${game.num_agents} resolved after the merge
    assert cfg.game.objects["altar"].type_id == 8


def test_different_builder_type_replaces_instead_of_merging(tmp_path):
    child = _write(
        tmp_path,
        "c.yaml",
        """\
        defaults: [/env/mettagrid/mettagrid]
        game:
          num_agents: 1
          map_builder:
            type: ascii
            map_data: |
              ###
              #@#
              ###
        """,
    )
    cfg = load_env_config(child)
    assert cfg.game.map_builder.type == "ascii"


def test_circular_defaults_are_reported(tmp_path):
    _write(tmp_path, "a.yaml", "defaults: [b]\n")
    b = _write(tmp_path, "b.yaml", "defaults: [a]\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config_dict(b)


def test_overrides_dotted_and_nested():
    cfg = load_env_config("/env/mettagrid/mettagrid", {"game.max_steps": 100, "game": {"obs_width": 9}})
    assert cfg.game.max_steps == 100 and cfg.game.obs_width == 9
    # Overrides come before interpolation: the map follows num_agents.
    cfg = load_env_config("/env/mettagrid/mettagrid", {"game.num_agents": 5})
    assert cfg.game.map_builder.agents == 5


def test_apply_overrides_does_not_mutate_and_merges():
    base = {"game": {"agent": {"rewards": {"inventory": {"heart": 1}}}}}
    out = apply_overrides(base, {"game.agent.rewards": {"inventory": {"ore_red": 0.1}}})
    assert out["game"]["agent"]["rewards"]["inventory"] == {"heart": 1, "ore_red": 0.1}
    assert base["game"]["agent"]["rewards"]["inventory"] == {"heart": 1}


def test_override_through_a_scalar_names_the_key():
    with pytest.raises(ConfigError, match="game.max_steps"):
        apply_overrides({"game": {"max_steps": 5}}, {"game.max_steps.value": 3})


def test_bad_key_error_names_file_key_and_fix(tmp_path):
    path = _write(tmp_path, "bad.yaml", "defaults: [/env/mettagrid/mettagrid]\ngame:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_env_config(path)
    msg = str(err.value)
    assert str(path) in msg and "game.max_stepz" in msg and "max_steps" in msg
    with pytest.raises(ConfigError, match="game.obs_width"):
        load_env_config("/env/mettagrid/mettagrid", {"game.obs_width": 8})


def test_curriculum_file_is_not_an_env_config():
    with pytest.raises(ConfigError, match="curriculum"):
        load_env_config("/env/mettagrid/curriculum/navigation/bucketed")


def test_yaml_must_be_a_mapping(tmp_path):
    path = _write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_dict(path)


# -- the packaged configs ------------------------------------------------------------------------------------


def test_default_game_matches_upstream():
    cfg = load_env_config("/env/mettagrid/mettagrid")
    objects = cfg.game.objects
    ids = {name: obj.type_id for name, obj in objects.items()}
    assert ids == {
        "wall": 1,
        "block": 14,
        "mine_red": 2,
        "mine_blue": 3,
        "mine_green": 4,
        "generator_red": 5,
        "generator_blue": 6,
        "generator_green": 7,
        "altar": 8,
        "armory": 9,
        "lasery": 10,
        "lab": 11,
        "factory": 12,
        "temple": 13,
    }
    assert isinstance(objects["wall"], WallConfig) and not objects["wall"].swappable
    assert isinstance(objects["block"], WallConfig) and objects["block"].swappable
    altar = objects["altar"]
    assert isinstance(altar, ConverterConfig)
    assert (altar.input_resources, altar.output_resources, altar.cooldown) == ({"battery_red": 3}, {"heart": 1}, 10)
    assert objects["mine_blue"].color == 1 and objects["mine_red"].cooldown == 50
    assert objects["factory"].output_resources == {"armor": 5, "laser": 5}
    assert cfg.game.actions.enabled_names() == ["attack", "get_items", "move", "noop", "put_items", "rotate", "swap"]
    assert cfg.game.actions.attack.consumed_resources == {"laser": 1}
    assert cfg.game.actions.attack.defense_resources == {"armor": 1}
    assert cfg.game.inventory_item_names[:9] == [
        "ore_red",
        "ore_blue",
        "ore_green",
        "battery_red",
        "battery_blue",
        "battery_green",
        "heart",
        "armor",
        "laser",
    ]
    assert cfg.game.groups["agent"].id == 0
    assert cfg.game.agent.rewards.inventory == {"heart": 1}
    assert cfg.game.track_movement_metrics


@needs_nav_builders
def test_navigation_template():
    cfg = load_env_config("/env/mettagrid/navigation/training/terrain_from_numpy_defaults")
    game = cfg.game
    assert game.num_agents == 4 and game.max_steps == 1000 and cfg.sampling == 1
    assert game.actions.enabled_names() == ["get_items", "move", "noop", "rotate"]
    assert game.objects["altar"].cooldown == 1000 and game.objects["altar"].initial_resource_count == 1
    mb = game.map_builder
    assert (mb.type, mb.num_rooms, mb.border_width) == ("multi_room", 4, 6)
    assert mb.room.border_width == 3 and mb.room.agents == 1 and mb.room.objects == {"altar": 10}


@needs_nav_builders
@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_eval_envs(size):
    cfg = load_env_config(f"/env/mettagrid/navigation/evals/terrain_{size}")
    assert cfg.game.map_builder.room.dir == f"varied_terrain/balanced_{size}"
    assert cfg.game.num_agents == 4


def test_every_packaged_env_config_validates():
    for path in packaged_config_paths():
        raw = load_config_dict(path)
        if "_target_" in raw:
            continue  # curricula: validated in test_curriculum.py
        if raw.get("game", {}).get("map_builder", {}).get("type") == "multi_room" and not _map_builder_types_available(
            "multi_room", "terrain"
        ):
            continue
        assert isinstance(load_env_config(path), MettaGridConfig), path
