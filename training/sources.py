"""Models and actor-critics from model folders, run folders and checkpoint files.

The tools that check a model (``python -m rem_train.score``, ``serve_check``, ``object_check``)
read what ``rem-train --init-from`` reads: an exported model folder (or Hub repo id), a run
folder (its last checkpoint) or one checkpoint file of a run
(``RUN/checkpoints/epoch_0040.safetensors``), so any epoch a run kept can be checked without
exporting it. A checkpoint is rebuilt into a whole :class:`~rem_env.REMModel` (tokenizer, world
model and start contexts) with the run's ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rem_env.model import REMModel
from rem_env.models.actor_critic import ActorCritic
from rem_env.models.tokenizer import Tokenizer
from rem_train.config_options import add_config_options
from rem_train.replay import ReplayBuffer
from rem_train.warm_start import WarmStartError, read_warm_start

__all__ = ["LoadedSource", "ReplayCheck", "load_source", "replay_check_parser", "run_replay_check"]


@dataclass
class LoadedSource:
    """A model (tokenizer and world model) and its actor-critic, and where they came from.

    Attributes:
        model: The tokenizer and world model (eval mode).
        actor_critic: Acts on the tokenizer's codes (eval mode; None if the source has none).
        game: The Atari 100K game they were trained on.
        epoch: The run epoch of a checkpoint (None for a model folder).

    Example:
        >>> from rem_env.hub import bundled_model_folder
        >>> loaded = load_source(str(bundled_model_folder("Breakout")))
        >>> loaded.game, loaded.epoch, loaded.actor_critic is not None
        ('Breakout', None, True)
        >>> loaded.tokenizer.config.vocab_size
        512
    """

    model: REMModel
    actor_critic: ActorCritic | None
    game: str
    epoch: int | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        return self.model.tokenizer


def _run_dir(path: Path) -> Path | None:
    """The run folder of a run folder or of one of its checkpoint files; None otherwise."""
    if path.is_dir():
        return path if (path / "checkpoints" / "last.safetensors").is_file() else None
    if path.is_file() and path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def load_source(source: str, device: str = "cpu", need_actor_critic: bool = True) -> LoadedSource:
    """The model and actor-critic of a model folder, a run folder or a checkpoint file.

    Args:
        source: A model folder (or Hub repo id without ``need_actor_critic``), a rem-train run
            folder (its last checkpoint) or a checkpoint file of a run.
        device: Torch device.
        need_actor_critic: Refuse a source without an actor-critic.

    Raises:
        ValueError: If the source cannot be read, or holds no actor-critic where one is needed.
    """
    from rem_train.config import TrainConfig

    path = Path(source).expanduser()
    run_dir = _run_dir(path)
    if run_dir is not None:
        config_file = run_dir / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{source}: no config.json in its run folder {run_dir}")
        config = TrainConfig.from_dict(json.loads(config_file.read_text()))
        try:
            warm = read_warm_start(path)
        except WarmStartError as err:
            raise ValueError(str(err)) from err
        if need_actor_critic and "actor_critic" not in warm.states:
            raise ValueError(f"{source} holds no actor-critic")
        world_model = warm.states["world_model"]
        model = REMModel(config.model_config(), num_start_contexts=len(world_model["start_tokens"]))
        top = model.state_dict().keys()  # the start contexts sit beside the two parts
        state = {f"tokenizer.{key}": value for key, value in warm.states["tokenizer"].items()}
        for key, value in world_model.items():
            state[key if key in top else f"world_model.{key}"] = value
        model.load_state_dict(state)
        actor_critic = None
        if "actor_critic" in warm.states:
            actor_critic = ActorCritic.from_config(model.config, config.actor_critic.hidden_size)
            actor_critic.load_state_dict(warm.states["actor_critic"])
            actor_critic = actor_critic.to(device).eval()
        epoch = warm.lineage[-1].get("epoch")
        return LoadedSource(model.to(device).eval(), actor_critic, config.game, epoch)
    from rem_env.actor_critic_files import actor_critic_file, load_actor_critic
    from rem_env.hub import ModelLoadError, load_pretrained

    if need_actor_critic and not path.is_dir():
        raise ValueError(f"{source} is neither a model folder, a run folder nor a checkpoint file")
    try:
        model = load_pretrained(str(path) if path.is_dir() else source, map_location=device)
        actor_critic = None
        if need_actor_critic or actor_critic_file(path if path.is_dir() else None):
            actor_critic = load_actor_critic(path, device)
    except (ModelLoadError, OSError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err
    if model.config.game is None:
        raise ValueError(f"{source}: its config names no game")
    return LoadedSource(model.eval(), actor_critic, model.config.game)


def replay_check_parser(
    prog: str, description: str, segments: int, length: int
) -> argparse.ArgumentParser:
    """The command line of a check of a model on a replay buffer's segments (``object_check``,
    ``event_check``): ``MODEL REPLAY [--segments N] [--length T] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "model", help="model folder (or Hub repo id), rem-train run folder or checkpoint file"
    )
    parser.add_argument("replay", help="a run's replay folder (RUN_FOLDER/replay)")
    parser.add_argument("--segments", type=int, default=segments, help="replay segments drawn")
    parser.add_argument("--length", type=int, default=length, help="frames per segment")
    parser.add_argument("--seed", type=int, default=0, help="seed of the segments drawn")
    return parser


