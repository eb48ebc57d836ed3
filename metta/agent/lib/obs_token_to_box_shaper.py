"""``ObsTokenToBoxShaper``: token observations ``[N, M, 3]`` to a dense box ``[N, C, H, W]``.

Each token is ``(location, feature_id, value)`` with ``location = (row << 4) | col``; a location byte of
0xFF marks an empty slot. The value goes to ``box[n, feature_id, row, col]``. All tokens are scattered in
one vectorised write. Two 256-entry lookup tables turn the location byte into a cell offset and the
feature byte into a channel offset; invalid bytes map to a huge offset, and clamping the summed index
sends those tokens to a spare slot past the end of the box. That keeps the per-token work to two
gathers, two adds and a clamp (no bit twiddling, masks or Python loops on the hot path).
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

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        h, w = self.context.obs_height, self.context.obs_width
        if h > 15 or w > 15:
            raise ValueError(f"obs window {h}x{w} does not fit the 4-bit row/col of a token location (max 15x15)")
        location = torch.arange(256)
        row, col = location >> 4, location & 0x0F
        valid = (location != EMPTY) & (row < h) & (col < w)
        self.register_buffer("location_offset", torch.where(valid, row * w + col, _INVALID_OFFSET), persistent=False)
        return (self.num_channels, h, w)

    def forward(self, td: dict) -> None:
        td[self.name] = self.tokens_to_box(td["x"])

    def tokens_to_box(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        c, h, w = self.out_shape
        remapped = self.feature_remap.long()
        channel_offset = torch.where(remapped < c, remapped * (h * w), _INVALID_OFFSET)
        batch_offset = torch.arange(n, device=tokens.device).mul_(c * h * w).unsqueeze(1)
        byte_index = tokens[..., :2].long()
        index = self.location_offset[byte_index[..., 0]] + channel_offset[byte_index[..., 1]] + batch_offset
        spare = n * c * h * w
        box = torch.zeros(spare + 1, dtype=torch.float32, device=tokens.device)
        box.index_put_((index.clamp_max_(spare).flatten(),), tokens[..., 2].flatten().float())
        return box[:spare].view(n, c, h, w)
