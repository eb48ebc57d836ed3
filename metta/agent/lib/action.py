"""``ActionEmbedding``: one learned vector per action name, stable across envs.

Each full action name (``"move_1"``) gets an embedding index the first time it is activated, starting at
1, and keeps it forever; the name -> index table travels in the state dict (``get_extra_state``), so a
policy trained with one action order still scores the same actions after loading into an env that lists
them differently.
"""

from __future__ import annotations

import torch
from torch import nn

from metta.agent.lib.metta_layer import AgentContext, LayerBase, Shape


class ActionEmbedding(LayerBase):
    def __init__(self, name: str, sources: list[str], context: AgentContext, nn_params: dict):
        super().__init__(name, sources, context)
        self.num_embeddings = int(nn_params["num_embeddings"])
        self.embedding_dim = int(nn_params["embedding_dim"])
        self.name_to_index: dict[str, int] = {}
        self.active_names: list[str] = []
        self.register_buffer("active_indices", torch.zeros(0, dtype=torch.long), persistent=False)

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        self.embedding = nn.Embedding(self.num_embeddings, self.embedding_dim)
        nn.init.orthogonal_(self.embedding.weight)
        with torch.no_grad():
            self.embedding.weight.mul_(0.1 / self.embedding.weight.abs().max())
        return (self.embedding_dim,)

    def activate_actions(self, full_action_names: list[str]) -> None:
        for action_name in full_action_names:
            if action_name not in self.name_to_index:
                index = len(self.name_to_index) + 1
                if index >= self.num_embeddings:
                    raise ValueError(
                        f"component {self.name!r}: action {action_name!r} needs embedding {index} but "
                        f"num_embeddings={self.num_embeddings}; raise nn_params.num_embeddings"
                    )
                self.name_to_index[action_name] = index
        self.active_names = list(full_action_names)
        indices = [self.name_to_index[n] for n in self.active_names]
        self.active_indices = torch.tensor(indices, dtype=torch.long, device=self.embedding.weight.device)

    def forward(self, td: dict) -> None:
        td[self.name] = self.embedding(self.active_indices)  # [A, E], shared by the whole batch

    def get_extra_state(self) -> dict:
        return {"name_to_index": dict(self.name_to_index)}

    def set_extra_state(self, state: dict) -> None:
        self.name_to_index = {str(k): int(v) for k, v in state["name_to_index"].items()}
        if self.active_names:
            self.activate_actions(self.active_names)
