"""Breakout's ball at the bottom, returned or lost by the paddle's distance: frames and counts."""

from __future__ import annotations

import json

import numpy as np

from rem_env.events import EventRates
from rem_env.returns import BreakoutPaddle, ReturnCounts, count_returns

FRAMES = 14


def _descent(rows_after: list[float], paddle: float, episodes: list[int] | None = None):
    """One env: the ball comes down at column 20 to row 50, then ``rows_after`` (nan: unseen)."""
    rows = np.array([40.0, 45.0, 50.0, *rows_after] + [np.nan] * FRAMES)[:FRAMES, None]
    found = np.isfinite(rows)
    cols = np.full((FRAMES, 1), 20.0)
    paddles = np.full((FRAMES, 1), paddle)
    ids = np.zeros((FRAMES, 1), dtype=int) if episodes is None else np.array(episodes)[:, None]
    return count_returns(np.nan_to_num(rows), cols, found, paddles, ids)


def test_a_ball_that_comes_back_up_is_returned_and_one_never_seen_again_lost() -> None:
    up = [47.0, 43.0, 39.0, 35.0, 31.0, 27.0, 23.0, 19.0, 15.0, 11.0, 7.0]
    assert _descent(up, paddle=22.0) == ReturnCounts((1, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0))
    far = _descent([], paddle=40.0)  # 20 pixels away, never seen again
    assert far == ReturnCounts((0, 0, 0, 0), (0, 0, 1, 0), (0, 0, 0, 0))
    assert _descent([], paddle=np.nan).lost == (0, 0, 0, 1)  # no paddle in the frames
    # Seen again 6 steps on (a new ball in the same episode): neither returned nor lost.
    late = [np.nan] * 5 + [30.0] * 6
    assert _descent(late, paddle=25.0).unclear == (0, 1, 0, 0)


def test_a_ball_is_judged_only_by_the_frames_of_its_own_episode() -> None:
    # The episode ends two steps after the lowest sighting; the next one starts with a ball
    # high up, which is not the lost ball coming back.
    episodes = [0] * 5 + [1] * (FRAMES - 5)
    counts = _descent([np.nan, np.nan, 20.0, 20.0, 20.0], paddle=40.0, episodes=episodes)
    assert counts.lost == (0, 0, 1, 0) and sum(counts.returned) == 0
    # Frames that stop before the outcome is known count nothing.
    short = count_returns(
        np.array([[40.0], [45.0], [50.0]]), np.full((3, 1), 20.0), np.ones((3, 1), dtype=bool),
        np.full((3, 1), 20.0), np.zeros((3, 1), dtype=int),
    )  # fmt: skip
    assert short == ReturnCounts((0, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0))


def test_the_paddle_is_found_in_real_frames_where_the_ram_puts_it() -> None:
    from rem_env.atari import make_atari_env

    env = make_atari_env("Breakout", True, seed=0)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    paddle = BreakoutPaddle()
    for action in [1] + [3] * 12 + [2] * 30:  # serve, left, then right to the wall
        obs, *_ = env.step(action)
        found = paddle.find(obs[None])[0]
        # RAM byte 72: the paddle's left edge + 47 (raw pixels); its centre at 64x64 columns
        expected = (int(ale.getRAM()[72]) - 47 + 8) * 64 / 160 - 0.5
        assert abs(found - expected) <= 1.5, (found, expected)
    env.close()


def test_the_return_table_reads_back_from_json() -> None:
    counts = ReturnCounts((20, 13, 0, 0), (5, 8, 144, 0), (7, 2, 1, 0))
    rates = EventRates(
        dream_steps=400, dream_ends=3, dream_rewards=0, real_steps=400, real_ends=5,
        real_rewards=0, temperature=1.0, real_returns=counts,
        dream_returns=ReturnCounts((55, 27, 110, 0), (6, 1, 17, 0), (6, 7, 18, 0)),
    )  # fmt: skip
    table = rates.table()
    assert "| policy: side | ball down to the paddle, returned / lost: paddle 0-4 px" in table
    assert "| random policy: real game | 20 / 5 | 13 / 8 | 0 / 144 | 0 / 0 |" in table
    assert "| random policy: dream | 55 / 6 | 27 / 1 | 110 / 17 | 0 / 0 |" in table
    assert EventRates.from_dict(json.loads(json.dumps(rates.to_dict()))) == rates
    older = {k: v for k, v in rates.to_dict().items() if not k.endswith("_returns")}
    assert "returned / lost" not in EventRates.from_dict(older).table()


def test_the_paddle_is_read_from_the_ball_s_own_episode() -> None:
    # The episode ends one frame after the lowest sighting; the next episode's first frame has a
    # paddle right under where the ball was, which says nothing of the miss.
    rows = np.array([40.0, 45.0, 50.0] + [0.0] * (FRAMES - 3))[:, None]
    found = np.zeros((FRAMES, 1), dtype=bool)
    found[:3] = True
    paddles = np.full((FRAMES, 1), 21.0)
    paddles[3] = 40.0  # the last frame of the ball's episode: far from it
    episodes = np.array([0] * 4 + [1] * (FRAMES - 4))[:, None]
    counts = count_returns(rows, np.full((FRAMES, 1), 20.0), found, paddles, episodes)
    assert counts.lost == (0, 0, 1, 0), counts
