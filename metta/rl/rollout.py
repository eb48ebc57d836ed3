"""One rollout step: receive a batch of observations, run the policy, store the step, send the actions.

    while not experience.ready_for_training:
        num_steps, infos = perform_rollout_step(policy, vecenv, experience, device, timer)

The vecenv returns the same batch layout every time (contiguous agent rows ``env_ids``). No Python loop runs
over agents. The step has two forms (``metta.common.code_paths``):

- CPU: the step works on the vecenv's buffers in place and stores with NumPy (``Experience.store``).
- GPU (``DeviceStep``): one static piece of device work per env batch, always on the same buffers: reset the
  LSTM state where episodes start, the policy's forward, the state written back, the step written into the
  buffer at positions the device keeps, the actions into a static output. No Python branch depends on the
  data and nothing is read back inside it, so on CUDA it is captured once as a CUDA graph and replayed (one
  launch instead of about 100; ``Experience.cuda_graphs``, ``TrainerConfig.cuda_graphs``); elsewhere it runs
  eagerly, the same ops (the CPU test suite runs it that way). Around it, on the host: observations, rewards,
  terminals and truncations are packed into one page-locked buffer and sent with one copy (``HostUpload``;
  the buffer of a batch is refilled only after the event of its last copy has passed), and the actions come
  back with one copy into page-locked memory, which is the step's only synchronisation. The host keeps the
  bookkeeping (rows, steps, episode starts) from the arrays it received, so nothing else crosses over.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from metta.agent.policy_state import PolicyState
from metta.common.code_paths import gpu_forms
from metta.rl.experience import Experience
from metta.rl.host_transfer import HostUpload


def _timed(timer: Any, name: str):
    return timer(name) if timer is not None else nullcontext()


def get_observation(
    vecenv: Any, device: torch.device | str, timer: Any = None, upload: HostUpload | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[dict], slice, np.ndarray, int]:
    """``(obs, rewards, dones, truncations, infos, env_id slice, mask, num_steps)``, tensors on ``device``.

    ``dones`` is ``terminals``; ``num_steps`` counts the active agents (``mask``). Off the CPU, ``upload`` (a
    ``HostUpload``, kept across steps) makes it one pinned copy; the tensors are then views of its device
    buffer, valid until this batch comes round again. Without it each array is copied on its own.
    """
    o, r, d, t, info, training_env_id, mask = _receive(vecenv, timer)
    num_steps = int(mask.sum())
    if torch.device(device).type == "cpu":  # from_numpy shares memory with the vecenv's buffers
        o, r, d, t = (torch.from_numpy(x) for x in (o, r, d, t))
    elif upload is not None:
        o, r, d, t = upload.upload(training_env_id.start, o, r, d, t)
    else:
        o, r, d, t = (torch.from_numpy(x).to(device, non_blocking=True) for x in (o, r, d, t))
    return o, r, d, t, info, training_env_id, mask, num_steps


def _receive(vecenv: Any, timer: Any) -> tuple:
    """``vecenv.recv()`` with the agent rows checked to be contiguous and given as a slice."""
    with _timed(timer, "_rollout.env"):
        o, r, d, t, info, env_id, mask = vecenv.recv()
    start, stop = int(env_id[0]), int(env_id[-1]) + 1
    if stop - start != len(env_id):
        raise RuntimeError(
            f"the vecenv returned non-contiguous agent rows {env_id[:8]}...; Experience stores contiguous slices"
        )
    return o, r, d, t, info, slice(start, stop), mask


def run_policy_inference(
    policy: torch.nn.Module,
    obs: torch.Tensor,
    experience: Experience,
    env_id_start: int | slice,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``(actions [n, 2], logprobs [n], values [n], (lstm_h, lstm_c))`` for the agents starting at ``env_id_start``.

    The LSTM state is read from ``experience`` (sized for ``policy`` on first use); the returned state is the one
    after this step. ``obs`` is moved to ``device``, the policy's device (no copy when it is there already, as
    ``get_observation`` leaves it).
    """
    obs = obs.to(device, non_blocking=True)
    env_id = env_id_start if isinstance(env_id_start, slice) else slice(env_id_start, env_id_start + obs.shape[0])
    experience.match_policy(policy)
    with torch.no_grad():
        lstm_h, lstm_c = experience.get_lstm_state(env_id)
        state = PolicyState(lstm_h=lstm_h, lstm_c=lstm_c)
        actions, logprobs, _, value, _ = policy(obs, state)
    if actions.shape != (obs.shape[0], 2):
        raise RuntimeError(f"the policy returned actions of shape {list(actions.shape)}; expected [{obs.shape[0]}, 2]")
    return actions, logprobs, value.view(-1), (state.lstm_h, state.lstm_c)


def perform_rollout_step(
    policy: torch.nn.Module, vecenv: Any, experience: Experience, device: torch.device | str, timer: Any = None
) -> tuple[int, list[dict]]:
    """recv -> reset LSTM state at episode starts -> inference -> store -> send. Returns ``(num_steps, infos)``."""
    if gpu_forms(device):
        o, r, d, t, info, env_id, mask = _receive(vecenv, timer)
        with _timed(timer, "_rollout.forward"):
            host_actions = device_step(policy, experience, env_id, o)(o, r, d, t)
    else:
        o, r, d, t, info, env_id, mask, _ = get_observation(vecenv, device, timer)
        # The env resets in the same step an episode ends, so an observation with done=True already belongs to
        # the next episode: those agents must not carry the old episode's memory into this forward pass.
        dones = d | t
        experience.reset_lstm_state(env_id, dones)
        with _timed(timer, "_rollout.forward"):
            actions, logprobs, values, lstm_state = run_policy_inference(policy, o, experience, env_id, device)
            host_actions = experience.actions_to_host(actions)
        # Stored before send(): ``o`` is the vecenv's buffer, which the next step overwrites.
        experience.store(o, actions, logprobs, r, dones, t, values, env_id, mask, lstm_state)
    with _timed(timer, "_rollout.env"):
        vecenv.send(host_actions)
    return int(mask.sum()), info


