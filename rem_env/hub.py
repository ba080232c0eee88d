"""Loading and publishing REM models: local folders and Hugging Face Hub repos.

The folder format is :mod:`rem_env.checkpoint`'s. Downloads go through
``huggingface_hub.snapshot_download``, so the Hub cache, ``revision=`` pinning,
``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` all behave as everywhere else on the Hub. Each
``REM-<Game>-v0`` id finds its default model with :func:`resolve_default_model`.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rem_env.checkpoint import (
    CONFIG_NAME,
    CONTEXTS_NAME,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    MODEL_FILES,
    WEIGHTS_NAME,
    ModelChangedError,
    ModelLoadError,
    ModelNotCachedError,
    ModelNotFoundError,
    NoDefaultModelError,
    ProtocolMismatchError,
    ProtocolWarning,
    default_manifest,
    leftovers,
    load_folder,
    save_in_progress,
    save_pretrained,
    wait_for_save,
)
from rem_env.manifest import AtariProtocol, ProtocolManifest, protocol_problems
from rem_env.model import REMModel

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = [
    "CONFIG_NAME",
    "CONTEXTS_NAME",
    "DEFAULT_MODELS",
    "HUB_ORG_ENV",
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
    "load_model",
    "load_pretrained",
    "push_to_hub",
    "resolve_default_model",
    "save_pretrained",
]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

OnMismatch = Literal["error", "warn", "ignore"]
DEFAULT_MODELS: dict[str, str] = {}
"""Game (``"Breakout"``) -> folder or Hub repo id of its default model; set entries to configure."""

HUB_ORG_ENV = "REM_ENV_HUB_ORG"
"""Environment variable naming a Hub user/org whose ``rem-<game>`` repos (``rem-breakout``) are
the default models of the games not in :data:`DEFAULT_MODELS` nor bundled."""


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
        ModelChangedError: Another process kept replacing the folder (saving to it) while it
            was read; load again when that save is done.
        ModelLoadError: Not an REM model, corrupted files (a file that does not match the
            size and SHA-256 the manifest records), a config that does not match the weights
            or is from a newer rem-env.
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
    model = load_folder(folder, where)
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
    if path.is_dir() or (not path.exists() and wait_for_save(path)):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repo ids, not to folder {path}")
        return path, f"model folder {str(path)!r}"
    if path.is_file():
        raise ModelLoadError(f"{path} is a file; pass the folder that save_pretrained wrote")
    missing = f"there is no folder {text!r} ({path.absolute()})"
    old = [p for p in leftovers(path) if p.name.startswith(f".{path.name}.old-")]
    if old and save_in_progress(path):  # wait_for_save gave up: the writer runs but is slow
        raise ModelChangedError(
            f"{missing} for now: a save is replacing it (its writer still runs) and did not put "
            "the new folder in place while this load waited; load it again"
        )
    if old:  # its writer is gone
        raise ModelNotFoundError(
            f"{missing}: a save that replaced it was interrupted; the previous model is in "
            f"{str(old[-1])!r}: rename it back to {path.name!r}"
        )
    if isinstance(source, os.PathLike) or not _REPO_ID.match(text) or text.startswith("."):
        raise ModelNotFoundError(
            f"no model folder at {str(path)!r} ({path.absolute()}), and it is not a Hub repo id "
            "like 'org/name'"
        )
    try:
        return _download(text, revision, local_files_only, cache_dir, token)
    except ModelLoadError as err:
        raise type(err)(f"{missing}, so it was tried as a Hub repo id: {err}") from err


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
            f"no Hub repo {repo_id!r}: check the id; for a private or gated repo, log in "
            "(`hf auth login`) or pass token="
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
