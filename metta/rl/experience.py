"""``Experience``: the rollout buffer, ``[segments, bptt_horizon, ...]``, plus LSTM state per agent.

Layout. ``segments = batch_size // bptt_horizon`` rows; each row holds ``bptt_horizon`` consecutive steps of
one agent (rows may span episode boundaries; ``dones`` marks where a new episode starts). Every agent owns
one row at a time. When its row is full it takes the next free row; when none is left it writes nothing
until the next rollout. The buffer is ``full`` once every row has been filled, so a row is never a mix of two
rollouts (upstream handed out rows ring-wise, which could overwrite a finished row half-way when
``segments`` is not a multiple of the agents).

Rollouts. ``ready_for_training`` is true when the buffer is full and no minibatch has been drawn from it
yet. Drawing one marks the data as trained on; the next ``store`` then starts a new rollout by itself, so
the plain loop ``while not experience.ready_for_training: perform_rollout_step(...)`` followed by
``for minibatch in experience.iter_minibatches(): ...`` needs no other call. ``reset_for_rollout()`` starts a
new rollout explicitly (what ``rollout()`` does) and is always allowed.

Sizes. Only ``total_agents``, ``batch_size`` and the spaces are required. ``bptt_horizon`` defaults to
``TrainerConfig``'s 64, halved until every agent has a row; ``minibatch_size`` to the largest whole number
of rows up to 16384 steps that divides the batch. Without ``hidden_size``/``num_lstm_layers`` the LSTM state
is sized from the policy at the first rollout step (``match_policy``); with them, a policy of another size
is an error that names both.

Conventions (PufferLib's): the reward and done stored with observation ``t`` belong to the action taken at
``t - 1``; ``dones = terminals | truncations``, and since envs reset in the same step, an observation with
``done`` is the first observation of a new episode. ``reset_lstm_state(env_id, dones)`` zeroes those
agents' recurrent state before the policy sees that observation.

Stored state. When an agent starts a row, the LSTM state it enters that row's first step with is kept
(``row_lstm_h``/``row_lstm_c``, ``[layers, segments, hidden]``) and every minibatch carries it, so training
replays each row from the state the rollout really had (not from zeros, as upstream did) and, with the row's
``dones`` as episode starts, resets it where the rollout did. At the first minibatch of an update the
policy then reproduces the rollout's log-probabilities exactly, and the LSTM is trained on the long-memory
states it acts from.

Row chains. ``next_rows[r]`` is the row the agent that filled row ``r`` went on to fill (-1 if none); rows of
one agent form a chain in time. ``compute_advantage(..., next_rows=experience.next_rows)`` follows the chains,
so rewards and returns cross row ends, and ``row_tail(indices, advantages)`` gives a minibatch the step after
each of its rows for the per-minibatch V-trace recomputation. ``rollout_advantages(gamma, gae_lambda,
rho_clip, c_clip)`` computes them that way once per rollout (what a minibatch update without advantages uses).

Bookkeeping (row and step of every agent) lives on the CPU, so storing a step never waits for the GPU;
positions are computed per agent, so the agents of a batch need not be at the same step.

Minibatches. ``minibatch_segments = minibatch_size // bptt_horizon`` rows each, ``num_minibatches`` per
update epoch. Two ways to draw them:

- ``iter_minibatches(advantages=None, prio_alpha=0.0, prio_beta=0.6)`` yields one update epoch's
  minibatches. With ``prio_alpha == 0`` (the default) it is a random permutation of the rows cut into
  ``num_minibatches`` parts: every row exactly once per epoch, importance weights 1. With ``prio_alpha > 0``
  it draws each minibatch with ``sample_minibatch``. ``advantages`` (the ``[segments, bptt]`` tensor from
  ``compute_advantage``) is needed for prioritized sampling; when given, each minibatch also carries
  ``advantages`` and ``returns``. Without it (``for minibatch in experience.iter_minibatches():``),
  ``process_minibatch_update`` takes the rows' advantages from its own ``advantages`` argument, or from
  ``rollout_advantages`` when that is None.
- ``sample_minibatch(advantages, prio_alpha, prio_beta)`` draws ``minibatch_segments`` rows *with
  replacement* from ``P(i) = p_i / sum(p)``, ``p_i = (sum_t |A[i, t]|) ** prio_alpha`` (uniform if all are 0),
  and returns importance weights ``(segments * P(i)) ** -prio_beta``, which are exact for sampling with
  replacement (upstream drew without replacement from a not-quite-normalized distribution).

A minibatch is a dict of tensors on ``device``: ``obs [mb, bptt, *obs_shape]``, ``actions [mb, bptt, 2]``,
``logprobs``, ``values``, ``rewards``, ``dones``, ``ratio`` (``[mb, bptt]``), ``lstm_h``/``lstm_c``
(``[layers, mb, hidden]``, each row's stored start state), ``indices [mb]``,
``prio_weights [mb, 1]``, and ``advantages``/``returns`` when advantages were given.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from metta.mettagrid.vecenv import calculate_batch_sizes  # noqa: F401 - upstream's import path
from metta.rl.advantage import RowTail, compute_advantage
from metta.rl.host_transfer import ActionDownload, HostUpload
from metta.rl.trainer_config import TrainerConfig


class Experience:
    def __init__(
        self,
        total_agents: int,
        batch_size: int,
        bptt_horizon: int | None = None,
        minibatch_size: int | None = None,
        max_minibatch_size: int | None = None,
        obs_space: Any = None,
        atn_space: Any = None,
        device: torch.device | str = "cpu",
        hidden_size: int | None = None,
        cpu_offload: bool = False,
        num_lstm_layers: int | None = None,
        agents_per_batch: int | None = None,
    ):
        if obs_space is None or atn_space is None:
            raise ValueError(
                "obs_space and atn_space are required: pass env.single_observation_space and env.single_action_space"
            )
        for name, value in (("total_agents", total_agents), ("batch_size", batch_size)):
            _check_positive(name, value)
        if bptt_horizon is None:
            bptt_horizon = default_bptt_horizon(int(batch_size), int(total_agents))
        _check_positive("bptt_horizon", bptt_horizon)
        if minibatch_size is None:
            minibatch_size = default_minibatch_size(int(batch_size), int(bptt_horizon))
        for name, value in (
            ("minibatch_size", minibatch_size),
            ("hidden_size", hidden_size),
            ("num_lstm_layers", num_lstm_layers),
        ):
            if value is not None:
                _check_positive(name, value)
        if batch_size % bptt_horizon:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of bptt_horizon={bptt_horizon}; "
                f"use batch_size={max(1, batch_size // bptt_horizon) * bptt_horizon}"
            )
        self.total_agents = int(total_agents)
        self.batch_size = int(batch_size)
        self.bptt_horizon = int(bptt_horizon)
        self.segments = self.batch_size // self.bptt_horizon
        if self.total_agents > self.segments:
            raise ValueError(
                f"total_agents={total_agents} is more than segments = batch_size / bptt_horizon = {batch_size} / "
                f"{bptt_horizon} = {self.segments}; every agent needs a row: set batch_size >= total_agents * "
                f"bptt_horizon = {total_agents * bptt_horizon}"
            )

        # A minibatch larger than max_minibatch_size is processed as several gradient-accumulated pieces.
        max_minibatch_size = int(max_minibatch_size or minibatch_size)
        self.accumulate_minibatches = max(1, int(minibatch_size) // max_minibatch_size)
        self.minibatch_size = min(int(minibatch_size), max_minibatch_size)
        self.max_minibatch_size = max_minibatch_size
        if self.minibatch_size % self.bptt_horizon:
            raise ValueError(
                f"minibatch_size={self.minibatch_size} must be a multiple of bptt_horizon={bptt_horizon} "
                "(whole rows per minibatch); use "
                f"minibatch_size={max(1, self.minibatch_size // bptt_horizon) * bptt_horizon}"
            )
        self.minibatch_segments = self.minibatch_size // self.bptt_horizon
        if self.segments % self.minibatch_segments:
            raise ValueError(
                f"minibatch_size={self.minibatch_size} must divide batch_size={batch_size} "
                f"(segments={self.segments} rows, {self.minibatch_segments} rows per minibatch)"
            )
        self.num_minibatches = self.segments // self.minibatch_segments

        self.device = torch.device(device)
        self.cpu_offload = bool(cpu_offload)
        self.agents_per_batch = int(agents_per_batch or total_agents)

        S, H = self.segments, self.bptt_horizon
        obs_shape = tuple(obs_space.shape)
        obs_dtype = torch.uint8 if np.dtype(obs_space.dtype) == np.uint8 else torch.float32
        obs_device = torch.device("cpu") if self.cpu_offload else self.device
        pin = self.cpu_offload and torch.cuda.is_available()
        self.obs = torch.zeros((S, H, *obs_shape), dtype=obs_dtype, device=obs_device, pin_memory=pin)  # [S, H, *obs]
        atn_shape = tuple(atn_space.shape) or (1,)
        self.actions = torch.zeros((S, H, *atn_shape), dtype=torch.int32, device=self.device)  # [S, H, 2]
        self.logprobs = torch.zeros((S, H), device=self.device)
        self.values = torch.zeros((S, H), device=self.device)
        self.rewards = torch.zeros((S, H), device=self.device)
        self.dones = torch.zeros((S, H), device=self.device)
        self.truncateds = torch.zeros((S, H), device=self.device)
        self.ratio = torch.ones((S, H), device=self.device)
        # Flat [S * H, ...] views: one index_copy_ per buffer stores a step for all agents of a batch.
        self._flat = {
            name: getattr(self, name).view(S * H, *getattr(self, name).shape[2:])
            for name in ("obs", "actions", "logprobs", "values", "rewards", "dones", "truncateds")
        }
        self._flat_np = {name: buf.numpy() for name, buf in self._flat.items() if buf.device.type == "cpu"}

        # Recurrent state (see "Stored state"); sized from the policy at its first step when no size is given.
        self.hidden_size: int | None = None
        self.num_lstm_layers: int | None = None
        self._requested_lstm = (hidden_size, num_lstm_layers)
        self._checked_policy: Any = None
        if hidden_size is not None and num_lstm_layers is not None:
            self._allocate_lstm_state(int(hidden_size), int(num_lstm_layers))

        # CPU bookkeeping: each agent's row (segments = "no row left") and step within it.
        self.ep_indices = torch.zeros(self.total_agents, dtype=torch.int64)
        self.ep_lengths = torch.zeros(self.total_agents, dtype=torch.int64)
        # The row each row continues into (the same agent's next row of this rollout), -1 for none: lets
        # compute_advantage carry returns across row ends (see "Row chains").
        self.next_rows = torch.full((S,), -1, dtype=torch.int64)
        # Off the CPU, each agent's flat buffer position (row * bptt + step) is kept on the device as well: a
        # step adds 1 there, and the host copies positions over only when agents change rows (every bptt steps).
        self._flat_pos = (
            None if self.device.type == "cpu" else torch.zeros(self.total_agents, dtype=torch.int64, device=self.device)
        )
        self._next_rows_device: torch.Tensor | None = None
        self._epoch_values: torch.Tensor | None = None  # values at the start of the update epoch (row_tail)
        # The rollout step's transfers on a GPU (see metta.rl.rollout): one upload, one download.
        self.host_upload = None if self.device.type == "cpu" else HostUpload(self.device)
        self.actions_to_host = ActionDownload(self.device)
        self._advantages: tuple[tuple, torch.Tensor] | None = None  # (settings, tensor) of this rollout
        self.reset_for_rollout()

    def _allocate_lstm_state(self, hidden_size: int, num_layers: int) -> None:
        self.hidden_size, self.num_lstm_layers = hidden_size, num_layers
        # Every agent's state, [layers, agents, hidden]; a batch reads its rows by env_id slice.
        self.lstm_h = torch.zeros((num_layers, self.total_agents, hidden_size), device=self.device)
        self.lstm_c = torch.zeros_like(self.lstm_h)
        # The state each row starts from, [layers, segments, hidden].
        self.row_lstm_h = torch.zeros((num_layers, self.segments, hidden_size), device=self.device)
        self.row_lstm_c = torch.zeros_like(self.row_lstm_h)

    def match_policy(self, policy: torch.nn.Module) -> None:
        """Check that the LSTM state fits ``policy`` (sizing it now if the buffer was built without a size).

        ``perform_rollout_step`` calls this; it costs one comparison once a policy has been checked.
        """
        if policy is self._checked_policy:
            return
        agent = getattr(policy, "module", policy)  # inside a DDP wrapper
        hidden, layers = getattr(agent, "hidden_size", None), getattr(agent, "core_num_layers", None)
        if self.hidden_size is None:
            if hidden is None or layers is None:
                raise ValueError(
                    f"Experience(hidden_size=None) takes its LSTM size from the policy, but a {type(agent).__name__} "
                    "has "
                    "no hidden_size/core_num_layers: pass hidden_size= and num_lstm_layers= to Experience"
                )
            wanted_hidden, wanted_layers = self._requested_lstm
            if wanted_hidden is not None and wanted_hidden != hidden:
                raise ValueError(self._mismatch(hidden, layers, f"hidden_size={wanted_hidden}"))
            if wanted_layers is not None and wanted_layers != layers:
                raise ValueError(self._mismatch(hidden, layers, f"num_lstm_layers={wanted_layers}"))
            self._allocate_lstm_state(int(hidden), int(layers))
        elif hidden is not None and (hidden, layers) != (self.hidden_size, self.num_lstm_layers):
            raise ValueError(
                self._mismatch(
                    hidden, layers, f"hidden_size={self.hidden_size}, num_lstm_layers={self.num_lstm_layers}"
                )
            )
        self._checked_policy = policy

    @staticmethod
    def _mismatch(hidden: int, layers: int, given: str) -> str:
        return (
            f"Experience({given}) does not fit the policy's LSTM (hidden_size={hidden}, {layers} layers): build the "
            f"Experience with hidden_size={hidden}, num_lstm_layers={layers} (policy.hidden_size, "
            "policy.core_num_layers), leave both out to size it from the policy, or build the agent the buffer was "
            "sized for (Agent(env) is the 512-wide, one-layer interface agent; Agent(env, config='fast') is 128 wide, "
            "2 layers)"
        )

    # ------------------------------------------------------------------------------------------------------
    # Rollout
    @property
    def full(self) -> bool:
        """Every row of this rollout has been written (whether or not it has been trained on since)."""
        return self.full_rows >= self.segments

    @property
    def ready_for_training(self) -> bool:
        """Full and not trained on yet: once a minibatch has been drawn, the next ``store`` starts a new rollout."""
        return self.full_rows >= self.segments and not self._trained_on

    def reset_for_rollout(self) -> None:
        """Start filling the buffer from row 0 again: agent ``i`` writes row ``i`` from step 0.

        Optional: ``store`` does this itself when the buffer has been trained on (see "Rollouts" above).
        """
        torch.arange(self.total_agents, out=self.ep_indices)
        self.ep_lengths.zero_()
        self.next_rows.fill_(-1)
        self.free_idx = self.total_agents
        self.full_rows = 0
        self._agents_without_row = 0
        self._next_rows_device = None
        self._trained_on = False
        self._advantages = None
        self._epoch_values = None
        if self._flat_pos is not None:
            self._flat_pos.copy_(self.ep_indices * self.bptt_horizon)

    def reset_importance_sampling_ratios(self) -> None:
        self.ratio.fill_(1.0)

    def store(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        logprobs: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        truncations: torch.Tensor,
        values: torch.Tensor,
        env_id: slice,
        mask: Any = None,
        lstm_state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> int:
        """Store one step of the agents ``env_id`` (a slice of agent rows); returns the number of agents stored.

        ``mask`` is accepted for the protocol; every agent of the slice is stored (MettaGrid agents are always
        active). ``lstm_state = (h, c)`` is the state after this step's forward, kept for the next one.
        """
        del mask
        if self._trained_on:
            self.reset_for_rollout()
        if self.hidden_size is None and lstm_state is not None:  # stored by hand, without perform_rollout_step
            self._allocate_lstm_state(int(lstm_state[0].shape[-1]), int(lstm_state[0].shape[0]))
        env_id = self._as_slice(env_id, obs.shape[0])
        rows = self.ep_indices[env_id]
        steps = self.ep_lengths[env_id]
        self._store_row_start_state(env_id, rows, steps)
        data = {
            "obs": obs,
            "actions": actions,
            "logprobs": logprobs,
            "values": values,
            "rewards": rewards,
            "dones": dones,
            "truncateds": truncations,
        }
        flat_dev = None if self._flat_pos is None else self._flat_pos[env_id]
        if self._agents_without_row:
            # Near the end of a rollout some agents have no row: drop their steps (rare, so it may allocate).
            keep = rows < self.segments
            flat_dev = None
            data = {k: v[keep.to(v.device)] for k, v in data.items()}
            rows, steps_kept = rows[keep], steps[keep]
        else:
            steps_kept = steps
        flat = rows * self.bptt_horizon + steps_kept  # on the host
        flat_np = flat.numpy()
        for name, value in data.items():
            buf = self._flat[name]
            if buf.device.type == "cpu" and value.device.type == "cpu":
                # NumPy fancy assignment (casting on the fly) is ~50x faster than index_copy_ on CPU tensors.
                self._flat_np[name][flat_np] = value.detach().reshape(-1, *buf.shape[1:]).numpy()
                continue
            if buf.device.type == "cpu":
                index = flat  # cpu_offload obs with the values on the GPU
            else:
                if flat_dev is None:
                    flat_dev = flat.to(self.device, non_blocking=True)
                index = flat_dev
            buf.index_copy_(0, index, value.reshape(-1, *buf.shape[1:]).to(buf.device, buf.dtype, non_blocking=True))

        steps += 1  # a view: updates ep_lengths in place
        if self._flat_pos is not None:
            self._flat_pos[env_id] += 1
        if lstm_state is not None:
            self.set_lstm_state(env_id, *lstm_state)
        if bool((steps >= self.bptt_horizon).any()):
            self._next_rows(env_id)
            if self._flat_pos is not None:  # agents moved to new rows: their positions come from the host
                self._flat_pos[env_id] = (self.ep_indices[env_id] * self.bptt_horizon + steps).to(
                    self.device, non_blocking=True
                )
        return obs.shape[0]

    def _store_row_start_state(self, env_id: slice, rows: torch.Tensor, steps: torch.Tensor) -> None:
        """Keep the state that agents beginning a row enter it with (the state before this step's forward)."""
        if self.hidden_size is None:
            return  # no recurrent state to keep
        starting = (steps == 0) & (rows < self.segments)
        if not bool(starting.any()):
            return  # most steps: no agent of this batch begins a row
        h, c = self.lstm_h[:, env_id], self.lstm_c[:, env_id]
        if bool(starting.all()):
            target = rows.to(self.device, non_blocking=True)
        else:
            target = rows[starting].to(self.device, non_blocking=True)
            which = starting.nonzero().flatten().to(self.device, non_blocking=True)
            h, c = h[:, which], c[:, which]
        self.row_lstm_h[:, target] = h
        self.row_lstm_c[:, target] = c

    def _next_rows(self, env_id: slice) -> None:
        self._next_rows_device = None
        rows = self.ep_indices[env_id]
        steps = self.ep_lengths[env_id]
        finished = (steps >= self.bptt_horizon).nonzero().flatten()
        real = rows[finished] < self.segments
        self.full_rows += int(real.sum())
        n = finished.numel()
        new_rows = torch.arange(self.free_idx, self.free_idx + n, dtype=torch.int64).clamp_(max=self.segments)
        self._agents_without_row += int((new_rows >= self.segments).sum()) - int((~real).sum())
        self.free_idx = min(self.free_idx + n, self.segments)
        linked = real & (new_rows < self.segments)
        self.next_rows[rows[finished][linked]] = new_rows[linked]
        rows[finished] = new_rows
        steps[finished] = 0

    def _as_slice(self, env_id: slice | int, n: int) -> slice:
        if isinstance(env_id, slice):
            return env_id
        start = int(env_id)
        return slice(start, start + n)

    # LSTM state ----------------------------------------------------------------------------------------
    def get_lstm_state(self, env_id: slice | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``(h, c)`` of shape ``[layers, n, hidden]`` for the agents ``env_id`` (a slice, or a start
        index covering ``agents_per_batch`` agents)."""
        if self.hidden_size is None:
            raise ValueError(
                "this Experience has no LSTM state yet (built without hidden_size): call "
                "experience.match_policy(policy) "
                "first (perform_rollout_step does), or pass hidden_size= and num_lstm_layers= to Experience"
            )
        sl = self._as_slice(env_id, self.agents_per_batch)
        return self.lstm_h[:, sl], self.lstm_c[:, sl]

    def set_lstm_state(self, env_id: slice | int, lstm_h: torch.Tensor, lstm_c: torch.Tensor) -> None:
        sl = self._as_slice(env_id, lstm_h.shape[1])
        h, c = self.lstm_h[:, sl], self.lstm_c[:, sl]
        if lstm_h.data_ptr() != h.data_ptr():
            h.copy_(lstm_h)
        if lstm_c.data_ptr() != c.data_ptr():
            c.copy_(lstm_c)

    def reset_lstm_state(self, env_id: slice | int, dones: torch.Tensor) -> None:
        """Zero the recurrent state of the agents whose observation starts a new episode (``dones`` true)."""
        if self.hidden_size is None:
            return  # not sized yet: the state is allocated as zeros at the first forward pass
        sl = self._as_slice(env_id, dones.shape[0])
        keep = (~dones.to(self.device, torch.bool)).to(self.lstm_h.dtype).view(1, -1, 1)
        self.lstm_h[:, sl].mul_(keep)
        self.lstm_c[:, sl].mul_(keep)

    # Training ------------------------------------------------------------------------------------------
    def update_values(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        self.values[indices] = values.detach().view(-1, self.bptt_horizon).to(self.values.dtype)

    def update_ratio(self, indices: torch.Tensor, ratio: torch.Tensor) -> None:
        self.ratio[indices] = ratio.detach().view(-1, self.bptt_horizon).to(self.ratio.dtype)

    def rollout_advantages(
        self, gamma: float, gae_lambda: float, vtrace_rho_clip: float, vtrace_c_clip: float
    ) -> torch.Tensor:
        """This rollout's advantages (``compute_advantage`` at ratio 1, following ``next_rows``), computed at the
        first call after the rollout and kept until the next one; what a minibatch update uses when it is given
        no advantages. A change of settings recomputes them."""
        settings = (float(gamma), float(gae_lambda), float(vtrace_rho_clip), float(vtrace_c_clip))
        if self._advantages is None or self._advantages[0] != settings:
            advantages = torch.zeros_like(self.values)
            compute_advantage(
                self.values,
                self.rewards,
                self.dones,
                torch.ones_like(self.values),
                advantages,
                *settings,
                next_rows=self.next_rows,
            )
            self._advantages = (settings, advantages)
        return self._advantages[1]

    def row_tail(self, indices: torch.Tensor, advantages: torch.Tensor) -> RowTail:
        """For the rows ``indices``, the step that follows each one's last (its successor's step 0, see
        ``next_rows``), with that step's entry of ``advantages``: what ``compute_advantage(..., tail=...)``
        needs to recompute a minibatch's advantages without cutting returns at its rows' ends.

        A row whose advantage at its last step is exactly 0 gets no following step: that is how
        ``compute_advantage`` without ``next_rows`` leaves every row's end, so a recompute from advantages
        computed that way stops at the row's end as they did (a chained advantage is 0 only by accident of
        the data, and then both ways give 0 at ratio 1)."""
        if self._next_rows_device is None or self._next_rows_device.device != indices.device:
            # Once per update (the chains are fixed once the rollout is done), not once per minibatch.
            self._next_rows_device = self.next_rows.to(indices.device)
        following = self._next_rows_device[indices]
        valid = (following >= 0) & (advantages[indices, -1] != 0)
        following = following.clamp(min=0)
        # The values as the update epoch began (see iter_minibatches), so a minibatch's tails do not depend on
        # which minibatches came before it in the epoch, nor on whether it was split into accumulated pieces.
        values = self._epoch_values if self._epoch_values is not None else self.values
        return RowTail(
            self.rewards[following, 0],
            values[following, 0],
            self.dones[following, 0],
            advantages[following, 0],
            valid,
        )

    def sample_minibatch(
        self,
        advantages: torch.Tensor,
        prio_alpha: float,
        prio_beta: float,
        minibatch_idx: int | None = None,
        total_minibatches: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """One minibatch drawn with replacement by priority (see the module docstring)."""
        del minibatch_idx, total_minibatches  # kept for upstream's signature; every draw is independent
        probs = self.sampling_probs(advantages, prio_alpha)
        idx = torch.multinomial(probs, self.minibatch_segments, replacement=True)
        weights = (self.segments * probs[idx]).pow(-prio_beta).unsqueeze(1)
        return self._minibatch(idx, advantages, weights)

    def sampling_probs(self, advantages: torch.Tensor, prio_alpha: float) -> torch.Tensor:
        """``P(row)`` for prioritized sampling, a proper distribution over the ``segments`` rows."""
        if prio_alpha <= 0:
            return torch.full((self.segments,), 1.0 / self.segments, device=advantages.device)
        priority = advantages.detach().abs().sum(dim=1).pow(prio_alpha).nan_to_num_(0.0, 0.0, 0.0)
        total = priority.sum()
        if not bool(total > 0):
            return torch.full((self.segments,), 1.0 / self.segments, device=advantages.device)
        return priority / total

    def iter_minibatches(
        self, advantages: torch.Tensor | None = None, prio_alpha: float = 0.0, prio_beta: float = 0.6
    ) -> Iterator[dict[str, torch.Tensor]]:
        """The ``num_minibatches`` minibatches of one update epoch (see the module docstring)."""
        self._epoch_values = self.values.clone()
        if prio_alpha > 0:
            if advantages is None:
                raise ValueError(
                    f"prio_alpha={prio_alpha} samples by advantage, so pass advantages= (the tensor compute_advantage "
                    "filled), or use prio_alpha=0 for uniform minibatches"
                )
            for i in range(self.num_minibatches):
                yield self.sample_minibatch(advantages, prio_alpha, prio_beta, i, self.num_minibatches)
            return
        perm = torch.randperm(self.segments, device=self.device)
        ones = torch.ones((self.minibatch_segments, 1), device=self.device)
        for i in range(self.num_minibatches):
            idx = perm[i * self.minibatch_segments : (i + 1) * self.minibatch_segments]
            yield self._minibatch(idx, advantages, ones)

    def _minibatch(
        self, idx: torch.Tensor, advantages: torch.Tensor | None, prio_weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        self._trained_on = True
        obs_idx = idx if self.obs.device == idx.device else idx.to(self.obs.device)
        mb = {
            "obs": self.obs[obs_idx].to(self.device, non_blocking=True),
            "actions": self.actions[idx],
            "logprobs": self.logprobs[idx],
            "values": self.values[idx],
            "rewards": self.rewards[idx],
            "dones": self.dones[idx],
            "ratio": self.ratio[idx],
            "lstm_h": self.row_lstm_h[:, idx] if self.hidden_size is not None else None,  # None: zeros
            "lstm_c": self.row_lstm_c[:, idx] if self.hidden_size is not None else None,
            "indices": idx,
            "prio_weights": prio_weights,
        }
        if advantages is not None:
            mb["advantages"] = advantages[idx]
            mb["returns"] = mb["advantages"] + mb["values"]
        return mb

    # Stats ---------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line on the buffer's layout, for a run's log."""
        pieces = (
            f" ({self.accumulate_minibatches} accumulated pieces of {self.minibatch_size})"
            if self.accumulate_minibatches > 1
            else ""
        )
        where = f"observations on {self.obs.device}" + (" (offloaded)" if self.cpu_offload else "")
        lstm = "sized from the policy" if self.hidden_size is None else f"{self.num_lstm_layers}x{self.hidden_size}"
        return (
            f"experience: {self.segments} rows of {self.bptt_horizon} steps ({self.batch_size} agent steps) for "
            f"{self.total_agents} agents, {self.num_minibatches // self.accumulate_minibatches} minibatches of "
            f"{self.minibatch_size * self.accumulate_minibatches} steps{pieces}, {where}, LSTM {lstm}"
        )

    def stats(self) -> dict[str, float]:
        actions = self.actions.float()
        return {
            "rewards": self.rewards.mean().item(),
            "values": self.values.mean().item(),
            "logprobs": self.logprobs.mean().item(),
            "dones": self.dones.mean().item(),
            "truncateds": self.truncateds.mean().item(),
            "ratio": self.ratio.mean().item(),
            "ep_lengths": self.ep_lengths.float().mean().item(),
            "actions_mean": actions.mean().item(),
            "actions_std": actions.std().item(),
        }


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def default_bptt_horizon(batch_size: int, total_agents: int) -> int:
    """``TrainerConfig``'s ``bptt_horizon`` (64), halved until ``batch_size`` holds a whole row per agent."""
    horizon = TrainerConfig.model_fields["bptt_horizon"].default
    while horizon > 1 and (batch_size % horizon or total_agents * horizon > batch_size):
        horizon //= 2
    return horizon


