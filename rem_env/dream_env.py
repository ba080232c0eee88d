"""DreamEnv: a single dream as a ``gymnasium.Env``, over a one-env DreamVectorEnv."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor

from rem_env.dream import RENDER_FPS, Autocast, DreamVectorEnv, ObsType
from rem_env.model import REMModel
from rem_env.quantization import Quantization
from rem_env.threads import AUTO, Threads

__all__ = ["DreamEnv"]


class DreamEnv(gym.Env):
    """A single dream as a ``gymnasium.Env`` (a :class:`DreamVectorEnv` of one env underneath).

    Observations are numpy arrays (see :class:`DreamVectorEnv` for the obs types). After an
    episode ends (``terminated`` or ``truncated``), call :meth:`reset`: a :meth:`step` before
    it raises ``gymnasium.error.ResetNeeded``, as does a step before the first reset. (The
    ``TimeLimit`` that ``gym.make(..., max_episode_steps=...)`` adds truncates outside the env
    and does not enforce this; ``max_episode_steps=`` of the env itself does.)

    Args:
        model: The world model.
        obs_type: ``"rgb"``, ``"tokens"`` or ``"latent"``.
        device: Where to dream (default: the model's device).
        quantize: None (float32) or ``"int8"`` (CPU; see :class:`DreamVectorEnv`).
        autocast: None or ``"bf16"`` (GPUs; see :class:`DreamVectorEnv`).
        threads: CPU threads of each step: ``"auto"`` (fewer beside busy neighbours) or an int
            (see :class:`DreamVectorEnv`).
        temperature: Sampling temperature (0 = argmax).
        event_temperature: Sampling temperature of rewards and ends (None: ``temperature``;
            see :class:`DreamVectorEnv`).
        max_episode_steps: Truncate episodes after this many steps (``gym.make`` can also add a
            ``TimeLimit``).
        render_mode: None or ``"rgb_array"``.

    Example:
        >>> from rem_env import DreamEnv, REMConfig, REMModel
        >>> env = DreamEnv(REMModel(REMConfig.preset("tiny", num_actions=4)), obs_type="tokens")
        >>> obs, info = env.reset(seed=1)
        >>> obs.shape
        (16,)
        >>> obs, reward, terminated, truncated, info = env.step(0)
        >>> type(reward), type(terminated)
        (<class 'float'>, <class 'bool'>)
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS}  # noqa: RUF012

    def __init__(
        self,
        model: REMModel,
        *,
        obs_type: ObsType = "rgb",
        device: str | torch.device | None = None,
        quantize: Quantization | None = None,
        autocast: Autocast | None = None,
        threads: Threads = AUTO,
        temperature: float = 1.0,
        event_temperature: float | None = None,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.vector_env = DreamVectorEnv(
            model,
            1,
            obs_type=obs_type,
            device=device,
            quantize=quantize,
            autocast=autocast,
            threads=threads,
            temperature=temperature,
            event_temperature=event_temperature,
            max_episode_steps=max_episode_steps,
            autoreset_mode=AutoresetMode.DISABLED,
            render_mode=render_mode,
        )
        self.render_mode = render_mode
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space
        self._episode_over = False

    @property
    def model(self) -> REMModel:
        """The world model."""
        return self.vector_env.model

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Starts a new dream; ``options={"contexts": (tokens (1, C, K), actions (1, C-1))}``."""
        if options is not None and "reset_mask" in options:
            raise ValueError("reset_mask is for vector envs; a DreamEnv always resets its one env")
        super().reset(seed=seed)
        obs, _ = self.vector_env.reset(seed=seed, options=options)
        self._episode_over = False
        return obs[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One imagined step from an integer action.

        Raises:
            gymnasium.error.ResetNeeded: If the episode ended at an earlier step (or the env
                was never reset).
            TypeError, ValueError: If ``action`` is not an integer of the action set.
        """
        if self._episode_over:
            raise gym.error.ResetNeeded(
                "the episode ended (terminated or truncated) at the previous step; call reset() "
                "before stepping again"
            )
        if isinstance(action, Tensor):
            action = action.reshape(-1) if action.numel() == 1 else action
        elif isinstance(action, (bool, np.bool_)):
            raise TypeError(f"action must be an integer, got {action!r}")
        else:
            try:
                action = np.asarray(action).reshape(-1) if np.size(action) == 1 else action
            except (TypeError, ValueError) as err:
                raise TypeError(f"action must be an integer: {err}") from None
        obs, reward, terminated, truncated, _ = self.vector_env.step(action)
        self._episode_over = bool(terminated[0] or truncated[0])
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The current frame, uint8 (H, W, 3), if ``render_mode="rgb_array"``."""
        frames = self.vector_env.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        """Closes the underlying vector env."""
        if not self.vector_env.closed:
            self.vector_env.close()
