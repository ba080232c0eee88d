"""The real Atari env with REM's preprocessing (REM_SPEC 2), on ale-py and gymnasium 1.x.

REM's wrapper stack, innermost first, is ``{Game}NoFrameskip-v4`` -> resize every raw frame to
64x64 RGB -> time limit in raw frames -> no-op reset -> frame skip 4 with a max over the last two
frames -> episodic life (train only). :class:`REMAtariPreprocessing` implements that stack as one
wrapper around ``ALE/{Game}-v5`` with ``frameskip=1, repeat_action_probability=0.0,
full_action_space=False`` (the NoFrameskip-v4 settings).

Resizing uses ``cv2.resize`` with ``INTER_AREA``. REM used PIL's BILINEAR, which averages over the
whole footprint when shrinking (an antialiased filter); ``INTER_AREA`` is the OpenCV filter that
also averages the footprint, while ``INTER_LINEAR`` would sample 2x2 pixels and drop thin objects
such as Breakout's ball. Pixel values therefore differ slightly from REM's: on 200 Breakout
frames, against a numpy re-implementation of PIL's antialiased bilinear filter, ``INTER_AREA``
differs by 0.88 grey levels per pixel on average and ``INTER_LINEAR`` by 4.1.
"""

from __future__ import annotations

from typing import Any, NamedTuple, SupportsFloat

import ale_py
import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rem_env.registration import ATARI_100K_GAMES

__all__ = [
    "FRAME_SKIP",
    "OBS_SIZE",
    "TEST_SETTINGS",
    "TRAIN_SETTINGS",
    "AtariSettings",
    "REMAtariPreprocessing",
    "make_atari_env",
    "make_atari_vector_env",
]

gym.register_envs(ale_py)

OBS_SIZE = 64
"""Side of the square RGB observations."""
FRAME_SKIP = 4
"""Raw frames per agent step."""
NOOP_ACTION = 0
"""Index of NOOP in every minimal action set."""


class AtariSettings(NamedTuple):
    """Settings that differ between the train and the test env."""

    noop_max: int
    """No-ops on reset are drawn uniformly from 1..noop_max."""
    life_loss_ends_episode: bool
    """A lost life terminates the episode; the next reset steps a no-op instead of resetting."""
    max_raw_frames: int
    """Truncate after this many raw frames since the game's reset (no-ops included)."""


TRAIN_SETTINGS = AtariSettings(noop_max=30, life_loss_ends_episode=True, max_raw_frames=20_000)
"""REM's training env: 20000 raw frames = 5000 agent steps."""
TEST_SETTINGS = AtariSettings(noop_max=1, life_loss_ends_episode=False, max_raw_frames=108_000)
"""REM's evaluation env."""


