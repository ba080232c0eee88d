"""How often a dream ends episodes and pays rewards, beside the real game, under simple policies.

A dream can look right frame by frame and still be the wrong game to learn in: if it never
loses a life, an agent trained in it learns nothing about keeping the ball; if it pays rewards
the game would not, the agent learns to collect them. :func:`measure_event_rates` plays the same
action sequences in ``num_envs`` dreams and in as many real games (ale-py, REM's training
preprocessing: a lost life ends an episode) and counts episode ends and non-zero rewards per
1,000 steps on both sides. The sequences come from a simple policy: uniformly random actions,
or one action held (e.g. Breakout's ``RIGHT``: the paddle parked at the right wall) with a share
of random actions. A dream that pays or punishes one such behaviour more than the game does is
one an agent learns to exploit: compare several with :func:`event_table`. ``rem-env events`` is
the command-line form.

Example:
    >>> from rem_env.events import event_table, measure_event_rates
    >>> rates = [
    ...     measure_event_rates("models/breakout", "Breakout", policy=policy)
    ...     for policy in ("random", "RIGHT", "LEFT")
    ... ]  # doctest: +SKIP
    >>> print(event_table(rates))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rem_env.actions import action_meanings
from rem_env.dream import DreamVectorEnv, temperature_words
from rem_env.model import REMModel

__all__ = ["DEFAULT_JITTER", "EventRates", "event_table", "measure_event_rates", "policy_actions"]

DEFAULT_JITTER = 0.2
"""Share of uniformly random actions in a held-action policy's steps."""


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
        policy: ``"random"`` or the action the policy held (an action meaning, e.g. ``"RIGHT"``).
        jitter: Share of the steps that took a uniformly random action (1 for ``"random"``).
        event_temperature: Sampling temperature of the dreams' rewards and ends (None: the
            same as ``temperature``).
    """

    dream_steps: int
    dream_ends: int
    dream_rewards: int
    real_steps: int
    real_ends: int
    real_rewards: int
    temperature: float
    policy: str = "random"
    jitter: float = 1.0
    event_temperature: float | None = None

    @property
    def temperature_words(self) -> str:
        """``"1"``, or ``"0 (rewards and ends: 1)"`` where they were sampled otherwise."""
        return temperature_words(self.temperature, self.event_temperature)

    @property
    def policy_words(self) -> str:
        """The policy in words, e.g. ``"random policy"`` or ``"RIGHT held, 20% random actions"``."""
        if self.policy == "random":
            return "random policy"
        return f"{self.policy} held, {self.jitter:.0%} random actions"

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
        """A Markdown table: ends and rewards per 1,000 steps, real game and dream
        (:func:`event_table` of this policy alone)."""
        return event_table([self])


def _span(counts: Sequence[int]) -> str:
    """``"4683"`` or ``"4683-4724"``: the range of ``counts``."""
    low, high = min(counts), max(counts)
    return f"{low}" if low == high else f"{low}-{high}"


def event_table(rates: Sequence[EventRates]) -> str:
    """A Markdown table with a row per policy: ends and rewards per 1,000 steps, game and dream.

    Example:
        >>> rates = EventRates(400, 2, 3, 400, 10, 4, temperature=1.0, policy="RIGHT", jitter=0.2)
        >>> print(event_table([rates]).splitlines()[2])
        | RIGHT held, 20% random actions | 25.0 | 5.0 | 10.0 | 7.5 |
    """
    if not rates:
        raise ValueError("event_table needs at least one EventRates")
    rows = [
        "| policy | episode ends per 1,000 steps: real game | dream "
        "| rewards per 1,000 steps: real game | dream |",
        "|---|---|---|---|---|",
    ]
    for r in rates:
        ends = [
            r.per_thousand(r.real_ends, r.real_steps),
            r.per_thousand(r.dream_ends, r.dream_steps),
        ]
        pay = [
            r.per_thousand(r.real_rewards, r.real_steps),
            r.per_thousand(r.dream_rewards, r.dream_steps),
        ]
        rows.append(
            f"| {r.policy_words} | {ends[0]:.1f} | {ends[1]:.1f} | {pay[0]:.1f} | {pay[1]:.1f} |"
        )
    temperatures = ", ".join(sorted({r.temperature_words for r in rates}))
    rows.append(
        f"\n{_span([r.real_steps for r in rates])} real and "
        f"{_span([r.dream_steps for r in rates])} dreamed steps per policy; each policy plays "
        f"the same action sequences in the dreams and the real games; dream temperature "
        f"{temperatures}."
    )
    return "\n".join(rows)


def policy_actions(
    policy: str,
    meanings: Sequence[str],
    steps: int,
    num_envs: int,
    seed: int,
    jitter: float = DEFAULT_JITTER,
) -> np.ndarray:
    """(steps, num_envs) actions of a simple policy, drawn from ``seed``.

    Args:
        policy: ``"random"`` (uniform actions) or the meaning of an action to hold (e.g.
            ``"RIGHT"``; any case).
        meanings: The game's action meanings (:func:`rem_env.actions.action_meanings`).
        steps: Steps per env.
        num_envs: Envs.
        seed: Seed of the draws.
        jitter: Share of a held action's steps that take a uniformly random action instead.

    Raises:
        ValueError: If ``policy`` is no action of the game or ``jitter`` is outside [0, 1].

    Example:
        >>> policy_actions("right", ("NOOP", "FIRE", "RIGHT", "LEFT"), 2, 3, 0, 0.0).tolist()
        [[2, 2, 2], [2, 2, 2]]
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    rng = np.random.default_rng(seed)
    if policy.lower() == "random":
        return rng.integers(0, len(meanings), (steps, num_envs))
    names = [m.upper() for m in meanings]
    if policy.upper() not in names:
        raise ValueError(f"unknown policy {policy!r}; known: random, {', '.join(names)}")
    actions = np.full((steps, num_envs), names.index(policy.upper()))
    jittered = rng.random((steps, num_envs)) < jitter  # (steps, num_envs)
    actions[jittered] = rng.integers(0, len(meanings), int(jittered.sum()))
    return actions


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
    policy: str = "random",
    jitter: float = DEFAULT_JITTER,
    event_temperature: float | None = None,
) -> EventRates:
    """Counts episode ends and rewards of a simple policy in dreams and in the real game.

    Both sides play the same action sequences (one per env, drawn from ``seed`` by
    :func:`policy_actions`). The dreams start from the model's start contexts (dream env
    ``reset(seed=seed)``: env i with seed + i), the real games from ``seed + i`` as well; both
    reset automatically on the step after an episode ends; such a step is not counted.

    Args:
        model: The model, a model folder or a Hub repo id.
        game: The Atari game the model dreams (its real game is played beside it).
        num_envs: Dreams (and real games) side by side.
        steps: Steps per env.
        seed: Seed of the actions, the dreams and the real games.
        temperature: Sampling temperature of the dreams (1: REM's).
        device: Device of the dreams (None: the model's).
        policy: ``"random"`` (uniform actions) or the meaning of an action to hold, e.g.
            ``"RIGHT"`` (:func:`rem_env.actions.action_meanings` lists a game's).
        jitter: Share of a held action's steps that take a uniformly random action instead
            (Breakout serves only after FIRE: with none the ball never comes into play).
        event_temperature: Sampling temperature of the dreams' rewards and ends (None:
            ``temperature``).

    Returns:
        The counts (:class:`EventRates`).

    Raises:
        ValueError: If ``num_envs`` or ``steps`` is not positive, the policy is no action of
            the game, ``jitter`` is outside [0, 1], the model's actions are not the game's, or
            the game has no real env.
    """
    from rem_env.atari import make_atari_vector_env  # ale-py

    if num_envs < 1 or steps < 1:
        raise ValueError(f"num_envs and steps must be positive, got {num_envs} and {steps}")
    meanings = action_meanings(game)
    actions = policy_actions(policy, meanings, steps, num_envs, seed, jitter)
    with torch.inference_mode():
        dreams = DreamVectorEnv(
            model,
            num_envs,
            obs_type="tokens",
            device=device,
            temperature=temperature,
            event_temperature=event_temperature,
        )
        num_actions = int(dreams.single_action_space.n)  # type: ignore[attr-defined]
        if num_actions != len(meanings):
            dreams.close()
            raise ValueError(
                f"the model has {num_actions} actions, {game} has {len(meanings)}: "
                "is it a model of this game?"
            )
        dream_counts = _count(dreams, actions, seed)
        dreams.close()
    real = make_atari_vector_env(game, num_envs, True, seed=seed)
    try:
        real_counts = _count(real, actions, seed)
    finally:
        real.close()
    random = policy.lower() == "random"
    return EventRates(
        *dream_counts,
        *real_counts,
        temperature=temperature,
        policy="random" if random else policy.upper(),
        jitter=1.0 if random else jitter,
        event_temperature=event_temperature,
    )
