"""Object probes: where a game's small objects are in real frames, and whether a picture shows them.

PSNR averages over the whole screen, so a tokenizer or a dream that loses Breakout's ball (a few
pixels of a 64x64 frame) loses almost nothing in PSNR. A probe measures the objects themselves:

* :meth:`ObjectProbe.real_positions` reads where the object is from the emulator's RAM (exact,
  and independent of any picture), and says where a picture can be checked for it;
* :meth:`ObjectProbe.find` looks for it in frames (real, reconstructed or dreamed), from pixels.

The fidelity report (:mod:`rem_env.fidelity`) uses the probes of a game to report object recall
in the tokenizer's reconstructions and, per imagined step, how often the dreamed object lies
within :data:`NEAR_PIXELS` of the real one. A game gets probes by adding them to :data:`PROBES`.

Positions are ``(row, column)`` in the frame's own pixels (64x64 for REM), as floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

__all__ = [
    "BLIND_BASELINES",
    "CLOSE_PIXELS",
    "NEAR_PIXELS",
    "PIXEL_PLAYERS",
    "PROBES",
    "SCRIPTED_PLAYERS",
    "BreakoutBallFollower",
    "BreakoutBallProbe",
    "BreakoutPaddle",
    "BreakoutPixelFollower",
    "BreakoutWallParker",
    "ObjectProbe",
    "ProbeHits",
    "RealObjects",
    "probes_for",
]

NEAR_PIXELS = 2.0
"""A found object counts as *at* the real one when its position is this close (frame pixels)."""

CLOSE_PIXELS = 1.0
"""A found object counts as *close* to the real one when its position is this close (frame
pixels): the precision a dream needs to keep a small moving object in place step after step."""

RAW_HEIGHT, RAW_WIDTH = 210, 160
"""The Atari 2600's screen in ale-py."""


class RealObjects(NamedTuple):
    """Where an object really is in N frames (from the emulator's RAM).

    Attributes:
        positions: (N, 2) float ``(row, column)`` in frame pixels (undefined where not visible).
        visible: (N,) bool, the object is on screen.
        checkable: (N,) bool, visible and where :meth:`ObjectProbe.find` can see it (e.g. not
            overlapping another object of the same colour).
    """

    positions: np.ndarray
    visible: np.ndarray
    checkable: np.ndarray


class ProbeHits(NamedTuple):
    """What :meth:`ObjectProbe.find` saw in N frames.

    Attributes:
        positions: (N, 2) float ``(row, column)`` of the object found (undefined where not found).
        found: (N,) bool.
    """

    positions: np.ndarray
    found: np.ndarray


class ObjectProbe(Protocol):
    """Locates one kind of object of one game, in RAM and in pixels."""

    name: str
    """Short name used in reports (``"ball"``)."""

    def real_positions(self, ram: np.ndarray, size: int) -> RealObjects:
        """Where the object is, from (N, 128) uint8 RAM snapshots, in ``size`` x ``size``
        frames."""
        ...

    def find(self, frames: np.ndarray) -> ProbeHits:
        """Looks for the object in (N, H, W, 3) uint8 frames."""
        ...


