"""Starting spawned processes from a user's script without re-running it in each of them."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator


@contextlib.contextmanager
def main_module_hidden(hide: bool = True) -> Iterator[None]:
    """While starting spawn workers, hide ``__main__`` so they do not re-import the user's script.

    Spawn re-runs the parent's main module in every child; a training script imports torch and more, which
    workers must not (memory, start time, threads). Workers need nothing from it unless the curriculum's
    class is defined there, in which case ``hide`` is False.
    """
    if not hide:
        yield
        return
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main
