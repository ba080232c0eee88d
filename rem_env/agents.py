"""Who acts in a CLI dream: a random agent, a stable-baselines3 policy, or the model's own
actor-critic; and the rollout that records frames and episode returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from rem_env.dream import DreamVectorEnv, ObsType
from rem_env.models.actor_critic import ActorCritic, sample_actions

__all__ = [
    "SB3_ALGOS",
    "ActorCriticAgent",
    "Agent",
    "AgentError",
    "DreamRollout",
    "RandomAgent",
    "SB3Agent",
    "roll_dream",
]

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

    def episodes_ended(self, done: np.ndarray) -> None:
        """Told which envs (bool (num_envs,)) start a new episode at the next observation."""
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

    def episodes_ended(self, done: np.ndarray) -> None:
        """A random agent has no memory."""


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

    def episodes_ended(self, done: np.ndarray) -> None:
        """The SB3 policies loaded here are feed-forward: nothing to forget."""


class ActorCriticAgent:
    """The model's own actor-critic (REM's LSAC) acting on latent observations.

    It keeps the LSTM state of the batch it acts for (the agent is the rollout's owner of that
    state; the module stays stateless), feeds each chosen action back as its own LSTM step, and
    forgets an env's memory when its episode ends.

    Args:
        actor_critic: The trained actor-critic.
        num_envs: Batch size of the dream it acts in.
        temperature: Sampling temperature (0.5: the Atari 100K evaluation protocol).
        seed: Seed of its sampling.

    Example:
        >>> from rem_env import REMConfig
        >>> cfg = REMConfig.preset("tiny", num_actions=4)
        >>> agent = ActorCriticAgent(ActorCritic.from_config(cfg, hidden_size=16), 2, seed=0)
        >>> agent.act(np.zeros((2, 32, 4, 4), dtype=np.float32)).shape
        (2,)
    """

    obs_type: ObsType = "latent"

    def __init__(
        self,
        actor_critic: ActorCritic,
        num_envs: int,
        temperature: float = 0.5,
        seed: int | None = None,
    ) -> None:
        self.actor_critic = actor_critic.eval()
        self.temperature = temperature
        device = next(actor_critic.parameters()).device
        self.generator = torch.Generator(device=device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.state = actor_critic.initial_state(num_envs, device)
        self._ended = torch.zeros(num_envs, dtype=torch.bool, device=device)

    def act(self, obs: np.ndarray) -> np.ndarray:
        device = self.state.h.device
        with torch.inference_mode():
            codes = torch.as_tensor(obs, dtype=torch.float32, device=device)  # (B, E, h, w)
            out = self.actor_critic(codes, self.state)
            actions = sample_actions(out.logits, self.temperature, 0.0, self.generator)
            # With NEXT_STEP autoreset an ended env ignores this action and shows its new
            # episode's first frame next: its memory restarts from zero there.
            self.state = self.actor_critic.observe_action(actions, out.state).reset(self._ended)
            self._ended = torch.zeros_like(self._ended)
        return actions.cpu().numpy().astype(np.int64)

    def episodes_ended(self, done: np.ndarray) -> None:
        self._ended = torch.as_tensor(done, dtype=torch.bool, device=self.state.h.device)


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
    """The dream obs type whose space has the policy's shape (channel-first RGB too) and bounds.

    The bounds tell models apart where shapes do not: token ids of a dream are in
    ``[0, vocab_size)``, so a policy trained on another vocabulary is refused.
    """
    shape = tuple(space.shape)
    mismatch = None
    for obs_type in ("rgb", "tokens", "latent"):
        probe = DreamVectorEnv(env.model, 1, obs_type=obs_type)  # cheap: builds spaces only
        dream_space = probe.single_observation_space
        dream = tuple(dream_space.shape)
        transposed = (dream[2], dream[0], dream[1]) if obs_type == "rgb" else dream
        if shape not in (dream, transposed):
            continue
        bounds = _bounds(space)
        if bounds is None or bounds == _bounds(dream_space):
            return obs_type  # type: ignore[return-value]
        mismatch = (obs_type, bounds, _bounds(dream_space))
    if mismatch is not None:
        obs_type, (low, high), (dream_low, dream_high) = mismatch
        what = "token ids" if obs_type == "tokens" else f"{obs_type} values"
        vocab = (
            f" (a vocabulary of {env.model.config.tokenizer.vocab_size} codes)"
            if obs_type == "tokens"
            else ""
        )
        raise AgentError(
            f"{path} was trained on {what} in [{low:g}, {high:g}], but this model's dream has "
            f"{what} in [{dream_low:g}, {dream_high:g}]{vocab}: it was trained on another "
            "model's dreams; use a policy trained on this model (or --agent random)"
        )
    raise AgentError(
        f"{path} was trained on observations of shape {shape}, which no obs type of this model "
        "has (rgb, tokens or latent): was it trained on another model's dreams?"
    )


def _bounds(space: Any) -> tuple[float, float] | None:
    """(lowest, highest) value of a Box space (None for another space or uneven bounds)."""
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None:
        return None
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if low.size == 0 or low.min() != low.max() or high.min() != high.max():
        return None
    return float(low.flat[0]), float(high.flat[0])


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
        ended = terminated | truncated
        for i in np.flatnonzero(ended):
            rollout.episode_returns[i].append(float(running[i]))
            running[i] = 0.0
        if ended.any():
            agent.episodes_ended(ended)
    rollout.unfinished_returns = [float(r) for r in running]
    return rollout
