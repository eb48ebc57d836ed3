"""Turning a user's device argument into a ``torch.device``, with one CUDA fallback rule."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def parse_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device``, or a ValueError naming ``name`` and the forms allowed (no CUDA check)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None


def require_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that this machine has: a ValueError naming ``name`` when it asks for CUDA
    and there is none, or for a CUDA device index that is not visible (no fallback: a run configured for a GPU
    does not quietly train on the CPU)."""
    resolved = parse_device(device, name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{name}={str(device)!r} but CUDA is not available on this machine (torch.cuda.is_available() is "
            f"False, torch {torch.__version__}); use {name}=cpu, or install a CUDA build of torch"
        )
    _check_cuda_index(resolved, device, name)
    return resolved


def resolve_device(device: str | torch.device | None, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device``; None means CUDA when available, else CPU.

    Asking for CUDA on a machine without it warns and returns the CPU, so that the same script runs on a
    laptop and a GPU box (upstream's ``metta/rl/util/distributed.py`` behaviour; run.py uses
    ``require_device`` instead).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = parse_device(device, name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        logger.warning("%s=%r was requested but CUDA is not available; using the CPU", name, str(device))
        return torch.device("cpu")
    _check_cuda_index(resolved, device, name)
    return resolved


def _check_cuda_index(resolved: torch.device, device: str | torch.device, name: str) -> None:
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"{name}={str(device)!r} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
            f"use 'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'"
        )
