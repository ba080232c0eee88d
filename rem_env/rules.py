"""Reward rules: the change on screen that comes with a game's reward, to check a dream keeps it.

Fidelity compares a dream with the real game it started from. An agent trained in a dream also
needs the dream to keep its own rules: in Breakout a reward comes with a brick gone from the
wall, and bricks do not come back. A dream that pays with no brick broken, or breaks bricks for
nothing, teaches an agent rewards that nothing on its screen explains.

A :class:`RewardRule` reads, for pairs of consecutive frames, whether one of the objects that go
with a reward was lost or came back. :func:`rule_counts` matches the losses with the rewards of
the same steps; ``rem-env events``
(:func:`rem_env.events.measure_event_rates`) reports them for the dream and for the real game
(where the rule holds by construction: the real side is the probe's own check). A game gets a
rule by adding it to :data:`REWARD_RULES`.

Frames are (N, H, W, 3) uint8 RGB at REM's 64x64 (other sizes scale the rule's geometry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["REWARD_RULES", "BreakoutBricks", "RewardRule", "RuleCounts", "rule_counts"]


class RewardRule(Protocol):
    """The objects a game's reward takes away (or adds), read from pixels."""

    lost: str
    """What a loss is, in reports (``"bricks broken"``)."""
    back: str
    """What a gain is (``"bricks back"``)."""

    def compare(self, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """From two (N, H, W, 3) uint8 frame arrays: (N,) bool where ``after`` lost one of
        the objects ``before`` shows, and (N,) bool where it shows one ``before`` lacks."""
        ...


@dataclass(frozen=True)
class BreakoutBricks:
    """Breakout's bricks: each of the 6 x 18 brick cells of the wall, present or gone.

    The bricks are 8 x 6 raw pixels in six rows from raw row 57 and eighteen columns from raw
    column 8 of the 210x160 screen: at 64x64 a brick covers about 3.2 x 1.8 pixels. A cell's
    value is the mean RGB sum over its area (pixels weighted by the share of them inside it): a
    brick measures about 300, an empty cell between full ones about 120 (the pixels it shares
    with them), an empty cell in an empty row about 50, and the ball adds at most about 60. A
    cell present in one frame (above ``present``) and absent in the next (below ``absent``) is
    a brick broken; the other way
    round, a brick back (a new wall after the last brick, or a picture's mistake). Values in
    between say nothing, so that the ball crossing a gap does not read as a brick. On the
    first 12,000 steps of a real replay (scripted player, a paddle parked at a wall and an
    actor-critic; 290 rewards), every reward came with a brick broken at its step or the next
    and every brick broken with a reward at its step or the one before, and no brick came back
    (a brick hit from below the wall's lowest row fades over two frames: 270, 132, 62).

    Args:
        present: Least cell value of a brick.
        absent: Cell value below which no brick is there.

    Example:
        >>> rule = BreakoutBricks()
        >>> before = np.zeros((2, 64, 64, 3), dtype=np.uint8)
        >>> before[:, 17:29, 3:61] = 110  # a full wall (RGB sum 330)
        >>> after = before.copy()
        >>> after[0, 21:23, 28:32] = 0  # a brick gone in the first frame
        >>> lost, back = rule.compare(before, after)
        >>> lost.tolist(), back.tolist()
        ([True, False], [False, False])
        >>> rule.compare(after, before)[1].tolist()
        [True, False]
    """

    present: float = 200.0
    absent: float = 140.0
    lost: str = "bricks broken"
    back: str = "bricks back"

    def cells(self, frames: np.ndarray) -> np.ndarray:
        """(N, 6, 18) mean RGB sums of the brick cells of (N, H, W, 3) frames."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (N, H, W, 3), got shape {frames.shape}")
        height, width = frames.shape[1:3]
        rows = _overlaps(57 + 6 * np.arange(7), 210, height)  # (6, H): brick rows x pixel rows
        cols = _overlaps(8 + 8 * np.arange(19), 160, width)  # (18, W)
        rows /= rows.sum(1, keepdims=True)
        cols /= cols.sum(1, keepdims=True)
        brightness = frames.astype(np.float64).sum(-1)  # (N, H, W)
        return np.einsum("kh,nhw,jw->nkj", rows, brightness, cols)

    def compare(self, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if np.shape(before) != np.shape(after):
            raise ValueError(
                f"frames must have one shape, got {np.shape(before)} and {np.shape(after)}"
            )
        old, new = self.cells(before), self.cells(after)  # (N, 6, 18) each
        lost = ((old > self.present) & (new < self.absent)).any(axis=(1, 2))
        back = ((old < self.absent) & (new > self.present)).any(axis=(1, 2))
        return lost, back


def _overlaps(edges: np.ndarray, raw: int, size: int) -> np.ndarray:
    """(len(edges) - 1, size): how much of each of ``size`` pixels lies in each raw interval
    ``edges[i]..edges[i + 1]`` of a ``raw``-pixel side."""
    scaled = edges * size / raw  # interval edges in frame pixels
    pixels = np.arange(size)
    low = np.maximum(pixels[None], scaled[:-1, None])
    high = np.minimum(pixels[None] + 1, scaled[1:, None])
    return np.clip(high - low, 0, None)


REWARD_RULES: dict[str, RewardRule] = {"Breakout": BreakoutBricks()}
"""The reward rule of each game that has one."""


@dataclass(frozen=True)
class RuleCounts:
    """Steps that keep or break a reward rule, counted on one side (dream or real game).

    Attributes:
        rewards: Steps with a non-zero reward.
        lost: Steps whose frame lost the rule's object (a brick broken).
        back: Steps whose frame gained one (a brick back).
        rewards_with_loss: Rewards whose step or the next lost the object.
        losses_with_reward: Losses whose step or the one before paid a reward.
    """

    rewards: int
    lost: int
    back: int
    rewards_with_loss: int
    losses_with_reward: int


def rule_counts(
    lost: np.ndarray, back: np.ndarray, rewards: np.ndarray, taken: np.ndarray
) -> RuleCounts:
    """Matches a rule's losses with rewards, step by step in each env.

    Args:
        lost: (steps, envs) bool, :meth:`RewardRule.compare`'s losses of each step's frame
            against the frame before it.
        back: (steps, envs) bool, its gains.
        rewards: (steps, envs) bool, the step paid a non-zero reward.
        taken: (steps, envs) bool, the step is a transition of one episode (not the step that
            resets an env after its episode ended); the other steps count for nothing.

    Example:
        >>> lost = np.array([[False], [True], [False], [True]])
        >>> rewards = np.array([[True], [False], [False], [False]])
        >>> rule_counts(lost, np.zeros((4, 1), bool), rewards, np.ones((4, 1), bool))
        RuleCounts(rewards=1, lost=2, back=0, rewards_with_loss=1, losses_with_reward=1)
    """
    taken = np.asarray(taken, bool)
    lost = np.asarray(lost, bool) & taken  # (steps, envs)
    back = np.asarray(back, bool) & taken
    paid = np.asarray(rewards, bool) & taken
    lost_next = np.zeros_like(lost)
    lost_next[:-1] = lost[1:]  # the next step of the same env (a reset step is never lost)
    paid_before = np.zeros_like(paid)
    paid_before[1:] = paid[:-1]
    return RuleCounts(
        rewards=int(paid.sum()),
        lost=int(lost.sum()),
        back=int(back.sum()),
        rewards_with_loss=int((paid & (lost | lost_next)).sum()),
        losses_with_reward=int((lost & (paid | paid_before)).sum()),
    )
