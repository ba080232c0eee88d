"""Replacing a folder as a whole, and the hidden leftovers an interrupted replacement leaves.

A save is written into a hidden sibling folder, ``.<name>.saving-<id>-<pid>@<host>``, that
then takes the place of the folder in one step (Linux ``renameat2(RENAME_EXCHANGE)``), or, where
two folders cannot be swapped, after the old folder was renamed away to ``.<name>.old-...``.
The pid and host in a leftover's name tell whether its writer still runs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "STALE_AFTER_S",
    "leftover_path",
    "leftovers",
    "move_into_place",
    "remove_stale_leftovers",
    "save_in_progress",
    "wait_for_save",
]

STALE_AFTER_S = 3600.0
"""Age after which a leftover of an interrupted save whose writer cannot be checked is removed."""

_LEFTOVER_SUFFIX = re.compile(r"^(saving|old)-[0-9a-f]{8}-(?P<pid>[0-9]+)@(?P<host>.+)$")


def move_into_place(staging: Path, folder: Path) -> None:
    """Puts ``staging`` at ``folder`` as a whole, replacing an existing ``folder``."""
    if not folder.exists():
        os.replace(staging, folder)
    elif _exchange(staging, folder):  # no moment without a folder; staging now holds the old
        shutil.rmtree(staging, ignore_errors=True)
    else:
        old = leftover_path(folder, "old")
        os.replace(folder, old)
        try:
            os.replace(staging, folder)
        except BaseException:
            os.replace(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_folder(folder.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    path, fd, flags = ctypes.c_char_p, ctypes.c_int, ctypes.c_uint
    renameat2.argtypes = [fd, path, fd, path, flags]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # a kernel or file system without it
    raise OSError(code, os.strerror(code), str(b))


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _fsync_folder(folder: Path) -> None:
    """Makes the renames in ``folder`` durable, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host() -> str:
    """This machine's name as it appears in leftover names."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


def leftover_path(folder: Path, kind: str) -> Path:
    """A fresh ``.<name>.<kind>-<id>-<pid>@<host>`` beside ``folder``."""
    return folder.with_name(f".{folder.name}.{kind}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{_host()}")


def leftovers(folder: Path) -> list[Path]:
    """Hidden folders of saves to ``folder``: ``.<name>.saving-*`` and ``.<name>.old-*``."""
    prefixes = (f".{folder.name}.saving-", f".{folder.name}.old-")
    try:
        return sorted(p for p in folder.parent.iterdir() if p.name.startswith(prefixes))
    except OSError:
        return []


def wait_for_save(folder: Path, timeout: float = 1.0) -> bool:
    """Waits while a save replaces the missing ``folder``; True once it is there.

    Where two folders cannot be swapped in one step, a save renames the old folder away before
    it renames the new one in; a load in between would find no folder.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while save_in_progress(folder):
        if folder.is_dir():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(2 * delay, 0.1)
    return folder.is_dir()


def save_in_progress(folder: Path) -> bool:
    """Whether a leftover beside ``folder`` belongs to a save whose writer still runs."""
    return any(not _is_stale(p, len(folder.name) + 2) for p in leftovers(folder))


def remove_stale_leftovers(folder: Path) -> list[Path]:
    """Removes the leftovers of interrupted saves to ``folder``; returns those removed.

    A leftover is stale when its writer (pid and host in its name) is no longer running on
    this host, or, when that cannot be checked (another host, a name without a pid), when it
    is older than :data:`STALE_AFTER_S`. Saves in progress are left alone.
    """
    removed = []
    for path in leftovers(folder):
        if _is_stale(path, len(folder.name) + 2):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _is_stale(path: Path, prefix: int) -> bool:
    match = _LEFTOVER_SUFFIX.match(path.name[prefix:])
    if match is not None and match["host"] == _host():
        pid = int(match["pid"])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's
            pass
        return _age(path) > 24 * STALE_AFTER_S  # alive, or its pid was reused a day later
    return _age(path) > STALE_AFTER_S


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0
