"""The wheel holds every package of the source tree, and moved modules keep their old imports."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORT_ROOTS = {"rem_env": ROOT / "rem_env", "rem_train": ROOT / "training"}
"""Import name -> folder (pyproject's package-dir maps rem_train to training/)."""


def listed_packages() -> set[str]:
    # tomllib is Python 3.11+; the packages line is simple enough to read directly.
    line = re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert line is not None, "pyproject.toml has no one-line `packages = [...]`"
    return set(re.findall(r'"([^"]+)"', line.group(1)))


def source_packages() -> set[str]:
    found = set()
    for name, folder in IMPORT_ROOTS.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((name, *parts)))
    return found


def test_every_source_package_is_in_the_wheel() -> None:
    """A package missing from pyproject's list imports in an editable install, not from a wheel."""
    assert listed_packages() == source_packages()


CHECKPOINT_NAMES = [
    "CONFIG_NAME", "CONTEXTS_NAME", "DIGESTED_FILES", "MANIFEST_NAME", "MODEL_CARD_NAME",
    "MODEL_FILES", "READ_ATTEMPTS", "STALE_AFTER_S", "WEIGHTS_NAME", "ModelChangedError",
    "ModelLoadError", "ModelNotCachedError", "ModelNotFoundError", "NoDefaultModelError",
    "ProtocolMismatchError", "ProtocolWarning", "default_manifest", "leftovers", "load_folder",
    "remove_stale_leftovers", "save_pretrained", "wait_for_save",
]  # fmt: skip
"""The public names of ``rem_env.checkpoint`` when it was one module (before it was split)."""


@pytest.mark.parametrize("name", CHECKPOINT_NAMES)
def test_checkpoint_names_import_as_before(name: str) -> None:
    checkpoint = importlib.import_module("rem_env.checkpoint")
    assert hasattr(checkpoint, name)
    assert name in checkpoint.__all__
