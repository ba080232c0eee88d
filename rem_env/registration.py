"""``REM-<Game>-v0`` ids for the 26 Atari 100K games, from one games table.

Each id has an ``entry_point`` (:class:`~rem_env.DreamEnv`, for ``gym.make``) and a
``vector_entry_point`` (:class:`~rem_env.DreamVectorEnv`, for ``gym.make_vec``: one batched
forward per step). The model is passed as ``model=``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from rem_env.dream import DreamVectorEnv, fork_safe_threads
from rem_env.dream_env import DreamEnv
from rem_env.hub import ModelLoadError, NoDefaultModelError, load_model, resolve_default_model
from rem_env.model import REMModel

__all__ = ["ATARI_100K_GAMES", "env_id", "make_dream_env", "make_dream_vector_env"]

ATARI_100K_GAMES: dict[str, int] = {
    "Alien": 18,
    "Amidar": 10,
    "Assault": 7,
    "Asterix": 9,
    "BankHeist": 18,
    "BattleZone": 18,
    "Boxing": 18,
    "Breakout": 4,
    "ChopperCommand": 18,
    "CrazyClimber": 9,
    "DemonAttack": 6,
    "Freeway": 3,
    "Frostbite": 18,
    "Gopher": 8,
    "Hero": 18,
    "Jamesbond": 18,
    "Kangaroo": 18,
    "Krull": 18,
    "KungFuMaster": 14,
    "MsPacman": 9,
    "Pong": 6,
    "PrivateEye": 18,
    "Qbert": 6,
    "RoadRunner": 18,
    "Seaquest": 18,
    "UpNDown": 6,
}
"""The Atari 100K games (REM_SPEC 9.1) and the sizes of their minimal action sets (ale-py v5)."""


def env_id(game: str) -> str:
    """The registered id of a game's dream env.

    Example:
        >>> from rem_env.registration import env_id
        >>> env_id("Breakout")
        'REM-Breakout-v0'
    """
    return f"REM-{game}-v0"


def resolve_model(game: str, model: Any, revision: str | None = None) -> REMModel:
    """The model to dream ``game`` with, checked against the game's action set.

    Args:
        game: Game name of the games table.
        model: An REMModel, a model folder, a Hub repo id, or None for the game's default
            (see :func:`rem_env.hub.resolve_default_model`).
        revision: Hub revision (branch, tag or commit) for a repo id.

    Raises:
        gymnasium.error.Error: If there is no model to load, loading fails, or the model was
            made for another game or another action set.
        TypeError: If ``model`` is neither an REMModel nor a path or repo id.
    """
    name = env_id(game)
    if model is None:
        try:
            model = resolve_default_model(game)
        except NoDefaultModelError as err:
            raise gym.error.Error(f"{name}: {err}") from err
    try:
        model = load_model(model, revision=revision)
    except ModelLoadError as err:
        raise gym.error.Error(f"{name}: {err}") from err
    recorded = model.config.game
    if recorded is not None and recorded != game:
        raise gym.error.Error(f"this model was trained on {recorded!r}; it cannot dream {name}")
    expected = ATARI_100K_GAMES[game]
    if model.num_actions != expected:
        raise gym.error.Error(
            f"{name} has {expected} actions (ale-py's minimal action set) but the model has "
            f"{model.num_actions}"
        )
    return model


def make_dream_env(
    game: str, model: Any = None, revision: str | None = None, **kwargs: Any
) -> DreamEnv:
    """Entry point of ``gym.make``; ``kwargs`` go to :class:`~rem_env.DreamEnv`.

    Also what ``gym.make_vec(..., vectorization_mode="async")`` runs in each worker process;
    forked workers dream on one torch thread (see :func:`rem_env.dream.fork_safe_threads`).
    """
    fork_safe_threads()
    return DreamEnv(resolve_model(game, model, revision), **kwargs)


def make_dream_vector_env(
    game: str, num_envs: int = 1, model: Any = None, revision: str | None = None, **kwargs: Any
) -> DreamVectorEnv:
    """Entry point of ``gym.make_vec``; ``kwargs`` go to :class:`~rem_env.DreamVectorEnv`."""
    fork_safe_threads()
    return DreamVectorEnv(resolve_model(game, model, revision), num_envs, **kwargs)


def register_dream_envs() -> None:
    """Registers ``REM-<Game>-v0`` for every game of the table (idempotent)."""
    for game in ATARI_100K_GAMES:
        name = env_id(game)
        if name in gym.registry:
            continue
        gym.register(
            id=name,
            entry_point="rem_env.registration:make_dream_env",
            vector_entry_point="rem_env.registration:make_dream_vector_env",
            kwargs={"game": game},
        )