def default_minibatch_size(batch_size: int, bptt_horizon: int) -> int:
    """The largest whole number of rows that divides the batch and is at most ``TrainerConfig``'s
    ``minibatch_size`` (16384 steps); the whole batch when it is smaller than that."""
    segments = max(1, batch_size // bptt_horizon)
    cap = max(1, TrainerConfig.model_fields["minibatch_size"].default // bptt_horizon)
    rows = max(d for d in range(1, min(segments, cap) + 1) if segments % d == 0)
    return rows * bptt_horizon


def make_experience(vecenv: Any, policy: Any, trainer_cfg: Any, device: torch.device | str = "cpu") -> Experience:
    """An ``Experience`` sized from a vecenv, a policy and a ``TrainerConfig`` (the usual construction)."""
    return Experience(
        total_agents=vecenv.num_agents,
        batch_size=trainer_cfg.batch_size,
        bptt_horizon=trainer_cfg.bptt_horizon,
        minibatch_size=trainer_cfg.minibatch_size,
        max_minibatch_size=getattr(trainer_cfg, "max_minibatch_size", None),
        obs_space=vecenv.single_observation_space,
        atn_space=vecenv.single_action_space,
        device=device,
        hidden_size=policy.hidden_size,
        cpu_offload=trainer_cfg.cpu_offload,
        num_lstm_layers=policy.core_num_layers,
        agents_per_batch=getattr(vecenv, "agents_per_batch", None),
    )


def calculate_anneal_beta(
    epoch: int, total_timesteps: int, batch_size: int, prio_alpha: float, prio_beta0: float
) -> float:
    """Upstream's importance-sampling exponent: ``beta0 + (1 - beta0) * alpha * epoch / total_epochs``.

    The factor ``prio_alpha`` is upstream's (with uniform sampling, alpha 0, beta stays at beta0 and the
    weights are all 1 anyway); the result is capped at 1.
    """
    total_epochs = max(1, total_timesteps // batch_size)
    return min(1.0, prio_beta0 + (1.0 - prio_beta0) * prio_alpha * epoch / total_epochs)


calculate_prioritized_sampling_params = calculate_anneal_beta
