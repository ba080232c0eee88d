"""The on-disk format of a saved REM model: atomic saves, validated loads, clear errors.

A saved model is a folder of five files::

    model.safetensors           tokenizer + world-model weights
    start_contexts.safetensors  dream openings: "tokens" (N, C, K) and "actions" (N, C-1)
    config.json                 the REMConfig
    manifest.json               the ProtocolManifest: game, ALE protocol, versions, budget, figures
    README.md                   a model card with Hub metadata (not needed to load)

The start contexts have a file of their own because they are data, not weights: their number
N is free (the config does not fix it), and they can be replaced (e.g. openings from another
replay buffer: ``model.set_start_contexts(...)``, then save again) without touching the weights.

Integrity: the manifest records the size and SHA-256 of ``config.json`` and both safetensors
files (:class:`~rem_env.manifest.FileDigest`). A save is written into a hidden sibling folder
that then replaces the folder as a whole; a load reads the files once, checks them against the
manifest, and reads again if another process replaced the folder meanwhile, so it sees one whole
save, or raises :class:`ModelChangedError`, or names the corrupted file. Manifests written before
the digests existed load as before, unchecked. ``config.json`` is compared with the shapes in the
weights file's header before the model is built.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file
from torch.overrides import TorchFunctionMode

from rem_env.config import REMConfig
from rem_env.manifest import AtariProtocol, FileDigest, ProtocolManifest
from rem_env.model import REMModel
from rem_env.model_card import render_model_card

__all__ = [
    "CONFIG_NAME",
    "CONTEXTS_NAME",
    "MANIFEST_NAME",
    "MODEL_CARD_NAME",
    "MODEL_FILES",
    "WEIGHTS_NAME",
    "ModelChangedError",
    "ModelLoadError",
    "ModelNotCachedError",
    "ModelNotFoundError",
    "NoDefaultModelError",
    "ProtocolMismatchError",
    "ProtocolWarning",
    "default_manifest",
    "load_folder",
    "save_pretrained",
]

WEIGHTS_NAME = "model.safetensors"
CONTEXTS_NAME = "start_contexts.safetensors"
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
MODEL_CARD_NAME = "README.md"
MODEL_FILES = (CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME, CONTEXTS_NAME)
"""The files :func:`rem_env.hub.load_pretrained` needs (the model card is for people)."""
DIGESTED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CONTEXTS_NAME)
"""The files whose size and SHA-256 the manifest records."""

READ_ATTEMPTS = 4
"""Reads of a model folder before a load gives up on a folder that keeps being replaced."""
STALE_AFTER_S = 3600.0
"""Age after which a leftover of an interrupted save whose writer cannot be checked is removed."""

_CONTEXT_BUFFERS = ("start_tokens", "start_actions")
_LEFTOVER_SUFFIX = re.compile(r"^(saving|old)-[0-9a-f]{8}-(?P<pid>[0-9]+)@(?P<host>.+)$")


class ModelLoadError(ValueError):
    """A model folder or repo could not be loaded; the message says why and what to do."""


class ModelNotFoundError(ModelLoadError):
    """No such folder, Hub repo, revision or file."""


class ModelChangedError(ModelLoadError):
    """The model folder was replaced while it was read, on every attempt (a save in progress)."""


class ModelNotCachedError(ModelLoadError):
    """The model is not in the local Hub cache and the Hub cannot be reached (or is disabled)."""


class ProtocolMismatchError(ModelLoadError):
    """The model's protocol or library versions do not fit what the caller asked for."""


class NoDefaultModelError(ModelLoadError):
    """A game has no bundled weights and no configured default repo."""


class ProtocolWarning(UserWarning):
    """A model was loaded although its protocol or versions do not fit what was asked for."""


