"""Shared by the tests in this directory (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import torch

from metta.agent.metta_agent import make_policy
from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_store import PolicyStore
from metta.mettagrid.env import MettaGridEnv

# Two agents on a small random map; every successful move earns 0.1, so episode rewards vary and are non-zero.
SMALL_ENV = {
    "game": {
        "num_agents": 2,
        "max_steps": 30,
        "agent": {"rewards": {"stats": {"action.move.success": 0.1}}},
        "map_builder": {
            "type": "random",
            "width": 8,
            "height": 8,
            "agents": 2,
            "objects": {"altar": 2},
            "border_width": 1,
        },
    }
}


def save_new_policy(store: PolicyStore, name: str, seed: int = 0) -> PolicyRecord:
    """A freshly built agent for SMALL_ENV, saved through the store and read back as a record."""
    torch.manual_seed(seed)
    agent = make_policy(MettaGridEnv(SMALL_ENV, num_envs=1))
    record = store.create_empty_policy_record(name)
    record.metadata = {"epoch": 1, "agent_step": 100}
    record.policy = agent
    store.save(record)
    return store.policy_record(record.uri, selector_type="latest")
