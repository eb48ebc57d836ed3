"""The plain-Python API: factories and helpers over metta's internals (also importable as ``metta.api``)."""

from metta.interface.environment import Environment

__all__ = ["Environment"]
