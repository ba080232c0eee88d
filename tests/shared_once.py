"""Build a fixture's files once per test session, even when pytest-xdist runs several workers.

A module-scoped fixture runs once per worker that runs a test of its module, and the
work-stealing scheduler often splits a module between workers: an expensive fixture (a whole
smoke training run) was then built twice. :func:`build_once` builds into a folder that all
workers of the session share (the parent of each worker's base temp folder, as pytest-xdist
suggests), under a file lock; the first worker builds, the others wait and reuse it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["build_once"]


def build_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """The folder ``name`` shared by the session's workers, filled by ``build(folder)`` once.

    ``build`` must leave the folder complete when it returns; the tests must only read it. A
    build that raised is retried by the next worker (its partial folder is removed first).
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    folder, done = base / f"once-{name}", base / f"once-{name}.done"
    with (base / f"once-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
