from __future__ import annotations

import pytest
import torch
from sim_helpers import save_new_policy

from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_store import PolicyStore


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Tiny forward passes gain nothing from intra-op threads, and on a busy 2-core machine they spin.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def policy_store(tmp_path) -> PolicyStore:
    return PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(tmp_path / "checkpoints")}}})


@pytest.fixture
def saved_record(policy_store) -> PolicyRecord:
    return save_new_policy(policy_store, "model_0001.pt")
