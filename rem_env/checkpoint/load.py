"""Loading a model folder: its files read as one whole save, checked against the manifest.

The files are read at once through one handle on the folder and compared with the sizes and
SHA-256 digests the manifest records. Files of two different saves (another process replaced
the folder meanwhile) are read again; a folder that reads the same twice but does not match
its manifest is corrupted, and the error names the file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rem_env.checkpoint.build import build_model
from rem_env.checkpoint.errors import ModelChangedError, ModelLoadError, ModelNotFoundError
from rem_env.checkpoint.files import MANIFEST_NAME, MODEL_FILES
from rem_env.manifest import FileDigest, ProtocolManifest
from rem_env.model import REMModel

__all__ = ["READ_ATTEMPTS", "load_folder"]

READ_ATTEMPTS = 4
"""Reads of a model folder before a load gives up on a folder that keeps being replaced."""


def load_folder(folder: Path, where: str) -> REMModel:
    """Loads and validates the model files in ``folder``; ``where`` names it in errors.

    The files are read at once and checked against the digests in the manifest. Files of two
    different saves (another process replaced the folder meanwhile) are read again, up to
    :data:`READ_ATTEMPTS` times; a folder that reads the same twice but does not match its
    manifest is corrupted. ``config.json`` is compared with the shapes in the weights file's
    header before the model is built.

    Raises:
        ModelNotFoundError: A model file is missing.
        ModelChangedError: The folder was replaced while it was read, on every attempt.
        ModelLoadError: Not an REM model, corrupted files, config and weights that do not match.
    """
    previous: dict[str, bytes | None] | str | None = "unread"
    for attempt in range(READ_ATTEMPTS):
        files = _read_model_files(folder)
        problem = _not_one_save(files, folder, where)
        if problem is None:
            assert files is not None
            return build_model(files, where)  # type: ignore[arg-type]
        if files == previous:  # the same twice: this is what the folder holds
            if files is not None and all(data is not None for data in files.values()):
                build_model(files, where)  # type: ignore[arg-type]  # a more precise error
            raise problem
        previous = files
        time.sleep(0.005 * 4**attempt)
    raise ModelChangedError(
        f"{where} changed while it was read, {READ_ATTEMPTS} times in a row: another process is "
        f"saving a model to it. Load it once that save is done (last problem: {problem})"
    )


def _read_model_files(folder: Path) -> dict[str, bytes | None] | None:
    """The bytes of each of :data:`MODEL_FILES` (None if missing); None if ``folder`` is gone.

    The files are opened through one handle on the folder, all before any is read: a save
    that replaces the folder meanwhile cannot slip another save's files in between.
    """
    if os.open not in os.supports_dir_fd:  # pragma: no cover - Windows
        if not folder.is_dir():
            return None
        return {name: _read_fd(_open(folder / name)) for name in MODEL_FILES}
    try:
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fds = {name: _open(name, dir_fd) for name in MODEL_FILES}
    finally:
        os.close(dir_fd)
    return {name: _read_fd(fd) for name, fd in fds.items()}


def _open(path: str | Path, dir_fd: int | None = None) -> int | None:
    try:
        return os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _read_fd(fd: int | None) -> bytes | None:
    if fd is None:
        return None
    with open(fd, "rb", closefd=True) as file:
        try:
            return file.read()
        except IsADirectoryError:
            return None


def _not_one_save(
    files: dict[str, bytes | None] | None, folder: Path, where: str
) -> ModelLoadError | None:
    """Why ``files`` are not one whole save (a missing file, a digest that differs), or None.

    None too when the manifest records no digests or cannot be read (then the load says why).
    """
    if files is None:
        return ModelNotFoundError(
            f"{where} is not an REM model: it has none of {list(MODEL_FILES)} (there is no "
            f"folder {str(folder)!r}, or no longer)"
        )
    if all(data is None for data in files.values()):
        found = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
        return ModelLoadError(
            f"{where} is not an REM model: it has none of {list(MODEL_FILES)} (found {found}); "
            "REM models are saved with REMModel.save_pretrained"
        )
    missing = [name for name, data in files.items() if data is None]
    if missing:
        return ModelNotFoundError(
            f"{where} is missing {missing}: an incomplete save or upload, or not an REM model"
        )
    try:
        manifest = ProtocolManifest.from_dict(json.loads(files[MANIFEST_NAME] or b""))
    except (ValueError, TypeError):
        return None
    for name, recorded in (manifest.files or {}).items():
        data = files.get(name)
        if data is None:
            continue
        found = FileDigest.of(data)
        if found != recorded:
            return ModelLoadError(
                f"{where}: {name} does not match manifest.json ({found.size} bytes, sha256 "
                f"{found.sha256[:16]}... where the manifest records {recorded.size} bytes, "
                f"sha256 {recorded.sha256[:16]}...): the file is corrupted, or was replaced "
                "without saving the model again. Download it again (`hf download ... "
                "--force-download`), or load the files it came with and save again with "
                "save_pretrained, which records new digests"
            )
    return None
