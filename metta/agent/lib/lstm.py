"""``LSTM``: the recurrent core. One ``nn.LSTM`` call handles a ``[B, T]`` sequence and, on a CPU, a single rollout
step too; on a GPU a single step is two matrix products per layer with the same weights (``_one_step``: cuDNN's
kernel for one step of a large batch is slow).

The input arrives flattened as ``[B*T, features]`` in batch-major order (``td["_B_"]``, ``td["_T_"]``
give the split). The state is read from ``td["lstm_h"]``/``td["lstm_c"]`` (None means zeros) and the new
state is written back detached, so gradients never flow across rollout steps.

``td["episode_starts"]`` (bool ``[B, T]``, optional) marks steps whose observation began a new episode; the
state is zeroed before such a step when ``t > 0`` (at ``t = 0`` the caller's state already is the reset one).
Sequences without an episode start inside run as one fused ``nn.LSTM`` call; otherwise the call is split
at the steps that need a reset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metta.agent.lib.metta_layer import AgentContext, LayerBase, Shape


class LSTM(LayerBase):
    def __init__(
        self, name: str, sources: list[str], context: AgentContext, output_size: int, nn_params: dict | None = None
    ):
        super().__init__(name, sources, context)
        params = dict(nn_params or {})
        self.hidden_size = int(output_size)
        self.num_layers = int(params.pop("num_layers", 1))
        if params:
            raise ValueError(
                f"component {name!r} (LSTM): unknown nn_params {sorted(params)}; only num_layers is accepted"
            )

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
        if h is not None and c is not None:
            h, c = h.contiguous(), c.contiguous()  # cuDNN needs contiguous states (a slice of agents is not)
            expected = (self.num_layers, batch, self.hidden_size)
            if tuple(h.shape) != expected or tuple(c.shape) != expected:
                raise ValueError(
                    f"LSTM state must be [num_layers, batch, hidden] = {list(expected)}, "
                    f"got lstm_h {list(h.shape)} and lstm_c {list(c.shape)}"
                )
        starts = td.get("episode_starts")
        reset_steps = []
        if starts is not None and horizon > 1:
            starts = starts.reshape(batch, horizon).bool()
            reset_steps = starts[:, 1:].any(dim=0).nonzero().flatten().add(1).tolist()
        if horizon == 1 and x.is_cuda:  # on a CPU nn.LSTM's fused step is the faster one
            out, (h, c) = self._one_step(x, h, c)
        elif not reset_steps:
            out, (h, c) = self.lstm(x) if h is None or c is None else self.lstm(x, (h, c))
        else:
            if h is None or c is None:
                h = x.new_zeros(self.num_layers, batch, self.hidden_size)
                c = torch.zeros_like(h)
            pieces = []
            bounds = [0, *reset_steps, horizon]
            for begin, end in zip(bounds[:-1], bounds[1:]):
                if begin > 0:
                    keep = (~starts[:, begin]).to(x.dtype).view(1, batch, 1)
                    h, c = h * keep, c * keep
                piece, (h, c) = self.lstm(x[begin:end], (h, c))
                pieces.append(piece)
            out = torch.cat(pieces)
        td["lstm_h"], td["lstm_c"] = h.detach(), c.detach()
        td[self.name] = out.transpose(0, 1).reshape(batch * horizon, self.hidden_size)

    def _one_step(
        self, x: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One time step (every rollout step) as two matrix products per layer, with ``nn.LSTM``'s weights and
        gate order (input, forget, cell, output). For a large batch and one step cuDNN picks its persistent
        kernel, which on an H200 took 2.4 ms for 4096 agents (80% of the rollout's GPU time), where these products
        take microseconds. On a CPU nn.LSTM is faster (27 vs 22 ms for 4096 agents on one core), so it is used
        there."""
        inp = x[0]
        if h is None or c is None:
            h = inp.new_zeros(self.num_layers, inp.shape[0], self.hidden_size)
            c = torch.zeros_like(h)
        hs, cs = [], []
        for layer in range(self.num_layers):
            gates = F.linear(inp, getattr(self.lstm, f"weight_ih_l{layer}"), getattr(self.lstm, f"bias_ih_l{layer}"))
            gates = gates + F.linear(
                h[layer], getattr(self.lstm, f"weight_hh_l{layer}"), getattr(self.lstm, f"bias_hh_l{layer}")
            )
            i, f, g, o = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            inp = torch.sigmoid(o) * torch.tanh(c_new)
            hs.append(inp)
            cs.append(c_new)
        return inp.unsqueeze(0), (torch.stack(hs), torch.stack(cs))
