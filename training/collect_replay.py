"""Play the real game and store every step in a replay folder, without training anything.

The checks and pretrainings that read real segments (``python -m rem_train.event_check``,
``object_check``, ``pretrain_frame_conv``) take a replay folder of rem-train's format. A run
keeps one (``RUN/replay``), but its games are the ones it trained on; a held-out replay, or far
more real steps than a run collects (the real game runs thousands of steps a second here), come
from this command. Each episode is played by the game's scripted player (``--scripted-share``;
Breakout: it follows the ball, reading the emulator's RAM), by its screen-blind policy with the
paddle parked at a wall (``--parked-share``), or else by the actor-critic of ``--model`` (as
``rem-train`` collects: temperature 1, epsilon 0.01) or, without ``--model``, uniformly random
actions. The env is rem-train's train env (REM's train protocol: a life lost ends an episode).

Writes ``OUT/replay`` (an existing one is added to) and ``OUT/collect.json``: the command, the
steps, episodes, rewards and episode ends added, and the seconds it took.

Example:
    python -m rem_train.collect_replay --game Breakout --steps 30000 --scripted-share 0.75 \\
        --parked-share 0.1 --seed 7 --out runs/held_out
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rem_env.registration import ATARI_100K_GAMES
from rem_train.collect import Collector
from rem_train.replay import ReplayBuffer
from rem_train.sources import load_source

__all__ = ["CollectedReplay", "collect_replay", "main"]

EPSILON = 0.01
"""Share of uniformly random actions of the actor-critic (rem-train's ``collect.epsilon``)."""


@dataclass(frozen=True)
class CollectedReplay:
    """What one call added to a replay folder.

    Attributes:
        steps: Steps stored.
        episodes: Episodes finished (lives, under the train protocol).
        rewards: Steps with a non-zero reward.
        ends: Steps that ended an episode (``terminated``).
        mean_return: Mean return of the finished episodes (None: none finished).
        seconds: Wall time of the collection.
    """

    steps: int
    episodes: int
    rewards: int
    ends: int
    mean_return: float | None
    seconds: float


def collect_replay(
    game: str,
    steps: int,
    replay_dir: str | Path,
    seed: int = 0,
    model: str | None = None,
    scripted_share: float = 0.0,
    parked_share: float = 0.0,
    serve_wait: int = 0,
    max_raw_frames: int | None = None,
) -> CollectedReplay:
    """Plays ``steps`` real steps of ``game`` into the replay folder ``replay_dir``.

    Args:
        game: Atari 100K game.
        steps: Steps to store.
        replay_dir: The replay folder (created, or added to).
        seed: Seed of the env and of the players.
        model: A model folder, run folder or checkpoint whose actor-critic plays the episodes the
            shares leave (None: uniformly random actions).
        scripted_share: Share of episodes played by the game's scripted player.
        parked_share: Share played by its screen-blind policy, parked at a wall drawn per
            episode.
        serve_wait: The scripted player waits a uniform 0 to this many steps before each serve.
        max_raw_frames: Raw-frame limit of an episode (None: REM's 20,000).

    Raises:
        ValueError: On shares outside [0, 1] or adding up to more than 1, a game without the
            player a share asks for, a model of another game, or ``steps < 1``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     added = collect_replay("Breakout", 50, d, seed=0, scripted_share=1.0)
        >>> added.steps, added.ends <= added.steps
        (50, True)
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if game not in ATARI_100K_GAMES:
        raise ValueError(f"unknown game {game!r}; Atari 100K games: {sorted(ATARI_100K_GAMES)}")
    for name, share in (("scripted_share", scripted_share), ("parked_share", parked_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if scripted_share + parked_share > 1.0:
        raise ValueError(
            f"the shares of episodes add up to at most 1, got {scripted_share + parked_share:g}"
        )
    if serve_wait < 0:
        raise ValueError(f"serve_wait must be >= 0, got {serve_wait}")
    source = None
    if model is not None:
        source = load_source(model)
        if source.game != game:
            raise ValueError(f"{model} was trained on {source.game}, not {game}")
    collector = Collector(
        game,
        seed=seed,
        temperature=1.0,
        epsilon=EPSILON,
        burn_in=0,
        burn_in_actions=True,
        max_raw_frames=max_raw_frames,
        scripted_share=scripted_share,
        scripted_serve_wait=serve_wait,
        parked_share=parked_share,
    )
    start = time.perf_counter()
    with ReplayBuffer(replay_dir, fsync=False) as replay:
        first = replay.num_steps
        try:
            played = collector.collect(
                source.model if source else None, source.actor_critic if source else None,
                replay, steps,
            )  # fmt: skip
        finally:
            collector.close()
        labels = replay.step_labels(first)
        rewards = int(np.count_nonzero(labels.rewards))
        ends = int(np.count_nonzero(labels.terminated))
    return CollectedReplay(
        steps=played["steps"],
        episodes=played["episodes"],
        rewards=rewards,
        ends=ends,
        mean_return=played["mean_return"],
        seconds=round(time.perf_counter() - start, 1),
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rem_train.collect_replay``."""
    parser = argparse.ArgumentParser(
        prog="python -m rem_train.collect_replay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--game",
        default="Breakout",
        choices=sorted(ATARI_100K_GAMES),
        help="Atari game played (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, required=True, help="real steps to store")
    parser.add_argument(
        "--out", required=True, help="output folder: OUT/replay (added to) and OUT/collect.json"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model folder, run folder or checkpoint whose actor-critic plays the episodes the "
        "shares leave (default: uniformly random actions)",
    )
    parser.add_argument(
        "--scripted-share",
        type=float,
        default=0.0,
        help="share of episodes the game's scripted player plays (Breakout: follows the ball)",
    )
    parser.add_argument(
        "--parked-share",
        type=float,
        default=0.0,
        help="share of episodes played with the paddle parked at a wall (lives lost there)",
    )
    parser.add_argument(
        "--serve-wait",
        type=int,
        default=0,
        help="the scripted player waits a uniform 0 to N steps before each serve",
    )
    parser.add_argument(
        "--max-raw-frames", type=int, default=None, help="raw-frame limit of an episode"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the games and the players")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints what was added and returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    try:
        added = collect_replay(
            args.game, args.steps, out / "replay", args.seed, args.model, args.scripted_share,
            args.parked_share, args.serve_wait, args.max_raw_frames,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    command = shlex.join(["python", "-m", "rem_train.collect_replay", *argv])
    record = {"command": command, "game": args.game, **added.__dict__}
    (out / "collect.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{out / 'replay'}: {added.steps} steps added ({added.episodes} episodes, "
        f"{added.rewards} rewards, {added.ends} ends) in {added.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
