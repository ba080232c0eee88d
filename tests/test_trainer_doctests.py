"""The trainer's docstring examples, run under the name the package installs them as.

The repository's ``training/`` folder is the import package ``rem_train`` (see pyproject.toml), so
pytest's own doctest collection (which would import the folder as ``training``) is not used for it:
the examples run here through :mod:`doctest` on the ``rem_train`` modules.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import rem_train

MODULES = sorted(
    info.name
    for info in pkgutil.iter_modules(rem_train.__path__, "rem_train.")
    if info.name != "rem_train.__main__"  # importing it runs rem-train
)


def test_the_trainer_installs_as_rem_train() -> None:
    assert rem_train.__name__ == "rem_train"
    assert rem_train.__path__[0].replace("\\", "/").endswith("/training")
    assert "rem_train.trainer" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
    if ">>>" in inspect.getsource(module):  # examples written there must have been found and run
        assert result.attempted > 0, f"doctest found none of the examples in {name}"