@dataclass(frozen=True)
class BreakoutBallProbe:
    """Breakout's ball: RAM bytes 99 (x) and 101 (y; 0 while no ball is in play).

    In the raw 210x160 frame the ball is 2 pixels wide and 4 tall, its top-left corner at
    ``(ram[101] + 9, ram[99] - 49)`` (checked against the raw frames: 470 of 471 frames with the
    ball in the open area agree exactly, the other is one pixel off). In pixels the ball is found
    by its red colour (R - (G+B)/2, the ball's is 128 at full coverage) in the open band between
    the lowest row of bricks and the paddle, the only red object there; a ball among the bricks
    or beside the paddle is visible but not checkable.

    Args:
        threshold: Least redness (0-255) of the reddest pixel for a ball to be found; in real
            64x64 frames the ball's reddest pixel measures 61 or more.

    Example:
        >>> probe = BreakoutBallProbe()
        >>> ram = np.zeros((2, 128), dtype=np.uint8)
        >>> ram[0, 99], ram[0, 101] = 110, 120  # a ball in the open area; frame 1 has none
        >>> real = probe.real_positions(ram, size=64)
        >>> real.visible.tolist(), real.checkable.tolist()
        ([True, False], [True, False])
        >>> frames = np.zeros((2, 64, 64, 3), dtype=np.uint8)
        >>> row, col = real.positions[0].round().astype(int)
        >>> frames[0, row, col] = (200, 72, 72)
        >>> hits = probe.find(frames)
        >>> hits.found.tolist(), bool(np.abs(hits.positions[0] - real.positions[0]).max() < 1)
        ([True, False], True)
    """

    name: str = "ball"
    threshold: float = 30.0
    open_top: float = 96.0
    """Raw row below the lowest brick row (bricks end at raw row 92) plus the ball's margin."""
    open_bottom: float = 184.0
    """Raw row above the paddle (raw rows 189-192), less the ball's height."""

    def real_positions(self, ram: np.ndarray, size: int) -> RealObjects:
        ram = np.asarray(ram)
        if ram.ndim != 2 or ram.shape[1] < 102:
            raise ValueError(f"ram must be (N, 128) snapshots, got shape {ram.shape}")
        x = ram[:, 99].astype(np.float64)
        y = ram[:, 101].astype(np.float64)
        raw_row = y + 9 + 1.5  # centre of the 4-pixel-tall ball
        raw_col = x - 49 + 0.5  # centre of the 2-pixel-wide ball
        visible = (y > 0) & (raw_row < RAW_HEIGHT - 14) & (raw_col >= 0) & (raw_col < RAW_WIDTH)
        checkable = visible & (raw_row >= self.open_top) & (raw_row < self.open_bottom)
        positions = np.stack(
            [(raw_row + 0.5) * size / RAW_HEIGHT - 0.5, (raw_col + 0.5) * size / RAW_WIDTH - 0.5],
            axis=1,
        )
        return RealObjects(positions, visible, checkable)

    def find(self, frames: np.ndarray) -> ProbeHits:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (N, H, W, 3), got shape {frames.shape}")
        n, height = frames.shape[:2]
        top = int(np.ceil((self.open_top - 2) * height / RAW_HEIGHT))
        bottom = int(np.floor((self.open_bottom + 2) * height / RAW_HEIGHT))
        band = frames[:, top:bottom].astype(np.float32)  # (N, rows, W, 3)
        red = np.clip(band[..., 0] - (band[..., 1] + band[..., 2]) / 2, 0, None)  # (N, rows, W)
        flat = red.reshape(n, -1)
        best = flat.argmax(axis=1)
        found = flat[np.arange(n), best] >= self.threshold
        rows, cols = np.unravel_index(best, red.shape[1:])
        positions = np.zeros((n, 2))
        for i in range(n):  # redness-weighted centre of the 3x3 window around the reddest pixel
            r0, c0 = max(rows[i] - 1, 0), max(cols[i] - 1, 0)
            window = red[i, r0 : rows[i] + 2, c0 : cols[i] + 2]
            total = window.sum()
            if total <= 0:
                positions[i] = (rows[i] + top, cols[i])
                continue
            r_idx, c_idx = np.indices(window.shape)
            positions[i, 0] = (window * r_idx).sum() / total + r0 + top
            positions[i, 1] = (window * c_idx).sum() / total + c0
        return ProbeHits(positions, found)


PROBES: dict[str, tuple[ObjectProbe, ...]] = {"Breakout": (BreakoutBallProbe(),)}
"""The object probes of each game (games without an entry get object-free reports)."""

SCRIPTED_PLAYERS: dict[str, type] = {}
"""Games with a scripted player (``rem-env fidelity --agent scripted``); filled below."""


def probes_for(game: str) -> tuple[ObjectProbe, ...]:
    """The probes of ``game`` (empty for a game without probes).

    Example:
        >>> [p.name for p in probes_for("Breakout")], probes_for("Pong")
        (['ball'], ())
    """
    return PROBES.get(game, ())


