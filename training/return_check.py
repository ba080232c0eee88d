"""Does the dream let the paddle decide? Dreams from the real frames where a ball reached it.

In Breakout the frame after the ball's lowest sighting decides a life: a ball that came down
onto the paddle is seen going up again the step after, one that came down beside it is never
seen again (the game takes the life about ten steps later). ``rem-env events`` counts what a
dream does with the balls it drew itself (:mod:`rem_env.returns`); this check starts dreams
from the real frames at each such moment of a replay, and asks the one question the game has
already answered: is a ball shown again?

A case is a frame t where the ball is seen in frames t-1 and t, low (row :data:`LOW_ROW` or
below, of 64) and coming down, and not seen in frame t+1 (it is at the paddle, or past it).
The game *returned* it if the ball is seen in frame t+2, and *lost* it if the ball is not seen
in frames t+2 .. t+9 (frames of one episode only). Each case's dreams start from the real
frames up to t+1 (``context`` of them) and are stepped with the real actions that followed;
the check reports the share of dreams that show the ball at their first imagined frame (frame
t+2) and within their first ``steps`` frames. The game: 1.0 for returned balls, 0.0 for lost
ones.

Example:
    python -m rem_train.return_check warm_starts/Breakout-patch-2 runs/held/replay \\
        --segments 2048 --dreams 8
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rem_env import REMModel
from rem_env.dream import DreamVectorEnv
from rem_env.returns import LOST_STEPS, LOW_ROW, RETURN_PROBES
from rem_train.batches import frames_to_tensor
from rem_train.replay import ReplayBuffer
from rem_train.sources import replay_check_parser, run_replay_check

__all__ = ["ReturnShares", "build_parser", "check_returns", "find_cases", "main"]

CHUNK = 512
"""Dreams stepped together."""


@dataclass(frozen=True)
class ReturnShares:
    """Dreams of the balls the game returned (or lost).

    Attributes:
        cases: Real balls of that outcome found in the segments.
        dreams: Dreams started from them.
        first_step: Share of the dreams whose first imagined frame shows the ball (None
            without dreams).
        within: Share of the dreams that show it in any of their first ``steps`` frames.
    """

    cases: int
    dreams: int
    first_step: float | None
    within: float | None


def find_cases(
    found: np.ndarray, rows: np.ndarray, real: np.ndarray, ends: np.ndarray, context: int
) -> list[tuple[int, int, str]]:
    """The cases of (B, T) segments: ``(segment, t, "returned" or "lost")``.

    Args:
        found: (B, T) bool, the ball seen in a frame (the open area, as the probe looks).
        rows: (B, T) its row, of 64.
        real: (B, T) bool, the frame is in the replay (not padding).
        ends: (B, T) bool, the frame is its episode's last.
        context: Real frames the dreams start from (up to frame t+1): a case needs them in
            its segment.

    Example:
        >>> found = np.array([[1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1]], bool)  # back at frame 4
        >>> rows = np.array([[40.0, 45, 50, 0, 49, 45, 40, 35, 31, 30, 31, 35]])
        >>> real, ends = np.ones_like(found), np.zeros_like(found)
        >>> find_cases(found, rows, real, ends, context=2)
        [(0, 2, 'returned')]
        >>> found[0, 4:] = False  # never seen again: lost
        >>> find_cases(found, rows, real, ends, context=2)
        [(0, 2, 'lost')]
    """
    cases = []
    length = found.shape[1]
    for segment in range(found.shape[0]):
        for t in range(max(1, context - 2), length - 1 - LOST_STEPS):
            start = min(t - 1, t + 2 - context)  # the first frame looked at
            if not real[segment, start : t + 2 + LOST_STEPS].all():  # up to frame t+9
                continue
            if ends[segment, start : t + 1 + LOST_STEPS].any():  # one episode up to t+9
                continue
            if not (found[segment, t - 1] and found[segment, t]) or found[segment, t + 1]:
                continue
            if rows[segment, t] < LOW_ROW or rows[segment, t] <= rows[segment, t - 1]:
                continue
            later = found[segment, t + 2 : t + 2 + LOST_STEPS]
            if later[0]:
                cases.append((segment, t, "returned"))
            elif not later.any():
                cases.append((segment, t, "lost"))
    return cases


@torch.no_grad()
def check_returns(
    model: REMModel,
    replay: ReplayBuffer,
    rng: np.random.Generator,
    segments: int = 2048,
    length: int = 20,
    dreams: int = 8,
    context: int = 2,
    steps: int = 3,
    temperature: float = 1.0,
    batch_size: int = 32,
) -> dict[str, ReturnShares]:
    """Dreams ``dreams`` times from every case of ``segments`` replay segments (Breakout).

    Args:
        model: The model that dreams (left in eval mode).
        replay: Real segments are drawn from it.
        rng: Draws the segments and the dreams' seed.
        segments: Segments drawn.
        length: Frames per segment (at least ``context + 10``).
        dreams: Dreams started from each case.
        context: Real frames each dream starts from, the last one frame t+1.
        steps: Imagined frames looked at (the real actions of those steps).
        temperature: The dreams' sampling temperature.
        batch_size: Segments probed at a time.

    Returns:
        ``{"returned": ReturnShares, "lost": ReturnShares}``.

    Raises:
        ValueError: If ``length`` is too short for ``context`` and the outcome, or ``steps``
            is not in [1, 8].

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, "Breakout"))
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (64, 64, 3)) as buf:
        ...     for t in range(30):
        ...         buf.append(np.zeros((64, 64, 3), np.uint8), 0, 0.0, terminated=t == 29)
        ...     shares = check_returns(model, buf, np.random.default_rng(0), segments=4)
        >>> shares["lost"]  # no ball in these frames: no case
        ReturnShares(cases=0, dreams=0, first_step=None, within=None)
    """
    if length < context + LOST_STEPS + 2:
        raise ValueError(
            f"segments of {length} frames cannot hold {context} context frames and the "
            f"{LOST_STEPS} frames of the outcome: give --length {context + LOST_STEPS + 2} or more"
        )
    if not 1 <= steps <= LOST_STEPS:
        raise ValueError(f"steps must be in [1, {LOST_STEPS}], got {steps}")
    ball = RETURN_PROBES["Breakout"][0]
    model.eval()
    starts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        "returned": [],
        "lost": [],
    }
    for first in range(0, segments, batch_size):
        batch = replay.sample_segments(min(batch_size, segments - first), length, rng, "right")
        obs = np.asarray(batch.obs)  # (B, T, H, W, C)
        b, t = obs.shape[:2]
        hits = ball.find(obs.reshape(b * t, *obs.shape[2:]))
        found, rows = hits.found.reshape(b, t), hits.positions[:, 0].reshape(b, t)
        actions = np.asarray(batch.actions)
        for segment, frame, kind in find_cases(
            found, rows, np.asarray(batch.mask), np.asarray(batch.ends), context
        ):
            span = slice(frame + 2 - context, frame + 2)  # frames t+2-C .. t+1
            taken = actions[segment, frame + 2 - context : frame + 1]  # between them
            ahead = actions[segment, frame + 1 : frame + 1 + steps]  # after t+1, t+2, ...
            starts[kind].append((obs[segment, span], taken, ahead))
    seed = int(rng.integers(2**31))
    return {
        kind: _dream(model, cases, dreams, steps, temperature, seed)
        for kind, cases in starts.items()
    }


def _dream(
    model: REMModel,
    cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    dreams: int,
    steps: int,
    temperature: float,
    seed: int,
) -> ReturnShares:
    """Shares of ``dreams`` dreams per case that show the ball (see :func:`check_returns`)."""
    if not cases:
        return ReturnShares(0, 0, None, None)
    ball = RETURN_PROBES["Breakout"][0]
    frames = np.repeat(np.stack([case[0] for case in cases]), dreams, axis=0)  # (N, C, H, W, 3)
    taken = np.repeat(np.stack([case[1] for case in cases]), dreams, axis=0)  # (N, C-1)
    ahead = np.repeat(np.stack([case[2] for case in cases]), dreams, axis=0)  # (N, steps)
    first_seen, seen = [], []
    for start in range(0, len(frames), CHUNK):
        chunk = slice(start, start + CHUNK)
        n, c = frames[chunk].shape[:2]
        pixels = frames_to_tensor(torch.as_tensor(frames[chunk]).flatten(0, 1))
        tokens = model.encode(pixels).unflatten(0, (n, c))  # (n, C, K)
        env = DreamVectorEnv(model, n, temperature=temperature)
        env.reset(seed=seed + start, options={"contexts": (tokens, taken[chunk])})
        shown = np.zeros((n, steps), bool)
        for k in range(steps):
            observation, *_ = env.step(ahead[chunk, k])
            shown[:, k] = ball.find(observation).found
        env.close()
        first_seen.append(shown[:, 0])
        seen.append(shown.any(axis=1))
    return ReturnShares(
        len(cases),
        len(frames),
        float(np.concatenate(first_seen).mean()),
        float(np.concatenate(seen).mean()),
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rem_train.return_check``."""
    parser = replay_check_parser(
        "python -m rem_train.return_check",
        "Breakout: dreams from the real frames where a ball reached the paddle (returned or "
        "lost in the game), stepped with the real actions; the share that show the ball again.",
        segments=2048,
        length=20,
    )
    parser.add_argument("--dreams", type=int, default=8, help="dreams from each real case")
    parser.add_argument("--context", type=int, default=2, help="real frames a dream starts from")
    parser.add_argument("--steps", type=int, default=3, help="imagined frames looked at")
    parser.add_argument("--temperature", type=float, default=1.0, help="dream temperature")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rem_train.return_check MODEL REPLAY``: prints the shares as JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dreams < 1 or args.context < 1 or args.temperature < 0:
        parser.error("--dreams and --context must be positive, --temperature not negative")
    if not 1 <= args.steps <= LOST_STEPS:
        parser.error(f"--steps must be in [1, {LOST_STEPS}]")
    if args.length < args.context + LOST_STEPS + 2:
        parser.error(f"--length must be at least --context + {LOST_STEPS + 2}")
    return run_replay_check(
        parser,
        argv,
        lambda source, replay, rng, segments, length: check_returns(
            source.model,
            replay,
            rng,
            segments,
            length,
            args.dreams,
            args.context,
            args.steps,
            args.temperature,
        ),
        refuse=lambda source: (
            None if source.game in RETURN_PROBES else f"no return check for game {source.game!r}"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
