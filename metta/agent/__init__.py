"""The policy side of metta: ``MettaAgent`` (a CNN-LSTM over token observations) and the policy store."""

from metta.agent.agent_config import (
    AgentConfig,
    fast_agent_config,
    fast_cpu_agent_config,
    interface_default_agent_config,
)
from metta.agent.metta_agent import MettaAgent, make_policy
from metta.agent.policy_metadata import PolicyMetadata
from metta.agent.policy_record import PolicyRecord
from metta.agent.policy_state import PolicyState
from metta.agent.policy_store import PolicyFileError, PolicyStore

__all__ = [
    "AgentConfig",
    "MettaAgent",
    "PolicyFileError",
    "PolicyMetadata",
    "PolicyRecord",
    "PolicyState",
    "PolicyStore",
    "fast_agent_config",
    "fast_cpu_agent_config",
    "interface_default_agent_config",
    "make_policy",
]
