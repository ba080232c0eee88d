"""Does the paddle decide where the ball goes? A ball at the bottom, returned or lost.

An agent learns to follow Breakout's ball only where missing it costs something: in the game a
ball that comes down where the paddle is not is lost (and the life with it), one that comes down
onto the paddle comes back up. A dream that shows the ball going up again where the paddle was
not (bounced off the floor, served anew, or coming back out of the wall as if it had gone up
there) pays a paddle parked at a wall as well as one that follows the ball.

:func:`count_returns` reads this from frames: for every time the ball is seen coming down to
the bottom of the open area (its lowest sighting before it turns or goes), whether a ball was
seen higher up within :data:`RETURN_STEPS` steps (returned, whichever ball it is) or none was
seen in the :data:`LOST_STEPS` steps after it, or its episode ended first (lost), by how far
the paddle was from it (:data:`DISTANCE_BINS`, pixels of a 64x64 frame). The ball is found by
:class:`rem_env.probes.BreakoutBallProbe`, the paddle by :class:`rem_env.probes.BreakoutPaddle`.
``rem-env events`` (:func:`rem_env.events.measure_event_rates`) counts both sides of the same
play. On real Breakout under random play (16 games x 400 steps, seed 0) no ball that came down
8 pixels or more from the paddle came back (144 lost), and 20 of the 25 that came down within
4 pixels of it did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rem_env.probes import BreakoutBallProbe, BreakoutPaddle

__all__ = [
    "DISTANCE_BINS",
    "LOST_STEPS",
    "RETURN_PROBES",
    "RETURN_STEPS",
    "ReturnCounts",
    "count_returns",
]

DISTANCE_BINS: tuple[tuple[float, float | None], ...] = ((0.0, 4.0), (4.0, 8.0), (8.0, None))
"""Distances of the paddle from the ball (columns, pixels of a 64x64 frame; None: no bound)."""

RETURN_STEPS = 4
"""A ball seen higher up within this many steps after its lowest sighting came back."""

LOST_STEPS = 8
"""A ball not seen in this many steps after its lowest sighting (or whose episode ended first)
is lost."""

LOW_ROW = 48.0
"""Lowest sightings at or below this row (of 64) count: the ball near the paddle."""


RETURN_PROBES: dict[str, tuple[BreakoutBallProbe, BreakoutPaddle]] = {
    "Breakout": (BreakoutBallProbe(), BreakoutPaddle())
}
"""Games whose ball returns are counted: the probe of the ball and the paddle's finder."""


@dataclass(frozen=True)
class ReturnCounts:
    """Balls seen coming down to the bottom, by the paddle's distance from them.

    Each tuple has one count per :data:`DISTANCE_BINS` entry, then one for frames with no
    paddle found.

    Attributes:
        returned: Balls seen going up again within :data:`RETURN_STEPS` steps.
        lost: Balls not seen again within :data:`LOST_STEPS` steps, or whose episode ended
            before they were.
        unclear: The others (seen again, but not higher up within :data:`RETURN_STEPS`).
    """

    returned: tuple[int, ...]
    lost: tuple[int, ...]
    unclear: tuple[int, ...]

    def cell(self, index: int) -> str:
        """``"returned / lost"`` of one distance bin, e.g. ``"0 / 146"``."""
        return f"{self.returned[index]} / {self.lost[index]}"


def count_returns(
    rows: np.ndarray, cols: np.ndarray, found: np.ndarray, paddles: np.ndarray,
    episodes: np.ndarray,
) -> ReturnCounts:  # fmt: skip
    """Counts the returned and lost balls of N envs' frames.

    Args:
        rows: (T, N) float row of the ball in each frame (any value where not found).
        cols: (T, N) float column of the ball.
        found: (T, N) bool: the ball was found.
        paddles: (T, N) float column of the paddle (nan where none).
        episodes: (T, N) int: which episode each frame belongs to (frames of one episode share
            a number); a ball's outcome is read only from its own episode's frames.

    Positions are in pixels of a 64x64 frame (:data:`LOW_ROW` and :data:`DISTANCE_BINS` are):
    scale those of other sizes first.

    Example:
        >>> t = 12
        >>> rows = np.array([40.0, 44, 50, 46, 42, 38] + [30.0] * 6)[:, None]  # comes back up
        >>> cols = np.full((t, 1), 20.0)
        >>> found = np.ones((t, 1), dtype=bool)
        >>> paddle = np.full((t, 1), 21.0)  # right under it
        >>> counts = count_returns(rows, cols, found, paddle, np.zeros((t, 1), dtype=int))
        >>> counts.returned, counts.lost
        ((1, 0, 0, 0), (0, 0, 0, 0))
    """
    bins = len(DISTANCE_BINS) + 1
    returned, lost, unclear = ([0] * bins for _ in range(3))
    steps = rows.shape[0]
    for t, env in zip(*np.nonzero(found[1:-1] & found[:-2]), strict=True):
        t += 1  # frame t, with the ball in frames t-1 and t
        same = episodes[t - 1, env] == episodes[t, env]
        if not same or rows[t, env] < LOW_ROW or rows[t, env] <= rows[t - 1, env]:
            continue
        if found[t + 1, env] and rows[t + 1, env] > rows[t, env]:
            continue  # still coming down: not its lowest sighting
        later = np.arange(t + 1, min(t + 1 + LOST_STEPS, steps))
        own = episodes[later, env] == episodes[t, env]
        if len(later) < LOST_STEPS and own.all():
            continue  # the frames end before the outcome is known
        later = later[np.cumprod(own).astype(bool)]  # up to the episode's end
        seen = found[later, env]
        up = seen[:RETURN_STEPS] & (rows[later[:RETURN_STEPS], env] < rows[t, env] - 1)
        near = paddles[later[:2], env]  # the paddle at the ball's next frames, this episode
        distance = np.nanmin(np.abs(near - cols[t, env])) if np.isfinite(near).any() else None
        index = len(DISTANCE_BINS) if distance is None else _bin(distance)
        if up.any():
            returned[index] += 1
        elif not seen.any():
            lost[index] += 1
        else:
            unclear[index] += 1
    return ReturnCounts(tuple(returned), tuple(lost), tuple(unclear))


def _bin(distance: float) -> int:
    for index, (low, high) in enumerate(DISTANCE_BINS):
        if distance >= low and (high is None or distance < high):
            return index
    raise ValueError(f"no distance bin holds {distance}")