@dataclass(frozen=True)
class BreakoutPaddle:
    """Breakout's paddle: the centre of the longest run of red pixels in its middle row.

    The paddle is 16 raw pixels wide (about 6 at 64x64) on raw rows 189-192; its middle row at
    64x64 is row 58. The ball (2 raw pixels wide) can share the row and is never the longest
    run; a run shorter than ``min_width`` (at 64x64) is no paddle.

    Example:
        >>> frames = np.zeros((2, 64, 64, 3), dtype=np.uint8)
        >>> frames[0, 57:60, 20:26] = (200, 72, 72)  # a paddle over columns 20-25
        >>> frames[0, 58, 40] = (200, 72, 72)  # a ball beside it
        >>> BreakoutPaddle().find(frames).tolist()  # frame 1 shows none
        [22.5, nan]
    """

    min_width: float = 3.0
    redness: float = 40.0
    """Least R - (G + B) / 2 of a paddle pixel (the paddle's is 128)."""

    def find(self, frames: np.ndarray) -> np.ndarray:
        """(N,) float column of the paddle's centre in (N, H, W, 3) frames; nan where none."""
        frames = np.asarray(frames)
        height, width = frames.shape[1:3]
        row = frames[:, int(58 * height / 64)].astype(np.float32)  # (N, W, 3)
        red = np.clip(row[..., 0] - (row[..., 1] + row[..., 2]) / 2, 0, None) > self.redness
        centres = np.full(len(frames), np.nan)
        shortest = self.min_width * width / 64
        for i, on in enumerate(red):
            edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
            starts, stops = edges[::2], edges[1::2]  # runs [start, stop)
            if len(starts) == 0:
                continue
            longest = int(np.argmax(stops - starts))
            if stops[longest] - starts[longest] >= shortest:
                centres[i] = (starts[longest] + stops[longest] - 1) / 2
        return centres


