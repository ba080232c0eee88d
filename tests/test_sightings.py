"""Where Breakout's ball goes out of sight: counted from tracks, from real play, in the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rem_env.events import EventRates
from rem_env.sightings import AGAIN_STEPS, SightCounts, count_departures

FRAMES = 32


def _track(rows: list[float], episodes: list[int] | None = None) -> SightCounts:
    """One env's ball rows (nan: not found), padded unseen to ``FRAMES`` frames."""
    padded = np.array(rows + [np.nan] * (FRAMES - len(rows)))[:, None]
    ids = np.zeros((FRAMES, 1), dtype=int) if episodes is None else np.array(episodes)[:, None]
    return count_departures(np.nan_to_num(padded), np.isfinite(padded), ids)


def test_departures_are_sorted_by_where_and_which_way_the_ball_went() -> None:
    nan = np.nan
    # Up into the bricks, back down three steps later and down past the paddle.
    bounced = _track([44.0, 38, 32, nan, nan, nan, 31, 37, 43, 49])
    assert bounced == SightCounts(1, 1, 1, 0, 0)
    # Up into the bricks, never again (the episode goes on past the recorded frames).
    assert _track([44.0, 38, 32]) == SightCounts(1, 0, 0, 0, 0)
    # Down past the paddle: not judged here (rem_env.returns counts returns and losses).
    assert _track([40.0, 46, 52]) == SightCounts(0, 0, 1, 0, 0)
    # Gone in mid-flight, found again two steps on; and going down near the top is mid-flight.
    assert _track([38.0, 42, nan, nan, 50]) == SightCounts(0, 0, 1, 1, 1)
    assert _track([30.0, 33]) == SightCounts(0, 0, 0, 1, 0)
    # Seen in one frame only: no direction, so its row decides.
    assert _track([nan, 33.0]) == SightCounts(1, 0, 0, 0, 0)
    assert _track([nan, 42.0]) == SightCounts(0, 0, 0, 1, 0)


def test_the_episode_bounds_what_counts() -> None:
    nan = np.nan
    # The ball's last frame is its episode's last: it did not leave sight.
    assert _track([40.0, 40.0], episodes=[0, 0] + [1] * (FRAMES - 2)) == SightCounts(0, 0, 0, 0, 0)
    # A ball found in the next episode is not the one that left.
    rows = [44.0, 38, 32, nan, nan, 50]
    back_next = _track(rows, episodes=[0] * 5 + [1] * (FRAMES - 5))
    assert back_next == SightCounts(1, 0, 1, 0, 0)
    # Too few frames after the departure to know: not counted; found again late: not back.
    short = count_departures(np.array([[44.0], [38.0], [0.0]]), np.array([[1], [1], [0]]) > 0,
                             np.zeros((3, 1), dtype=int))  # fmt: skip
    assert short == SightCounts(0, 0, 0, 0, 0)
    late = [40.0, 34.0] + [nan] * AGAIN_STEPS + [40.0]
    assert _track(late) == SightCounts(1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="must be"):
        count_departures(np.zeros((3, 2)), np.zeros((3, 1), dtype=bool), np.zeros((3, 2)))


def test_the_real_ball_never_vanishes_in_mid_flight() -> None:
    from rem_env.atari import make_atari_vector_env
    from rem_env.probes import PIXEL_PLAYERS, BreakoutBallProbe

    envs = make_atari_vector_env("Breakout", 4, True, seed=2)
    player = PIXEL_PLAYERS["Breakout"](epsilon=0.05, seed=2)
    probe = BreakoutBallProbe()
    obs, _ = envs.reset(seed=2)
    rows, found, episodes = [], [], []
    episode = np.zeros(4, dtype=int)
    for _ in range(250):
        hits = probe.find(np.asarray(obs))
        rows.append(hits.positions[:, 0])
        found.append(hits.found)
        episodes.append(episode.copy())
        obs, _, terminated, truncated, _ = envs.step(player.act(np.asarray(obs)))
        episode += np.asarray(terminated) | np.asarray(truncated)
    envs.close()
    counts = count_departures(np.array(rows), np.array(found), np.array(episodes))
    # The follower returns most balls: they go up to the bricks and down past the paddle, and
    # every ball that went up into the bricks came back down.
    assert counts.paddle >= 10 and counts.bricks_back == counts.bricks
    assert counts.flight == 0, counts


def test_the_departure_table_reads_back_from_json() -> None:
    rates = EventRates(
        dream_steps=400, dream_ends=3, dream_rewards=0, real_steps=400, real_ends=5,
        real_rewards=0, temperature=1.0, policy="follow", jitter=0.05,
        real_departures=SightCounts(32, 32, 138, 0, 0),
        dream_departures=SightCounts(109, 68, 125, 77, 45),
    )  # fmt: skip
    table = rates.table()
    assert (
        "| policy: side | ball went out of sight up at the bricks (found again within 16 " in table
    )
    assert (
        "| follows the ball it sees, 5% random actions: real game | 32 (32 back) | 138 | " in table
    )
    assert (
        "| follows the ball it sees, 5% random actions: dream | 109 (68 back) | 125 | 77 (45"
        in table
    )
    assert EventRates.from_dict(json.loads(json.dumps(rates.to_dict()))) == rates
    older = {k: v for k, v in rates.to_dict().items() if not k.endswith("_departures")}
    assert "out of sight" not in EventRates.from_dict(older).table()
