"""``PolicyRecord``: a policy's name, URI and metadata, with the policy itself loaded on first use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from metta.agent.policy_metadata import PolicyMetadata

if TYPE_CHECKING:
    from metta.agent.metta_agent import MettaAgent
    from metta.agent.policy_store import PolicyStore


class PolicyRecord:
    def __init__(
        self,
        policy_store: PolicyStore | None,
        run_name: str,
        uri: str | None,
        metadata: Mapping[str, Any] | None = None,
    ):
        self._policy_store = policy_store
        self.run_name = run_name
        self.uri = uri
        self.metadata = PolicyMetadata(metadata or {})
        self._cached_policy: nn.Module | None = None

    @property
    def metadata(self) -> PolicyMetadata:
        return self._metadata

    @metadata.setter
    def metadata(self, value: Mapping[str, Any]) -> None:
        # Plain dicts (as the seed documents assign) get the required counters filled in.
        self._metadata = value if isinstance(value, PolicyMetadata) else PolicyMetadata(value)

    @property
    def policy(self) -> nn.Module:
        if self._cached_policy is None:
            if self._policy_store is None or self.file_path is None:
                raise ValueError(
                    f"policy record {self.run_name!r} has no policy and no file to load it from (uri={self.uri!r})"
                )
            self._cached_policy = self._policy_store.load_policy(self.file_path)
        return self._cached_policy

    @policy.setter
    def policy(self, policy: nn.Module) -> None:
        self._cached_policy = policy

    @property
    def file_path(self) -> str | None:
        if self.uri is None:
            return None
        if self.uri.startswith("file://"):
            return self.uri[len("file://") :]
        if "://" in self.uri:
            return None
        return self.uri

    def policy_as_metta_agent(self) -> MettaAgent:
        policy = self.policy
        return getattr(policy, "module", policy)  # unwrap DistributedDataParallel

    def num_params(self) -> int:
        return sum(p.numel() for p in self.policy.parameters() if p.requires_grad)

    def __repr__(self) -> str:
        return (
            f"PolicyRecord(run_name={self.run_name!r}, uri={self.uri!r}, epoch={self.metadata.epoch}, "
            f"agent_step={self.metadata.agent_step})"
        )
