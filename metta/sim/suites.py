"""Evaluation suites by name: ``terrain`` (run.py's default), ``navigation`` (upstream's 26 sims) and ``smoke``.

    suite = suite_config("navigation")                 # a SimulationSuiteConfig, 5 episodes per sim
    suite = suite_config("smoke", num_episodes=1)

- ``terrain``: the interface's suite, balanced small/medium/large terrain with four agents (see
  ``terrain_suite``).
- ``navigation``: upstream's ``configs/sim/navigation.yaml``: one agent, hearts worth 0.333, altars that start
  with one heart (and, with no batteries to be had, never make another), attack, swap, change_color and
  put_items off, each sim with upstream's ``max_steps``. The maps are ours (``metta.mettagrid.map.navigation``),
  fixed per sim, and travel inside the env config as ASCII, so the config's hash names the exact map.
  Categories (upstream's rule: a category's score is the mean over the sims whose name contains it):
  ``navigation`` (all 26), ``emptyspace``, ``walls``, ``cylinder``, ``obstacles``, ``radial``.
- ``smoke``: two tiny maps with the navigation settings, for quick end-to-end checks.

``trainer.simulation.suite`` picks run.py's suite by these names.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.config_loader import env_config_from_dict, load_config_dict
from metta.mettagrid.curriculum.loader import curriculum_from_any
from metta.mettagrid.map.ascii import to_ascii
from metta.mettagrid.map.navigation import SMOKE_MAPS, navigation_map
from metta.sim.simulation import env_config_hash
from metta.sim.simulation_config import SimulationSuiteConfig, SingleEnvSimulationConfig

EVAL_TERRAINS = ("terrain_small", "terrain_medium", "terrain_large")

# Upstream's max_steps per sim (upstream-facts 6.4), in the suite's order.
NAVIGATION_MAX_STEPS: dict[str, int] = {
    "emptyspace_withinsight": 45,
    "emptyspace_outofsight": 150,
    "emptyspace_sparse": 300,
    "emptyspace_sparse_medium": 1000,
    "walls_withinsight": 75,
    "walls_outofsight": 120,
    "walls_sparse": 250,
    "cylinder": 250,
    "cylinder_easy": 250,
    "obstacles0": 100,
    "obstacles1": 300,
    "obstacles2": 350,
    "obstacles3": 300,
    "corridors": 450,
    "labyrinth": 250,
    "radialmaze": 200,
    "honeypot": 300,
    "knotty": 500,
    "memory_palace": 200,
    "radial_large": 1000,
    "radial_mini": 150,
    "radial_small": 120,
    "swirls": 350,
    "thecube": 350,
    "walkaround": 250,
    "wanderout": 500,
}
NAVIGATION_CATEGORIES = ("navigation", "emptyspace", "walls", "cylinder", "obstacles", "radial")
SMOKE_MAX_STEPS = {"open": 30, "wall": 60}

# The navigation suite's game settings, on top of the default game (/env/mettagrid/mettagrid).
NAVIGATION_SETTINGS = {
    "game.num_agents": 1,
    "game.agent.rewards.inventory.heart": 0.333,
    "game.objects.altar.initial_resource_count": 1,
    "game.actions.attack.enabled": False,
    "game.actions.swap.enabled": False,
    "game.actions.change_color.enabled": False,
    "game.actions.put_items.enabled": False,
    "game.global_obs.resource_rewards": False,
}


@lru_cache(maxsize=1)
def _navigation_game() -> dict:
    return load_config_dict("/env/mettagrid/mettagrid", NAVIGATION_SETTINGS)


def navigation_env(map_name: str, max_steps: int, label: str | None = None) -> MettaGridConfig:
    """The env of one navigation sim: the suite's settings on the fixed map ``map_name``."""
    cfg = copy.deepcopy(_navigation_game())  # the YAML is read once: 26 reads were most of building the suite
    cfg["game"]["max_steps"] = max_steps
    # The map replaces the default random builder entirely (overrides would merge into it).
    cfg["game"]["map_builder"] = {"type": "ascii", "map_data": to_ascii(navigation_map(map_name))}
    cfg["label"] = label or map_name
    return env_config_from_dict(cfg, source=f"navigation sim {map_name}")