def save_pretrained(
    model: REMModel,
    folder: str | os.PathLike[str],
    manifest: ProtocolManifest | None = None,
    repo_id: str | None = None,
) -> Path:
    """Saves ``model`` as a folder that :func:`rem_env.hub.load_pretrained` and the Hub understand.

    The files are written into a hidden sibling folder (``.<name>.saving-<id>-<pid>@<host>``)
    which then replaces ``folder`` as a whole: swapped with it in one step where the OS can
    (Linux), else renamed in after the old folder was renamed away (``.<name>.old-...``). A
    load running meanwhile sees the old save or the new one, never a mix of both. An
    interrupted save leaves the old folder (or, killed between the two renames of the
    fallback, the ``.old-`` one), never a half-written one under ``folder``; the next save
    removes the leftovers of writers that are no longer running (or older than
    :data:`STALE_AFTER_S` when they are from another host or an older rem-env).

    Args:
        model: The model to save.
        folder: Target folder. It must not exist, be empty, or hold a previously saved model.
        manifest: Protocol manifest; default: the one the model was loaded with, else the Atari
            100K protocol of ``model.config.game`` with the installed library versions.
        repo_id: Hub repo id used in the model card's usage snippet.

    Returns:
        The folder.

    Raises:
        ValueError: If ``folder`` holds something other than a saved model, the manifest
            contradicts the config, or the model is a quantized copy.
    """
    if model.quantization is not None:
        raise ValueError(
            f"this model is a {model.quantization}-quantized copy for dreaming; save the float "
            "model it was made from"
        )
    folder = Path(folder).expanduser()
    manifest = manifest if manifest is not None else default_manifest(model)
    _check_manifest_fits(manifest, model.config, ValueError, "manifest")
    if folder.exists():
        if not folder.is_dir():
            raise ValueError(f"cannot save a model to {folder}: it is a file")
        if any(folder.iterdir()) and not (folder / CONFIG_NAME).is_file():
            raise ValueError(
                f"cannot save a model to {folder}: it is a non-empty folder that does not hold "
                "a saved REM model, and saving would replace it; choose another folder"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(folder)
    staging = _leftover_path(folder, "saving")
    staging.mkdir(mode=0o755)
    try:
        _write_model_files(model, staging, manifest, repo_id)
        _move_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def default_manifest(model: REMModel) -> ProtocolManifest:
    """The manifest :func:`save_pretrained` writes when given none."""
    loaded = getattr(model, "manifest", None)
    if loaded is not None:
        return loaded
    game = model.config.game
    protocol = AtariProtocol.atari100k(game, model.num_actions) if game else None
    return ProtocolManifest(game=game, protocol=protocol)


def _write_model_files(
    model: REMModel, folder: Path, manifest: ProtocolManifest, repo_id: str | None
) -> None:
    state = model.state_dict()
    weights = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in state.items()
        if name not in _CONTEXT_BUFFERS
    }
    save_file(weights, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    contexts = {
        "tokens": model.start_tokens.detach().to("cpu").contiguous(),
        "actions": model.start_actions.detach().to("cpu").contiguous(),
    }
    save_file(contexts, str(folder / CONTEXTS_NAME), metadata={"format": "pt"})
    config = (json.dumps(model.config.to_dict(), indent=2) + "\n").encode("utf-8")
    digests = {CONFIG_NAME: FileDigest.of(config)}
    for name in (WEIGHTS_NAME, CONTEXTS_NAME):
        with open(folder / name, "rb+") as file:  # digest what is on disk, and flush it
            digests[name] = FileDigest.of(file.read())
            os.fsync(file.fileno())
    manifest = dataclasses.replace(manifest, files=digests)
    _write_bytes(folder / MANIFEST_NAME, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode())
    card = render_model_card(model.config, manifest, repo_id)
    _write_bytes(folder / MODEL_CARD_NAME, card.encode("utf-8"))
    # config.json last: a folder without it is not taken for a model.
    _write_bytes(folder / CONFIG_NAME, config)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _move_into_place(staging: Path, folder: Path) -> None:
    """Puts ``staging`` at ``folder`` as a whole, replacing an existing ``folder``."""
    if not folder.exists():
        os.replace(staging, folder)
    elif _exchange(staging, folder):  # no moment without a folder; staging now holds the old
        shutil.rmtree(staging, ignore_errors=True)
    else:
        old = _leftover_path(folder, "old")
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


def _leftover_path(folder: Path, kind: str) -> Path:
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
    while any(not _is_stale(p, len(folder.name) + 2) for p in leftovers(folder)):
        if folder.is_dir():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(2 * delay, 0.1)
    return folder.is_dir()


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
            return _build_model(files, where)  # type: ignore[arg-type]
        if files == previous:  # the same twice: this is what the folder holds
            if files is not None and all(data is not None for data in files.values()):
                _build_model(files, where)  # type: ignore[arg-type]  # a more precise error
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


def _build_model(files: dict[str, bytes], where: str) -> REMModel:
    """The model of a whole save's files: every check before anything big is allocated."""
    config = _parse(REMConfig.from_dict, _read_json(files, CONFIG_NAME, where), where, "config")
    manifest = _parse(
        ProtocolManifest.from_dict, _read_json(files, MANIFEST_NAME, where), where, "manifest"
    )
    _check_manifest_fits(manifest, config, ModelLoadError, f"{where}: manifest.json")
    weight_shapes = _header_shapes(files, WEIGHTS_NAME, where)
    context_shapes = _header_shapes(files, CONTEXTS_NAME, where)
    if set(context_shapes) != {"tokens", "actions"} or len(context_shapes["tokens"]) != 3:
        raise ModelLoadError(
            f"{where}: {CONTEXTS_NAME} must hold 'tokens' (N, C, K) and 'actions' (N, C-1), "
            f"got {context_shapes}"
        )
    _check_weights_fit(_expected_shapes(config, weight_shapes, where), weight_shapes, where)
    weights = _read_safetensors(files, WEIGHTS_NAME, where)
    contexts = _read_safetensors(files, CONTEXTS_NAME, where)
    with _NoRandomInit():  # every value comes from the files
        model = REMModel(config, num_start_contexts=max(1, contexts["tokens"].shape[0]))
    model.load_state_dict(weights, strict=False)  # complete: _check_weights_fit
    try:
        model.set_start_contexts(contexts["tokens"], contexts["actions"])
    except ValueError as err:
        raise ModelLoadError(f"{where}: {CONTEXTS_NAME} does not fit config.json: {err}") from err
    model.manifest = manifest
    return model


def _read_json(files: dict[str, bytes], name: str, where: str) -> Any:
    try:
        data = json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{where}: {name} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        what = "the REMConfig" if name == CONFIG_NAME else "the ProtocolManifest"
        raise ModelLoadError(
            f"{where}: {name} must hold a JSON object ({what}), not a JSON "
            f"{_JSON_TYPES.get(type(data), type(data).__name__)}"
        )
    return data


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_JSON_TYPES[type(None)] = "null"


def _parse(parse: Any, data: Any, where: str, what: str) -> Any:
    try:
        return parse(data)
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"{where}: {what}.json cannot be used: {err}") from err