class BreakoutBallFollower:
    """A scripted Breakout player that reads the RAM: serves, then keeps the paddle under the ball.

    It scores (about 27 rewards per 1,000 agent steps with REM's preprocessing, against about 1
    for a random policy) and loses lives often enough for a fidelity report to see both rewards
    and episode ends. With ``epsilon`` it takes a uniformly random action instead, for variety.
    With ``max_serve_wait`` it waits before each serve (a uniform 0 to ``max_serve_wait`` steps,
    moving at random without FIRE): games played at once after every lost life never show that
    the ball comes only after FIRE, and a world model trained on them serves by itself.

    Args:
        epsilon: Probability of a random action.
        seed: Seed of those random choices.
        max_serve_wait: Most agent steps to wait before a serve (0: serve at once).

    Example:
        >>> player = BreakoutBallFollower(seed=0)
        >>> ram = np.zeros((1, 128), dtype=np.uint8)
        >>> int(player.act(ram)[0])  # no ball in play: serve (FIRE)
        1
        >>> patient = BreakoutBallFollower(seed=0, max_serve_wait=5)
        >>> waited = [int(patient.act(ram)[0]) for _ in range(6)]
        >>> waited.index(1) <= 5 and all(a != 1 for a in waited[: waited.index(1)])
        True
    """

    obs_type = "ram"
    num_actions = 4

    def __init__(
        self, epsilon: float = 0.0, seed: int | None = None, max_serve_wait: int = 0
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        if max_serve_wait < 0:
            raise ValueError(f"max_serve_wait must be >= 0, got {max_serve_wait}")
        self.epsilon = epsilon
        self.max_serve_wait = max_serve_wait
        self.rng = np.random.default_rng(seed)
        self.wait: np.ndarray | None = None  # (N,) steps left before each env's serve; -1: none
        waits = f"; waits up to {max_serve_wait} steps before serving" if max_serve_wait else ""
        self.description = (
            f"a scripted player that follows the ball (reads the RAM; random actions with "
            f"probability {epsilon:g}{waits})"
        )

    def act(self, obs: np.ndarray) -> np.ndarray:
        """(N,) int64 actions from (N, 128) uint8 RAM snapshots."""
        ram = np.asarray(obs).astype(np.int64)
        ball_x, ball_y = ram[:, 99] - 48, ram[:, 101]
        paddle_x = ram[:, 72] - 39  # the 16-pixel paddle's centre
        offset = ball_x - paddle_x
        actions = np.where(offset > 3, 2, np.where(offset < -3, 3, 0))  # RIGHT, LEFT, NOOP
        serve = ball_y == 0
        if self.max_serve_wait:
            if self.wait is None or len(self.wait) != len(ram):
                self.wait = np.full(len(ram), -1)
            fresh = serve & (self.wait < 0)  # a serve state reached: draw how long to wait
            self.wait[fresh] = self.rng.integers(self.max_serve_wait + 1, size=int(fresh.sum()))
            waiting = serve & (self.wait > 0)
            moves = self.rng.choice(np.array([0, 2, 3]), size=len(ram))  # NOOP, RIGHT, LEFT
            actions = np.where(waiting, moves, actions)
            serve &= ~waiting
            self.wait = np.where(waiting, self.wait - 1, -1)  # served or in play: draw anew
        actions = np.where(serve, 1, actions)  # FIRE serves a new ball
        explore = self.rng.random(len(ram)) < self.epsilon
        random_actions = self.rng.integers(self.num_actions, size=len(ram))
        return np.where(explore, random_actions, actions).astype(np.int64)

    def episodes_ended(self, done: np.ndarray) -> None:
        """The player reads the RAM afresh every step: nothing to forget."""


SCRIPTED_PLAYERS["Breakout"] = BreakoutBallFollower


class BreakoutPixelFollower:
    """A scripted Breakout player that reads only the frame: follows the ball it sees.

    It plays wherever frames come from, the real game and a dream alike, so the same player can
    be asked of both: does the dream pay following the ball as the game does? The ball is found
    by :class:`BreakoutBallProbe` (in the open area between the bricks and the paddle), the
    paddle by :class:`BreakoutPaddle`. The paddle moves towards where the ball will be two
    steps on (its horizontal speed from the frame before), and towards where it was last seen
    for ``memory`` steps after the probe loses it (the probe does not look beside the paddle).
    With no ball seen for longer it presses FIRE half the time (a serve). On real Breakout with
    REM's training preprocessing (16 games x 300 steps, seed 0) it lost 4.6 lives and earned
    23.7 rewards per 1,000 steps, against a random policy's 25.2 and 6.6.

    Args:
        epsilon: Probability of a uniformly random action instead.
        seed: Seed of the random choices.
        memory: Steps it keeps moving towards a ball it no longer sees.

    Example:
        >>> player = BreakoutPixelFollower(epsilon=0.0, seed=0)
        >>> frames = np.zeros((2, 64, 64, 3), dtype=np.uint8)
        >>> frames[:, 57:60, 8:14] = (200, 72, 72)  # the paddle at the left
        >>> frames[0, 40, 50] = (200, 72, 72)  # a ball at the right in frame 0
        >>> int(player.act(frames)[0])  # RIGHT
        2
    """

    obs_type = "rgb"
    num_actions = 4

    def __init__(self, epsilon: float = 0.05, seed: int | None = None, memory: int = 4) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = epsilon
        self.memory = memory
        self.rng = np.random.default_rng(seed)
        self.probe = BreakoutBallProbe()
        self.paddle = BreakoutPaddle()
        self.seen: np.ndarray | None = None  # (N,) the ball's column in the frame before; nan
        self.target: np.ndarray | None = None  # (N,) the column the paddle heads for
        self.age: np.ndarray | None = None  # (N,) steps since the ball was last seen
        self.description = (
            f"a scripted player that follows the ball it sees in the 64x64 frame (random "
            f"actions with probability {epsilon:g})"
        )

    def act(self, obs: np.ndarray) -> np.ndarray:
        """(N,) int64 actions from (N, 64, 64, 3) uint8 frames."""
        frames = np.asarray(obs)
        n = len(frames)
        if self.seen is None or len(self.seen) != n:
            self.seen, self.target = np.full(n, np.nan), np.zeros(n)
            self.age = np.full(n, self.memory + 1)
        assert self.target is not None and self.age is not None
        hits = self.probe.find(frames)
        column = np.where(hits.found, hits.positions[:, 1], np.nan)
        speed = np.nan_to_num(column - self.seen)  # 0 where either frame lacks the ball
        self.seen = column
        self.target = np.where(hits.found, column + 2 * speed, self.target)
        self.age = np.where(hits.found, 0, self.age + 1)
        width = frames.shape[2]
        paddle = np.nan_to_num(self.paddle.find(frames), nan=width / 2)  # none seen: the middle
        offset = (self.target - paddle) * 64 / width  # in pixels of a 64x64 frame
        actions = np.where(offset > 1.0, 2, np.where(offset < -1.0, 3, 0))  # RIGHT, LEFT, NOOP
        serve = np.where(self.rng.random(n) < 0.5, 1, 0)  # FIRE or NOOP
        actions = np.where(self.age <= self.memory, actions, serve)
        explore = self.rng.random(n) < self.epsilon
        return np.where(explore, self.rng.integers(self.num_actions, size=n), actions).astype(
            np.int64
        )

    def episodes_ended(self, done: np.ndarray) -> None:
        """Forgets the ball of the envs whose episode ended."""
        if self.seen is not None and self.age is not None:
            done = np.asarray(done, dtype=bool)
            self.seen[done] = np.nan
            self.age[done] = self.memory + 1


PIXEL_PLAYERS: dict[str, type] = {"Breakout": BreakoutPixelFollower}
"""Games with a scripted player that reads only frames (``rem-env events --policy follow``)."""


_WALL_ACTIONS = {"right": 2, "left": 3}  # Breakout's minimal action set: NOOP, FIRE, RIGHT, LEFT


class BreakoutWallParker:
    """Breakout without looking at the screen: RIGHT (or LEFT), and FIRE with probability ``fire``.

    REM's test protocol starts every game alike (a no-op start of at most one frame, no sticky
    actions), so the serve flies the same path every time, and a paddle parked at the right wall
    returns it a few times: over 24 real Breakout games this policy scored 7.96 and 7.33 (two sets
    of games), four to five times a random policy, without following the ball.
    ``python -m rem_train.dream_to_real`` and ``python -m rem_train.score`` play it on the same
    real games as the agent, as the floor that an agent which learned the ball must clear.

    The trainer's ``--collect.parked-share`` lets it play at either wall, so that the replay
    shows what happens there (a paddle parked at the left wall misses that serve).

    Args:
        fire: Probability of FIRE at each step (the wall's action otherwise).
        seed: Seed of those choices.
        wall: ``"right"`` or ``"left"``.

    Example:
        >>> parker = BreakoutWallParker(fire=0.5, seed=0)
        >>> frames = np.zeros((64, 64, 64, 3), dtype=np.uint8)
        >>> sorted(set(parker.act(frames).tolist()))  # FIRE and RIGHT only
        [1, 2]
    """

    obs_type = "rgb"
    num_actions = 4

    def __init__(self, fire: float = 0.1, seed: int | None = None, wall: str = "right") -> None:
        if not 0.0 < fire < 1.0:
            raise ValueError(f"fire must lie in (0, 1), got {fire}")
        if wall not in _WALL_ACTIONS:
            raise ValueError(f"wall must be 'right' or 'left', got {wall!r}")
        self.fire = fire
        self.wall = wall
        self.rng = np.random.default_rng(seed)
        self.description = (
            f"{wall.upper()}, FIRE with probability {fire:g} (never looks at the screen)"
        )

    def act(self, obs: np.ndarray) -> np.ndarray:
        """(N,) int64 actions; the N observations are not looked at."""
        move = _WALL_ACTIONS[self.wall]
        return np.where(self.rng.random(len(obs)) < self.fire, 1, move).astype(np.int64)

    def episodes_ended(self, done: np.ndarray) -> None:
        """It remembers nothing."""


BLIND_BASELINES: dict[str, type] = {"Breakout": BreakoutWallParker}
"""Games with a policy that scores without looking at the screen (played beside dream-trained
agents: a score it reaches says nothing of what an agent learned)."""
