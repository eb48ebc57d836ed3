"""Evaluation: run policies on named envs for N episodes, with per-episode stats and replays."""

from metta.sim.simulation import Simulation, SimulationResults, SimulationSuite, read_episode_stats
from metta.sim.simulation_config import SimulationConfig, SimulationSuiteConfig, SingleEnvSimulationConfig

__all__ = [
    "Simulation",
    "SimulationConfig",
    "SimulationResults",
    "SimulationSuite",
    "SimulationSuiteConfig",
    "SingleEnvSimulationConfig",
    "read_episode_stats",
]
