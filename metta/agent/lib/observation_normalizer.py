"""``ObservationNormalizer``: divides each feature channel of the box by that feature's normalization."""

from __future__ import annotations

import torch

from metta.agent.lib.metta_layer import AgentContext, LayerBase, Shape


class ObservationNormalizer(LayerBase):
    def __init__(self, name: str, sources: list[str], context: AgentContext):
        super().__init__(name, sources, context)

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        (shape,) = in_shapes
        num_channels = shape[0]
        norms = torch.ones(num_channels)
        for feature_id, norm in self.context.feature_normalizations.items():
            if feature_id < num_channels:
                norms[feature_id] = float(norm)
        # Derived from the env's table, so it is rebuilt rather than saved (persistent=False).
        self.register_buffer("inverse_norms", (1.0 / norms).view(1, -1, 1, 1), persistent=False)
        return shape

    def set_normalization(self, feature_id: int, norm: float) -> None:
        """Used when training learns a feature the policy had not seen (see ``MettaAgent._remap_features``)."""
        if feature_id < self.inverse_norms.shape[1]:
            self.inverse_norms[0, feature_id] = 1.0 / float(norm)

    def _forward(self, box: torch.Tensor) -> torch.Tensor:
        return box * self.inverse_norms
