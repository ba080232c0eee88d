"""SB3DreamVecEnv: a stable-baselines3 ``VecEnv`` over a batched dream env."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from rem_env.dream import DreamVectorEnv

__all__ = ["SB3DreamVecEnv"]


class SB3DreamVecEnv(VecEnv):
    """Lets any SB3 algorithm train on a :class:`~rem_env.DreamVectorEnv` (purely in imagination).

    SB3 conventions: single-env spaces, automatic resets (the returned observation of an env that
    ended is its new first one), ``infos[i]["terminal_observation"]`` with the last one, and
    ``infos[i]["TimeLimit.truncated"]``. Works with ``VecMonitor``. ``seed(s)`` gives env ``i``
    the seed ``s + i``, as :meth:`DreamVectorEnv.reset` does. Any autoreset mode of the wrapped
    env works; SAME_STEP is the cheapest.

    Args:
        venv: The dream env, with numpy output.

    Example:
        >>> from rem_env import DreamVectorEnv, REMConfig, REMModel
        >>> from rem_env.sb3 import SB3DreamVecEnv
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=4))
        >>> venv = SB3DreamVecEnv(DreamVectorEnv(model, num_envs=2, obs_type="tokens"))
        >>> obs = venv.reset()
        >>> obs, rewards, dones, infos = venv.step(venv.action_space.sample()[None].repeat(2, 0))
        >>> obs.shape, rewards.shape, len(infos)
        ((2, 16), (2,), 2)
    """

    def __init__(self, venv: DreamVectorEnv) -> None:
        if not isinstance(venv, DreamVectorEnv):
            raise TypeError(f"venv must be a rem_env.DreamVectorEnv, got {type(venv).__name__}")
        if venv.output != "numpy":
            raise ValueError(
                "SB3 needs numpy observations: build the DreamVectorEnv with output='numpy'"
            )
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # --------------------------------------------------------------------------------- stepping

    def reset(self) -> VecEnvObs:
        """Resets every env, with the seeds and options set by ``seed()``/``set_options()``."""
        seeds = None if self._seeds[0] is None else [int(s) for s in self._seeds]
        options = self._options[0] or None
        obs, _ = self.venv.reset(seed=seeds, options=options)
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Stores the actions of the next :meth:`step_wait`."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Steps all envs, resetting those that ended."""
        if self._actions is None:
            raise gym.error.Error("step_wait() called without step_async()")
        actions, self._actions = np.asarray(self._actions), None
        if actions.ndim == 2 and actions.shape[1] == 1:  # (n, 1) from some policies
            actions = actions[:, 0]
        obs, rewards, terminated, truncated, infos = self.venv.step(actions)
        dones = terminated | truncated
        out_infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            if self.venv.autoreset_mode == AutoresetMode.SAME_STEP:
                final_obs = infos["final_obs"]
            else:  # reset them now, as SB3 expects
                final_obs = obs
                obs, _ = self.venv.reset(options={"reset_mask": dones})
            for i in np.flatnonzero(dones):
                out_infos[i]["terminal_observation"] = final_obs[i]
                out_infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards.astype(np.float32, copy=False), dones, out_infos

    def close(self) -> None:
        """Closes the dream env."""
        if not self.venv.closed:
            self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """The current frame of every env (needs ``render_mode="rgb_array"``)."""
        frames = self.venv.render()
        return [None] * self.num_envs if frames is None else list(frames)

    # ------------------------------------------------------------------------------- attributes

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The dream env's attribute, once per selected env (all envs share one object)."""
        return [getattr(self.venv, attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Sets an attribute of the (shared) dream env."""
        setattr(self.venv, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Calls a method of the shared dream env once, reporting its result per selected env."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Dream envs are not wrapped by gymnasium wrappers."""
        return [False] * self._count(indices)

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices
