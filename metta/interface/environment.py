"""``Environment(...)``: the factory that turns a curriculum path, an env config or nothing into a vecenv.

Like upstream, ``Environment(...)`` returns the vectorized env itself (``metta.mettagrid.vecenv.VecEnv``), already
``async_reset(seed)``, so the caller goes straight to ``recv()``/``send()``.

How ``num_envs``, ``batch_size`` and ``async_factor`` combine (all counted in envs; a value of 1 for
``num_envs`` or ``batch_size`` means "not set", as those are the defaults):

- ``num_envs`` not set: ``num_envs = batch_size * async_factor``.
- ``batch_size`` not set: ``batch_size = num_envs / async_factor`` (so with ``async_factor=1`` every
  ``recv()`` returns all envs: synchronous).
- ``async_factor > 1``: ``num_envs`` must equal ``batch_size * async_factor``, and ``num_workers`` must be a
  multiple of ``async_factor`` (each of the ``async_factor`` batches is stepped by its own workers while the
  learner works on another one).

Examples: ``Environment(batch_size=4, async_factor=2, num_workers=2, vectorization="multiprocessing")`` runs
8 envs in two workers and returns 4 envs per ``recv``; ``Environment(num_envs=8)`` returns all 8 every time.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.curriculum.loader import build_curriculum
from metta.mettagrid.default_env import (  # noqa: F401 - re-exported: upstream's interface had them here
    DEFAULT_HEIGHT,
    DEFAULT_NUM_AGENTS,
    DEFAULT_WIDTH,
    apply_size_overrides,
    default_env_config,
)
from metta.mettagrid.env import check_seed
from metta.mettagrid.vecenv import (  # noqa: F401 - agents_per_env and envs_for_target_batch are re-exported
    DEFAULT_WORKER_TIMEOUT_S,
    VecEnv,
    agents_per_env,
    envs_for_target_batch,
    make_vecenv,
    resolve_batching,
)


def Environment(  # noqa: N802 - upstream's name; a factory that returns the vecenv, as upstream's __new__ did
    curriculum_path: str | None = None,
    env_config: MettaGridConfig | Mapping[str, Any] | None = None,
    device: Any = "cuda",
    seed: int | None = None,
    num_envs: int = 1,
    num_workers: int = 1,
    batch_size: int = 1,
    async_factor: int = 1,
    zero_copy: bool = True,
    is_training: bool = True,
    vectorization: str = "serial",
    num_agents: int | None = None,
    width: int | None = None,
    height: int | None = None,
    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
    forward_pass_minibatch_target_size: int | None = None,
) -> VecEnv:
    """A vecenv over ``curriculum_path`` (a packaged path or YAML file), ``env_config``, or the default env.

    ``forward_pass_minibatch_target_size`` (with ``num_envs`` and ``batch_size`` not set) sizes the vecenv for
    that many agents per forward pass, as upstream's trainer did (``envs_for_target_batch``).

    ``device`` is accepted for compatibility; envs run on the CPU and the policy moves tensors itself.
    ``seed`` (default: random) is used for ``async_reset``. See the module docstring for batching.
    ``worker_timeout_s``: with multiprocessing, how long to wait for a worker before raising ``WorkerError``
    (see ``metta.mettagrid.vecenv.make_vecenv``).
    """
    del device
    check_seed(seed)  # before any env or worker exists
    curriculum = build_curriculum(curriculum_path, env_config, num_agents, width, height)
    if forward_pass_minibatch_target_size is not None and num_envs == 1 and batch_size == 1:
        num_envs, batch_size = envs_for_target_batch(
            curriculum, forward_pass_minibatch_target_size, num_workers, async_factor
        )
    num_envs, batch_size = resolve_batching(num_envs, batch_size, async_factor, num_workers)
    vecenv = make_vecenv(
        curriculum,
        vectorization=vectorization,
        num_envs=num_envs,
        batch_size=batch_size,
        num_workers=num_workers,
        zero_copy=zero_copy,
        is_training=is_training,
        worker_timeout_s=worker_timeout_s,
    )
    try:
        vecenv.async_reset(secrets.randbelow(10**6) if seed is None else seed)
    except BaseException:
        vecenv.close()
        raise
    return vecenv
