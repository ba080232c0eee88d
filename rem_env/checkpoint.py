"""The on-disk format of a saved REM model: atomic saves, validated loads, clear errors.

A saved model is a folder of five files::

    model.safetensors           tokenizer + world-model weights
    start_contexts.safetensors  dream openings: "tokens" (N, C, K) and "actions" (N, C-1)
    config.json                 the REMConfig
    manifest.json               the ProtocolManifest: game, ALE protocol, versions, budget, figures
    README.md                   a model card with Hub metadata (not needed to load)

The start contexts have a file of their own because they are data, not weights: their number
N is free (the config does not fix it), and they can be replaced (e.g. openings from another
replay buffer) without touching the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rem_env.config import REMConfig
from rem_env.manifest import AtariProtocol, ProtocolManifest
from rem_env.model import REMModel
from rem_env.model_card import render_model_card

__all__ = [
    "CONFIG_NAME",
    "CONTEXTS_NAME",
    "MANIFEST_NAME",
    "MODEL_CARD_NAME",
    "MODEL_FILES",
    "WEIGHTS_NAME",
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

_CONTEXT_BUFFERS = ("start_tokens", "start_actions")


class ModelLoadError(ValueError):
    """A model folder or repo could not be loaded; the message says why and what to do."""


class ModelNotFoundError(ModelLoadError):
    """No such folder, Hub repo, revision or file."""


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

    The files are written into a temporary sibling folder which is then renamed into place; an
    existing model folder at ``folder`` is replaced (renamed away, then deleted). An interrupted
    save leaves the old folder, or none, never a half-written one under ``folder``.

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
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.saving-", dir=folder.parent))
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
    _write_text(folder / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2) + "\n")
    _write_text(folder / MODEL_CARD_NAME, render_model_card(model.config, manifest, repo_id))
    # config.json last: a folder without it is not taken for a model.
    _write_text(folder / CONFIG_NAME, json.dumps(model.config.to_dict(), indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _move_into_place(staging: Path, folder: Path) -> None:
    """Renames ``staging`` to ``folder``, replacing an existing ``folder``."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(folder, old)
    try:
        os.replace(staging, folder)
    except BaseException:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_folder(folder: Path, where: str) -> REMModel:
    """Loads and validates the model files in ``folder``; ``where`` names it in errors.

    Raises:
        ModelNotFoundError: A model file is missing.
        ModelLoadError: Not an REM model, corrupted files, config and weights that do not match.
    """
    present = [name for name in MODEL_FILES if (folder / name).is_file()]
    if not present:
        found = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
        raise ModelLoadError(
            f"{where} is not an REM model: it has none of {list(MODEL_FILES)} (found {found}); "
            "REM models are saved with REMModel.save_pretrained"
        )
    missing = [name for name in MODEL_FILES if name not in present]
    if missing:
        raise ModelNotFoundError(
            f"{where} is missing {missing}: an incomplete save or upload, or not an REM model"
        )
    config = _parse(REMConfig.from_dict, _read_json(folder / CONFIG_NAME, where), where, "config")
    manifest = _parse(
        ProtocolManifest.from_dict, _read_json(folder / MANIFEST_NAME, where), where, "manifest"
    )
    _check_manifest_fits(manifest, config, ModelLoadError, f"{where}: manifest.json")
    weights = _read_safetensors(folder / WEIGHTS_NAME, where)
    contexts = _read_safetensors(folder / CONTEXTS_NAME, where)
    if set(contexts) != {"tokens", "actions"} or contexts["tokens"].ndim != 3:
        raise ModelLoadError(
            f"{where}: {CONTEXTS_NAME} must hold 'tokens' (N, C, K) and 'actions' (N, C-1), "
            f"got { ({k: tuple(v.shape) for k, v in contexts.items()}) }"
        )
    model = REMModel(config, num_start_contexts=max(1, contexts["tokens"].shape[0]))
    _check_weights_fit(model, weights, where)
    model.load_state_dict(weights, strict=False)
    try:
        model.set_start_contexts(contexts["tokens"], contexts["actions"])
    except ValueError as err:
        raise ModelLoadError(f"{where}: {CONTEXTS_NAME} does not fit config.json: {err}") from err
    model.manifest = manifest
    return model


def _read_json(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{where}: {path.name} is not valid JSON ({err})") from err


def _parse(parse: Any, data: Any, where: str, what: str) -> Any:
    try:
        return parse(data)
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"{where}: {what}.json cannot be used: {err}") from err


def _read_safetensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types, and OSError
        raise ModelLoadError(
            f"{where}: {path.name} is corrupted or truncated ({err}); download it again "
            "(`hf download ... --force-download`) or save the model again"
        ) from err


def _check_weights_fit(model: REMModel, weights: dict[str, torch.Tensor], where: str) -> None:
    expected = {k: v for k, v in model.state_dict().items() if k not in _CONTEXT_BUFFERS}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{name}: {tuple(weights[name].shape)} in {WEIGHTS_NAME}, {tuple(tensor.shape)} by config"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
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
