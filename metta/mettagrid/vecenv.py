"""The vectorizer: many MettaGrid envs behind PufferLib's vecenv protocol, in-process or in worker processes.

Why our own: no PufferLib release installs and works here (see DESIGN.md), and one ``MettaGridEnv`` already
steps a whole batch of envs in one kernel call, so the vectorizer only has to split envs into *worker
batches*, give each batch a slice of shared buffers, and overlap stepping with the learner.

Layout (everything counted in envs; agent rows follow, ``agents_per_env`` rows per env)::

    num_envs = num_workers * envs_per_worker          worker batch w = one MettaGridEnv, env_offset w*epw
    num_envs = batch_size * num_batches               batch g = workers [g*wpb, (g+1)*wpb), contiguous rows

``recv()`` returns the batches in round-robin order 0, 1, ..., num_batches-1, 0, ... and ``send(actions)``
steps the batch that was just received. With ``batch_size < num_envs`` the other batches keep stepping in
their worker processes while the learner works on this one (PufferLib's async double-buffering). Because
each worker batch is seeded from ``(seed, env_offset)`` and sees only its own actions, the serial and the
multiprocessing backends produce the same rollouts for the same seed and layout.

Protocol::

    vecenv.async_reset(seed)
    while training:
        obs, rewards, terminals, truncations, infos, env_ids, masks = vecenv.recv()
        vecenv.send(actions)          # int32[agents_per_batch, 2], rows in env_ids order

``infos`` is a list with one dict per episode that ended in the batch's last step. ``env_ids`` are the
batch's rows among the ``num_agents`` rows of all envs.

Failures: an exception inside a worker is re-raised in the parent as ``WorkerError`` with the worker's
traceback (the worker lives on). A worker that dies, or does not answer within ``worker_timeout_s``, raises
``WorkerError`` naming the worker, its pid and what it was doing; from then on every use of the vecenv raises
``WorkerError`` too, and ``close()`` kills what is left in bounded time.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import multiprocessing as mp
import os
import pickle
import secrets
import select
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.env import MettaGridEnv, check_render_mode, check_seed, make_curriculum, write_actions
from metta.mettagrid.map.terrain import build_terrain_sets, terrain_cache_dir, terrain_sets_in
from metta.mettagrid.spawning import main_module_hidden

VECTORIZATIONS = ("serial", "multiprocessing")

# Worker messages are raw bytes, so the hot path pickles nothing: b"s" steps, the first byte tags the rest.
_STEP = b"s"
_OK = b"o"
_RESET = ord("r")  # + seed as ASCII digits
_CALL = ord("c")  # + pickle((method name, args))
_QUIT = ord("q")
_INFOS = ord("i")  # reply: + pickle(list of info dicts)
_VALUE = ord("v")  # reply: + pickle(return value of a call)
_ERROR = ord("e")  # reply: + pickle(traceback text)

_BUFFER_DTYPES = {
    "observations": np.uint8,
    "rewards": np.float32,
    "terminals": np.bool_,
    "truncations": np.bool_,
    "masks": np.bool_,
    "actions": np.int32,
}


# How long the parent waits for a worker's reply before it gives up on the worker (see make_vecenv).
DEFAULT_WORKER_TIMEOUT_S = 60.0
# A worker's start and a reset may compile the kernel (on a cold numba cache) and generate terrain sets, so
# they get this many times worker_timeout_s.
SLOW_REPLY_FACTOR = 5


class WorkerError(RuntimeError):
    """A worker process failed: it raised (the message carries its traceback), died, or stopped answering."""


def make_vecenv(
    curriculum: Curriculum | Any,
    vectorization: str = "serial",
    num_envs: int = 1,
    batch_size: int | None = None,
    num_workers: int = 1,
    zero_copy: bool = True,
    is_training: bool = False,
    render_mode: str | None = None,
    seed: int | None = None,
    pin_workers: bool = True,
    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
    prebuild_maps: bool = False,
) -> VecEnv:
    """A vecenv over ``num_envs`` envs of ``curriculum`` (a Curriculum, an env config or a config path).

    ``batch_size`` (envs per ``recv``, default ``num_envs``) must be a multiple of ``num_envs / num_workers``
    and divide ``num_envs``. ``seed`` is only the default for ``async_reset()`` without a seed.
    ``pin_workers`` (multiprocessing, Linux) keeps worker processes off the first allowed CPU's core, which the
    learner then has to itself: a worker woken by the learner otherwise often lands on the learner's core
    and waits for it, and the overlap of env stepping and learning is lost. Each worker gets a CPU of its own
    (``worker_cpus``); with more workers than that allows, none is pinned.
    ``worker_timeout_s`` (multiprocessing) is how long the parent waits for a worker's reply to a step or a
    call before it raises ``WorkerError`` (a worker that is stopped or hung never answers); its start and
    resets get ``SLOW_REPLY_FACTOR`` times as long. A worker that dies raises ``WorkerError`` at once.
    ``prebuild_maps`` builds the terrain sets the curriculum draws maps from before the first step
    (``metta.mettagrid.map.terrain``): worker ``w`` of ``W`` builds every ``W``-th set into the disk cache, so
    they are built in parallel and each worker loads the others' from disk (serial: all in this process);
    without it a set is generated map by map the first time an episode needs one (inside the training's time).
    """
    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"vectorization={vectorization!r} is not supported; use one of {list(VECTORIZATIONS)}")
    if vectorization == "serial":
        return SerialVecEnv(
            curriculum,
            num_envs=num_envs,
            batch_size=batch_size,
            num_workers=num_workers,
            zero_copy=zero_copy,
            is_training=is_training,
            render_mode=render_mode,
            seed=seed,
            worker_timeout_s=worker_timeout_s,
            prebuild_maps=prebuild_maps,
        )
    return MultiprocessingVecEnv(
        curriculum,
        pin_workers=pin_workers,
        worker_timeout_s=worker_timeout_s,
        num_envs=num_envs,
        batch_size=batch_size,
        num_workers=num_workers,
        zero_copy=zero_copy,
        is_training=is_training,
        render_mode=render_mode,
        seed=seed,
        prebuild_maps=prebuild_maps,
    )


def _positive_int(name: str, value: Any, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (e.g. {name}={example})")
    return int(value)


def check_layout(num_envs: Any, batch_size: Any, num_workers: Any) -> tuple[int, int, int]:
    """Validated ``(num_envs, batch_size, num_workers)``; ``batch_size=None`` means ``num_envs``."""
    num_envs = _positive_int("num_envs", num_envs, "8")
    num_workers = _positive_int("num_workers", num_workers, "2")
    batch_size = num_envs if batch_size is None else _positive_int("batch_size", batch_size, str(num_envs))
    if num_workers > num_envs:
        raise ValueError(
            f"num_workers={num_workers} is more than num_envs={num_envs}; every worker needs at least one env: "
            f"use num_workers <= {num_envs} or num_envs >= {num_workers}"
        )
    if num_envs % num_workers:
        raise ValueError(
            f"num_envs={num_envs} is not divisible by num_workers={num_workers}; every worker steps the same "
            f"number of envs: use num_envs={num_workers * (num_envs // num_workers + 1)} or a num_workers that "
            f"divides {num_envs}"
        )
    per_worker = num_envs // num_workers
    if batch_size > num_envs or num_envs % batch_size:
        raise ValueError(
            f"batch_size={batch_size} (envs per recv) must divide num_envs={num_envs}; "
            f"use batch_size=num_envs / async_factor, e.g. batch_size={num_envs} or {num_envs // 2 or 1}"
        )
    if batch_size % per_worker:
        raise ValueError(
            f"batch_size={batch_size} (envs per recv) must be a multiple of the envs per worker "
            f"(num_envs / num_workers = {per_worker}), since a worker steps all its envs in one call: "
            f"use batch_size={per_worker} (or a multiple of it), or raise num_workers so each worker holds fewer envs"
        )
    return num_envs, batch_size, num_workers


class VecEnv:
    """The layout, shared buffers and recv/send bookkeeping common to both backends."""

    def __init__(
        self,
        curriculum: Curriculum | Any,
        *,
        num_envs: int = 1,
        batch_size: int | None = None,
        num_workers: int = 1,
        zero_copy: bool = True,
        is_training: bool = False,
        render_mode: str | None = None,
        seed: int | None = None,
        worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
        prebuild_maps: bool = False,
    ):
        self.num_envs, self.batch_size, self.num_workers = check_layout(num_envs, batch_size, num_workers)
        self.prebuild_maps = bool(prebuild_maps)
        timeout = worker_timeout_s
        is_number = isinstance(timeout, (int, float, np.integer, np.floating)) and not isinstance(timeout, bool)
        if not is_number or not 0 < timeout < float("inf"):
            raise ValueError(
                f"worker_timeout_s={worker_timeout_s!r} must be a positive number of seconds (default "
                f"{DEFAULT_WORKER_TIMEOUT_S:g}); raise it if a worker's steps are legitimately that slow"
            )
        self.worker_timeout_s = float(worker_timeout_s)
        if not isinstance(zero_copy, (bool, np.bool_)):
            raise ValueError(f"zero_copy={zero_copy!r} must be True or False")
        seed = check_seed(seed)
        check_render_mode(render_mode)
        if not isinstance(is_training, (bool, np.bool_)):
            raise ValueError(f"is_training={is_training!r} must be True or False")
        self.zero_copy = bool(zero_copy)
        self.is_training = bool(is_training)
        self.render_mode = render_mode
        self._default_seed = None if seed is None else int(seed)
        self._closed = False
        self._broken: str | None = None  # why a worker can no longer be used (it died or stopped answering)

        # Every worker batch gets its own copy of the curriculum, made by unpickling the same bytes, whether it
        # lives in this process or in a worker: that is what makes the two backends give the same rollouts.
        curriculum = make_curriculum(curriculum)
        try:
            self._curriculum_bytes = pickle.dumps(curriculum)
        except Exception as err:
            raise ValueError(
                f"curriculum of type {type(curriculum).__name__} cannot be pickled ({err}); every worker batch "
                "needs its own copy: make it picklable (no open files, locks or lambdas)"
            ) from err
        # The driver env is never stepped: it answers questions about spaces, actions and features.
        self.driver_env = MettaGridEnv(pickle.loads(self._curriculum_bytes), num_envs=1, render_mode=render_mode)

        self.envs_per_worker = self.num_envs // self.num_workers
        self.workers_per_batch = self.batch_size // self.envs_per_worker
        self.num_batches = self.num_envs // self.batch_size
        self.agents_per_env = self.driver_env.agents_per_env
        self.num_agents = self.num_envs * self.agents_per_env
        self.agents_per_worker = self.envs_per_worker * self.agents_per_env
        self.agents_per_batch = self.batch_size * self.agents_per_env
        self.single_observation_space = self.driver_env.single_observation_space
        self.single_action_space = self.driver_env.single_action_space
        self._shapes = {
            "observations": (self.num_agents, *self.single_observation_space.shape),
            "rewards": (self.num_agents,),
            "terminals": (self.num_agents,),
            "truncations": (self.num_agents,),
            "masks": (self.num_agents,),
            "actions": (self.num_agents, 2),
        }

    def _init_batches(self, buffers: dict[str, np.ndarray]) -> None:
        """Per-batch views of the global buffers, made once so recv/send only index a list."""
        self.buffers = buffers
        self.observations = buffers["observations"]
        self.rewards = buffers["rewards"]
        self.terminals = buffers["terminals"]
        self.truncations = buffers["truncations"]
        self.masks = buffers["masks"]
        self.actions = buffers["actions"]
        apb = self.agents_per_batch
        self._batch_rows = [slice(g * apb, (g + 1) * apb) for g in range(self.num_batches)]
        self._batch_views = [
            tuple(buffers[name][rows] for name in ("observations", "rewards", "terminals", "truncations", "masks"))
            for rows in self._batch_rows
        ]
        self._batch_actions = [self.actions[rows] for rows in self._batch_rows]
        self._batch_env_ids = [np.arange(rows.start, rows.stop, dtype=np.int64) for rows in self._batch_rows]
        self._batch_workers = [
            range(g * self.workers_per_batch, (g + 1) * self.workers_per_batch) for g in range(self.num_batches)
        ]
        self._in_flight = [False] * self.num_batches
        self._next_batch = 0
        self._received: int | None = None
        self._reset_done = False

    def _worker_buffers(self, buffers: dict[str, np.ndarray], w: int) -> dict[str, np.ndarray]:
        rows = slice(w * self.agents_per_worker, (w + 1) * self.agents_per_worker)
        return {name: arr[rows] for name, arr in buffers.items()}

    def _worker_env_kwargs(self, w: int) -> dict[str, Any]:
        return {
            "num_envs": self.envs_per_worker,
            "env_offset": w * self.envs_per_worker,
            "is_training": self.is_training,
            "render_mode": self.render_mode,
        }

    # ----------------------------------------------------------------------------------------------------
    # The protocol
    def async_reset(self, seed: int | None = None) -> None:
        """Reset every env; the next ``recv()`` returns batch 0. ``seed=None`` draws one (or uses make's)."""
        self._check_open()
        if seed is None:
            seed = self._default_seed if self._default_seed is not None else secrets.randbelow(2**31)
        check_seed(seed)
        self.seed = int(seed)
        self._reset_workers(self.seed)
        # The driver env mirrors env 0's first episode, so its map, render() and grid_objects() make sense.
        self.driver_env.reset(self.seed)
        self._in_flight = [True] * self.num_batches
        self._next_batch = 0
        self._received = None
        self._reset_done = True

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict], np.ndarray, np.ndarray]:
        """The next batch in round-robin order: ``(obs, rewards, terminals, truncations, infos, env_ids, masks)``.

        With ``zero_copy`` the arrays are views of the shared buffers, valid until the batch's next ``send``.
        """
        self._check_open()
        g = self._next_batch
        if not self._in_flight[g]:
            if not self._reset_done:
                raise RuntimeError("recv() before async_reset(seed): reset the vecenv first")
            raise RuntimeError("recv() called twice without send(): send(actions) for the batch you received first")
        infos = self._wait_batch(g)
        self._in_flight[g] = False
        self._received = g
        self._next_batch = (g + 1) % self.num_batches
        obs, rewards, terminals, truncations, masks = self._batch_views[g]
        env_ids = self._batch_env_ids[g]
        if not self.zero_copy:
            obs, rewards, terminals, truncations, masks = (
                obs.copy(),
                rewards.copy(),
                terminals.copy(),
                truncations.copy(),
                masks.copy(),
            )
        return obs, rewards, terminals, truncations, infos, env_ids, masks

    def send(self, actions: Any) -> None:
        """Step the batch returned by the last ``recv()`` with ``actions`` (int[agents_per_batch, 2])."""
        self._check_open()
        g = self._received
        if g is None:
            raise RuntimeError("send() without a recv() before it: call recv() and send actions for that batch")
        target = self._batch_actions[g]
        if actions is not target:
            write_actions(target, actions, "(agents_per_batch, [action type, argument])")
        self._received = None
        self._step_batch(g)
        self._in_flight[g] = True

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict]]:
        """``async_reset(seed)`` then ``recv()``: the first batch's observations and (empty) infos."""
        self.async_reset(seed)
        obs, _, _, _, infos, _, _ = self.recv()
        return obs, infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Synchronous convenience (``batch_size == num_envs``): send then recv over all envs."""
        if self.batch_size != self.num_envs:
            raise RuntimeError(
                f"step() is synchronous and needs batch_size == num_envs (got batch_size={self.batch_size}, "
                f"num_envs={self.num_envs}); with async batches use send(actions) and recv()"
            )
        self.send(actions)
        obs, rewards, terminals, truncations, infos, _, _ = self.recv()
        return obs, rewards, terminals, truncations, infos

    # ----------------------------------------------------------------------------------------------------
    # The message channel: run a method (or read an attribute) on every worker batch's env
    def call(self, name: str, *args: Any) -> list[Any]:
        """``env.<name>(*args)`` on every worker batch (dotted names reach further, e.g. "curriculum.stats").

        Returns one result per worker batch, in worker order. A non-callable attribute is returned as is.
        """
        return self.call_each(name, [args] * self.num_workers)

    def call_each(self, name: str, args_per_worker: Sequence[Sequence[Any]]) -> list[Any]:
        """Like ``call`` with different arguments per worker batch (``len(args_per_worker) == num_workers``)."""
        self._check_open()
        if not isinstance(name, str) or not name:
            raise ValueError(f"call name={name!r} must be a method or attribute name such as 'curriculum.stats'")
        if len(args_per_worker) != self.num_workers:
            raise ValueError(
                f"args_per_worker has {len(args_per_worker)} entries but there are num_workers={self.num_workers} "
                "worker batches; give one argument tuple per worker batch"
            )
        return self._call_workers(name, [tuple(a) for a in args_per_worker])

    def get_curriculum_state(self) -> list[dict[str, Any]]:
        """Each worker batch's ``curriculum.state_dict()``, in worker order (for checkpoints)."""
        return self.call("curriculum.state_dict")

    def set_curriculum_state(self, states: Sequence[dict[str, Any]] | dict[str, Any]) -> None:
        """Restore ``get_curriculum_state()``'s list; a single dict is loaded into every worker batch."""
        if isinstance(states, dict):
            states = [states] * self.num_workers
        states = list(states)
        if len(states) != self.num_workers:
            raise ValueError(
                f"got curriculum states for {len(states)} worker batches but this vecenv has "
                f"num_workers={self.num_workers}; resume with the same num_workers, or pass one state dict to "
                "load it into every worker batch"
            )
        self.call_each("curriculum.load_state_dict", [(s,) for s in states])

    # ----------------------------------------------------------------------------------------------------
    # What policies and trainers read (from the driver env)
    @property
    def action_names(self) -> list[str]:
        return self.driver_env.action_names

    @property
    def max_action_args(self) -> list[int]:
        return self.driver_env.max_action_args

    @property
    def obs_width(self) -> int:
        return self.driver_env.obs_width

    @property
    def obs_height(self) -> int:
        return self.driver_env.obs_height

    @property
    def feature_normalizations(self) -> dict[int, float]:
        return self.driver_env.feature_normalizations

    def get_observation_features(self) -> dict[str, dict[str, float]]:
        return self.driver_env.get_observation_features()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this vecenv is closed; make a new one")
        if self._broken is not None:
            raise WorkerError(f"this vecenv lost a worker ({self._broken}); close() it and make a new one")

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Backend hooks
    def _reset_workers(self, seed: int) -> None:
        raise NotImplementedError

    def _step_batch(self, g: int) -> None:
        raise NotImplementedError

    def _wait_batch(self, g: int) -> list[dict]:
        raise NotImplementedError

    def _call_workers(self, name: str, args: list[tuple]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _invoke(env: MettaGridEnv, name: str, args: tuple) -> Any:
    target: Any = env
    for part in name.split("."):
        target = getattr(target, part)
    if callable(target):
        return target(*args)
    if args:
        raise TypeError(f"{name} is an attribute, not a method; call it without arguments")
    return target


class SerialVecEnv(VecEnv):
    """All worker batches in this process, stepped one after another inside ``send``."""

    def __init__(self, curriculum: Curriculum | Any, **kwargs: Any):
        super().__init__(curriculum, **kwargs)
        if self.prebuild_maps:
            _prebuild_maps(pickle.loads(self._curriculum_bytes), 0, 1)
        buffers = {name: np.zeros(shape, dtype=_BUFFER_DTYPES[name]) for name, shape in self._shapes.items()}
        self._init_batches(buffers)
        self.envs = [
            MettaGridEnv(
                pickle.loads(self._curriculum_bytes), buf=self._worker_buffers(buffers, w), **self._worker_env_kwargs(w)
            )
            for w in range(self.num_workers)
        ]
        self._infos: list[list[dict]] = [[] for _ in range(self.num_batches)]

    def _reset_workers(self, seed: int) -> None:
        for env in self.envs:
            env.reset(seed)
        self._infos = [[] for _ in range(self.num_batches)]

    def _step_batch(self, g: int) -> None:
        infos: list[dict] = []
        for w in self._batch_workers[g]:
            env = self.envs[w]
            infos += env.step(env.actions)[4]
        self._infos[g] = infos

    def _wait_batch(self, g: int) -> list[dict]:
        infos, self._infos[g] = self._infos[g], []
        return infos

    def _call_workers(self, name: str, args: list[tuple]) -> list[Any]:
        return [_invoke(env, name, a) for env, a in zip(self.envs, args)]

    def close(self) -> None:
        self._closed = True


# --------------------------------------------------------------------------------------------------------
# Multiprocessing backend


def _shared_array(shape: tuple[int, ...], dtype: Any) -> tuple[Any, np.ndarray]:
    """A RawArray (no lock: each row has one writer at a time) and a NumPy view of it."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = mp.RawArray(ctypes.c_uint8, max(nbytes, 1))
    return raw, np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a backup for EOF on the pipe)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def physical_cores(cpus: Sequence[int]) -> list[list[int]]:
    """``cpus`` grouped by physical core (hyper-threads of one core share a group), in order of their first CPU.
    Read from Linux's ``/sys/devices/system/cpu/cpuN/topology``; without it every CPU is its own core."""
    groups: dict[tuple[str, str], list[int]] = {}
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                key = (package.read().strip(), core.read().strip())
        except OSError:
            key = ("cpu", str(cpu))
        groups.setdefault(key, []).append(cpu)
    return sorted(groups.values(), key=lambda group: group[0])


def worker_cpus(num_workers: int) -> list[int | None]:
    """The CPU each worker is pinned to (None: not pinned): ``pin_plan`` over the allowed CPUs' cores."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return [None] * num_workers
    return pin_plan(physical_cores(cpus), num_workers)


def pin_plan(cores: Sequence[Sequence[int]], num_workers: int) -> list[int | None]:
    """Workers' CPUs on ``cores`` (each a physical core's CPUs, see ``physical_cores``).

    The learner keeps the first core to itself. Workers get one CPU each, never one that another worker has:
    first one thread of every other core, then their second threads. With more workers than those CPUs none
    is pinned (pinning would put two on one CPU; the kernel spreads them instead).
    """
    others = cores[1:]
    threads = max((len(core) for core in others), default=0)
    candidates = [core[i] for i in range(threads) for core in others if i < len(core)]
    if not candidates or num_workers > len(candidates):
        return [None] * num_workers
    return list(candidates[:num_workers])


def _prebuild_maps(curriculum: Curriculum, worker: int, workers: int) -> None:
    """Build the terrain sets ``curriculum`` draws from: this worker's share into the disk cache (the others
    load it from there), or every set when there is no disk cache (see ``make_vecenv``'s ``prebuild_maps``)."""
    sets = terrain_sets_in(curriculum)
    build_terrain_sets(sets[worker::workers] if terrain_cache_dir() is not None else sets)


def _worker_main(conn: Connection, spec: dict[str, Any]) -> None:
    """A worker: owns one MettaGridEnv over its rows of the shared buffers and serves the parent's messages."""
    if spec["death_signal"]:
        _set_parent_death_signal()
    if os.getppid() != spec["parent_pid"]:
        return  # the parent died before the death signal was armed
    # Ctrl-C reaches the whole process group, and so does a scheduler's SIGTERM; the parent decides how to shut
    # down (a graceful stop still steps its envs), so workers ignore both. They end on EOF, or by the death signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if spec["cpu"] is not None:
        with contextlib.suppress(OSError):  # a CPU set we may not use is not worth failing for
            os.sched_setaffinity(0, {spec["cpu"]})
    try:
        if spec["prebuild_maps"]:
            _prebuild_maps(pickle.loads(spec["curriculum"]), spec["worker"], spec["workers"])
        rows = spec["rows"]
        buf = {
            name: np.frombuffer(raw, dtype=_BUFFER_DTYPES[name], count=int(np.prod(shape))).reshape(shape)[rows]
            for name, (raw, shape) in spec["buffers"].items()
        }
        env = MettaGridEnv(pickle.loads(spec["curriculum"]), buf=buf, **spec["env_kwargs"])
    except BaseException:
        conn.send_bytes(bytes([_ERROR]) + pickle.dumps(traceback.format_exc()))
        return
    conn.send_bytes(_OK)
    actions = env.actions
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone or closed the pipe
        try:
            if msg == _STEP:
                infos = env.step(actions)[4]
                conn.send_bytes(bytes([_INFOS]) + pickle.dumps(infos) if infos else _OK)
            elif msg[0] == _RESET:
                env.reset(int(msg[1:]))
                conn.send_bytes(_OK)
            elif msg[0] == _CALL:
                name, args = pickle.loads(msg[1:])
                conn.send_bytes(bytes([_VALUE]) + pickle.dumps(_invoke(env, name, args)))
            elif msg[0] == _QUIT:
                conn.send_bytes(_OK)
                # Skip interpreter teardown (a third of a second with numba loaded): nothing here needs it.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
            else:
                raise ValueError(f"unknown message {msg[:16]!r}")
        except (EOFError, BrokenPipeError):
            return
        except BaseException:
            try:
                conn.send_bytes(bytes([_ERROR]) + pickle.dumps(traceback.format_exc()))
            except OSError:
                return


def _shutdown(processes: list, conns: list, lost: list[int], timeout: float = 2.0) -> None:
    """Stop workers without ever hanging: kill the ``lost`` ones (stopped or hung workers never read a request),
    ask the others, wait a little, then terminate, then kill."""
    for w in lost:
        processes[w].kill()
    for conn in conns:
        try:
            conn.send_bytes(bytes([_QUIT]))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + timeout
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(0.5)
        if p.is_alive():
            p.kill()
            p.join(1.0)
    for conn in conns:
        conn.close()


class MultiprocessingVecEnv(VecEnv):
    """One spawned worker process per worker batch; buffers in shared memory; one Pipe per worker.

    The parent writes actions straight into shared memory and sends one byte per worker; a worker steps its
    whole batch with one ``env.step`` call and answers with the infos of episodes that ended (usually
    nothing). All waits are blocking pipe reads.
    """

    def __init__(self, curriculum: Curriculum | Any, pin_workers: bool = True, **kwargs: Any):
        super().__init__(curriculum, **kwargs)
        pinned_cpus = worker_cpus(self.num_workers) if pin_workers else [None] * self.num_workers
        raws: dict[str, tuple[Any, tuple[int, ...]]] = {}
        buffers: dict[str, np.ndarray] = {}
        for name, shape in self._shapes.items():
            raw, arr = _shared_array(shape, _BUFFER_DTYPES[name])
            raws[name] = (raw, shape)
            buffers[name] = arr
        self._init_batches(buffers)

        ctx = mp.get_context("spawn")
        # The parent-death signal fires when the *thread* that started the worker exits, so only arm it when
        # the workers are started from the main thread (which lives as long as the process).
        death_signal = threading.current_thread() is threading.main_thread()
        self._conns: list[Connection] = []
        self._processes: list[Any] = []
        self._lost: list[int] = []  # workers that died or stopped answering
        self._pollers: list[Any] = []  # select.poll objects on the pipes, for replies with a timeout
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._conns, self._lost)
        self._awaiting = [False] * self.num_workers  # a step reply is due from this worker
        self._stash: list[list[dict]] = [[] for _ in range(self.num_batches)]  # infos read early (by call)
        hide_main = b"__main__" not in self._curriculum_bytes
        try:
            with main_module_hidden(hide_main):
                for w in range(self.num_workers):
                    parent_conn, child_conn = ctx.Pipe(duplex=True)
                    spec = {
                        "curriculum": self._curriculum_bytes,
                        "env_kwargs": self._worker_env_kwargs(w),
                        "buffers": raws,
                        "rows": slice(w * self.agents_per_worker, (w + 1) * self.agents_per_worker),
                        "death_signal": death_signal,
                        "parent_pid": os.getpid(),
                        "cpu": pinned_cpus[w],
                        "prebuild_maps": self.prebuild_maps,
                        "worker": w,
                        "workers": self.num_workers,
                    }
                    p = ctx.Process(target=_worker_main, args=(child_conn, spec), name=f"metta-vecenv-{w}", daemon=True)
                    p.start()
                    child_conn.close()  # only the worker holds its end, so its death reads as EOF here
                    self._conns.append(parent_conn)
                    self._pollers.append(select.poll())
                    self._pollers[-1].register(parent_conn.fileno(), select.POLLIN)
                    self._processes.append(p)
            for w in range(self.num_workers):
                self._reply(w, "start", slow=True)
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def _reply(self, w: int, what: str, slow: bool = False) -> bytes:
        """The worker's next reply; re-raises its exception, or reports its death or its silence."""
        timeout = self.worker_timeout_s * (SLOW_REPLY_FACTOR if slow else 1)
        try:
            # A poll object made once per pipe: Connection.poll builds a selector per call (8 us here, this 0.5).
            if not self._pollers[w].poll(timeout * 1000.0):
                raise self._lose(w, self._silent_error(w, what, timeout))
            msg = self._conns[w].recv_bytes()
        except (EOFError, OSError):
            raise self._lose(w, self._death_error(w, what)) from None
        if msg and msg[0] == _ERROR:
            raise WorkerError(f"vecenv worker {w} failed during {what}:\n{pickle.loads(msg[1:])}")
        return msg

    def _send(self, w: int, msg: bytes, what: str) -> None:
        try:
            self._conns[w].send_bytes(msg)
        except OSError:  # BrokenPipeError, ConnectionResetError: the worker is gone
            raise self._lose(w, self._death_error(w, what)) from None

    def _lose(self, w: int, err: WorkerError) -> WorkerError:
        """Record that worker ``w`` is gone for good: every later use of the vecenv raises, close() kills it."""
        if w not in self._lost:
            self._lost.append(w)
        if self._broken is None:
            self._broken = str(err).split(";")[0]
        return err

    def _death_error(self, w: int, what: str) -> WorkerError:
        p = self._processes[w]
        p.join(1.0)
        code = p.exitcode
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return WorkerError(
            f"vecenv worker {w} (pid {p.pid}) died during {what}: it {how}; see its output above, then close this "
            "vecenv and make a new one"
        )

    def _silent_error(self, w: int, what: str, timeout: float) -> WorkerError:
        p = self._processes[w]
        state = "is alive but not answering (stopped or hung)" if p.is_alive() else "is gone"
        return WorkerError(
            f"vecenv worker {w} (pid {p.pid}) did not answer {what} within {timeout:g} s and {state}; "
            f"close this vecenv and make a new one (worker_timeout_s={self.worker_timeout_s:g}: raise it if the worker "
            "is legitimately that slow)"
        )

    def _collect_step(self, w: int) -> None:
        msg = self._reply(w, "step")
        self._awaiting[w] = False
        if msg[0] == _INFOS:
            self._stash[w // self.workers_per_batch] += pickle.loads(msg[1:])

    def _drain(self) -> None:
        for w in range(self.num_workers):
            if self._awaiting[w]:
                self._collect_step(w)

    def _reset_workers(self, seed: int) -> None:
        self._drain()
        msg = bytes([_RESET]) + str(seed).encode()
        for w in range(self.num_workers):
            self._send(w, msg, "reset")
        for w in range(self.num_workers):
            self._reply(w, "reset", slow=True)
        self._stash = [[] for _ in range(self.num_batches)]

    def _step_batch(self, g: int) -> None:
        conns, awaiting = self._conns, self._awaiting
        for w in self._batch_workers[g]:
            try:
                conns[w].send_bytes(_STEP)
            except OSError:  # the worker is gone: say which, not BrokenPipeError
                raise self._lose(w, self._death_error(w, "step")) from None
            awaiting[w] = True

    def _wait_batch(self, g: int) -> list[dict]:
        for w in self._batch_workers[g]:
            if self._awaiting[w]:
                self._collect_step(w)
        infos, self._stash[g] = self._stash[g], []
        return infos

    def _call_workers(self, name: str, args: list[tuple]) -> list[Any]:
        # Replies come in order, so pending step replies are read (and their infos kept) first.
        self._drain()
        for w, a in enumerate(args):
            self._send(w, bytes([_CALL]) + pickle.dumps((name, a)), f"call({name!r})")
        # Read every worker's reply before raising, so no reply is left in a pipe to be mistaken for the next.
        results, error = [], None
        for w in range(self.num_workers):
            try:
                results.append(pickle.loads(self._reply(w, f"call({name!r})")[1:]))
            except WorkerError as err:
                error = error or err
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Stop the workers (idempotent, bounded time: ask, join, terminate, kill)."""
        self._closed = True
        self._finalizer()


# ----------------------------------------------------------------------------------------------------------
# Sizing: how many envs, and how many per recv
def calculate_batch_sizes(
    forward_pass_minibatch_target_size: int, num_agents: int, num_workers: int, async_factor: int
) -> tuple[int, int, int]:
    """``(target envs per batch, envs per recv, total envs)`` from a target of agents per forward pass.

    ``num_agents`` is agents per env. The envs per recv are rounded down to a multiple of ``num_workers``
    (at least ``num_workers``) and ``num_envs = batch_size * async_factor``.
    """
    target = forward_pass_minibatch_target_size // num_agents
    if target < max(2, num_workers):
        target = num_workers
    batch_size = max(1, target // num_workers) * num_workers
    return target, batch_size, batch_size * async_factor


def agents_per_env(curriculum: Curriculum) -> int:
    """The agents of one env of ``curriculum`` (read from a copy's first task, so the curriculum's own draws
    are not advanced)."""
    return int(copy.deepcopy(curriculum).get_task().env_cfg().game.num_agents)


def envs_for_target_batch(
    curriculum: Curriculum, target_agents: int, num_workers: int, async_factor: int
) -> tuple[int, int]:
    """``(num_envs, batch_size)`` in envs for about ``target_agents`` agents per forward pass (the upstream pipeline's
    arithmetic, ``calculate_batch_sizes``): e.g. 4096 agents of 3-agent envs over 16 workers with async_factor 2
    is 1365 envs, rounded down to the workers, 1360 per batch, 2720 in all."""
    for name, value in (
        ("forward_pass_minibatch_target_size", target_agents),
        ("num_workers", num_workers),
        ("async_factor", async_factor),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    _, batch_envs, num_envs = calculate_batch_sizes(
        target_agents, agents_per_env(curriculum), num_workers, async_factor
    )
    return num_envs, batch_envs


def resolve_batching(num_envs: int, batch_size: int, async_factor: int, num_workers: int) -> tuple[int, int]:
    """``(num_envs, batch_size)`` in envs from the arguments of ``metta.interface.Environment`` (1 means "not set"):
    without ``num_envs`` it is ``batch_size * async_factor``; without ``batch_size`` it is ``num_envs /
    async_factor``; with ``async_factor > 1``, ``num_envs`` must be ``batch_size * async_factor`` and
    ``num_workers`` a multiple of ``async_factor`` (each batch has its own workers)."""
    for name, value in (
        ("num_envs", num_envs),
        ("batch_size", batch_size),
        ("async_factor", async_factor),
        ("num_workers", num_workers),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if num_envs == 1 and (batch_size > 1 or async_factor > 1):
        num_envs = batch_size * async_factor
    elif batch_size == 1 and num_envs > 1:
        if num_envs % async_factor:
            raise ValueError(
                f"num_envs={num_envs} is not divisible by async_factor={async_factor}; the envs are split into "
                f"async_factor batches: use num_envs={async_factor * (num_envs // async_factor + 1)}"
            )
        batch_size = num_envs // async_factor
    if async_factor > 1:
        if num_envs != batch_size * async_factor:
            raise ValueError(
                f"num_envs={num_envs} must equal batch_size * async_factor = {batch_size} * {async_factor}; "
                f"leave num_envs unset (it is then {batch_size * async_factor}) or set "
                f"batch_size={num_envs // async_factor}"
            )
        if num_workers % async_factor:
            raise ValueError(
                f"num_workers={num_workers} is not a multiple of async_factor={async_factor}; each of the "
                f"{async_factor} batches needs its own workers: use "
                f"num_workers={async_factor * max(1, num_workers // async_factor)}"
            )
    return num_envs, batch_size