class REMAtariPreprocessing(gym.Wrapper[np.ndarray, int, np.ndarray, int]):
    """REM's Atari preprocessing as one wrapper around a frameskip-1, non-sticky ALE env.

    Per agent step the action is repeated for 4 raw frames (fewer if the episode ends), rewards
    are summed, and the observation is the pixel-wise max of the last two resized frames (of the
    only frame, if the episode ended on the first). ``info`` holds ale-py's ``lives``,
    ``episode_frame_number`` and ``frame_number``, plus ``life_loss`` (bool) and ``game_over``
    (the game itself ended or was truncated, not only a life).

    Args:
        env: An ``ALE/*-v5`` env made with ``frameskip=1`` and ``repeat_action_probability=0``.
        settings: :data:`TRAIN_SETTINGS` or :data:`TEST_SETTINGS` (or your own).
        seed: Seed applied at the first reset that is not given its own seed.

    Example:
        >>> env = make_atari_env("Breakout", train=True, seed=0)
        >>> obs, info = env.reset()
        >>> obs.shape, obs.dtype, int(env.action_space.n)
        ((64, 64, 3), dtype('uint8'), 4)
        >>> env.close()
    """

    def __init__(
        self, env: gym.Env[np.ndarray, int], settings: AtariSettings, seed: int | None = None
    ) -> None:
        super().__init__(env)
        if settings.noop_max < 1:
            raise ValueError(f"noop_max must be at least 1, got {settings.noop_max}")
        if settings.max_raw_frames < 1:
            raise ValueError(f"max_raw_frames must be positive, got {settings.max_raw_frames}")
        self.settings = settings
        self.observation_space = spaces.Box(0, 255, (OBS_SIZE, OBS_SIZE, 3), np.uint8)
        self._pending_seed = seed
        self._raw_frames = 0
        self._lives = 0
        self._continue_after_life_loss = False

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        return cv2.resize(frame, (OBS_SIZE, OBS_SIZE), interpolation=cv2.INTER_AREA)

    def _raw_step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One emulator frame, resized, with the raw-frame time limit applied."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._raw_frames += 1
        if self._raw_frames >= self.settings.max_raw_frames:
            truncated = True
        return self._resize(obs), float(reward), bool(terminated), bool(truncated), info

    def _skip_step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """FRAME_SKIP raw frames: summed reward, max over the last two frames."""
        total = 0.0
        frames: list[np.ndarray] = []
        terminated = truncated = False
        info: dict[str, Any] = {}
        for _ in range(FRAME_SKIP):
            obs, reward, terminated, truncated, info = self._raw_step(action)
            frames = [*frames[-1:], obs]
            total += reward
            if terminated or truncated:
                break
        obs = frames[0] if len(frames) == 1 else np.maximum(frames[0], frames[1])
        return obs, total, terminated, truncated, info

    def _reset_game(
        self, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets the emulator and plays 1..noop_max no-op frames."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._raw_frames = 0
        obs = self._resize(obs)
        noops = int(self.np_random.integers(1, self.settings.noop_max + 1))
        for _ in range(noops):
            obs, _, terminated, truncated, info = self._raw_step(NOOP_ACTION)
            if terminated or truncated:
                obs, info = self.env.reset()
                obs = self._resize(obs)
                self._raw_frames = 0
        info = {**info, "noops": noops}
        return obs, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets the game; right after a life loss in train mode, steps one no-op instead.

        The no-op continues the same game with the next life (each life its own episode), as
        REM's ``EpisodicLifeEnv`` does. Any other reset (including one with a seed) resets
        the game.
        """
        if seed is None and self._pending_seed is not None:
            seed, self._pending_seed = self._pending_seed, None
        elif seed is not None:
            self._pending_seed = None
        if self._continue_after_life_loss and seed is None:
            obs, _, terminated, truncated, info = self._skip_step(NOOP_ACTION)
            if terminated or truncated:
                obs, info = self._reset_game(None, options)
        else:
            obs, info = self._reset_game(seed, options)
        self._continue_after_life_loss = False
        self._lives = int(info.get("lives", 0))
        return obs, {**info, "life_loss": False, "game_over": False}

    def step(self, action: int) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """One agent step of FRAME_SKIP raw frames."""
        obs, reward, terminated, truncated, info = self._skip_step(action)
        game_over = terminated or truncated
        lives = int(info.get("lives", self._lives))
        life_loss = 0 < lives < self._lives
        self._lives = lives
        if life_loss and self.settings.life_loss_ends_episode and not game_over:
            terminated = True
            self._continue_after_life_loss = True
        return (
            obs,
            reward,
            terminated,
            truncated,
            {
                **info,
                "life_loss": life_loss,
                "game_over": game_over,
            },
        )


def make_atari_env(
    game: str,
    train: bool,
    seed: int | None = None,
    *,
    noop_max: int | None = None,
    max_raw_frames: int | None = None,
    render_mode: str | None = None,
) -> gym.Env[np.ndarray, int]:
    """The real env of an Atari 100K game with REM's train or test preprocessing.

    Args:
        game: Game name as in the Atari 100K table, e.g. ``"Breakout"``.
        train: True for the training env (noop_max 30, life loss ends episodes, 20000 raw
            frames), False for the evaluation env (noop_max 1, whole games, 108000 raw frames).
        seed: Seed of the first reset (ALE and the no-op draws); None draws one.
        noop_max: Override of the settings' ``noop_max`` (e.g. 30 for test games whose
            starts differ; REM's test env has 1).
        max_raw_frames: Override of the settings' raw-frame limit (tests, smoke runs).
        render_mode: Passed to ale-py (``"rgb_array"`` for videos).

    Returns:
        A gymnasium env with uint8 (64, 64, 3) observations and the minimal action set.

    Raises:
        ValueError: If the game is not an Atari 100K game.
    """
    if game not in ATARI_100K_GAMES:
        raise ValueError(
            f"unknown game {game!r}; REM trains on the Atari 100K games: "
            f"{', '.join(sorted(ATARI_100K_GAMES))}"
        )
    settings = TRAIN_SETTINGS if train else TEST_SETTINGS
    if noop_max is not None:
        settings = settings._replace(noop_max=noop_max)
    if max_raw_frames is not None:
        settings = settings._replace(max_raw_frames=max_raw_frames)
    env = gym.make(
        f"ALE/{game}-v5",
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        render_mode=render_mode,
    )
    return REMAtariPreprocessing(env, settings, seed=seed)


def make_atari_vector_env(
    game: str,
    num_envs: int,
    train: bool,
    seed: int | None = None,
    *,
    asynchronous: bool = False,
    noop_max: int | None = None,
    max_raw_frames: int | None = None,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of :func:`make_atari_env` as a gymnasium vector env (e.g. for eval).

    Env i is seeded with ``seed + i``. Episodes reset automatically on the step after they end
    (gymnasium's default ``NEXT_STEP`` autoreset mode).

    Args:
        game: Atari 100K game name.
        num_envs: Number of envs.
        train: Train or test preprocessing (see :func:`make_atari_env`).
        seed: Base seed; None draws one per env.
        asynchronous: One subprocess per env (:class:`gymnasium.vector.AsyncVectorEnv`)
            instead of stepping them in turn in this process.
        noop_max: Override of the settings' ``noop_max`` (e.g. 30 for test games whose starts
            differ).
        max_raw_frames: Override of the raw-frame limit.

    Raises:
        ValueError: If the game is unknown or ``num_envs`` < 1.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    if game not in ATARI_100K_GAMES:
        make_atari_env(game, train)  # raises the unknown-game error

    def factory(i: int) -> Any:
        env_seed = None if seed is None else seed + i
        return lambda: make_atari_env(
            game, train, env_seed, noop_max=noop_max, max_raw_frames=max_raw_frames
        )

    fns = [factory(i) for i in range(num_envs)]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns)
    return gym.vector.SyncVectorEnv(fns)
