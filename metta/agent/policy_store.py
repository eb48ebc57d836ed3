"""``PolicyStore``: save, find, select and load policies by URI.

A policy file is one ``torch.save`` of a plain dict (format ``metta.policy`` version 1)::

    {"format": "metta.policy", "version": 1, "run_name": str, "metadata": {...},
     "agent": {"config": AgentConfig as a dict, "obs_shape", "obs_width", "obs_height",
               "feature_normalizations", "action_names", "max_action_args"},
     "state_dict": {...}}   # includes the feature mapping and the action-embedding table

It never contains a pickled ``nn.Module``: files are read with ``torch.load(weights_only=True)`` and the
``MettaAgent`` is rebuilt from the config, so a file outlives the code of the run that wrote it (upstream
pickled whole modules and later needed an import-aliasing shim, then dropped old files; PR #1893).

URIs: ``file://<path>`` or a bare path (a ``.pt`` file, or a directory whose ``*.pt`` files are all
candidates), and ``wandb://run/<name>[:vN]``, ``wandb://sweep/<name>[:vN]`` (both need ``wandb.entity`` and
``wandb.project`` in the config) or ``wandb://<entity>/<project>/<artifact_type>/<name>[:vN]``.
Selectors: ``all``, ``latest`` (highest epoch, then agent_step, then file time), ``rand``, ``top`` (highest
``metric``; falls back to ``latest`` when fewer than 80% of the candidates report it).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import random
from collections.abc import Mapping
from numbers import Number
from typing import Any

import numpy as np
import torch

from metta.agent.agent_config import AgentConfig
from metta.agent.metta_agent import MettaAgent
from metta.agent.policy_cache import PolicyCache
from metta.agent.policy_metadata import PolicyMetadata
from metta.agent.policy_record import PolicyRecord
from metta.common.fs import atomic_torch_save

logger = logging.getLogger(__name__)

POLICY_FILE_FORMAT = "metta.policy"
POLICY_FILE_VERSION = 1
SELECTOR_TYPES = ("all", "latest", "rand", "top")
TOP_SELECTOR_MIN_COVERAGE = 0.8


class PolicyFileError(RuntimeError):
    """A policy file that cannot be read: truncated, corrupt, or not written by ``PolicyStore.save``."""


# ----------------------------------------------------------------------------------------------------
# The file format
def policy_to_dict(agent: MettaAgent, metadata: Mapping[str, Any], run_name: str) -> dict[str, Any]:
    return {
        "format": POLICY_FILE_FORMAT,
        "version": POLICY_FILE_VERSION,
        "run_name": run_name,
        "metadata": {str(k): _plain_value(f"metadata[{k!r}]", v) for k, v in metadata.items()},
        "agent": {
            "config": agent.config.model_dump(),
            "obs_shape": list(agent.obs_shape),
            "obs_width": agent.obs_width,
            "obs_height": agent.obs_height,
            "feature_normalizations": dict(agent.feature_normalizations),
            "action_names": list(agent.action_names),
            "max_action_args": list(agent.max_action_args),
        },
        "state_dict": {
            k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in agent.state_dict().items()
        },
    }


def agent_from_dict(data: Mapping[str, Any], device: torch.device | str = "cpu") -> MettaAgent:
    spec = data["agent"]
    agent = MettaAgent(
        obs_shape=tuple(spec["obs_shape"]),
        obs_width=spec["obs_width"],
        obs_height=spec["obs_height"],
        feature_normalizations=spec["feature_normalizations"],
        config=AgentConfig.model_validate(spec["config"]),
    )
    # Actions first, so that loading the embedding table re-resolves the active indices.
    agent.activate_actions(spec["action_names"], spec["max_action_args"], "cpu")
    agent.load_state_dict(data["state_dict"])
    return agent.to(device)


def read_policy_file(path: str) -> dict[str, Any]:
    """The dict stored in ``path``; tensors are memory-mapped, so reading only the metadata is cheap."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        raise PolicyFileError(
            f"cannot read policy file {path}: {type(e).__name__}: {e}. The file is truncated, corrupt or not a "
            "metta policy file; re-save it with PolicyStore.save or pick another checkpoint"
        ) from e
    if not isinstance(data, dict) or data.get("format") != POLICY_FILE_FORMAT:
        raise PolicyFileError(
            f"{path} is not a metta policy file (expected a dict with format={POLICY_FILE_FORMAT!r}); "
            "trainer checkpoints and pickled modules are not policy files"
        )
    if data.get("version", 0) > POLICY_FILE_VERSION:
        raise PolicyFileError(
            f"{path} has policy file version {data['version']}; this metta reads up to {POLICY_FILE_VERSION}"
        )
    return data


