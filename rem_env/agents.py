"""Who acts in a CLI dream: a random agent, a stable-baselines3 policy, or the model's own
actor-critic; and the rollout that records frames and episode returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rem_env.dream import DreamVectorEnv, ObsType

__all__ = [
    "ACTOR_CRITIC_NAME",
    "SB3_ALGOS",
    "Agent",
    "AgentError",
    "DreamRollout",
    "RandomAgent",
    "SB3Agent",
    "actor_critic_file",
    "roll_dream",
]

ACTOR_CRITIC_NAME = "actor_critic.safetensors"
"""A model folder that ships its own actor-critic holds it under this name."""

SB3_ALGOS = ("PPO", "A2C", "DQN")
"""The stable-baselines3 algorithms a policy file is loaded with (tried in this order)."""


class AgentError(ValueError):
    """Raised for an agent that cannot act in the dream (missing file, wrong spaces...)."""


class Agent(Protocol):
    """Picks one action per env from a batch of observations of type :attr:`obs_type`."""

    obs_type: ObsType

    def act(self, obs: np.ndarray) -> np.ndarray:
        """(num_envs,) int64 actions."""
        ...


class RandomAgent:
    """Uniformly random actions from its own seeded generator.

    Example:
        >>> RandomAgent(num_actions=4, seed=0).act(np.zeros((3, 16))).shape
        (3,)
    """

    obs_type: ObsType = "tokens"  # the cheapest observation: a random agent does not look

    def __init__(self, num_actions: int, seed: int | None = None) -> None:
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.integers(self.num_actions, size=len(obs), dtype=np.int64)


class SB3Agent:
    """A saved stable-baselines3 policy (``.zip``), acting on the observation type it was
    trained on (found by comparing its observation space with the dream's).

    Args:
        path: The ``.zip`` written by ``model.save(...)``.
        env: A dream env of the model to act in (any obs type; only its spaces are read).
        algo: ``"PPO"``, ``"A2C"`` or ``"DQN"``; None tries them in turn.
        deterministic: Greedy actions (True) or sampled ones.
        device: Torch device of the policy.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        env: DreamVectorEnv,
        algo: str | None = None,
        deterministic: bool = True,
        device: str = "cpu",
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise AgentError(f"no SB3 policy file at {str(path)!r} (expected a .zip)")
        self.policy = _load_sb3(path, algo, device)
        self.deterministic = deterministic
        self.obs_type = _matching_obs_type(self.policy.observation_space, env, path)
        if getattr(self.policy.action_space, "n", None) != env.single_action_space.n:
            raise AgentError(
                f"{path} acts with {self.policy.action_space}, but the dream has "
                f"{env.single_action_space}"
            )

    def act(self, obs: np.ndarray) -> np.ndarray:
        actions, _ = self.policy.predict(obs, deterministic=self.deterministic)
        return np.asarray(actions, dtype=np.int64).reshape(len(obs))


def _load_sb3(path: Path, algo: str | None, device: str) -> Any:
    import stable_baselines3

    names = SB3_ALGOS if algo is None else (algo.upper(),)
    unknown = [n for n in names if n not in SB3_ALGOS]
    if unknown:
        raise AgentError(f"unknown SB3 algorithm {algo!r}; choose one of {list(SB3_ALGOS)}")
    problems = []
    for name in names:
        try:
            return getattr(stable_baselines3, name).load(path, device=device)
        except Exception as err:  # SB3 raises many kinds of errors for a wrong algorithm
            problems.append(f"{name}: {type(err).__name__}: {err}")
    raise AgentError(f"could not load {path} as an SB3 policy ({'; '.join(problems)})")


def _matching_obs_type(space: Any, env: DreamVectorEnv, path: Path) -> ObsType:
    """The dream obs type whose space has the policy's shape (channel-first RGB too)."""
    shape = tuple(space.shape)
    for obs_type in ("rgb", "tokens", "latent"):
        probe = DreamVectorEnv(env.model, 1, obs_type=obs_type)  # cheap: builds spaces only
        dream = tuple(probe.single_observation_space.shape)
        transposed = (dream[2], dream[0], dream[1]) if obs_type == "rgb" else dream
        if shape in (dream, transposed):
            return obs_type  # type: ignore[return-value]
    raise AgentError(
        f"{path} was trained on observations of shape {shape}, which no obs type of this model "
        "has (rgb, tokens or latent): was it trained on another model's dreams?"
    )


def actor_critic_file(folder: str | os.PathLike[str] | None) -> Path | None:
    """The actor-critic a model folder ships (:data:`ACTOR_CRITIC_NAME`), or None.

    rem-env's trainer is being built: no model ships an actor-critic yet, and this version of
    rem-env cannot run one (the CLI says so).
    """
    if folder is None:
        return None
    path = Path(folder) / ACTOR_CRITIC_NAME
    return path if path.is_file() else None


def _frames(envs: DreamVectorEnv, obs: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 frames: the observations themselves when they are RGB."""
    return obs.copy() if envs.obs_type == "rgb" else np.stack(envs.render())


@dataclass
class DreamRollout:
    """What a dream rollout recorded."""

    frames: list[np.ndarray] = field(default_factory=list)
    """One (num_envs, H, W, 3) uint8 array per step, the first from the reset."""
    episode_returns: list[list[float]] = field(default_factory=list)
    """Per env, the returns of its finished episodes."""
    unfinished_returns: list[float] = field(default_factory=list)
    """Per env, the reward summed in its episode that was still running at the end."""


def roll_dream(envs: DreamVectorEnv, agent: Agent, steps: int, seed: int | None) -> DreamRollout:
    """Runs ``agent`` in ``envs`` (render mode ``"rgb_array"``, NEXT_STEP autoreset) for
    ``steps`` steps, recording the frames and episode returns.

    Example:
        >>> from rem_env import REMConfig, REMModel
        >>> envs = DreamVectorEnv(REMModel(REMConfig.preset("tiny", num_actions=4)), 2,
        ...                       obs_type="tokens", render_mode="rgb_array")
        >>> rollout = roll_dream(envs, RandomAgent(4, seed=0), steps=3, seed=0)
        >>> len(rollout.frames), rollout.frames[0].shape
        (4, (2, 16, 16, 3))
    """
    if envs.render_mode != "rgb_array":
        raise ValueError("roll_dream needs a dream env with render_mode='rgb_array'")
    n = envs.num_envs
    rollout = DreamRollout(episode_returns=[[] for _ in range(n)])
    running = np.zeros(n)
    obs, _ = envs.reset(seed=seed)
    rollout.frames.append(_frames(envs, obs))
    for _ in range(steps):
        obs, rewards, terminated, truncated, _ = envs.step(agent.act(obs))
        running += rewards
        rollout.frames.append(_frames(envs, obs))
        for i in np.flatnonzero(terminated | truncated):
            rollout.episode_returns[i].append(float(running[i]))
            running[i] = 0.0
    rollout.unfinished_returns = [float(r) for r in running]
    return rollout
