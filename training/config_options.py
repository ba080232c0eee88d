"""Command-line options made from a settings dataclass, each with its field's docstring as help.

The trainings and checks of ``python -m rem_train.<module>`` keep their settings in frozen
dataclasses whose fields carry their documentation as attribute docstrings (the string right
after the field). :func:`add_config_options` gives a parser one ``--option`` per field, with that
docstring's first paragraph, in plain text, as the option's help and the field's default.

Example:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Settings:
    ...     steps: int = 100
    ...     '''Gradient steps (``0``: none).'''
    ...     fast: bool = False
    ...     '''Skip the checks.'''
    >>> parser = argparse.ArgumentParser()
    >>> add_config_options(parser, Settings())
    >>> vars(parser.parse_args(["--steps", "5", "--fast", "yes"]))
    {'steps': 5, 'fast': True}
    >>> from rem_train.pretrain_frame_conv import FrameConvPretrainConfig
    >>> field_docs(FrameConvPretrainConfig)["width"]  # read from the module's source
    'Channels of those convolutions.'
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
from typing import Any

__all__ = ["add_config_options", "field_docs", "parse_bool", "plain_text"]


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) as a bool, for argparse."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def plain_text(docstring: str) -> str:
    """The first paragraph of a docstring on one line, without reStructuredText markup.

    Example:
        >>> plain_text('''Read by :meth:`FrameConv.load <rem_env.FrameConv.load>` and
        ...     :class:`~rem_env.model.REMModel` (``0``: off).
        ...
        ...     More.''')
        'Read by FrameConv.load and REMModel (0: off).'
    """
    first = inspect.cleandoc(docstring).split("\n\n")[0]
    first = re.sub(r":[\w:]+:`([^`<]*?)\s*<[^>]*>`", r"\1", first)  # :role:`text <target>`
    first = re.sub(r":[\w:]+:`~[\w.]*?(\w+)`", r"\1", first)  # :role:`~a.b.name`: name
    first = re.sub(r":[\w:]+:`([^`]*)`", r"\1", first)  # :role:`target`
    first = first.replace("``", "")
    return " ".join(first.split())


def field_docs(config_type: type) -> dict[str, str]:
    """Plain-text attribute docstrings of a dataclass's fields (the string right after each
    field); fields without one are left out, and all of them where the class's source cannot be
    read (a class defined in a doctest or at the prompt)."""
    try:
        source = textwrap.dedent(inspect.getsource(config_type))
    except (OSError, TypeError):  # defined where no source can be read
        return {}
    body = ast.parse(source).body[0].body  # the class statement's body
    return {
        statement.target.id: plain_text(after.value.value)
        for statement, after in itertools.pairwise(body)
        if isinstance(statement, ast.AnnAssign)
        and isinstance(statement.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }


def add_config_options(parser: argparse.ArgumentParser, config: Any) -> None:
    """Adds ``--field-name`` for every field of the dataclass instance ``config``: its value is
    the default, its type the value's (booleans read as ``true``/``false``), its help the
    field's docstring (:func:`field_docs`) and the default."""
    docs = field_docs(type(config))
    for name, value in dataclasses.asdict(config).items():
        kind = parse_bool if isinstance(value, bool) else type(value)
        text = docs.get(name, "").replace("%", "%%")
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=value,
            help=f"{text} (default: %(default)s)" if text else "(default: %(default)s)",
        )