def _plain_value(where: str, value: Any) -> Any:
    """Metadata as types that ``torch.load(weights_only=True)`` accepts; anything else is an error now, not at load."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Number):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain_value(f"{where}[{k!r}]", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_value(f"{where}[{i}]", v) for i, v in enumerate(value)]
    raise TypeError(
        f"policy {where} is a {type(value).__name__}; store numbers, strings, lists or dicts (e.g. str(value))"
    )


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    node = cfg
    for part in key.split("."):
        if node is None:
            return default
        try:
            node = node[part] if part in node else None
        except TypeError:
            node = getattr(node, part, None)
    return default if node is None else node


# ----------------------------------------------------------------------------------------------------
class PolicyStore:
    """Policies on disk (and in W&B) behind URIs, with an LRU cache of loaded records.

        store = PolicyStore(checkpoint_dir=dirs.checkpoint_dir, device="cpu", run_name=dirs.run_name)
        store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": ...}}})  # upstream's form

    Typed keywords: ``device`` (default "cpu"), ``checkpoint_dir`` (where new policies are placed),
    ``run_name``, ``run_dir``, ``wandb_entity``, ``wandb_project`` (for ``wandb://run/...`` uris),
    ``policy_cache_size`` (default 10), ``wandb_run`` (for uploads). The upstream form passes a dict or
    DictConfig ``cfg`` with ``device``, ``policy_cache_size``, ``trainer.checkpoint.checkpoint_dir``, ``run``,
    ``run_dir``, ``wandb.entity`` and ``wandb.project``; a keyword given as well overrides the config's value.
    """

    def __init__(
        self,
        cfg: Any = None,
        wandb_run: Any = None,
        policy_cache_size: int | None = None,
        *,
        device: str | None = None,
        checkpoint_dir: str | None = None,
        run_name: str | None = None,
        run_dir: str | None = None,
        wandb_entity: str | None = None,
        wandb_project: str | None = None,
    ):
        if cfg is not None and not hasattr(cfg, "__getitem__") and not hasattr(cfg, "__getattr__"):
            raise TypeError(f"cfg is a {type(cfg).__name__}; pass a dict or DictConfig, or use the keyword arguments")
        self.cfg = cfg

        def pick(value: Any, key: str, default: Any = None) -> Any:
            return value if value is not None else _cfg_get(cfg, key, default)

        self.device = str(pick(device, "device", "cpu"))
        self.checkpoint_dir: str | None = pick(checkpoint_dir, "trainer.checkpoint.checkpoint_dir")
        self.run_name: str | None = pick(run_name, "run")
        self.run_dir: str | None = pick(run_dir, "run_dir")
        self.wandb_entity: str | None = pick(wandb_entity, "wandb.entity")
        self.wandb_project: str | None = pick(wandb_project, "wandb.project")
        self.wandb_run = wandb_run
        size = int(pick(policy_cache_size, "policy_cache_size", 10))
        if size < 1:
            raise ValueError(f"policy_cache_size={size} must be >= 1")
        self._cache = PolicyCache(size)

    # ------------------------------------------------------------------------------------------------
    # Writing
    @staticmethod
    def make_model_name(epoch: int) -> str:
        return f"model_{epoch:04d}.pt"

    def create_empty_policy_record(self, name: str, override_path: str | None = None) -> PolicyRecord:
        if override_path is None and self.checkpoint_dir is None:
            raise ValueError(
                f"cannot place policy {name!r}: the PolicyStore config has no trainer.checkpoint.checkpoint_dir; "
                "set it or pass override_path"
            )
        path = override_path if override_path is not None else os.path.join(str(self.checkpoint_dir), name)
        return PolicyRecord(self, name, f"file://{path}", PolicyMetadata())

    def save(self, pr: PolicyRecord, path: str | None = None) -> PolicyRecord:
        """Write ``pr``'s policy and metadata atomically and durably (``metta.common.fs.atomic_torch_save``: temp
        file, fsync, ``os.replace``) and return ``pr``; a failed write raises ``WriteError``."""
        path = path or pr.file_path
        if path is None:
            raise ValueError(
                f"policy record {pr.run_name!r} has uri={pr.uri!r}; save needs a file path (pass path=...)"
            )
        agent = pr.policy_as_metta_agent()
        if not isinstance(agent, MettaAgent):
            raise TypeError(
                f"PolicyStore saves MettaAgent policies; record {pr.run_name!r} holds a {type(agent).__name__}"
            )
        # Serialized in memory, then written by the one atomic writer: a full disk or an unwritable directory is
        # a WriteError naming the file and the cause (torch's own file writer says "unexpected pos" for both).
        atomic_torch_save(policy_to_dict(agent, pr.metadata, pr.run_name), path)
        pr.uri = f"file://{path}"
        # Cache a metadata-only twin: caching the live training module would hand later readers a policy
        # that keeps changing under them.
        self._cache.put(path, PolicyRecord(self, pr.run_name, pr.uri, PolicyMetadata(pr.metadata)))
        return pr

    # ------------------------------------------------------------------------------------------------
    # Reading
    def policy_record(self, uri: str, selector_type: str = "top", metric: str = "score") -> PolicyRecord:
        return self.policy_records(uri, selector_type, 1, metric)[0]

    def policy_records(
        self, uri: str, selector_type: str = "top", n: int = 1, metric: str = "score"
    ) -> list[PolicyRecord]:
        if selector_type not in SELECTOR_TYPES:
            raise ValueError(f"selector_type={selector_type!r} is unknown; use one of {list(SELECTOR_TYPES)}")
        records = self._records_for(str(uri))
        return select_records(records, selector_type, n, metric)

    def load_from_uri(self, uri: str) -> PolicyRecord:
        """The latest policy at ``uri``, with its policy loaded."""
        record = self.policy_record(uri, selector_type="latest")
        _ = record.policy
        return record

    def load_policy(self, path: str) -> MettaAgent:
        return agent_from_dict(read_policy_file(path), self.device)

    def _records_for(self, uri: str) -> list[PolicyRecord]:
        if uri.startswith("wandb://"):
            return self._wandb_records(uri)
        if uri.startswith("file://"):
            return self._file_records(uri[len("file://") :])
        if "://" in uri:
            raise ValueError(f"policy uri {uri!r}: unsupported scheme; use file://, wandb:// or a plain path")
        return self._file_records(uri)

    def _file_records(self, path: str) -> list[PolicyRecord]:
        if os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, "*.pt")))
            if not files:
                raise FileNotFoundError(f"policy directory {path} has no *.pt files")
        elif os.path.isfile(path):
            files = [path]
        else:
            raise FileNotFoundError(f"policy path {path} does not exist")
        records = [self._record_for_file(f) for f in files]
        # Newest first: what "latest" means and what "top" falls back to.
        return sorted(records, key=_recency, reverse=True)

    def _record_for_file(self, path: str) -> PolicyRecord:
        record = self._cache.get(path)
        if record is None:
            data = read_policy_file(path)
            record = PolicyRecord(
                self, data.get("run_name") or os.path.basename(path), f"file://{path}", data.get("metadata", {})
            )
            self._cache.put(path, record)
        return record

    def _wandb_records(self, uri: str) -> list[PolicyRecord]:
        spec = uri[len("wandb://") :]
        parts = spec.split("/")
        if len(parts) == 2 and parts[0] in ("run", "sweep"):
            if not (self.wandb_entity and self.wandb_project):
                missing = [
                    k for k, v in (("wandb.entity", self.wandb_entity), ("wandb.project", self.wandb_project)) if not v
                ]
                raise ValueError(
                    f"policy uri {uri!r} needs {' and '.join(missing)} in the PolicyStore config; set them, or use "
                    "wandb://<entity>/<project>/<artifact_type>/<name>[:vN] or a file:// path"
                )
            entity, project, name = self.wandb_entity, self.wandb_project, parts[1]
            artifact_type = "model" if parts[0] == "run" else "sweep_model"
        elif len(parts) == 4:
            entity, project, artifact_type, name = parts
        else:
            raise ValueError(
                f"policy uri {uri!r} is not a wandb policy uri; use wandb://run/<name>[:vN], wandb://sweep/<name>[:vN] "
                "or wandb://<entity>/<project>/<artifact_type>/<name>[:vN]"
            )
        try:
            import wandb
        except ImportError as e:
            raise ImportError(f"policy uri {uri!r} needs the wandb package: pip install wandb") from e
        if ":" not in name:
            name += ":latest"
        artifact = wandb.Api().artifact(f"{entity}/{project}/{name}", type=artifact_type)
        root = os.path.join(self.run_dir or self.checkpoint_dir or ".", "wandb_artifacts", name.replace(":", "_"))
        return self._file_records(artifact.download(root=root))

    def add_to_wandb_run(self, run_id: str, pr: PolicyRecord, artifact_type: str = "model") -> str:
        """Upload a saved policy file as a W&B artifact of the active run; returns the artifact's name."""
        if self.wandb_run is None:
            raise ValueError("add_to_wandb_run needs the PolicyStore to be created with wandb_run=<the active run>")
        if pr.file_path is None or not os.path.isfile(pr.file_path):
            raise FileNotFoundError(f"policy record {pr.run_name!r} has no saved file (uri={pr.uri!r}); save it first")
        import wandb

        artifact = wandb.Artifact(run_id, type=artifact_type, metadata=dict(pr.metadata))
        artifact.add_file(pr.file_path)
        self.wandb_run.log_artifact(artifact)
        return artifact.name


