"""The vectorizer lives beside the env, in ``metta.mettagrid.vecenv``; its public names are importable here too, for
code written against upstream's layout (``from metta.rl.vecenv import make_vecenv``)."""

from metta.mettagrid.vecenv import (
    DEFAULT_WORKER_TIMEOUT_S,
    VECTORIZATIONS,
    MultiprocessingVecEnv,
    SerialVecEnv,
    VecEnv,
    WorkerError,
    agents_per_env,
    calculate_batch_sizes,
    check_layout,
    envs_for_target_batch,
    make_vecenv,
    resolve_batching,
)

__all__ = [
    "DEFAULT_WORKER_TIMEOUT_S",
    "VECTORIZATIONS",
    "MultiprocessingVecEnv",
    "SerialVecEnv",
    "VecEnv",
    "WorkerError",
    "agents_per_env",
    "calculate_batch_sizes",
    "check_layout",
    "envs_for_target_batch",
    "make_vecenv",
    "resolve_batching",
]
