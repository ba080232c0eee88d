"""Tests of rem_env.atari on real ALE Breakout: shapes, frame skip, no-ops, lives, time limit."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rem_env.atari import (
    FRAME_SKIP,
    TEST_SETTINGS,
    TRAIN_SETTINGS,
    REMAtariPreprocessing,
    make_atari_env,
    make_atari_vector_env,
)

FIRE = 1


def _frame(env) -> int:
    return int(env.unwrapped.ale.getEpisodeFrameNumber())


def test_obs_space_and_actions() -> None:
    env = make_atari_env("Breakout", train=True, seed=0)
    obs, info = env.reset()
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert env.action_space.n == 4
    obs, reward, _, _, info = env.step(FIRE)
    assert obs.shape == (64, 64, 3) and isinstance(reward, float)
    assert {"lives", "life_loss", "game_over", "frame_number"} <= set(info)
    env.close()


def test_unknown_game() -> None:
    with pytest.raises(ValueError, match=r"unknown game 'Tetris'.*Breakout"):
        make_atari_env("Tetris", train=True)


def test_frame_skip_and_noop_counts() -> None:
    env = make_atari_env("Breakout", train=True, seed=1)
    seen = set()
    for _ in range(6):
        _, info = env.reset()
        game_start = _frame(env)
        assert game_start == info["noops"]  # the no-ops are raw frames
        assert 1 <= info["noops"] <= TRAIN_SETTINGS.noop_max
        seen.add(info["noops"])
        before = _frame(env)
        env.step(FIRE)
        assert _frame(env) - before == FRAME_SKIP
    assert len(seen) > 1
    test_env = make_atari_env("Breakout", train=False, seed=1)
    for _ in range(3):
        _, info = test_env.reset()
        assert info["noops"] == TEST_SETTINGS.noop_max == 1
    env.close()
    test_env.close()


def test_test_games_can_start_after_more_no_ops() -> None:
    envs = make_atari_vector_env("Breakout", 8, train=False, seed=0, noop_max=30)
    try:
        _, info = envs.reset()
    finally:
        envs.close()
    noops = info["noops"].tolist()
    assert all(1 <= n <= 30 for n in noops) and len(set(noops)) > 1  # not REM's one no-op


def test_seeded_envs_are_identical() -> None:
    a = make_atari_env("Breakout", train=True, seed=7)
    b = make_atari_env("Breakout", train=True, seed=7)
    oa, ia = a.reset()
    ob, ib = b.reset()
    assert ia["noops"] == ib["noops"] and np.array_equal(oa, ob)
    for action in [1, 2, 3, 0, 2, 2]:
        assert np.array_equal(a.step(action)[0], b.step(action)[0])
    a.close()
    b.close()


def _play_until_life_loss(env) -> tuple[int, dict]:
    """Steps until the episode ends; returns the steps taken and the last info."""
    rng = np.random.default_rng(0)
    for step in range(2000):
        action = FIRE if step % 20 == 0 else int(rng.integers(0, 4))
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated or info["life_loss"]:
            return step + 1, info
    raise AssertionError("no life lost in 2000 steps")


def test_life_loss_ends_train_episodes_only() -> None:
    train = make_atari_env("Breakout", train=True, seed=3)
    train.reset()
    lives = int(train.unwrapped.ale.lives())
    _, info = _play_until_life_loss(train)
    assert info["life_loss"] and not info["game_over"]
    assert info["lives"] == lives - 1
    # The next reset continues the same game with one no-op step instead of resetting.
    frame_before = _frame(train)
    _, info = train.reset()
    assert _frame(train) == frame_before + FRAME_SKIP
    assert int(train.unwrapped.ale.lives()) == lives - 1

    test = make_atari_env("Breakout", train=False, seed=3)
    test.reset()
    rng = np.random.default_rng(0)
    losses = 0
    for step in range(3000):
        action = FIRE if step % 20 == 0 else int(rng.integers(0, 4))
        _, _, terminated, truncated, info = test.step(action)
        losses += info["life_loss"]
        if terminated or truncated:
            break
        if losses >= 1 and step > 0:
            break
    assert losses >= 1 and not terminated  # a life was lost, the episode goes on
    train.close()
    test.close()


def test_time_limit_counts_raw_frames() -> None:
    env = make_atari_env("Breakout", train=True, seed=0, noop_max=1, max_raw_frames=41)
    env.reset()
    steps = 0
    while True:
        _, _, terminated, truncated, _ = env.step(0)  # NOOP: the ball is never served
        steps += 1
        if terminated or truncated:
            break
    # 1 no-op + 10 steps of 4 frames = 41 raw frames.
    assert truncated and not terminated and steps == 10
    env.reset()  # a truncated game really resets
    assert _frame(env) == 1
    env.close()


class _CountingEnv(gym.Env):
    """Raw frames whose pixels and reward are the frame index; ends at frame ``end``."""

    observation_space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def __init__(self, end: int = 1000) -> None:
        self.end = end
        self.frame = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros((210, 160, 3), np.uint8)
        obs[:, :80] = self.frame  # left half: the frame index
        obs[:, 80:] = 200 - self.frame  # right half: decreasing
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.frame = 0
        return self._obs(), {"lives": 1}

    def step(self, action):
        self.frame += 1
        return self._obs(), float(self.frame), self.frame >= self.end, False, {"lives": 1}


def test_skip_sums_rewards_and_maxes_the_last_two_frames() -> None:
    env = REMAtariPreprocessing(_CountingEnv(end=11), TEST_SETTINGS, seed=0)
    obs, info = env.reset()
    assert info["noops"] == 1
    obs, reward, terminated, _, _ = env.step(0)  # raw frames 2..5
    assert reward == 2 + 3 + 4 + 5
    assert obs[0, 0, 0] == 5 and obs[0, -1, 0] == 200 - 4  # max of frames 4 and 5, per pixel
    env.step(0)  # frames 6..9
    obs, reward, terminated, _, _ = env.step(0)  # frames 10, 11: the episode ends early
    assert terminated and reward == 10 + 11
    assert obs[0, 0, 0] == 11 and obs[0, -1, 0] == 200 - 10


def test_breakout_reward_is_the_sum_of_raw_frame_rewards() -> None:
    env = make_atari_env("Breakout", train=False, seed=5)
    env.reset()
    raw = []
    original = env._raw_step

    def recording(action):
        out = original(action)
        raw.append(out[1])
        return out

    env._raw_step = recording
    rng = np.random.default_rng(1)
    for step in range(300):
        before = len(raw)
        action = FIRE if step % 10 == 0 else int(rng.integers(0, 4))
        _, reward, terminated, truncated, _ = env.step(action)
        assert len(raw) - before == FRAME_SKIP or terminated or truncated
        assert reward == sum(raw[before:])
        if terminated or truncated:
            break
    env.close()


def test_vector_env_seeds_each_copy() -> None:
    venv = make_atari_vector_env("Breakout", 2, train=False, seed=4)
    obs, _ = venv.reset()
    assert obs.shape == (2, 64, 64, 3) and obs.dtype == np.uint8
    single = make_atari_env("Breakout", train=False, seed=5)
    assert np.array_equal(single.reset()[0], obs[1])
    obs, reward, terminated, _, _ = venv.step(np.array([1, 1]))
    assert reward.shape == (2,) and terminated.shape == (2,)
    with pytest.raises(ValueError, match="unknown game"):
        make_atari_vector_env("Tetris", 2, train=False)
    venv.close()
    single.close()
