"""Saving, loading and publishing REM models: local folders and Hugging Face Hub repos.

A saved model is a folder of five files::

    model.safetensors           tokenizer + world-model weights
    start_contexts.safetensors  dream openings: "tokens" (N, C, K) and "actions" (N, C-1)
    config.json                 the REMConfig
    manifest.json               the ProtocolManifest: game, ALE protocol, versions, budget, figures
    README.md                   a model card with Hub metadata (not needed to load)

The start contexts have a file of their own because they are data, not weights: their number
N is free (the config does not fix it), and they can be replaced (e.g. openings from another
replay buffer) without touching the weights.

Downloads go through ``huggingface_hub.snapshot_download``, so the Hub cache, ``revision=``
pinning, ``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` all behave as everywhere else on the Hub.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors.torch import load_file, save_file

from rem_env.config import REMConfig
from rem_env.manifest import AtariProtocol, ProtocolManifest, protocol_problems
from rem_env.model import REMModel
from rem_env.model_card import render_model_card

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = [
    "CONFIG_NAME",
    "CONTEXTS_NAME",
    "DEFAULT_MODELS",
    "HUB_ORG_ENV",
    "MANIFEST_NAME",
    "MODEL_CARD_NAME",
    "WEIGHTS_NAME",
    "ModelLoadError",
    "ModelNotCachedError",
    "ModelNotFoundError",
    "NoDefaultModelError",
    "ProtocolMismatchError",
    "ProtocolWarning",
    "load_model",
    "load_pretrained",
    "push_to_hub",
    "resolve_default_model",
    "save_pretrained",
]

WEIGHTS_NAME = "model.safetensors"
CONTEXTS_NAME = "start_contexts.safetensors"
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
MODEL_CARD_NAME = "README.md"
MODEL_FILES = (CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME, CONTEXTS_NAME)
"""The files :func:`load_pretrained` needs (the model card is for people)."""

_CONTEXT_BUFFERS = ("start_tokens", "start_actions")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

OnMismatch = Literal["error", "warn", "ignore"]

DEFAULT_MODELS: dict[str, str] = {}
"""Game (``"Breakout"``) -> folder or Hub repo id of its default model; set entries to configure."""

HUB_ORG_ENV = "REM_ENV_HUB_ORG"
"""Environment variable naming a Hub user/org whose ``rem-<game>`` repos (``rem-breakout``) are
the default models of the games not in :data:`DEFAULT_MODELS` nor bundled."""


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
    """Saves ``model`` as a folder that :func:`load_pretrained` and the Hub understand.

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
        ValueError: If ``folder`` holds something other than a saved model, or the manifest
            contradicts the config.
    """
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


def load_pretrained(
    source: str | os.PathLike[str],
    revision: str | None = None,
    map_location: str | torch.device = "cpu",
    expected_protocol: AtariProtocol | None = None,
    on_protocol_mismatch: OnMismatch = "error",
    local_files_only: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> REMModel:
    """Loads a model from a local folder or a Hugging Face Hub repo id.

    Args:
        source: A folder written by :func:`save_pretrained`, or a Hub repo id (``"org/name"``).
            An existing folder wins over a repo id of the same name.
        revision: Hub branch, tag or commit to pin (repo ids only).
        map_location: Device to put the model on.
        expected_protocol: The protocol the caller needs; differing fields are reported.
        on_protocol_mismatch: What to do about a differing protocol or a known-bad ale-py
            version for the game: ``"error"`` (raise :class:`ProtocolMismatchError`),
            ``"warn"`` (:class:`ProtocolWarning`) or ``"ignore"``.
        local_files_only: Use the Hub cache only, as with ``HF_HUB_OFFLINE=1``.
        cache_dir: Hub cache folder (default: huggingface_hub's).
        token: Hub token for private repos (default: huggingface_hub's).

    Returns:
        The model in eval mode, with ``model.manifest`` set.

    Raises:
        ModelNotFoundError: Unknown folder, repo, revision, or a missing file.
        ModelNotCachedError: Offline and not in the cache.
        ModelLoadError: Not an REM model, corrupted files, a config that does not match the
            weights or is from a newer rem-env.
        ProtocolMismatchError: See ``on_protocol_mismatch``.

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig, REMModel
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout"))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = save_pretrained(model, f"{tmp}/breakout")
        ...     loaded = load_pretrained(folder)
        >>> bool((loaded.start_tokens == model.start_tokens).all()), loaded.manifest.game
        (True, 'Breakout')
    """
    if on_protocol_mismatch not in ("error", "warn", "ignore"):
        raise ValueError(
            "on_protocol_mismatch must be 'error', 'warn' or 'ignore', "
            f"got {on_protocol_mismatch!r}"
        )
    folder, where = _locate(source, revision, local_files_only, cache_dir, token)
    model = _load_folder(folder, where)
    problems = protocol_problems(model.manifest, expected_protocol)  # type: ignore[arg-type]
    if problems and on_protocol_mismatch != "ignore":
        message = f"{where} may not simulate the expected game: " + "; ".join(problems)
        if on_protocol_mismatch == "error":
            raise ProtocolMismatchError(
                message + ". Pass on_protocol_mismatch='warn' to load it anyway."
            )
        warnings.warn(message, ProtocolWarning, stacklevel=2)
    return model.to(map_location).eval()


def _locate(
    source: str | os.PathLike[str],
    revision: str | None,
    local_files_only: bool,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
) -> tuple[Path, str]:
    """The local folder holding the model files, and how to name the source in messages."""
    text = os.fspath(source)
    if not isinstance(text, str):
        raise TypeError(f"source must be a folder or a Hub repo id, got {type(source).__name__}")
    path = Path(text).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repo ids, not to folder {path}")
        return path, f"model folder {str(path)!r}"
    if path.exists():
        raise ModelLoadError(f"{path} is a file; pass the folder that save_pretrained wrote")
    if isinstance(source, os.PathLike) or not _REPO_ID.match(text) or text.startswith("."):
        raise ModelNotFoundError(
            f"no model folder at {str(path)!r} (and it is not a Hub repo id like 'org/name')"
        )
    return _download(text, revision, local_files_only, cache_dir, token)


def _download(
    repo_id: str,
    revision: str | None,
    local_files_only: bool,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
) -> tuple[Path, str]:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    where = f"Hub repo {repo_id!r}{at}"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(MODEL_FILES),
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            token=token,
        )
    except RevisionNotFoundError as err:
        raise ModelNotFoundError(
            f"Hub repo {repo_id!r} has no revision {revision!r}; pass an existing branch, tag or "
            "commit hash"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelNotFoundError(
            f"no Hub repo {repo_id!r} (and no local folder of that name): check the id; for a "
            "private or gated repo, log in (`hf auth login`) or pass token="
        ) from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if constants.HF_HUB_OFFLINE
            else "local_files_only=True"
            if local_files_only
            else f"the Hub ({constants.ENDPOINT}) could not be reached"
        )
        command = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        raise ModelNotCachedError(
            f"{where} is not cached ({cache_dir or constants.HF_HUB_CACHE}) and {why}. Run once "
            f"online to cache it, or download it with `{command}` (older huggingface_hub: "
            "`huggingface-cli download ...`), or pass a local folder written by save_pretrained"
        ) from err
    except HfHubHTTPError as err:
        raise ModelLoadError(f"could not download {where}: {err}") from err
    return Path(folder), where


def _load_folder(folder: Path, where: str) -> REMModel:
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


def push_to_hub(
    model: REMModel,
    repo_id: str,
    manifest: ProtocolManifest | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload REM world model",
    token: str | None = None,
    api: HfApi | None = None,
) -> Any:
    """Publishes ``model`` to a Hub repo (created if needed) as one commit.

    Args:
        model: The model.
        repo_id: ``"user/name"`` or ``"org/name"``.
        manifest: Protocol manifest (see :func:`save_pretrained`).
        private: Visibility of a newly created repo.
        revision: Existing branch to commit to (default: the main branch).
        commit_message: The commit's message.
        token: Hub token (default: huggingface_hub's login).
        api: The ``HfApi`` to use (default: a new one with ``token``).

    Returns:
        The ``CommitInfo`` of ``HfApi.upload_folder``.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="rem-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", manifest=manifest, repo_id=repo_id)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
        )


def bundled_model_folder(game: str) -> Path | None:
    """``rem_env/weights/<game>/`` if rem-env ships default weights for ``game``, else None."""
    folder = Path(__file__).parent / "weights" / game
    return folder if (folder / CONFIG_NAME).is_file() else None


def resolve_default_model(game: str) -> str:
    """Where the default model of ``game`` lives: a folder or a Hub repo id.

    Looked up in order: :data:`DEFAULT_MODELS`, weights bundled in ``rem_env/weights/<game>/``,
    then ``$REM_ENV_HUB_ORG/rem-<game lowercased>``.

    Raises:
        NoDefaultModelError: If none of them gives one.

    Example:
        >>> DEFAULT_MODELS["Breakout"] = "someone/rem-breakout"
        >>> resolve_default_model("Breakout")
        'someone/rem-breakout'
        >>> del DEFAULT_MODELS["Breakout"]
    """
    if game in DEFAULT_MODELS:
        return DEFAULT_MODELS[game]
    bundled = bundled_model_folder(game)
    if bundled is not None:
        return str(bundled)
    org = os.environ.get(HUB_ORG_ENV, "").strip().strip("/")
    if org:
        return f"{org}/rem-{game.lower()}"
    raise NoDefaultModelError(
        f"rem-env has no default model for {game}: none is bundled and no Hub repo is "
        f"configured. Train one (`rem-train --game {game} --out runs/{game.lower()}`) and pass "
        f"model='runs/{game.lower()}' (a folder) or model=<REMModel>; or pass a Hub repo id "
        f"(model='org/name'); or configure a default with rem_env.hub.DEFAULT_MODELS['{game}'] = "
        f"'org/name' or the {HUB_ORG_ENV} environment variable (repo '<org>/rem-{game.lower()}')"
    )


def load_model(
    model: REMModel | str | os.PathLike[str], revision: str | None = None, **kwargs: Any
) -> REMModel:
    """An REMModel from an REMModel (returned as is), a model folder or a Hub repo id.

    Args:
        model: The model or where it lives.
        revision: Hub revision (repo ids only).
        **kwargs: Further arguments of :func:`load_pretrained` (e.g. ``expected_protocol``).

    Raises:
        TypeError: If ``model`` is of another type.
        ValueError: If ``revision`` is given with an REMModel.
        ModelLoadError: See :func:`load_pretrained`.
    """
    if isinstance(model, REMModel):
        if revision is not None:
            raise ValueError("revision= applies to Hub repo ids; an REMModel was passed")
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_pretrained(model, revision=revision, **kwargs)
    raise TypeError(
        f"model must be a rem_env.REMModel, a model folder or a Hub repo id, got "
        f"{type(model).__name__}"
    )
