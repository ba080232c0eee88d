"""Saving a model folder: the files written into a hidden folder that then replaces the target."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from rem_env.checkpoint.build import check_manifest_fits
from rem_env.checkpoint.files import (
    CONFIG_NAME,
    CONTEXT_BUFFERS,
    CONTEXTS_NAME,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
)
from rem_env.checkpoint.folder_swap import leftover_path, move_into_place, remove_stale_leftovers
from rem_env.manifest import AtariProtocol, FileDigest, ProtocolManifest
from rem_env.model import REMModel
from rem_env.model_card import render_model_card

__all__ = ["default_manifest", "save_pretrained"]


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
    :data:`~rem_env.checkpoint.folder_swap.STALE_AFTER_S` when they are from another host or
    an older rem-env).

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
    check_manifest_fits(manifest, model.config, ValueError, "manifest")
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
    staging = leftover_path(folder, "saving")
    staging.mkdir(mode=0o755)
    try:
        _write_model_files(model, staging, manifest, repo_id)
        move_into_place(staging, folder)
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
        if name not in CONTEXT_BUFFERS
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
