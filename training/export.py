"""Export of a run as a model folder for ``REMModel.from_pretrained`` and ``gym.make``.

The folder is :meth:`rem_env.REMModel.save_pretrained`'s (config, weights, start contexts,
manifest, model card) with start contexts sampled from the replay buffer (real frames' tokens and
the actions between them), plus the run's actor-critic (``actor_critic.safetensors`` and its
sizes in ``actor_critic.json``) and ``training.json`` (wall time, command, preset, scores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rem_env import REMModel
from rem_env.actor_critic_files import save_actor_critic
from rem_env.manifest import AtariProtocol, Evaluation, ProtocolManifest, TrainingBudget
from rem_env.models.actor_critic import ActorCritic
from rem_train.evaluate import EvalResult
from rem_train.replay import ReplayBuffer, frames_to_tensor

__all__ = [
    "encode_contexts",
    "export_run",
    "play_openings",
    "play_start_contexts",
    "sample_start_contexts",
]

START_CONTEXTS = 8
"""Start contexts an export carries."""

OPENING_STEPS = 30
"""A played start context ends after up to this many random steps past its first frames."""


@torch.no_grad()
def sample_start_contexts(
    model: REMModel, replay: ReplayBuffer, count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` real openings: (N, C, K) tokens of C consecutive frames and (N, C-1) actions."""
    c = model.config.world_model.context_length
    batch = replay.sample_segments(count, c, rng, pad="right", min_real=c).to_torch(
        model.start_tokens.device
    )
    return encode_contexts(model, batch.obs, batch.actions[:, : c - 1])


@torch.no_grad()
def encode_contexts(
    model: REMModel, frames: torch.Tensor | np.ndarray, actions: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W, 3) uint8 frames and (N, C-1) actions -> start contexts: the frames'
    (N, C, K) tokens by ``model``'s tokenizer, and the actions as int64 on its device."""
    device = model.start_tokens.device
    obs = torch.as_tensor(frames, device=device)
    model.tokenizer.eval()
    tokens = model.tokenizer.encode(frames_to_tensor(obs.flatten(0, 1))).tokens  # (N*C, K)
    taken = torch.as_tensor(actions, dtype=torch.long, device=device)
    return tokens.unflatten(0, tuple(obs.shape[:2])), taken


def play_openings(game: str, length: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real openings played afresh, for a model that has no replay buffer to draw its
    start contexts from (a tokenizer trained or fitted on its own frames): each is a new game
    (REM's training preprocessing) played with uniformly random actions for ``length`` frames
    and up to :data:`OPENING_STEPS` more, of which the last ``length`` are kept. Returns
    (N, length, H, W, 3) uint8 frames and the (N, length-1) actions between them
    (:func:`encode_contexts` makes them start contexts).

    Example:
        >>> frames, actions = play_openings("Breakout", 2, 3, seed=0)
        >>> frames.shape, actions.shape
        ((3, 2, 64, 64, 3), (3, 1))
    """
    from rem_env.atari import make_atari_env

    rng = np.random.default_rng(seed)
    env = make_atari_env(game, train=True, seed=seed)
    windows, taken = [], []
    try:
        while len(windows) < count:
            obs, _ = env.reset()
            frames, actions = [obs], []
            for _ in range(length - 1 + int(rng.integers(OPENING_STEPS + 1))):
                action = int(rng.integers(env.action_space.n))
                obs, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:  # a life lost this early: play another opening
                    break
                frames.append(obs)
                actions.append(action)
            else:
                windows.append(np.stack(frames[-length:]))
                taken.append(actions[len(actions) - (length - 1) :])
    finally:
        env.close()
    return np.stack(windows), np.array(taken, dtype=np.int64).reshape(count, length - 1)


def play_start_contexts(
    model: REMModel, game: str, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`play_openings` of ``model``'s context length, encoded by its tokenizer: (N, C, K)
    tokens and the (N, C-1) actions between the frames.

    Example:
        >>> from rem_env import REMConfig
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL))  # 64x64 frames
        >>> tokens, actions = play_start_contexts(model, "Breakout", 3, seed=0)
        >>> tuple(tokens.shape), tuple(actions.shape)
        ((3, 2, 64), (3, 1))
    """
    length = model.config.world_model.context_length
    return encode_contexts(model, *play_openings(game, length, count, seed))


def export_run(
    folder: str | os.PathLike[str],
    model: REMModel,
    actor_critic: ActorCritic,
    replay: ReplayBuffer,
    rng: np.random.Generator,
    epochs: int,
    info: dict[str, Any],
    evaluation: EvalResult | None = None,
    num_contexts: int = START_CONTEXTS,
) -> Path:
    """Writes the model folder; returns its path.

    Args:
        folder: Destination (created; existing model files are replaced).
        model: The trained tokenizer + world model (its start contexts are replaced).
        actor_critic: The trained actor-critic.
        replay: The run's replay buffer (for start contexts and the env-step count).
        rng: Draws the start contexts.
        epochs: Epochs trained.
        info: Extra facts for ``training.json`` (command, preset, wall time, ...).
        evaluation: The last evaluation, recorded in the manifest.
        num_contexts: Start contexts to bundle.
    """
    folder = Path(folder)
    game = model.config.game
    if game is None:
        raise ValueError("the model's config names no game; cannot write an Atari manifest")
    model.set_start_contexts(*sample_start_contexts(model, replay, num_contexts, rng))
    manifest = ProtocolManifest(
        game=game,
        protocol=AtariProtocol.atari100k(game, model.num_actions),
        training=TrainingBudget(env_steps=replay.num_steps, epochs=epochs),
        evaluation=Evaluation()
        if evaluation is None
        else Evaluation(
            mean_return=evaluation.mean,
            human_normalized_score=evaluation.human_normalized,
            episodes=len(evaluation.scores),
        ),
    )
    model.save_pretrained(folder, manifest=manifest)
    save_actor_critic(actor_critic, folder)
    record = dict(info, env_steps=replay.num_steps, epochs=epochs)
    if evaluation is not None:
        record["evaluation"] = evaluation._asdict()
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return folder
