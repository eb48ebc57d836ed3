"""``LSTM``: the recurrent core. One ``nn.LSTM`` call handles both a single rollout step and a ``[B, T]`` sequence.

The input arrives flattened as ``[B*T, features]`` in batch-major order (``td["_B_"]``, ``td["_T_"]``
give the split). The state is read from ``td["lstm_h"]``/``td["lstm_c"]`` (None means zeros) and the new
state is written back detached, so gradients never flow across rollout steps.
"""

from __future__ import annotations

import torch
from torch import nn

from metta.agent.lib.metta_layer import AgentContext, LayerBase, Shape


class LSTM(LayerBase):
    def __init__(self, name: str, sources: list[str], context: AgentContext, output_size: int, nn_params: dict | None = None):
        super().__init__(name, sources, context)
        params = dict(nn_params or {})
        self.hidden_size = int(output_size)
        self.num_layers = int(params.pop("num_layers", 1))
        if params:
            raise ValueError(f"component {name!r} (LSTM): unknown nn_params {sorted(params)}; only num_layers is accepted")

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        (shape,) = in_shapes
        if len(shape) != 1:
            raise ValueError(f"component {self.name!r} (LSTM) needs a flat input, its source gives {shape}")
        self.lstm = nn.LSTM(shape[0], self.hidden_size, num_layers=self.num_layers)
        for param_name, param in self.lstm.named_parameters():
            if "bias" in param_name:
                # Forget gates start open (bias_ih + bias_hh = 1), the other gates at 0. Upstream set every
                # bias to 1, which saturates the gates at init and starves the encoder of gradient: on a
                # small MettaGrid task that agent had not started learning after 60k steps, this one had
                # solved it by 80k (tests/rl/test_learning.py).
                nn.init.zeros_(param)
                nn.init.constant_(param[self.hidden_size : 2 * self.hidden_size], 0.5)
            else:
                nn.init.orthogonal_(param)
        return (self.hidden_size,)

    def forward(self, td: dict) -> None:
        x = td[self.sources[0]]
        batch, horizon = td["_B_"], td["_T_"]
        x = x.view(batch, horizon, -1).transpose(0, 1)  # [T, B, F]: nn.LSTM's time-major layout
        h, c = td.get("lstm_h"), td.get("lstm_c")
        if h is None or c is None:
            out, (h, c) = self.lstm(x)
        else:
            expected = (self.num_layers, batch, self.hidden_size)
            if tuple(h.shape) != expected or tuple(c.shape) != expected:
                raise ValueError(
                    f"LSTM state must be [num_layers, batch, hidden] = {list(expected)}, "
                    f"got lstm_h {list(h.shape)} and lstm_c {list(c.shape)}"
                )
            out, (h, c) = self.lstm(x, (h, c))
        td["lstm_h"], td["lstm_c"] = h.detach(), c.detach()
        td[self.name] = out.transpose(0, 1).reshape(batch * horizon, self.hidden_size)
