"""``PolicyState``: the recurrent state that rollouts carry between policy calls."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PolicyState:
    """LSTM state, each ``[num_layers, batch, hidden]``; None means zeros (a fresh episode).

    The policy overwrites both fields with the new, detached state on every call.

    ``episode_starts`` (bool ``[batch, T]``, optional) is for the training path, the replay of stored rows:
    where it is true at step ``t`` the LSTM zeroes its state before step ``t`` (``t = 0`` included), exactly as
    the rollout did when that observation began a new episode, so a ``[B, T]`` replay that crosses an episode
    boundary matches the rollout. Pass it on the CPU (the buffer keeps a host copy): the replay plans its one
    LSTM call from it without reading the device. A replay whose rows have an episode start after ``t = 0``
    hands on no state: both fields are None after it (training never continues from a replay).
    """

    lstm_h: torch.Tensor | None = None
    lstm_c: torch.Tensor | None = None
    episode_starts: torch.Tensor | None = None

    def reset_done(self, done: torch.Tensor) -> None:
        """Zero the state of the agents whose episode ended (``done``: bool ``[batch]``), in place."""
        if self.lstm_h is None or self.lstm_c is None:
            return
        keep = (~done.bool()).to(self.lstm_h.dtype).view(1, -1, 1)
        self.lstm_h = self.lstm_h * keep
        self.lstm_c = self.lstm_c * keep
