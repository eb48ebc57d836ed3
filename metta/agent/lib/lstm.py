"""``LSTM``: the recurrent core. One ``nn.LSTM`` call handles a ``[B, T]`` sequence, episode starts inside
included; a single rollout step is ``nn.LSTM`` on a CPU and ``torch.lstm_cell`` per layer on a GPU.

The input arrives flattened as ``[B*T, features]`` in batch-major order (``td["_B_"]``, ``td["_T_"]``
give the split). The state is read from ``td["lstm_h"]``/``td["lstm_c"]`` (None means zeros) and the new
state is written back detached, so gradients never flow across rollout steps.

``td["episode_starts"]`` (bool ``[B, T]``, optional; the training replay of stored rows) marks steps whose
observation began a new episode: the state is zeroed before each such step, ``t = 0`` included (the state a
row is replayed from may be the one the agent carried into that step, before its episode reset). A CPU
tensor is read as is; a device tensor is copied to the host first (one sync), so the training path hands in
the host copy the buffer keeps.

The replay with episode starts inside rows (``replay_layout``): each row is cut at its starts into pieces;
the first piece of a row starts from the row's state, every later one from zeros. The pieces become the
columns of one ``[longest piece, pieces]`` batch, each starting at time 0 (shorter ones padded at the end),
and run as one ``nn.LSTM`` call: one cuDNN call on a GPU, one oneDNN call per layer on a CPU. Padding comes
after a piece, so it never changes the piece's outputs, and its outputs are dropped, so no gradient reaches
it. Such a replay hands on no state (``td["lstm_h"]`` and ``["lstm_c"]`` become None): a padded piece's last
state is not the row's, and the training path never continues from a replay. (A ``PackedSequence`` would
give exact last states too, but a CPU runs it as one small op per time step: 8x slower there, and 100x the
ops.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metta.agent.lib.metta_layer import AgentContext, LayerBase, Shape
from metta.common.code_paths import gpu_forms
from metta.common.pinned_upload import IndexUpload


def replay_layout(starts: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """The padded batch of a replay with episode starts (bool ``[B, T]``; ``t = 0`` counts too):
    ``(pieces, longest, state_rows, gather, scatter)``.

    - ``state_rows [pieces]``: the row whose given state a piece starts from, or ``B`` for zeros (a piece after
      a start, or a row whose first step starts an episode);
    - ``gather [longest * pieces]``: for each slot of the time-major padded batch, the batch-major step
      (``b * T + t``) it holds (padding holds step 0: any real step does, its outputs are dropped);
    - ``scatter [B * T]``: for each batch-major step, its slot in the padded batch.
    """
    batch, horizon = starts.shape
    cuts = starts.copy()
    cuts[:, 0] = True  # every row begins a piece
    flat_cuts = cuts.reshape(-1)
    piece_begin = np.flatnonzero(flat_cuts)  # batch-major step where each piece begins; rows never share one
    pieces = piece_begin.size
    piece_of_step = np.cumsum(flat_cuts) - 1
    step_in_piece = np.arange(batch * horizon) - piece_begin[piece_of_step]
    longest = int(np.diff(np.append(piece_begin, batch * horizon)).max())
    scatter = step_in_piece * pieces + piece_of_step
    gather = np.zeros(longest * pieces, dtype=np.int64)
    gather[scatter] = np.arange(batch * horizon)
    row = piece_begin // horizon
    from_given_state = (piece_begin % horizon == 0) & ~starts[row, 0]
    state_rows = np.where(from_given_state, row, batch)
    return pieces, longest, state_rows, gather, scatter


def _detached(x: torch.Tensor) -> torch.Tensor:
    return x.detach() if x.requires_grad else x  # under no_grad (a rollout) there is nothing to cut


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
        self._index_upload: IndexUpload | None = None

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
        h, c = td.get("lstm_h"), td.get("lstm_c")
        if h is not None and c is not None:
            h, c = h.contiguous(), c.contiguous()  # cuDNN needs contiguous states (a slice of agents is not)
            expected = (self.num_layers, batch, self.hidden_size)
            if tuple(h.shape) != expected or tuple(c.shape) != expected:
                raise ValueError(
                    f"LSTM state must be [num_layers, batch, hidden] = {list(expected)}, "
                    f"got lstm_h {list(h.shape)} and lstm_c {list(c.shape)}"
                )
        else:
            h = c = None
        if horizon == 1:  # a rollout step: the GPU form is one_step; on a CPU nn.LSTM's fused step is faster
            if gpu_forms(x.device):
                out, (h, c) = self.one_step(x, h, c)
            else:
                out, (h, c) = self._sequence(x.unsqueeze(0), h, c)
                out = out[0]
            td["lstm_h"], td["lstm_c"] = _detached(h), _detached(c)
            td[self.name] = out
            return
        starts = td.get("episode_starts")
        starts = None if starts is None else starts.detach().to("cpu", torch.bool).reshape(batch, horizon).numpy()
        if starts is not None and starts[:, 1:].any():
            td["lstm_h"] = td["lstm_c"] = None
            td[self.name] = self._replay(x, h, c, starts)
            return
        if starts is not None and h is not None and starts[:, 0].any():  # zero the states of rows starting anew
            (state_rows,) = self._upload(x.device, np.where(starts[:, 0], batch, np.arange(batch)))
            h, c = self._initial_states(h, c, state_rows)
        out, (h, c) = self._sequence(x.view(batch, horizon, -1).transpose(0, 1), h, c)
        td["lstm_h"], td["lstm_c"] = _detached(h), _detached(c)
        td[self.name] = out.transpose(0, 1).reshape(batch * horizon, self.hidden_size)

    def _sequence(self, x: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None):
        return self.lstm(x) if h is None else self.lstm(x, (h, c))

    def _upload(self, device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
        if self._index_upload is None or self._index_upload.device != device:
            self._index_upload = IndexUpload(device)
        return self._index_upload(*arrays)

    @staticmethod
    def _initial_states(h: torch.Tensor, c: torch.Tensor, state_rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The states ``state_rows`` picks: row ``r`` of ``h``/``c``, or zeros where it is ``B`` (one past the end)."""
        zeros = h.new_zeros(h.shape[0], 1, h.shape[2])
        return torch.cat([h, zeros], dim=1).index_select(1, state_rows), torch.cat([c, zeros], dim=1).index_select(
            1, state_rows
        )

    def _replay(self, x: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None, starts: np.ndarray):
        """``[B*T, hidden]`` outputs of rows cut at their episode starts, as one padded batch (module docstring)."""
        pieces, longest, state_rows, gather, scatter = replay_layout(starts)
        state_rows, gather, scatter = self._upload(x.device, state_rows, gather, scatter)
        if h is None:
            h = c = x.new_zeros(self.num_layers, pieces, self.hidden_size)
        else:
            h, c = self._initial_states(h, c, state_rows)
        padded = x.index_select(0, gather).view(longest, pieces, -1)
        out, _ = self.lstm(padded, (h, c))
        return out.reshape(longest * pieces, self.hidden_size).index_select(0, scatter)

    def one_step(
        self, x: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One time step for ``x [B, features]`` with ``nn.LSTM``'s weights: ``(out [B, hidden], (h, c))``, the
        states ``[layers, B, hidden]``. ``torch.lstm_cell`` per layer: on a GPU two matrix products and one fused
        kernel for the gates. cuDNN's LSTM picks its persistent kernel for one step of a large batch, which on an
        H200 took 2.4 ms for 4096 agents (80% of the rollout's GPU time); a CPU runs nn.LSTM instead (faster
        there)."""
        if h is None or c is None:
            h = c = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
        hs, cs = [], []
        inp = x
        for layer, (h_l, c_l) in enumerate(zip(h.unbind(0), c.unbind(0))):
            inp, c_new = torch.lstm_cell(
                inp,
                (h_l, c_l),
                getattr(self.lstm, f"weight_ih_l{layer}"),
                getattr(self.lstm, f"weight_hh_l{layer}"),
                getattr(self.lstm, f"bias_ih_l{layer}"),
                getattr(self.lstm, f"bias_hh_l{layer}"),
            )
            hs.append(inp)
            cs.append(c_new)
        return inp, (torch.stack(hs), torch.stack(cs))
