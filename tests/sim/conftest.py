from __future__ import annotations

import pytest
from sim_helpers import save_new_policy

from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_store import PolicyStore


@pytest.fixture
def policy_store(tmp_path) -> PolicyStore:
    return PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(tmp_path / "checkpoints")}}})


@pytest.fixture
def saved_record(policy_store) -> PolicyRecord:
    return save_new_policy(policy_store, "model_0001.pt")