ReplayCheck = Callable[[LoadedSource, ReplayBuffer, np.random.Generator, int, int], dict[str, Any]]
"""A check of a model on replay segments: ``(source, replay, rng, segments, length)`` -> one
dataclass of figures per name."""


def run_replay_check(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    check: ReplayCheck,
    refuse: Callable[[LoadedSource], str | None] = lambda source: None,
) -> int:
    """Runs a check from :func:`replay_check_parser`'s command line and prints its figures as
    JSON. A model or replay buffer that cannot be read, or a source ``refuse`` has a reason
    against, ends the command with ``parser.error``."""
    args = parser.parse_args(argv)
    if args.segments < 1 or args.length < 1:
        parser.error("--segments and --length must be positive")
    try:
        loaded = load_source(args.model, need_actor_critic=False)
    except ValueError as err:
        parser.error(str(err))
    reason = refuse(loaded)
    if reason is not None:
        parser.error(reason)
    try:
        replay = ReplayBuffer(args.replay, read_only=True)
    except (OSError, ValueError) as err:
        parser.error(f"cannot read the replay buffer {args.replay}: {err}")
    with replay:
        rng = np.random.default_rng(args.seed)
        checks = check(loaded, replay, rng, args.segments, args.length)
    print(json.dumps({name: dataclasses.asdict(c) for name, c in checks.items()}, indent=2))
    return 0


def replay_training_parser(
    prog: str, description: str, joins: str, replay_help: str, held_out_help: str, config: Any
) -> argparse.ArgumentParser:
    """The command line of a training of one part of a model on replay buffers
    (``pretrain_frame_conv``, ``train_event_reader``, ``train_event_window``): ``--out``,
    ``--init-from`` (its help names what may be given, then ``joins``, e.g. "the window
    joins"), a repeatable ``--replay``, ``--held-out`` and one option per field of the dataclass
    ``config`` (its defaults and docstrings; booleans read as ``true``/``false``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", required=True, help="run folder (written afresh)")
    parser.add_argument(
        "--init-from",
        required=True,
        help=f"model folder, Hub repo id, run folder or checkpoint file {joins}",
    )
    parser.add_argument("--replay", action="append", required=True, help=replay_help)
    parser.add_argument("--held-out", help=held_out_help)
    add_config_options(parser, config)
    return parser


@dataclass(frozen=True)
class ReplayTraining:
    """A command line of :func:`replay_training_parser`, parsed and checked."""

    out: Path
    init_from: str
    replays: list[str]
    held_out: str | None
    config: Any
    command: str
    """The command as typed (``python -m rem_train.<module> ...``), for the export's record."""


def parse_replay_training(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    config_type: Callable[..., Any],
    at_least_one: Sequence[str],
    missing_hint: str = "",
) -> ReplayTraining:
    """Parses ``argv`` with ``parser`` into ``config_type``'s settings, checking that the fields
    ``at_least_one`` are at least 1, ``max_minutes`` is not negative and every replay folder
    exists (``missing_hint`` follows the error); ends the command with ``parser.error``
    otherwise."""
    args = vars(parser.parse_args(argv))
    out = Path(args.pop("out")).expanduser()
    init_from, replays, held_out = args.pop("init_from"), args.pop("replay"), args.pop("held_out")
    config = config_type(**args)
    for name in at_least_one:
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if config.max_minutes < 0:
        parser.error("--max-minutes must be 0 (no limit) or positive")
    for path in [*replays, *([held_out] if held_out else [])]:
        if not Path(path).expanduser().is_dir():
            parser.error(f"no replay folder {path!r}{missing_hint}")
    command = shlex.join([*parser.prog.split(), *argv])
    return ReplayTraining(out, init_from, replays, held_out, config, command)
