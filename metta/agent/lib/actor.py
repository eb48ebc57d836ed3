"""``MettaActorSingleHead``: one logit per active action, bilinear in the actor features and the action embedding.

``logit[n, a] = tanh(h[n] @ W) . e[a]``. Upstream also added one scalar bias to every logit; a constant
shift does not change a softmax, so it is left out.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metta.agent.lib.metta_layer import AgentContext, LayerBase, Shape


class MettaActorSingleHead(LayerBase):
    def __init__(self, name: str, sources: list[str], context: AgentContext):
        super().__init__(name, sources, context)
        if len(sources) != 2:
            raise ValueError(
                f"component {name!r} (MettaActorSingleHead) needs sources [actor features, action embeddings], got "
                f"{sources}"
            )

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        (hidden,), (embed_dim,) = in_shapes
        self.W = nn.Parameter(torch.empty(hidden, embed_dim))
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(self.W, -bound, bound)
        return (0,)  # the number of logits depends on the active actions, not on the architecture

    def _forward(self, features: torch.Tensor, action_embeds: torch.Tensor) -> torch.Tensor:
        query = torch.tanh(features @ self.W)  # [N, E]
        return query @ action_embeds.T  # [N, A]
