"""How often a dream ends episodes and pays rewards, beside the real game, under random play.

A dream can look right frame by frame and still be the wrong game to learn in: if it never
loses a life, an agent trained in it learns nothing about keeping the ball; if it pays rewards
the game would not, the agent learns to collect them. :func:`measure_event_rates` plays the same
uniformly random action sequences in ``num_envs`` dreams and in as many real games (ale-py,
REM's training preprocessing: a lost life ends an episode) and counts episode ends and non-zero
rewards per 1,000 steps on both sides. ``rem-env events`` is the command-line form.

Example:
    >>> from rem_env.events import measure_event_rates
    >>> rates = measure_event_rates("models/breakout", "Breakout")  # doctest: +SKIP
    >>> print(rates.table())  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rem_env.dream import DreamVectorEnv
from rem_env.model import REMModel

__all__ = ["EventRates", "measure_event_rates"]


@dataclass(frozen=True)
class EventRates:
    """Episode ends and non-zero rewards counted in dreams and in the real game.

    Attributes:
        dream_steps: Dreamed transitions (envs x steps per env, less the steps that only reset
            an env after its episode ended).
        dream_ends: Episodes the dreams ended (terminated).
        dream_rewards: Dreamed steps with a non-zero reward.
        real_ends: Episodes the real games ended (with REM's training preprocessing, every lost
            life).
        real_rewards: Real steps with a non-zero reward.
        real_steps: Real transitions, counted like ``dream_steps``.
        temperature: Sampling temperature of the dreams.
    """

    dream_steps: int
    dream_ends: int
    dream_rewards: int
    real_steps: int
    real_ends: int
    real_rewards: int
    temperature: float

    @staticmethod
    def per_thousand(count: int, steps: int) -> float:
        """``count`` events in ``steps`` steps, per 1,000 steps."""
        return 1000.0 * count / steps

    def to_dict(self) -> dict[str, Any]:
        """The counts and their rates per 1,000 steps, for JSON."""
        rates = {
            f"{side}_{event}_per_1000": self.per_thousand(
                getattr(self, f"{side}_{event}"), getattr(self, f"{side}_steps")
            )
            for side in ("dream", "real")
            for event in ("ends", "rewards")
        }
        return {**asdict(self), **rates}

    def table(self) -> str:
        """A Markdown table: ends and rewards per 1,000 steps, real game and dream."""
        rows = [
            "| random policy | episode ends per 1,000 steps | rewards per 1,000 steps |",
            "|---|---|---|",
        ]
        for label, steps, ends, rewards in (
            ("real game", self.real_steps, self.real_ends, self.real_rewards),
            ("dream", self.dream_steps, self.dream_ends, self.dream_rewards),
        ):
            rows.append(
                f"| {label} | {self.per_thousand(ends, steps):.1f} | "
                f"{self.per_thousand(rewards, steps):.1f} |"
            )
        rows.append(
            f"\n{self.real_steps} real and {self.dream_steps} dreamed steps of the same random "
            f"action sequences; dream temperature {self.temperature:g}."
        )
        return "\n".join(rows)


def _count(env: Any, actions: np.ndarray, seed: int) -> tuple[int, int, int]:
    """Steps ``env`` through ``actions`` (steps, num_envs); returns (transitions, ends, rewards).

    The env resets an ended episode on its next step (gymnasium's ``NEXT_STEP`` autoreset):
    that step is no transition and is not counted.
    """
    env.reset(seed=seed)
    resetting = np.zeros(actions.shape[1], dtype=bool)
    transitions = ends = rewards = 0
    for step_actions in actions:
        _, reward, terminated, truncated, _ = env.step(step_actions)
        taken = ~resetting
        transitions += int(taken.sum())
        ends += int((np.asarray(terminated) & taken).sum())
        rewards += int(((np.asarray(reward) != 0) & taken).sum())
        resetting = np.asarray(terminated) | np.asarray(truncated)
    return transitions, ends, rewards


def measure_event_rates(
    model: REMModel | str | os.PathLike[str],
    game: str,
    *,
    num_envs: int = 16,
    steps: int = 200,
    seed: int = 0,
    temperature: float = 1.0,
    device: str | torch.device | None = None,
) -> EventRates:
    """Counts episode ends and rewards of random play in dreams and in the real game.

    Both sides play the same uniformly random action sequences (one per env, drawn from
    ``seed``). The dreams start from the model's start contexts (dream env ``reset(seed=seed)``:
    env i with seed + i), the real games from ``seed + i`` as well; both reset automatically
    on the step after an episode ends; such a step is not counted.

    Args:
        model: The model, a model folder or a Hub repo id.
        game: The Atari game the model dreams (its real game is played beside it).
        num_envs: Dreams (and real games) side by side.
        steps: Steps per env.
        seed: Seed of the actions, the dreams and the real games.
        temperature: Sampling temperature of the dreams (1: REM's).
        device: Device of the dreams (None: the model's).

    Returns:
        The counts (:class:`EventRates`).

    Raises:
        ValueError: If ``num_envs`` or ``steps`` is not positive, or the game has no real env.
    """
    from rem_env.atari import make_atari_vector_env  # ale-py

    if num_envs < 1 or steps < 1:
        raise ValueError(f"num_envs and steps must be positive, got {num_envs} and {steps}")
    with torch.inference_mode():
        dreams = DreamVectorEnv(
            model, num_envs, obs_type="tokens", device=device, temperature=temperature
        )
        num_actions = int(dreams.single_action_space.n)  # type: ignore[attr-defined]
        actions = np.random.default_rng(seed).integers(0, num_actions, (steps, num_envs))
        dream_counts = _count(dreams, actions, seed)
        dreams.close()
    real = make_atari_vector_env(game, num_envs, True, seed=seed)
    try:
        real_counts = _count(real, actions, seed)
    finally:
        real.close()
    return EventRates(*dream_counts, *real_counts, temperature=temperature)
