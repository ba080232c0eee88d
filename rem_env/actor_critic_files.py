"""The actor-critic a model folder may ship beside the world model: its two files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rem_env.models.actor_critic import ActorCritic

__all__ = [
    "ACTOR_CRITIC_CONFIG",
    "ACTOR_CRITIC_WEIGHTS",
    "actor_critic_file",
    "load_actor_critic",
    "save_actor_critic",
]

ACTOR_CRITIC_WEIGHTS = "actor_critic.safetensors"
"""Weights of the shipped actor-critic."""
ACTOR_CRITIC_CONFIG = "actor_critic.json"
"""Its sizes (the arguments of :class:`~rem_env.models.actor_critic.ActorCritic`)."""


def save_actor_critic(actor_critic: ActorCritic, folder: str | os.PathLike[str]) -> None:
    """Writes ``actor_critic`` into a model folder (weights as safetensors, sizes as JSON)."""
    folder = Path(folder)
    weights = {k: v.detach().cpu().contiguous() for k, v in actor_critic.state_dict().items()}
    save_file(weights, str(folder / ACTOR_CRITIC_WEIGHTS))
    sizes = {
        "num_actions": actor_critic.num_actions,
        "embed_dim": actor_critic.embed_dim,
        "latent_size": actor_critic.latent_size,
        "hidden_size": actor_critic.hidden_size,
    }
    (folder / ACTOR_CRITIC_CONFIG).write_text(json.dumps(sizes, indent=2) + "\n")


def actor_critic_file(folder: str | os.PathLike[str] | None) -> Path | None:
    """The weights file of the actor-critic ``folder`` ships, or None."""
    if folder is None:
        return None
    path = Path(folder) / ACTOR_CRITIC_WEIGHTS
    return path if path.is_file() and (Path(folder) / ACTOR_CRITIC_CONFIG).is_file() else None


def load_actor_critic(folder: str | os.PathLike[str], device: str = "cpu") -> ActorCritic:
    """The actor-critic shipped in a model folder, in eval mode.

    Raises:
        FileNotFoundError: If the folder ships no actor-critic.
        ValueError: If its files are unreadable or do not match each other.
    """
    folder = Path(folder)
    if actor_critic_file(folder) is None:
        raise FileNotFoundError(
            f"{folder} ships no actor-critic ({ACTOR_CRITIC_WEIGHTS} and {ACTOR_CRITIC_CONFIG})"
        )
    try:
        sizes = json.loads((folder / ACTOR_CRITIC_CONFIG).read_text())
        actor_critic = ActorCritic(**sizes)
        actor_critic.load_state_dict(load_file(str(folder / ACTOR_CRITIC_WEIGHTS), device=device))
    except (OSError, TypeError, RuntimeError, ValueError, SafetensorError) as err:
        raise ValueError(f"the actor-critic in {folder} cannot be loaded: {err}") from err
    return actor_critic.to(device).eval()
