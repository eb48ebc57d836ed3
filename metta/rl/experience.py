"""``Experience``: the rollout buffer, ``[segments, bptt_horizon, ...]``, plus LSTM state per agent.

Layout. ``segments = batch_size // bptt_horizon`` rows; each row holds ``bptt_horizon`` consecutive steps of
one agent (rows may span episode boundaries; ``dones`` marks where a new episode starts). Every agent owns
one row at a time. When its row is full it takes the next free row; when none is left it writes nothing
until the next rollout. The buffer is ``full`` once every row has been filled, so a row is never a mix of two
rollouts (upstream handed out rows ring-wise, which could overwrite a finished row half-way when
``segments`` is not a multiple of the agents).

Agent steps. A rollout steps every agent until the last row is full, so when ``segments`` is not a multiple of
the agents, the agents left without a row step on without storing: ``agent_steps_per_rollout`` (what
``rollout()`` adds to ``agent_step``) is then more than ``batch_size`` (what is trained on), and the buffer warns
once, naming both and the batch sizes that waste nothing. With ``agents_per_batch`` below the agents (async
vecenvs) it is an upper bound: the last batch of agents may not need its final step.

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
agents' recurrent state before the policy sees that observation. ``truncateds`` keeps which of those ends
were truncations (a time limit): the advantages bootstrap there (``compute_advantage(..., truncations=)``,
which ``rollout_advantages``, ``row_tail`` and every minibatch pass on), and stop at a terminal.

Stored state. When an agent moves on to a row, the LSTM state it carries into that row's first step is kept
(``row_lstm_h``/``row_lstm_c``, ``[layers, segments, hidden]``), taken before that step's episode reset (at
the row change, from the host's bookkeeping, never from inside a step), and every minibatch carries it, so
training replays each row from the state the rollout really had (not from zeros, as upstream did) and, with
the row's ``dones`` as episode starts (``t = 0`` included), resets it where the rollout did. At the first
minibatch of an update the policy then reproduces the rollout's log-probabilities exactly, and the LSTM is
trained on the long-memory states it acts from.

Row chains. ``next_rows[r]`` is the row the agent that filled row ``r`` went on to fill (-1 if none); rows of
one agent form a chain in time. ``compute_advantage(..., next_rows=experience.next_rows)`` follows the chains,
so rewards and returns cross row ends, and ``row_tail(indices, advantages)`` gives a minibatch the step after
each of its rows for the per-minibatch V-trace recomputation. ``rollout_advantages(gamma, gae_lambda,
rho_clip, c_clip)`` computes them that way once per rollout (what a minibatch update without advantages uses).

Rollout steps. ``perform_rollout_step`` (metta.rl.rollout) stores a step with ``store`` on a CPU; on a GPU it
runs each env batch's step as one static, graph-capturable piece of device work and keeps the bookkeeping on
the host (``begin_step``, ``end_step``, ``device_steps``). ``cuda_graphs`` (``TrainerConfig.cuda_graphs``)
captures that piece as a CUDA graph on a CUDA device.

Bookkeeping (row and step of every agent, the row chains, and a copy of the episode starts) lives on the host,
in NumPy arrays (``ep_indices``, ``ep_lengths`` and ``next_rows`` are tensors sharing their memory), so
storing a step never waits for the GPU and planning a minibatch's LSTM replay reads nothing back from it;
positions are computed per agent, so the agents of a batch need not be at the same step. Every buffer has one
spare row past ``segments`` (not part of the public views): agents left without a row near the end of a
rollout write their steps there, so a step's writes never depend on the data (what a CUDA graph needs).

Minibatches. ``minibatch_segments = minibatch_size // bptt_horizon`` rows each, ``num_minibatches`` per
update epoch. Two ways to draw them:

- ``iter_minibatches(advantages=None, prio_alpha=0.0, prio_beta=0.6)`` yields one update epoch's minibatches. With
  ``prio_alpha == 0`` (the default) it is a random permutation of the rows cut into ``num_minibatches`` parts: every
  row exactly once per epoch, importance weights 1. The permutation is drawn on the host from the buffer's own
  generator, seeded from ``torch.initial_seed()`` (the last ``torch.manual_seed``) at the first draw, so runs of one
  seed draw the same order on a CPU and on a GPU (whose rollouts draw from other generators); it reaches the device
  in one page-locked copy per epoch. With ``prio_alpha > 0`` it draws each minibatch with ``sample_minibatch``.
  ``advantages`` (the ``[segments, bptt]`` tensor from ``compute_advantage``) is needed for prioritized sampling;
  when given, each minibatch also carries ``advantages`` and ``returns``. Without it (``for minibatch in
  experience.iter_minibatches():``), ``process_minibatch_update`` takes the rows' advantages from its own
  ``advantages`` argument, or from ``rollout_advantages`` when that is None.
- ``sample_minibatch(advantages, prio_alpha, prio_beta)`` draws ``minibatch_segments`` rows *with
  replacement* from ``P(i) = p_i / sum(p)``, ``p_i = (sum_t |A[i, t]|) ** prio_alpha`` (uniform if all are 0),
  and returns importance weights ``(segments * P(i)) ** -prio_beta``, which are exact for sampling with
  replacement (upstream drew without replacement from a not-quite-normalized distribution).

A minibatch is a dict of tensors on ``device``: ``obs [mb, bptt, *obs_shape]``, ``actions [mb, bptt, 2]``,
``logprobs``, ``values``, ``rewards``, ``dones``, ``truncateds``, ``ratio`` (``[mb, bptt]``), ``lstm_h``/``lstm_c``
(``[layers, mb, hidden]``, each row's stored start state), ``episode_starts`` (bool ``[mb, bptt]``, on the
host: the LSTM replay's plan), ``indices [mb]``, ``prio_weights [mb, 1]``, and ``advantages``/``returns``
when advantages were given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from metta.common.pinned_upload import IndexUpload
from metta.mettagrid.vecenv import calculate_batch_sizes  # noqa: F401 - upstream's import path
from metta.rl.advantage import RowTail, compute_advantage
from metta.rl.host_transfer import ActionDownload, HostUpload
from metta.rl.trainer_config import TrainerConfig

logger = logging.getLogger(__name__)
# The per-step scalars every buffer row holds besides obs and actions.
_STEP_SCALARS = ("logprobs", "values", "rewards", "dones", "truncateds")


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
        cuda_graphs: bool = True,
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
        # Every agent steps until the last row is full: ceil(rows per agent) steps of bptt_horizon each.
        self.agent_steps_per_rollout = (
            math.ceil(self.segments / self.total_agents) * self.bptt_horizon * self.total_agents
        )
        if self.agent_steps_per_rollout != self.batch_size:
            logger.warning(self._uneven_rows())

        S, H = self.segments, self.bptt_horizon
        rows = S + 1  # the spare row (see "Bookkeeping"): public views show the first S
        obs_shape = tuple(obs_space.shape)
        obs_dtype = torch.uint8 if np.dtype(obs_space.dtype) == np.uint8 else torch.float32
        obs_device = torch.device("cpu") if self.cpu_offload else self.device
        pin = self.cpu_offload and torch.cuda.is_available()
        atn_shape = tuple(atn_space.shape) or (1,)
        storage = {
            "obs": torch.zeros((rows, H, *obs_shape), dtype=obs_dtype, device=obs_device, pin_memory=pin),
            "actions": torch.zeros((rows, H, *atn_shape), dtype=torch.int32, device=self.device),
            **{name: torch.zeros((rows, H), device=self.device) for name in _STEP_SCALARS},
        }
        # [S, H, ...] views: obs [S, H, *obs], actions [S, H, 2], the others [S, H].
        for name, buffer in storage.items():
            setattr(self, name, buffer[:S])
        self.ratio = torch.ones((S, H), device=self.device)
        # Flat [(S + 1) * H, ...] views: one index_copy_ per buffer stores a step for all agents of a batch.
        self._flat = {name: buffer.view(rows * H, *buffer.shape[2:]) for name, buffer in storage.items()}
        self._flat_np = {name: buf.numpy() for name, buf in self._flat.items() if buf.device.type == "cpu"}
        # The host's copy of where episodes start (dones as bool), read to plan each minibatch's LSTM replay.
        self._host_starts = np.zeros((rows, H), dtype=np.bool_)
        self._index_upload = IndexUpload(self.device)  # index plans to the device without a host sync
        self._offload: list[tuple[torch.Tensor, Any] | None] = [None, None]  # cpu_offload minibatch staging
        self._offload_turn = 0

        # Recurrent state (see "Stored state"); sized from the policy at its first step when no size is given.
        self.hidden_size: int | None = None
        self.num_lstm_layers: int | None = None
        self._requested_lstm = (hidden_size, num_lstm_layers)
        self._checked_policy: Any = None
        if hidden_size is not None and num_lstm_layers is not None:
            self._allocate_lstm_state(int(hidden_size), int(num_lstm_layers))

        # Host bookkeeping: each agent's row (segments: the spare row, "no row left") and step within it, and
        # the row each row continues into (the same agent's next row of this rollout), -1 for none: lets
        # compute_advantage carry returns across row ends (see "Row chains").
        self._rows = np.zeros(self.total_agents, dtype=np.int64)
        self._steps = np.zeros(self.total_agents, dtype=np.int64)
        self._next = np.full(S, -1, dtype=np.int64)
        self.ep_indices = torch.from_numpy(self._rows)
        self.ep_lengths = torch.from_numpy(self._steps)
        self.next_rows = torch.from_numpy(self._next)
        # Each agent's flat buffer position (row * bptt + step) on the device, for the GPU form of a rollout
        # step (metta.rl.rollout): a step adds 1 there, and the host sends positions over only when agents
        # change rows (every bptt steps) or when the device copy is stale (``_positions_on_device`` false).
        self._flat_pos = torch.zeros(self.total_agents, dtype=torch.int64, device=self.device)
        self._positions_on_device = False
        self._next_rows_device: torch.Tensor | None = None
        self._epoch_values: torch.Tensor | None = None  # values at the start of the update epoch (row_tail)
        # Minibatch order: the buffer's own generator, seeded at the first draw (see "Minibatches").
        self._generator: torch.Generator | None = None
        # The rollout step's transfers and its GPU form, one per env batch (metta.rl.rollout).
        self.cuda_graphs = bool(cuda_graphs)
        self.host_upload = HostUpload(self.device)
        self.actions_to_host = ActionDownload(self.device)
        self.device_steps: dict[tuple[int, int], Any] = {}
        self.rollouts = 0  # rollouts started: a GPU-form step checks once per rollout that its graph still fits
        self._advantages: tuple[tuple, torch.Tensor] | None = None  # (settings, tensor) of this rollout
        self.reset_for_rollout()

    def _allocate_lstm_state(self, hidden_size: int, num_layers: int) -> None:
        self.hidden_size, self.num_lstm_layers = hidden_size, num_layers
        # Every agent's state, [layers, agents, hidden]; a batch reads its rows by env_id slice.
        self.lstm_h = torch.zeros((num_layers, self.total_agents, hidden_size), device=self.device)
        self.lstm_c = torch.zeros_like(self.lstm_h)
        # The state each row starts from, [layers, segments, hidden] (the spare row absorbs rowless agents').
        self._row_lstm = torch.zeros((2, num_layers, self.segments + 1, hidden_size), device=self.device)
        self.row_lstm_h, self.row_lstm_c = self._row_lstm[0, :, : self.segments], self._row_lstm[1, :, : self.segments]
        self._lstm_np = None if self.device.type != "cpu" else (self.lstm_h.numpy(), self.lstm_c.numpy())

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
        """Start filling the buffer from row 0 again: agent ``i`` writes row ``i`` from step 0, entering it with
        the LSTM state it has now.

        Optional: ``store`` does this itself when the buffer has been trained on (see "Rollouts" above).
        """
        self._rows[:] = np.arange(self.total_agents)
        self._steps[:] = 0
        self._next[:] = -1
        self.free_idx = self.total_agents
        self.full_rows = 0
        self._next_rows_device = None
        self._trained_on = False
        self._advantages = None
        self._epoch_values = None
        self._positions_on_device = False
        self.rollouts += 1
        if self.hidden_size is not None:
            n = self.total_agents
            self.row_lstm_h[:, :n].copy_(self.lstm_h)
            self.row_lstm_c[:, :n].copy_(self.lstm_c)

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

        ``mask`` (the vecenv's per-agent active flags, None for all) must be all true: every agent of the slice
        takes each step (MettaGrid agents are always active), and a False entry raises ValueError. A NumPy mask
        (what the vecenv returns) is checked on the host; a device tensor makes the check wait for the device.
        ``lstm_state = (h, c)`` is the state after this step's forward, kept for the next one.
        ``dones`` off the CPU is read back to the host (the GPU form of ``perform_rollout_step`` keeps the host's
        own copy instead).
        """
        if mask is not None and not mask.all():
            raise ValueError(
                f"mask has {int((mask == 0).sum())} False entries of {len(mask)}: Experience stores every agent of the "
                "slice at each step (MettaGrid agents are always active); pass mask=None or the vecenv's all-true mask"
            )
        self.begin_step()
        if self.hidden_size is None and lstm_state is not None:  # stored by hand, without perform_rollout_step
            self._allocate_lstm_state(int(lstm_state[0].shape[-1]), int(lstm_state[0].shape[0]))
        env_id = self._as_slice(env_id, obs.shape[0])
        flat = self._rows[env_id] * self.bptt_horizon + self._steps[env_id]  # on the host
        data = {
            "obs": obs,
            "actions": actions,
            "logprobs": logprobs,
            "values": values,
            "rewards": rewards,
            "dones": dones,
            "truncateds": truncations,
        }
        flat_dev = None
        for name, value in data.items():
            buf = self._flat[name]
            if buf.device.type == "cpu" and value.device.type == "cpu":
                # NumPy fancy assignment (casting on the fly) is ~50x faster than index_copy_ on CPU tensors.
                self._flat_np[name][flat] = _host_array(value).reshape(-1, *buf.shape[1:])
                continue
            if buf.device.type == "cpu":
                index = torch.from_numpy(flat)  # cpu_offload obs with the values on the GPU
            else:
                if flat_dev is None:
                    (flat_dev,) = self._index_upload(flat)
                index = flat_dev
            buf.index_copy_(0, index, value.reshape(-1, *buf.shape[1:]).to(buf.device, buf.dtype, non_blocking=True))
        self._host_starts.reshape(-1)[flat] = _host_array(dones)
        if lstm_state is not None:
            self.set_lstm_state(env_id, *lstm_state)
        self._positions_on_device = False  # the device positions did not take this step
        self.end_step(env_id)
        return obs.shape[0]

    def begin_step(self) -> None:
        """Before a step is stored: a buffer that has been trained on starts a new rollout."""
        if self._trained_on:
            self.reset_for_rollout()

    def end_step(self, env_id: slice) -> None:
        """After a step of ``env_id`` is stored (and the agents' new LSTM state set): advance each agent's
        position; agents whose row is full move on to the next free row (or the spare one)."""
        steps = self._steps[env_id]
        steps += 1  # a view: updates the bookkeeping in place
        if steps.max() >= self.bptt_horizon:
            self._next_rows(env_id)

    def _next_rows(self, env_id: slice) -> None:
        self._next_rows_device = None
        rows, steps = self._rows[env_id], self._steps[env_id]
        finished = np.flatnonzero(steps >= self.bptt_horizon)
        old = rows[finished]
        real = old < self.segments
        self.full_rows += int(real.sum())
        n = finished.size
        new_rows = np.minimum(np.arange(self.free_idx, self.free_idx + n), self.segments)
        self.free_idx = min(self.free_idx + n, self.segments)
        linked = real & (new_rows < self.segments)
        self._next[old[linked]] = new_rows[linked]
        rows[finished] = new_rows
        steps[finished] = 0
        # Each agent enters its new row with the state it has now, before its next step's episode reset (the
        # replay applies that reset from the row's episode starts), and writes the row from step 0.
        start = env_id.start or 0
        if n == steps.size and new_rows[-1] < self.segments:  # a whole batch moves to consecutive rows
            first = int(new_rows[0])
            if self.hidden_size is not None:
                self._row_lstm[0][:, first : first + n].copy_(self.lstm_h[:, env_id])
                self._row_lstm[1][:, first : first + n].copy_(self.lstm_c[:, env_id])
            if self._positions_on_device:
                torch.arange(
                    first * self.bptt_horizon,
                    (first + n) * self.bptt_horizon,
                    self.bptt_horizon,
                    out=self._flat_pos[env_id],
                )
            return
        agents, targets, positions = self._index_upload(start + finished, new_rows, new_rows * self.bptt_horizon)
        if self.hidden_size is not None:
            self._row_lstm[0].index_copy_(1, targets, self.lstm_h.index_select(1, agents))
            self._row_lstm[1].index_copy_(1, targets, self.lstm_c.index_select(1, agents))
        if self._positions_on_device:
            self._flat_pos.index_copy_(0, agents, positions)

    def sync_positions_to_device(self) -> None:
        """Send every agent's buffer position to the device (the GPU form's first step of a rollout)."""
        if not self._positions_on_device:
            (positions,) = self._index_upload(self._rows * self.bptt_horizon + self._steps)
            self._flat_pos.copy_(positions)
            self._positions_on_device = True

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
        if self._lstm_np is not None and lstm_h.device.type == "cpu" and lstm_c.device.type == "cpu":
            self._lstm_np[0][:, sl] = _host_array(lstm_h)  # NumPy: no torch dispatch on the CPU's rollout step
            self._lstm_np[1][:, sl] = _host_array(lstm_c)
            return
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
        if self._lstm_np is not None and dones.device.type == "cpu":
            done = _host_array(dones).astype(bool, copy=False)
            if done.any():
                self._lstm_np[0][:, sl][:, done] = 0.0
                self._lstm_np[1][:, sl][:, done] = 0.0
            return
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
                truncations=self.truncateds,
            )
            self._advantages = (settings, advantages)
        return self._advantages[1]

    def row_tail(self, indices: torch.Tensor, advantages: torch.Tensor) -> RowTail | None:
        """For the rows ``indices``, the step that follows each one's last (its successor's step 0, see
        ``next_rows``), with that step's entry of ``advantages``: what ``compute_advantage(..., tail=...)``
        needs to recompute a minibatch's advantages without cutting returns at its rows' ends. None when no
        row of this rollout continues into another (every agent wrote one row): there is no step to give.

        A row whose advantage at its last step is exactly 0 gets no following step: that is how
        ``compute_advantage`` without ``next_rows`` leaves every row's end, so a recompute from advantages
        computed that way stops at the row's end as they did (a chained advantage is 0 only by accident of
        the data, and then both ways give 0 at ratio 1)."""
        if self._next.max(initial=-1) < 0:
            return None
        if self._next_rows_device is None or self._next_rows_device.device != indices.device:
            # Once per update (the chains are fixed once the rollout is done), not once per minibatch.
            (self._next_rows_device,) = self._index_upload(self._next)
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
            self.truncateds[following, 0],
        )

    def sample_minibatch(
        self,
        advantages: torch.Tensor,
        prio_alpha: float,
        prio_beta: float,
        minibatch_idx: int | None = None,
        total_minibatches: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """One minibatch drawn with replacement by priority (see the module docstring). The rows are drawn on
        the device and read back once (the LSTM replay plans from the host's copy of the episode starts).

        ``minibatch_idx`` of ``total_minibatches`` (upstream's arguments; None: not said) place the draw in its
        epoch. Every draw is independent and ``minibatch_segments`` rows, so the place changes nothing drawn;
        a ``total_minibatches`` other than ``num_minibatches`` (which would call for another minibatch size) or
        an index outside ``range(total_minibatches)`` raises ValueError.
        """
        if total_minibatches is not None and total_minibatches != self.num_minibatches:
            raise ValueError(
                f"total_minibatches={total_minibatches} but this buffer cuts each epoch into num_minibatches="
                f"{self.num_minibatches} of {self.minibatch_size} steps; pass total_minibatches=experience."
                "num_minibatches, or build the Experience with the minibatch_size you want"
            )
        if minibatch_idx is not None and not 0 <= minibatch_idx < self.num_minibatches:
            raise ValueError(
                f"minibatch_idx={minibatch_idx} is outside range(num_minibatches={self.num_minibatches}); "
                "count the epoch's minibatches from 0"
            )
        probs = self.sampling_probs(advantages, prio_alpha)
        idx = torch.multinomial(probs, self.minibatch_segments, replacement=True)
        weights = (self.segments * probs[idx]).pow(-prio_beta).unsqueeze(1)
        return self._minibatch(idx, advantages, weights, idx.cpu().numpy())

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
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(torch.initial_seed())
        host_perm = torch.randperm(self.segments, generator=self._generator).numpy()
        (perm,) = self._index_upload(host_perm)
        ones = torch.ones((self.minibatch_segments, 1), device=self.device)
        for i in range(self.num_minibatches):
            rows = slice(i * self.minibatch_segments, (i + 1) * self.minibatch_segments)
            yield self._minibatch(perm[rows], advantages, ones, host_perm[rows])

    def _minibatch(
        self, idx: torch.Tensor, advantages: torch.Tensor | None, prio_weights: torch.Tensor, host_idx: np.ndarray
    ) -> dict[str, torch.Tensor]:
        self._trained_on = True
        mb = {
            "obs": self._minibatch_obs(idx, host_idx),
            "actions": self.actions[idx],
            "logprobs": self.logprobs[idx],
            "values": self.values[idx],
            "rewards": self.rewards[idx],
            "dones": self.dones[idx],
            "truncateds": self.truncateds[idx],
            "episode_starts": torch.from_numpy(self._host_starts[host_idx]),
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

    def _minibatch_obs(self, idx: torch.Tensor, host_idx: np.ndarray) -> torch.Tensor:
        if self.obs.device == self.device:
            return self.obs[idx]
        # cpu_offload: gathered on the host into page-locked memory (two buffers taking turns, each guarded by
        # the event of its last copy), then one asynchronous copy to the device.
        self._offload_turn = turn = 1 - self._offload_turn
        shape = (len(host_idx), *self.obs.shape[1:])
        if self._offload[turn] is None or self._offload[turn][0].shape != shape:
            cuda = self.device.type == "cuda"
            self._offload[turn] = (
                torch.empty(shape, dtype=self.obs.dtype, pin_memory=cuda),
                torch.cuda.Event() if cuda else None,
            )
        staging, event = self._offload[turn]
        if event is not None:
            event.synchronize()
        torch.index_select(self.obs, 0, torch.from_numpy(host_idx), out=staging)
        out = staging.to(self.device, non_blocking=True)
        if event is not None:
            event.record()
        return out

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
        steps = f"{self.batch_size} agent steps"
        if self.agent_steps_per_rollout != self.batch_size:
            up_to = "up to " if self.agents_per_batch < self.total_agents else ""
            steps += f" trained of the {up_to}{self.agent_steps_per_rollout} each rollout steps"
        return (
            f"experience: {self.segments} rows of {self.bptt_horizon} steps ({steps}) for "
            f"{self.total_agents} agents, {self.num_minibatches // self.accumulate_minibatches} minibatches of "
            f"{self.minibatch_size * self.accumulate_minibatches} steps{pieces}, {where}, LSTM {lstm}"
        )

    def _uneven_rows(self) -> str:
        rows, agents, bptt = self.segments, self.total_agents, self.bptt_horizon
        up_to = "up to " if self.agents_per_batch < agents else ""
        lower, upper = (rows // agents) * agents * bptt, math.ceil(rows / agents) * agents * bptt
        fits = f"batch_size={lower} or {upper}" if lower else f"batch_size={upper}"
        return (
            f"batch_size={self.batch_size} is {rows} rows of {bptt} steps, which do not split evenly over {agents} "
            f"agents: each rollout steps {up_to}{self.agent_steps_per_rollout} agent steps (agent_step counts them "
            f"all) and trains on {self.batch_size}; {fits} (a multiple of {agents} agents x bptt_horizon {bptt}) "
            "wastes none"
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


def _host_array(value: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array (a view on the CPU; a copy, which waits for the device, elsewhere)."""
    if value.device.type != "cpu":
        value = value.cpu()
    return (value.detach() if value.requires_grad else value).numpy()


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
    """An ``Experience`` sized from a vecenv, a policy and a ``TrainerConfig`` (the usual construction); it also
    applies the config's ``tf32`` switch, so the first rollout runs as the updates will."""
    trainer_cfg.apply_tf32()
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
        cuda_graphs=trainer_cfg.cuda_graphs and not trainer_cfg.compile,
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
