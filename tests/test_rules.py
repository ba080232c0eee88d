"""Reward rules read from pixels: Breakout's bricks on real frames, matched with real rewards."""

from __future__ import annotations

import numpy as np
import pytest

from rem_env.atari import make_atari_env
from rem_env.probes import BreakoutBallFollower
from rem_env.rules import BreakoutBricks, RuleCounts, rule_counts


def _scripted_play(steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames before and after each real step (REM's training preprocessing: a lost life ends
    the episode), and its reward, of the scripted player."""
    env = make_atari_env("Breakout", train=True, seed=seed)
    ale = env.unwrapped.ale
    player = BreakoutBallFollower(epsilon=0.1, seed=seed)
    obs, _ = env.reset()
    before, after, rewards = [], [], []
    for _ in range(steps):
        new, reward, terminated, truncated, _ = env.step(int(player.act(ale.getRAM()[None])[0]))
        before.append(obs)
        after.append(new)
        rewards.append(reward != 0)
        obs = env.reset()[0] if terminated or truncated else new
    env.close()
    return np.stack(before), np.stack(after), np.array(rewards)


def test_every_real_reward_breaks_a_brick_and_every_brick_broken_pays() -> None:
    before, after, rewards = _scripted_play(1500, seed=4)
    lost, back = BreakoutBricks().compare(before, after)
    counts = rule_counts(lost[:, None], back[:, None], rewards[:, None], np.ones((1500, 1), bool))
    assert counts.rewards >= 20  # the scripted player scores
    assert counts.losses_with_reward == counts.lost > 0
    assert counts.rewards_with_loss == counts.rewards
    assert counts.back == 0  # no wall is cleared in 1,500 steps


def test_the_ball_alone_breaks_no_brick() -> None:
    before, after, rewards = _scripted_play(400, seed=5)
    quiet = ~rewards
    quiet[1:] &= ~rewards[:-1]  # neither this step nor the one before paid
    lost, back = BreakoutBricks().compare(before[quiet], after[quiet])
    assert not lost.any() and not back.any()


def test_a_brick_that_comes_back_and_a_flicker_are_counted() -> None:
    wall = np.zeros((4, 64, 64, 3), np.uint8)
    wall[:, 17:29, 3:61] = 110  # every brick (RGB sum 330)
    gone = wall.copy()
    gone[:, 21:23, 28:32] = 0  # brick (2, 8)
    rule = BreakoutBricks()
    # frames: wall -> gone -> wall -> wall -> gone (a dream that breaks one brick twice)
    frames = np.stack([wall[0], gone[0], wall[0], wall[0], gone[0]])
    lost, back = rule.compare(frames[:-1], frames[1:])
    assert lost.tolist() == [True, False, False, True] and back.tolist() == [
        False,
        True,
        False,
        False,
    ]
    paid = np.array([True, False, False, False])
    counts = rule_counts(lost[:, None], back[:, None], paid[:, None], np.ones((4, 1), bool))
    assert counts == RuleCounts(
        rewards=1, lost=2, back=1, rewards_with_loss=1, losses_with_reward=1
    )
    # a step not taken (an env's reset) counts for nothing, and breaks the step-after match
    taken = np.array([[True], [True], [True], [False]])
    assert rule_counts(lost[:, None], back[:, None], paid[:, None], taken).lost == 1
    late = rule_counts(
        np.array([[False], [True]]), np.zeros((2, 1), bool), np.array([[True], [False]]),
        np.array([[True], [False]]),
    )  # fmt: skip
    assert late.rewards_with_loss == 0
    with pytest.raises(ValueError, match="one shape"):
        rule.compare(frames[:2], frames[:3])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        rule.cells(frames[0])
