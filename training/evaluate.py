"""Atari 100K evaluation (REM_SPEC 8): test env, temperature 0.5, human-normalised score.

The actor-critic acts on the tokenizer's codes of each real frame, sampling with temperature 0.5
and no epsilon. ``num_envs`` test envs play in rounds: every env plays one episode per round and
the round ends when all have finished, as in REM (100 episodes with 8 envs give 104).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from rem_env.atari import make_atari_vector_env
from rem_env.models.actor_critic import ActorCritic, sample_actions
from rem_env.models.tokenizer import FrameTokenizer
from rem_env.probes import BLIND_BASELINES
from rem_train.batches import frames_to_tensor

__all__ = [
    "HUMAN_SCORES",
    "NOOP_MAX_HELP",
    "RANDOM_SCORES",
    "EvalResult",
    "LatentActorCriticPolicy",
    "Policy",
    "blind_baseline",
    "evaluate",
    "evaluate_agent",
    "human_normalized_score",
    "starts_in_words",
]

# Game: (random, human) mean raw scores of the Atari 100K table (REM_SPEC 9.1).
_RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "UpNDown": (533.4, 11693.2),
}
NOOP_MAX_HELP = (
    "no-op frames at the start of a real game, drawn from 1..N (REM's test protocol: 1, every "
    "game starts alike; 30 varies the starts)"
)
"""Help of the ``--noop-max`` option of the commands that score on the real game."""


def starts_in_words(noop_max: int) -> str:
    """How the real games start, in words (``noop_max`` 1: REM's test protocol)."""
    return "no-op start" if noop_max == 1 else f"1-{noop_max} no-op frames at the start"


RANDOM_SCORES: dict[str, float] = {game: r for game, (r, _) in _RANDOM_HUMAN.items()}
"""Mean raw score of a uniform random policy per game."""
HUMAN_SCORES: dict[str, float] = {game: h for game, (_, h) in _RANDOM_HUMAN.items()}
"""Mean raw score of a human player per game."""


def human_normalized_score(game: str, score: float) -> float:
    """``(score - random) / (human - random)``.

    Example:
        >>> human_normalized_score("Breakout", 30.5)
        1.0

    Raises:
        ValueError: If the game is not an Atari 100K game.
    """
    if game not in _RANDOM_HUMAN:
        raise ValueError(f"no random/human scores for {game!r}; known: {sorted(_RANDOM_HUMAN)}")
    random_score, human = _RANDOM_HUMAN[game]
    return (score - random_score) / (human - random_score)


class EvalResult(NamedTuple):
    """Scores of an evaluation."""

    scores: list[float]
    """Undiscounted return of every episode."""
    mean: float
    """Mean return."""
    std: float
    """Population standard deviation of the returns."""
    human_normalized: float
    """Human-normalised mean return."""
    lengths: list[int]
    """Agent steps of every episode."""

    def summary(self) -> dict[str, Any]:
        """Mean, spread, extremes, count, scores and lengths, as reports write them (JSON-ready).

        Example:
            >>> EvalResult([1.0, 3.0], 2.0, 1.0, 0.0, [10, 12]).summary()["max"]
            3.0
        """
        return {
            "mean": self.mean,
            "std": self.std,
            "min": float(np.min(self.scores)),
            "max": float(np.max(self.scores)),
            "episodes": len(self.scores),
            "scores": self.scores,
            "lengths": self.lengths,
        }


class Policy(Protocol):
    """What :func:`evaluate_agent` plays with (the :class:`rem_env.agents.Agent` protocol on
    real frames): ``act`` maps (num_envs, 64, 64, 3) uint8 frames to (num_envs,) actions;
    ``episodes_ended`` is told which envs start a new episode at the next frame."""

    def act(self, obs: np.ndarray) -> np.ndarray: ...

    def episodes_ended(self, done: np.ndarray) -> None: ...


class LatentActorCriticPolicy:
    """REM's actor-critic on real frames: tokenizer codes in, LSTM state kept per env.

    Args:
        tokenizer: Encodes the real frames (put in eval mode).
        actor_critic: The policy (put in eval mode).
        num_envs: Envs it acts for.
        temperature: Sampling temperature (0.5 in REM's evaluation; epsilon is 0).
    """

    def __init__(
        self,
        tokenizer: FrameTokenizer,
        actor_critic: ActorCritic,
        num_envs: int,
        temperature: float,
    ) -> None:
        self.tokenizer = tokenizer.eval()
        self.actor_critic = actor_critic.eval()
        self.temperature = temperature
        self.device = actor_critic.actor.weight.device
        self.state = actor_critic.initial_state(num_envs, self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        codes = self.tokenizer.encode(frames_to_tensor(obs, self.device)).z_quantized
        out = self.actor_critic(codes, self.state)
        actions = sample_actions(out.logits, temperature=self.temperature)
        self.state = self.actor_critic.observe_action(actions, out.state)
        return actions.cpu().numpy()

    def episodes_ended(self, done: np.ndarray) -> None:
        self.state = self.state.reset(torch.as_tensor(done, device=self.device))


def evaluate_agent(
    agent: Policy,
    game: str,
    episodes: int,
    num_envs: int = 8,
    seed: int | None = None,
    max_raw_frames: int | None = None,
    noop_max: int | None = None,
) -> EvalResult:
    """Plays ``ceil(episodes / num_envs)`` rounds of one episode per real test env.

    Every env plays one whole game per round (the test env: one no-op frame at the start unless
    ``noop_max`` says otherwise, a lost life does not end the episode, 108,000 raw frames at
    most); the round ends when all have finished, as in REM (100 episodes with 8 envs give 104).

    Args:
        agent: Acts on real (num_envs, 64, 64, 3) uint8 frames (see :class:`Policy`).
        game: Atari 100K game.
        episodes: Episodes wanted; rounded up to whole rounds.
        num_envs: Test envs stepped together.
        seed: Seed of the test envs (env i gets seed + i).
        max_raw_frames: Raw-frame limit of the test env (None: 108000).
        noop_max: No-op frames at the start of a game are drawn from 1..noop_max (None: REM's
            1, so every game starts alike; 30 varies the starts).
    """
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be positive, got {episodes}, {num_envs}")
    envs = make_atari_vector_env(
        game, num_envs, train=False, seed=seed, noop_max=noop_max, max_raw_frames=max_raw_frames
    )
    scores: list[float] = []
    lengths: list[int] = []
    try:
        for _ in range(math.ceil(episodes / num_envs)):
            obs, _ = envs.reset()
            agent.episodes_ended(np.ones(num_envs, dtype=bool))
            running = np.ones(num_envs, dtype=bool)
            returns = np.zeros(num_envs)
            steps = np.zeros(num_envs, dtype=np.int64)
            while running.any():
                actions = np.asarray(agent.act(obs), dtype=np.int64).reshape(num_envs)
                obs, rewards, terminated, truncated, _ = envs.step(actions)
                returns += np.where(running, rewards, 0.0)
                steps += running
                running &= ~(terminated | truncated)
            scores.extend(returns.tolist())
            lengths.extend(steps.tolist())
    finally:
        envs.close()
    mean = float(np.mean(scores))
    return EvalResult(
        scores, mean, float(np.std(scores)), human_normalized_score(game, mean), lengths
    )


def evaluate(
    tokenizer: FrameTokenizer,
    actor_critic: ActorCritic,
    game: str,
    episodes: int,
    num_envs: int = 8,
    temperature: float = 0.5,
    seed: int | None = None,
    max_raw_frames: int | None = None,
    noop_max: int | None = None,
) -> EvalResult:
    """REM's evaluation of its actor-critic: :func:`evaluate_agent` with
    :class:`LatentActorCriticPolicy` (sampling temperature 0.5, no epsilon).

    Args:
        tokenizer: Encodes real frames to codes (put in eval mode here).
        actor_critic: The policy (put in eval mode here).
        game: Atari 100K game.
        episodes: Episodes wanted; rounded up to whole rounds.
        num_envs: Test envs stepped together.
        temperature: Policy temperature (0.5 in REM); epsilon is 0.
        seed: Seed of the test envs (env i gets seed + i).
        max_raw_frames: Raw-frame limit of the test env (None: 108000).
        noop_max: Most no-op frames at the start of a game (None: REM's 1).
    """
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be positive, got {episodes}, {num_envs}")
    policy = LatentActorCriticPolicy(tokenizer, actor_critic, num_envs, temperature)
    return evaluate_agent(policy, game, episodes, num_envs, seed, max_raw_frames, noop_max)


def blind_baseline(
    game: str,
    episodes: int,
    num_envs: int = 8,
    seed: int | None = None,
    max_raw_frames: int | None = None,
    noop_max: int | None = None,
) -> dict[str, Any] | None:
    """The game's screen-blind policy (:data:`rem_env.probes.BLIND_BASELINES`) scored on the
    games :func:`evaluate_agent` plays with the same arguments; None for a game without one.

    Returns:
        ``policy`` (what it does, in words), ``mean``, ``std``, ``min``, ``max``, ``episodes``,
        ``scores`` and ``lengths``.
    """
    if game not in BLIND_BASELINES:
        return None
    baseline = BLIND_BASELINES[game](seed=seed)
    played = evaluate_agent(baseline, game, episodes, num_envs, seed, max_raw_frames, noop_max)
    return {"policy": baseline.description, **played.summary()}
