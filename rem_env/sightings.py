"""Where the ball goes out of sight: up into the bricks, down past the paddle, or in mid-flight.

In Breakout the ball leaves the open area between the bricks and the paddle (where
:class:`rem_env.probes.BreakoutBallProbe` looks for it) in two places only: up into the bricks
through a gap, from where it comes back down a few steps later, and down past the paddle. A
dream whose ball vanishes in mid-flight, or goes up to the bricks and never comes back, has lost
it: what it then pays or ends is read from frames without a ball, and an agent in it cannot
follow one.

:func:`count_departures` reads this from frames: every time the ball is found in one frame and
not in the next of the same episode, by where it was last found (:data:`TOP_ROW`,
:data:`rem_env.returns.LOW_ROW`) and which way it was going, and whether it was found again
within :data:`AGAIN_STEPS` steps of the same episode. ``rem-env events``
(:func:`rem_env.events.measure_event_rates`) counts both sides of the same play. On real
Breakout with the player that follows the ball (``rem-env events REM-Breakout-v0 --num-envs 16
--steps 300 --policy follow``) the ball went up into the bricks 32 times (found again every
time), down past the paddle 138 times and never out of sight in mid-flight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rem_env.returns import LOW_ROW

__all__ = ["AGAIN_STEPS", "TOP_ROW", "SightCounts", "count_departures"]

TOP_ROW = 36.0
"""A ball last found above this row (of 64) and not going down left sight at the bricks (the
open area's top is row 29; its band of rows 29-35 is where the ball meets the lowest bricks)."""

AGAIN_STEPS = 16
"""A ball found again within this many steps of the same episode came back."""


@dataclass(frozen=True)
class SightCounts:
    """Times the ball was found in a frame and not in the next one of the same episode.

    Attributes:
        bricks: Last found above :data:`TOP_ROW`, not going down: up into the bricks.
        bricks_back: Of those, found again within :data:`AGAIN_STEPS` steps.
        paddle: Last found at or below :data:`rem_env.returns.LOW_ROW`, not going up: down past
            the paddle.
        flight: Anywhere else, or going the other way: gone in mid-flight.
        flight_back: Of those, found again within :data:`AGAIN_STEPS` steps.
    """

    bricks: int
    bricks_back: int
    paddle: int
    flight: int
    flight_back: int

    def cells(self) -> tuple[str, str, str]:
        """The table cells: ``"33 (32 back)"``, ``"138"``, ``"0 (0 back)"``."""
        return (
            f"{self.bricks} ({self.bricks_back} back)",
            f"{self.paddle}",
            f"{self.flight} ({self.flight_back} back)",
        )


def count_departures(rows: np.ndarray, found: np.ndarray, episodes: np.ndarray) -> SightCounts:
    """Counts where N envs' balls went out of sight.

    Args:
        rows: (T, N) float row of the ball in each frame, in pixels of a 64x64 frame (any value
            where not found).
        found: (T, N) bool: the ball was found.
        episodes: (T, N) int: which episode each frame belongs to; a ball found in the last
            frame of an episode did not leave sight, and whether it came back is read only from
            its own episode's frames.

    A departure whose episode goes on past the recorded frames without the ball found again
    within :data:`AGAIN_STEPS` is not counted (its outcome is unknown).

    Example:
        >>> rows = np.array([40.0, 36, 32, 30, 0, 0, 31, 35, 50, 0])[:, None]
        >>> found = (rows > 0) & (np.arange(10) != 9)[:, None]  # up into the bricks, back down
        >>> count_departures(rows, found, np.zeros((10, 1), dtype=int))
        SightCounts(bricks=1, bricks_back=1, paddle=0, flight=0, flight_back=0)
    """
    rows, found, episodes = np.asarray(rows), np.asarray(found, dtype=bool), np.asarray(episodes)
    if not rows.shape == found.shape == episodes.shape or rows.ndim != 2:
        raise ValueError(
            f"rows, found and episodes must be (T, N) alike, got {rows.shape}, {found.shape}, "
            f"{episodes.shape}"
        )
    steps = rows.shape[0]
    counts = dict.fromkeys(("bricks", "bricks_back", "paddle", "flight", "flight_back"), 0)
    left = found[:-1] & ~found[1:] & (episodes[:-1] == episodes[1:])  # (T-1, N)
    for t, env in zip(*np.nonzero(left), strict=True):
        later = np.arange(t + 1, min(t + 1 + AGAIN_STEPS, steps))
        own = later[np.cumprod(episodes[later, env] == episodes[t, env]).astype(bool)]
        back = bool(found[own, env].any())
        if not back and len(own) == len(later) < AGAIN_STEPS:
            continue  # the frames end before the outcome is known
        row = rows[t, env]
        before = t > 0 and found[t - 1, env] and episodes[t - 1, env] == episodes[t, env]
        step = row - rows[t - 1, env] if before else 0.0  # > 0: going down
        if row < TOP_ROW and step <= 0:
            counts["bricks"] += 1
            counts["bricks_back"] += back
        elif row >= LOW_ROW and step >= 0:
            counts["paddle"] += 1
        else:
            counts["flight"] += 1
            counts["flight_back"] += back
    return SightCounts(**counts)
