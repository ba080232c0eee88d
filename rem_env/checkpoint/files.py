"""The names of the files in a saved model folder, and which of them the manifest digests."""

from __future__ import annotations

__all__ = [
    "CONFIG_NAME",
    "CONTEXTS_NAME",
    "CONTEXT_BUFFERS",
    "DIGESTED_FILES",
    "MANIFEST_NAME",
    "MODEL_CARD_NAME",
    "MODEL_FILES",
    "WEIGHTS_NAME",
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
CONTEXT_BUFFERS = ("start_tokens", "start_actions")
"""The model's buffers that go to :data:`CONTEXTS_NAME`, not to :data:`WEIGHTS_NAME`."""