def device_step(policy: torch.nn.Module, experience: Experience, env_id: slice, obs: np.ndarray) -> DeviceStep:
    """The ``DeviceStep`` of this env batch (built at its first step, kept in ``experience.device_steps``)."""
    key = (env_id.start, env_id.stop)
    step = experience.device_steps.get(key)
    if step is None or step.policy is not policy:
        experience.match_policy(policy)
        step = experience.device_steps[key] = DeviceStep(policy, experience, env_id, obs)
    return step


class DeviceStep:
    """The GPU form of one env batch's rollout step (module docstring): ``step(o, r, d, t)`` takes the vecenv's
    arrays and returns the actions as a host array.

    Everything the device work touches is fixed when it is built: the batch's page-locked upload buffer and its
    device twin, the batch's slices of the LSTM state and of the device positions, the buffers, a static
    output for the actions. With ``experience.cuda_graphs`` on a CUDA device the work is captured at the
    first step and replayed after that; it is captured again when a rollout starts with a policy whose
    parameters or buffers were replaced (``load_state_dict`` copies in place and keeps the graph).
    """

    def __init__(self, policy: torch.nn.Module, experience: Experience, env_id: slice, obs: np.ndarray):
        self.policy = policy
        self.module = getattr(policy, "module", policy)  # inference needs no DistributedDataParallel wrapper
        self.experience = experience
        self.env_id = env_id
        self.device = experience.device
        n = env_id.stop - env_id.start
        self.obs, self.rewards, self.dones, self.truncations = experience.host_upload.device_views(env_id.start, obs)
        self.lstm_h, self.lstm_c = experience.get_lstm_state(env_id)
        self.positions = experience._flat_pos[env_id]
        self.actions = torch.zeros((n, 2), dtype=torch.int32, device=self.device)
        # cpu_offload keeps observations in host memory: the host writes them there itself (after the step).
        self.obs_on_host = experience.obs.device.type == "cpu" and self.device.type != "cpu"
        self.use_graph = experience.cuda_graphs and self.device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_key: tuple | None = None
        self.checked_rollout = -1

    def __call__(self, o: np.ndarray, r: np.ndarray, d: np.ndarray, t: np.ndarray) -> np.ndarray:
        experience = self.experience
        experience.begin_step()
        experience.sync_positions_to_device()
        host_flat = experience._rows[self.env_id] * experience.bptt_horizon + experience._steps[self.env_id]
        experience.host_upload.upload(self.env_id.start, o, r, d, t)
        if self.use_graph:
            self._replay()
        else:
            self._device_work()
        host_actions = experience.actions_to_host(self.actions)  # waits for the step: the one synchronisation
        experience._host_starts.reshape(-1)[host_flat] = d | t
        if self.obs_on_host:
            experience._flat_np["obs"][host_flat] = o
        experience.end_step(self.env_id)
        return host_actions

    def _device_work(self) -> None:
        """The step on the device: static shapes and buffers, no branch on data, nothing read back."""
        experience = self.experience
        dones = self.dones | self.truncations
        # An observation with done=True already belongs to the next episode (the env resets in the same step).
        keep = dones.logical_not().to(self.lstm_h.dtype).view(1, -1, 1)
        self.lstm_h.mul_(keep)
        self.lstm_c.mul_(keep)
        with torch.no_grad():
            state = PolicyState(lstm_h=self.lstm_h, lstm_c=self.lstm_c)
            actions, logprobs, _, values, _ = self.module(self.obs, state)
        self.lstm_h.copy_(state.lstm_h)
        self.lstm_c.copy_(state.lstm_c)
        self.actions.copy_(actions)
        flat, positions = experience._flat, self.positions
        if not self.obs_on_host:
            flat["obs"].index_copy_(0, positions, self.obs.to(flat["obs"].dtype))
        flat["actions"].index_copy_(0, positions, self.actions)
        flat["logprobs"].index_copy_(0, positions, logprobs)
        flat["values"].index_copy_(0, positions, values.view(-1))
        flat["rewards"].index_copy_(0, positions, self.rewards)
        flat["dones"].index_copy_(0, positions, dones.to(torch.float32))
        flat["truncateds"].index_copy_(0, positions, self.truncations.to(torch.float32))
        positions.add_(1)

    def _replay(self) -> None:
        experience = self.experience
        if self.checked_rollout != experience.rollouts:  # once per rollout: do the captured tensors still hold?
            self.checked_rollout = experience.rollouts
            key = tuple(x.data_ptr() for x in (*self.module.parameters(), *self.module.buffers()))
            if key != self.graph_key:
                self.graph, self.graph_key = None, key
        if self.graph is None:
            self._capture()
        self.graph.replay()

    def _capture(self) -> None:
        """Warm up on a side stream (CUDA graphs need it), undo what the warm-up advanced, then capture."""
        saved = [x.clone() for x in (self.lstm_h, self.lstm_c, self.positions)]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._device_work()
        torch.cuda.current_stream(self.device).wait_stream(side)
        for x, before in zip((self.lstm_h, self.lstm_c, self.positions), saved):
            x.copy_(before)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records the work without running it; the replay runs this step
            self._device_work()
