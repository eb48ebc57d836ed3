"""``build_vecenv``: a curriculum's envs sized, vectorized and reset, the one way every entry point builds them.

How ``num_envs``, ``batch_size`` and ``async_factor`` combine (all counted in envs; a value of 1 for
``num_envs`` or ``batch_size`` means "not set", as those are the defaults):

- ``forward_pass_minibatch_target_size`` given (and neither ``num_envs`` nor ``batch_size``): as many envs as
  that many agents per forward pass make (the upstream pipeline's arithmetic, ``envs_for_target_batch``);
- ``num_envs`` not set: ``num_envs = batch_size * async_factor``;
- ``batch_size`` not set: ``batch_size = num_envs / async_factor`` (with ``async_factor=1`` every ``recv()``
  returns all envs: synchronous);
- ``async_factor > 1``: ``num_envs`` must equal ``batch_size * async_factor``, and ``num_workers`` (worker
  processes with multiprocessing, partitions of the envs stepped in turn with serial) a multiple of it.

``metta.interface.Environment`` and the trainer (``metta.rl.trainer``) call it.
"""

from __future__ import annotations

import secrets

from metta.mettagrid.curriculum.core import Curriculum
from metta.mettagrid.env import check_seed
from metta.mettagrid.vecenv import (
    DEFAULT_WORKER_TIMEOUT_S,
    VecEnv,
    envs_for_target_batch,
    make_vecenv,
    resolve_batching,
)


def build_vecenv(
    curriculum: Curriculum,
    *,
    seed: int | None = None,
    num_envs: int = 1,
    num_workers: int = 1,
    batch_size: int = 1,
    async_factor: int = 1,
    zero_copy: bool = True,
    is_training: bool = True,
    vectorization: str = "serial",
    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
    forward_pass_minibatch_target_size: int | None = None,
    prebuild_maps: bool = False,
) -> VecEnv:
    """The vecenv over ``curriculum``, sized as the module docstring says and ``async_reset(seed)`` (default: a
    random seed), so the caller goes straight to ``recv()``/``send()``. ``prebuild_maps`` builds the terrain sets
    the curriculum draws maps from before the first step (``make_vecenv``'s, which says how)."""
    check_seed(seed)  # before any env or worker exists
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
        prebuild_maps=prebuild_maps,
    )
    try:
        vecenv.async_reset(secrets.randbelow(10**6) if seed is None else seed)
    except BaseException:
        vecenv.close()
        raise
    return vecenv