def navigation_suite(num_episodes: int = 5) -> SimulationSuiteConfig:
    """Upstream's navigation suite: 26 single-agent sims, ``num_episodes`` each."""
    return SimulationSuiteConfig(
        name="navigation",
        categories=list(NAVIGATION_CATEGORIES),
        simulations={
            f"navigation/{sim}": SingleEnvSimulationConfig(env=navigation_env(sim, steps), num_episodes=num_episodes)
            for sim, steps in NAVIGATION_MAX_STEPS.items()
        },
    )


def terrain_suite(num_episodes: int = 5) -> SimulationSuiteConfig:
    """The interface's suite: balanced small/medium/large terrain, ``num_episodes`` each.

    The envs are the packaged ``/env/mettagrid/navigation/evals/terrain_{small,medium,large}`` configs (the
    navigation training template with ``room.dir`` set to ``varied_terrain/balanced_{size}``), where upstream
    patched the template through ``env_overrides``. The suite-level ``num_episodes=10`` is upstream's; every
    simulation sets its own. Upstream also cut each simulation at 30 s of wall time, which on a busy machine
    dropped whole simulations from the score; here episodes run to their ``max_steps``.
    """
    return SimulationSuiteConfig(
        name="evaluation",
        num_episodes=10,
        simulations={
            f"navigation/{terrain}": SingleEnvSimulationConfig(
                env=f"/env/mettagrid/navigation/evals/{terrain}", num_episodes=num_episodes
            )
            for terrain in EVAL_TERRAINS
        },
    )


def smoke_suite(num_episodes: int = 2) -> SimulationSuiteConfig:
    """Two tiny sims with the navigation settings (an altar in view; an altar behind a wall)."""
    return SimulationSuiteConfig(
        name="smoke",
        simulations={
            f"smoke/{name}": SingleEnvSimulationConfig(
                env=navigation_env(f"smoke_{name}", SMOKE_MAX_STEPS[name], label=f"smoke_{name}"),
                num_episodes=num_episodes,
            )
            for name in SMOKE_MAPS
        },
    )


SUITES: dict[str, Callable[..., SimulationSuiteConfig]] = {
    "terrain": terrain_suite,
    "navigation": navigation_suite,
    "smoke": smoke_suite,
}
SUITE_NAMES = tuple(SUITES)


def check_suite_name(name: str) -> str:
    if name not in SUITES:
        raise ValueError(f"suite={name!r} does not exist; use one of {list(SUITES)}")
    return name


def suite_categories(config: SimulationSuiteConfig) -> list[str]:
    """The categories a suite is scored by: ``config.categories``, else its sims' name prefixes in order."""
    if config.categories is not None:
        return list(config.categories)
    return list(dict.fromkeys(name.split("/")[0] for name in config.simulations))


def suite_env_hashes(config: SimulationSuiteConfig) -> dict[str, str]:
    """``{sim name: env hash}`` as ``Simulation`` computes and stores it: the database rows played on exactly these
    envs (a changed map or setting gives a different hash)."""
    return {
        name: env_config_hash(
            curriculum_from_any(sim.env, sim.env_overrides or None, task_id=name), sim.env, sim.env_overrides
        )
        for name, sim in config.simulations.items()
    }


def suite_config(name: str, num_episodes: int | None = None) -> SimulationSuiteConfig:
    """The suite ``name`` (one of ``SUITE_NAMES``); ``num_episodes`` per sim replaces the suite's default."""
    check_suite_name(name)
    return SUITES[name]() if num_episodes is None else SUITES[name](num_episodes)
