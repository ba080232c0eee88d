"""Every option of every command line says what it does in its --help."""

from __future__ import annotations

import argparse
import functools
import importlib
import pkgutil

import pytest

import rem_train
from rem_env.cli import build_parser as rem_env_parser

DEFAULT_ONLY = "(default: %(default)s)"


def _training_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser of each ``python -m rem_train.<module>`` (and of rem-train itself)."""
    found = {}
    for module in pkgutil.iter_modules(rem_train.__path__):
        if module.name == "__main__":  # running it is the command line itself
            continue
        loaded = importlib.import_module(f"rem_train.{module.name}")
        for name in ("build_parser", "parser"):
            factory = getattr(loaded, name, None)
            if callable(factory):
                built = factory()
                if isinstance(built, argparse.ArgumentParser):
                    found[module.name] = built
    return found


@functools.cache
def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {f"rem_train.{name}": p for name, p in _training_parsers().items()}
    for action in rem_env_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parsers[f"rem-env {name}"] = sub
    return parsers


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Options whose help is missing or gives only the default."""
    return [
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings
        and action.dest != "help"
        and not (action.help or "").replace(DEFAULT_ONLY, "").strip()
    ]


def test_the_training_modules_have_command_lines_to_check() -> None:
    names = set(_training_parsers())
    # the ones built from settings dataclasses, and some written by hand
    assert {"pretrain_frame_conv", "pretrain_tokenizer", "fit_patch_tokenizer"} <= names
    assert {"train_event_window", "train_event_reader", "collect_replay", "dream_to_real"} <= names


@pytest.mark.parametrize("command", sorted(_all_parsers()))
def test_every_option_has_help(command: str) -> None:
    assert _undocumented(_all_parsers()[command]) == []
