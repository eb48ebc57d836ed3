"""``ObsTokenToBoxShaper``: token observations ``[N, M, 3]`` to a dense box ``[N, C, H, W]``.

Each token is ``(location, feature_id, value)`` with ``location = (row << 4) | col``; a location byte of
0xFF marks an empty slot. The value goes to ``box[n, feature_id, row, col]``. All tokens are scattered in
one vectorised write. ``decode`` turns the location byte into a cell (a 256-entry table; invalid bytes map
to a huge offset) and the feature byte into the policy's feature id; features beyond the box get a huge
offset too, and clamping the summed index sends those tokens to a spare slot past the end of the box (no
bit twiddling or Python loops on the hot path). ``TokenConv`` reads tokens with the same ``decode``.

``tokens_to_box`` runs on every rollout step of a GPU (ten ops): a table per byte gives a token's offset in
its row of the box, location and channel (``channel_offset``, kept in step with ``feature_remap`` by
``set_feature_remap``), and one ``scatter_`` per batch writes the values.
"""

from __future__ import annotations

import torch

from metta.agent.lib.metta_layer import AgentContext, LayerBase, Shape

EMPTY = 0xFF
UNKNOWN_FEATURE = 0xFF
_INVALID_OFFSET = 1 << 40  # larger than any real box index, so the clamp catches it


class ObsTokenToBoxShaper(LayerBase):
    def __init__(self, name: str, sources: list[str], context: AgentContext):
        super().__init__(name, sources, context)
        if not context.feature_normalizations:
            raise ValueError("ObsTokenToBoxShaper needs the env's feature_normalizations to size its channels")
        self.num_channels = max(int(k) for k in context.feature_normalizations) + 1
        if self.num_channels > UNKNOWN_FEATURE:
            raise ValueError(f"feature id {self.num_channels - 1} is too large; ids must be below {UNKNOWN_FEATURE}")
        # env feature id -> the id this policy was trained with (identity until remapped; 255 = drop).
        self.register_buffer("feature_remap", torch.arange(256, dtype=torch.uint8), persistent=False)
        # feature byte -> offset of its channel in a box row (feature * H * W), huge for dropped features.
        self.register_buffer("channel_offset", torch.zeros(256, dtype=torch.int64), persistent=False)

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        h, w = self.context.obs_height, self.context.obs_width
        if h > 15 or w > 15:
            raise ValueError(f"obs window {h}x{w} does not fit the 4-bit row/col of a token location (max 15x15)")
        location = torch.arange(256)
        row, col = location >> 4, location & 0x0F
        valid = (location != EMPTY) & (row < h) & (col < w)
        self.register_buffer("location_offset", torch.where(valid, row * w + col, _INVALID_OFFSET), persistent=False)
        self.out_shape = (self.num_channels, h, w)
        self.set_feature_remap(self.feature_remap.clone())
        return self.out_shape

    def set_feature_remap(self, remap: torch.Tensor) -> None:
        """Map env feature ids to this policy's (``remap[env_id]``; 255 drops the feature), in place."""
        self.feature_remap.copy_(remap)
        c, h, w = self.out_shape
        feature = self.feature_remap.long()
        self.channel_offset.copy_(torch.where(feature < c, feature * (h * w), _INVALID_OFFSET))

    def forward(self, td: dict) -> None:
        td[self.name] = self.tokens_to_box(td["x"])

    def decode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cell, feature)`` of each token: ``cell = row * W + col`` (above ``H * W - 1`` for empty slots and
        cells off the window) and the policy's feature id (``>= num_channels`` for features it drops)."""
        byte_index = tokens[..., :2].long()
        return self.location_offset[byte_index[..., 0]], self.feature_remap.long()[byte_index[..., 1]]

    def tokens_to_box(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        c, h, w = self.out_shape
        spare = c * h * w  # each box row has one spare slot past its end for empty and dropped tokens
        location, feature, value = tokens.long().unbind(-1)
        slot = (self.location_offset[location] + self.channel_offset[feature]).clamp_max_(spare)
        box = torch.zeros((n, spare + 1), dtype=torch.float32, device=tokens.device)
        box.scatter_(1, slot, value.float())
        return box.as_strided((n, c, h, w), (spare + 1, h * w, w, 1))
