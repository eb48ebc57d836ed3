"""Weights & Biases as an optional backend: off unless asked for, and never a reason for a run to fail.

``WandbContext(enabled=None, ...)`` decides, when ``enabled`` is None, from the environment:

- ``WANDB_DISABLED=true`` or ``WANDB_MODE=disabled``: off;
- ``WANDB_MODE=offline``: on, writing ``<dir>/wandb/offline-run-*`` with no network (sync it later with
  ``wandb sync``);
- an API key (``WANDB_API_KEY`` or a ``~/.netrc`` entry from ``wandb login``): on;
- otherwise off, so a fresh laptop never stops at a login prompt.

The ``wandb`` package is imported only when a run starts.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return os.path.exists(path) and netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_wanted(enabled: bool | None) -> bool:
    """Whether to start a run: ``enabled`` when given, else the environment's choice (see module docstring)."""
    if enabled is not None:
        return bool(enabled)
    mode = os.environ.get("WANDB_MODE", "").lower()
    if os.environ.get("WANDB_DISABLED", "").lower() in _TRUE or mode == "disabled":
        return False
    return mode == "offline" or wandb_api_key_available()


def wandb_run_id(run_name: str) -> str:
    """wandb run ids allow letters, digits, '_' and '-' (at most 128); other characters become '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[:128]


class WandbContext:
    """``with WandbContext(...) as run:`` yields the wandb run, or None when wandb is off."""

    def __init__(
        self,
        run_name: str,
        run_dir: str | None = None,
        enabled: bool | None = None,
        project: str | None = None,
        entity: str | None = None,
        config: Mapping[str, Any] | None = None,
        job_type: str = "train",
        tags: list[str] | None = None,
        notes: str | None = None,
    ):
        if not isinstance(run_name, str) or not run_name:
            raise ValueError(f"run_name={run_name!r} must be a non-empty string (it names the wandb run)")
        self.run_name = run_name
        self.run_dir = run_dir
        self.enabled = wandb_wanted(enabled)
        self.project = project or os.environ.get("WANDB_PROJECT") or "metta"
        # None lets wandb use the API key's default entity (upstream hard-coded its own team).
        self.entity = entity or os.environ.get("WANDB_ENTITY") or None
        self.config = dict(config) if config is not None else None
        self.job_type = job_type
        self.tags = list(tags) if tags else None
        self.notes = notes
        self.run: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        offline = os.environ.get("WANDB_MODE", "").lower() == "offline"
        if not offline and not wandb_api_key_available():
            raise RuntimeError(
                "wandb is enabled but no API key was found; run `wandb login`, set WANDB_API_KEY, set "
                "WANDB_MODE=offline to log locally, or pass enabled=False"
            )
        try:
            import wandb
        except ImportError as e:
            raise ImportError("wandb is enabled but not installed: pip install wandb (or pass enabled=False)") from e
        if self.run_dir is not None:
            os.makedirs(self.run_dir, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=self.run_name,
            id=wandb_run_id(self.run_name),
            group=self.run_name,
            dir=self.run_dir,
            config=self.config,
            job_type=self.job_type,
            tags=self.tags,
            notes=self.notes,
            resume="allow",  # running the same run name again continues its wandb run, like the checkpoint
        )
        return self.run

    def __exit__(self, *exc: Any) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=1 if exc and exc[0] is not None else 0)
            finally:
                self.run = None


def initialize_wandb(
    run_name: str,
    run_dir: str | None = None,
    enabled: bool | None = None,
    project: str | None = None,
    entity: str | None = None,
    config: Any = None,
    job_type: str = "train",
    tags: list[str] | None = None,
    notes: str | None = None,
) -> tuple[Any, WandbContext]:
    """Start a wandb run on rank 0: ``(wandb_run or None, context)``; pass the context to ``cleanup_wandb``.

    ``enabled=None`` (the default) turns wandb on only with an API key or ``WANDB_MODE=offline`` (see the module
    docstring). ``config`` may be a pydantic model (a ``TrainingConfig``), a dict or a DictConfig. Other ranks get
    ``(None, context)`` and log nothing.
    """
    from metta.common.config_cli import plain
    from metta.common.distributed import is_master

    config = plain(config)
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config is a {type(config).__name__}; pass a TrainingConfig, a dict or a DictConfig")
    ctx = WandbContext(
        run_name,
        run_dir,
        enabled=enabled if is_master() else False,
        project=project,
        entity=entity,
        config=config,
        job_type=job_type,
        tags=tags,
        notes=notes,
    )
    return ctx.__enter__(), ctx


def cleanup_wandb(wandb_ctx: WandbContext | None) -> None:
    """Finish the wandb run started by ``initialize_wandb`` (a no-op when wandb was off)."""
    if wandb_ctx is not None:
        wandb_ctx.__exit__(None, None, None)
