"""Give a model folder new dream openings: real frames from replay buffers.

A dream starts from a few real frames (the model's *start contexts*, ``start_contexts.safetensors``;
:meth:`~rem_env.REMModel.set_start_contexts`); every ``reset`` of a dream env draws one. An
export carries 8 of them: from its run's replay, drawn anywhere in an episode, or (a model
fitted without a replay) from the first steps of new games. ``python -m rem_train.set_openings``
writes a copy of a model with openings drawn from any replay buffers:

- ``--at life-start``: the first frames of each episode, which under REM's training protocol
  (a lost life ends an episode) is where every life of the real game starts, as the real env's
  ``reset`` does. In Breakout no ball is in play there until FIRE, so a dream that starts there
  asks the agent to serve; a replay collected with ``python -m rem_train.collect_replay
  --serve-wait N`` holds life starts before the serve (its scripted player waits 0-N steps).
- ``--at anywhere``: windows drawn uniformly over every step of every episode, as an export
  draws its 8.

Everything else (tokenizer, world model, actor-critic) is copied unchanged; the copy's
``training.json`` records the command after the source's lineage.

Example:
    python -m rem_train.set_openings warm_starts/Breakout-patch-3-window \\
        --replay runs/serve30/replay --at life-start --count 512 --out runs/p3w-life-starts
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rem_train.export import START_CONTEXTS, encode_contexts
from rem_train.replay import ReplayBuffer
from rem_train.sources import load_source
from rem_train.warm_start import export_with_lineage

__all__ = ["PLACES", "build_parser", "life_start_windows", "main", "openings", "uniform_windows"]

PLACES = ("life-start", "anywhere")
"""Where in the replay's episodes ``--at`` takes the openings from."""


def _episode_starts(replay: ReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    """(episodes,) record number of each episode's first step, and (episodes,) its length."""
    lengths = replay.episode_lengths
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), lengths


def life_start_windows(replay: ReplayBuffer, length: int) -> np.ndarray:
    """Record number of the first step of each episode that has at least ``length`` steps.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (2, 2, 3)) as buf:
        ...     for t, end in enumerate([0, 0, 1, 0, 1, 0, 0, 0]):  # episodes of 3, 2 and 3
        ...         buf.append(np.zeros((2, 2, 3), np.uint8), 0, 0.0, terminated=bool(end))
        ...     life_start_windows(buf, 3).tolist()
        [0, 5]
    """
    starts, lengths = _episode_starts(replay)
    return starts[lengths >= length]


def uniform_windows(replay: ReplayBuffer, length: int) -> np.ndarray:
    """Record number of the first step of every window of ``length`` steps inside an episode.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (2, 2, 3)) as buf:
        ...     for t, end in enumerate([0, 0, 1, 0, 1]):  # episodes of 3 and 2 steps
        ...         buf.append(np.zeros((2, 2, 3), np.uint8), 0, 0.0, terminated=bool(end))
        ...     uniform_windows(buf, 2).tolist()
        [0, 1, 3]
    """
    starts, lengths = _episode_starts(replay)
    windows = [start + np.arange(n - length + 1) for start, n in zip(starts, lengths, strict=True)]
    return np.concatenate([w for w in windows if len(w)] or [np.zeros(0, np.int64)])


def openings(
    replays: Sequence[ReplayBuffer], length: int, at: str, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Real openings of ``length`` frames from ``replays``: (N, length, H, W, 3) uint8 frames and
    the (N, length-1) actions between them, N = ``count`` or every window there is if fewer
    (``at="life-start"``: each episode's first frames; ``"anywhere"``: any window inside an
    episode, every window equally likely; drawn without replacement).

    Raises:
        ValueError: If ``at`` is not one of :data:`PLACES`, or no episode has ``length`` steps.
    """
    if at not in PLACES:
        raise ValueError(f"at must be one of {PLACES}, got {at!r}")
    find = life_start_windows if at == "life-start" else uniform_windows
    windows = [(i, first) for i, replay in enumerate(replays) for first in find(replay, length)]
    if not windows:
        raise ValueError(f"no episode of the replays has the {length} steps an opening needs")
    chosen = rng.permutation(len(windows))[:count]
    taken = [replay.step_labels().actions for replay in replays]  # (steps,) each
    frames, actions = [], []
    for i, first in sorted(windows[j] for j in chosen):
        frames.append(replays[i].observations(first, first + length))
        actions.append(taken[i][first : first + length - 1])
    order = rng.permutation(len(frames))  # not grouped by replay
    return np.stack(frames)[order], np.stack(actions).astype(np.int64)[order]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rem_train.set_openings",
        description="Write a copy of a model whose dream openings (start contexts) are real "
        "frames from replay buffers: where each life starts, or anywhere in an episode.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model folder, Hub repo id, rem-train run folder or checkpoint file",
    )
    parser.add_argument(
        "--replay",
        action="append",
        required=True,
        help="a replay folder (a rem-train run's RUN/replay, or collect_replay's); repeat it",
    )
    parser.add_argument(
        "--at",
        choices=PLACES,
        default="life-start",
        help="life-start: the first frames of each episode (a life, under REM's training "
        "protocol), as the real env's reset starts; anywhere: any window inside an episode",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=1024,
        help=f"openings to keep, drawn without replacement (fewer if the replays have fewer; "
        f"an export has {START_CONTEXTS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the openings drawn")
    parser.add_argument("--out", required=True, help="the new model folder (written afresh)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the model copy; returns 0."""
    args = build_parser().parse_args(argv)
    prog = "python -m rem_train.set_openings"
    if args.count < 1:
        raise SystemExit(f"{prog}: --count must be positive, got {args.count}")
    try:
        source = load_source(args.model, need_actor_critic=False)
        model = source.model
        size = model.config.tokenizer.image_size
        replays = [ReplayBuffer(path, (size, size, 3), read_only=True) for path in args.replay]
        length = model.config.world_model.context_length
        rng = np.random.default_rng(args.seed)
        frames, actions = openings(replays, length, args.at, args.count, rng)
    except ValueError as err:
        raise SystemExit(f"{prog}: {err}") from err
    model.set_start_contexts(*encode_contexts(model, frames, actions))
    command = shlex.join(["python", "-m", "rem_train.set_openings", *(argv or sys.argv[1:])])
    record = {"command": command, "preset": f"openings ({args.at})", "openings": len(frames)}
    folder = export_with_lineage(model, source.actor_critic, Path(args.out), args.model, record)
    print(f"{len(frames)} openings ({args.at}, {length} frames each) -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