def _corrupted(name: str, where: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{where}: {name} is corrupted or truncated ({err}); download it again "
        "(`hf download ... --force-download`) or save the model again"
    )


def _header_shapes(files: dict[str, bytes], name: str, where: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header alone (nothing is allocated)."""
    data = files[name]
    try:
        if len(data) < 8:
            raise ValueError(f"{len(data)} bytes, too short for a safetensors header")
        size = int.from_bytes(data[:8], "little")
        if size > len(data) - 8:
            raise ValueError(f"a header of {size} bytes in a file of {len(data)}")
        header = json.loads(data[8 : 8 + size])
        return {
            key: tuple(int(d) for d in entry["shape"])
            for key, entry in header.items()
            if key != "__metadata__"
        }
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise _corrupted(name, where, err) from err


def _read_safetensors(files: dict[str, bytes], name: str, where: str) -> dict[str, torch.Tensor]:
    try:
        return load(files[name])
    except Exception as err:  # safetensors raises its own error types
        raise _corrupted(name, where, err) from err


class _NoRandomInit(TorchFunctionMode):
    """Builds a model without drawing its random initial values (they are loaded over).

    Random fills (``nn.init.normal_`` and kin, ``torch.randint``) are skipped: on the meta
    device some of them import torch's compiler stack (seconds, once per process), and on the
    CPU they only cost time. The tensors keep their shapes; their values are undefined.
    """

    _FILLS = frozenset(
        {
            "normal_",
            "uniform_",
            "trunc_normal_",
            "xavier_normal_",
            "xavier_uniform_",
            "kaiming_normal_",
            "kaiming_uniform_",
            "orthogonal_",
        }
    )

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self._FILLS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, torch.Tensor):
                return tensor
        if func is torch.randint:
            size = kwargs["size"] if "size" in kwargs else args[-1]
            return torch.empty(size, dtype=kwargs.get("dtype") or torch.long)
        return func(*args, **kwargs)


_LAYER_NAME = re.compile(r"^world_model\.decoder\.layers\.([0-9]+)\.")


def _expected_shapes(
    config: REMConfig, found: dict[str, tuple[int, ...]], where: str
) -> dict[str, tuple[int, ...]]:
    """The weight shapes ``config`` asks for, from a model built on the meta device (no memory).

    A config with many more layers than the weights hold is refused before even that (building
    a million layers takes long, even on the meta device).
    """
    layers = {int(match[1]) for name in found if (match := _LAYER_NAME.match(name))}
    wanted = config.world_model.num_layers
    if layers and wanted > len(layers):
        raise ModelLoadError(
            f"{where}: the weights do not match config.json (missing layers: config.json asks "
            f"for {wanted} world-model layers, {WEIGHTS_NAME} holds {len(layers)}); the config "
            "and weights come from different models"
        )
    with torch.device("meta"), _NoRandomInit():
        meta = REMModel(config, num_start_contexts=1)
    return {
        name: tuple(tensor.shape)
        for name, tensor in meta.state_dict().items()
        if name not in _CONTEXT_BUFFERS
    }


def _check_weights_fit(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{name}: {found[name]} in {WEIGHTS_NAME}, {shape} by config"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise ModelLoadError(
            f"{where}: the weights do not match config.json ({', '.join(parts)}); the config "
            "and weights come from different models"
        )


def _check_manifest_fits(
    manifest: ProtocolManifest, config: REMConfig, error: type[Exception], where: str
) -> None:
    if manifest.game and config.game and manifest.game != config.game:
        raise error(f"{where}: game {manifest.game!r} but the config says {config.game!r}")
    protocol = manifest.protocol
    if protocol is not None and protocol.num_actions != config.num_actions:
        raise error(
            f"{where}: {protocol.num_actions} actions but the config has {config.num_actions}"
        )
