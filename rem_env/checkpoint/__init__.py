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

One module per part, all of it importable from here:

- :mod:`~rem_env.checkpoint.files`: the file names;
- :mod:`~rem_env.checkpoint.errors`: what a load raises;
- :mod:`~rem_env.checkpoint.save`: :func:`save_pretrained`;
- :mod:`~rem_env.checkpoint.folder_swap`: a folder replaced as a whole, and the leftovers of
  interrupted saves;
- :mod:`~rem_env.checkpoint.load`: :func:`load_folder`, the files read as one whole save;
- :mod:`~rem_env.checkpoint.build`: the model built from those bytes, checked first.
"""

from __future__ import annotations

from rem_env.checkpoint.errors import (
    ModelChangedError,
    ModelLoadError,
    ModelNotCachedError,
    ModelNotFoundError,
    NoDefaultModelError,
    ProtocolMismatchError,
    ProtocolWarning,
)
from rem_env.checkpoint.files import (
    CONFIG_NAME,
    CONTEXTS_NAME,
    DIGESTED_FILES,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    MODEL_FILES,
    WEIGHTS_NAME,
)
from rem_env.checkpoint.folder_swap import (
    STALE_AFTER_S,
    leftovers,
    remove_stale_leftovers,
    save_in_progress,
    wait_for_save,
)
from rem_env.checkpoint.load import READ_ATTEMPTS, load_folder
from rem_env.checkpoint.save import default_manifest, save_pretrained

__all__ = [
    "CONFIG_NAME",
    "CONTEXTS_NAME",
    "DIGESTED_FILES",
    "MANIFEST_NAME",
    "MODEL_CARD_NAME",
    "MODEL_FILES",
    "READ_ATTEMPTS",
    "STALE_AFTER_S",
    "WEIGHTS_NAME",
    "ModelChangedError",
    "ModelLoadError",
    "ModelNotCachedError",
    "ModelNotFoundError",
    "NoDefaultModelError",
    "ProtocolMismatchError",
    "ProtocolWarning",
    "default_manifest",
    "leftovers",
    "load_folder",
    "remove_stale_leftovers",
    "save_in_progress",
    "save_pretrained",
    "wait_for_save",
]
