"""``Environment(...)``: the factory that turns a curriculum path, an env config or nothing into a vecenv.

Like upstream, ``Environment(...)`` returns the vectorized env itself (``metta.mettagrid.vecenv.VecEnv``), already
``async_reset(seed)``, so the caller goes straight to ``recv()``/``send()``. The curriculum comes from
``metta.mettagrid.curriculum.loader.build_curriculum`` and the envs from
``metta.mettagrid.vecenv_factory.build_vecenv``, whose docstring says how ``num_envs``, ``batch_size``,
``async_factor`` and ``num_workers`` combine.

Examples: ``Environment(batch_size=4, async_factor=2, num_workers=2, vectorization="multiprocessing")`` runs
8 envs in two workers and returns 4 envs per ``recv``; ``Environment(num_envs=8)`` returns all 8 every time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metta.common.device import parse_device
from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.curriculum.loader import build_curriculum
from metta.mettagrid.default_env import (  # noqa: F401 - re-exported: upstream's interface had them here
    DEFAULT_HEIGHT,
    DEFAULT_NUM_AGENTS,
    DEFAULT_WIDTH,
    apply_size_overrides,
    default_env_config,
)
from metta.mettagrid.vecenv import (  # noqa: F401 - agents_per_env and envs_for_target_batch are re-exported
    DEFAULT_WORKER_TIMEOUT_S,
    VecEnv,
    agents_per_env,
    envs_for_target_batch,
)
from metta.mettagrid.vecenv_factory import build_vecenv


def Environment(  # noqa: N802 - upstream's name; a factory that returns the vecenv, as upstream's __new__ did
    curriculum_path: str | None = None,
    env_config: MettaGridConfig | Mapping[str, Any] | None = None,
    device: Any = None,
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

    ``device`` is the device of the policy these envs feed: ``Agent(env)`` builds the policy there unless told
    otherwise (the envs themselves step on the CPU, and the rollout moves observations to the policy).
    ``seed`` (default: random) is used for ``async_reset``. ``forward_pass_minibatch_target_size`` (with
    ``num_envs`` and ``batch_size`` not set) sizes the vecenv for that many agents per forward pass, as upstream's
    trainer did. ``worker_timeout_s``: with multiprocessing, how long to wait for a worker before raising
    ``WorkerError``.
    """
    policy_device = None if device is None else str(parse_device(device))  # a bad name fails before any env
    curriculum = build_curriculum(curriculum_path, env_config, num_agents, width, height)
    vecenv = build_vecenv(
        curriculum,
        seed=seed,
        num_envs=num_envs,
        num_workers=num_workers,
        batch_size=batch_size,
        async_factor=async_factor,
        zero_copy=zero_copy,
        is_training=is_training,
        vectorization=vectorization,
        worker_timeout_s=worker_timeout_s,
        forward_pass_minibatch_target_size=forward_pass_minibatch_target_size,
    )
    vecenv.policy_device = policy_device
    return vecenv
