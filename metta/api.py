"""``metta.api``: the same API as ``metta.interface`` (upstream's module name)."""

from metta.interface import *  # noqa: F401,F403
from metta.interface import __all__  # noqa: F401