def _recency(record: PolicyRecord) -> tuple[float, float, float]:
    meta = record.metadata
    path = record.file_path
    mtime = os.path.getmtime(path) if path and os.path.exists(path) else 0.0
    return (float(meta.get("epoch", 0) or 0), float(meta.get("agent_step", 0) or 0), mtime)


def _metric_value(record: PolicyRecord, metric: str) -> float | None:
    meta = record.metadata
    scores = meta.get("eval_scores")
    candidates: list[Any] = []
    if isinstance(scores, Mapping):
        candidates += [scores.get(metric), scores.get(metric.removesuffix("_score"))]
    candidates.append(meta.get(metric))
    for value in candidates:
        # A missing evaluation score is NaN: it ranks nowhere (NaN would break the sort).
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def select_records(records: list[PolicyRecord], selector_type: str, n: int, metric: str) -> list[PolicyRecord]:
    """``records`` arrive newest first."""
    if selector_type == "all" or (len(records) == 1 and n >= 1):
        return records  # all of them, or a single policy: nothing to choose between
    if selector_type == "latest":
        return records[:n]
    if selector_type == "rand":
        return random.sample(records, min(n, len(records)))
    scored = [(value, r) for r in records if (value := _metric_value(r, metric)) is not None]
    if len(scored) < TOP_SELECTOR_MIN_COVERAGE * len(records):
        logger.warning(
            "only %d of %d policies report %r (< %d%%); selecting the latest instead of the top",
            len(scored),
            len(records),
            metric,
            int(TOP_SELECTOR_MIN_COVERAGE * 100),
        )
        return records[:n]
    scored.sort(key=lambda pair: pair[0], reverse=True)
    return [r for _, r in scored[:n]]
