"""The three components' AdamW optimizers (REM_SPEC 7) and one clipped gradient step.

The tokenizer and the actor-critic decay every parameter (0.01, torch's default for the
actor-critic); the world model decays its weight matrices only, not biases, norms, embeddings or
free parameters (REM_SPEC 11.6).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rem_env import REMModel
from rem_env.models.actor_critic import ActorCritic
from rem_train.config import TrainConfig
from rem_train.distributed import DistContext, average_gradients

__all__ = ["build_optimizers", "clipped_step", "freeze_additions", "weight_decay_groups"]


def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``weight_decay`` on Linear/Conv weight matrices, 0 elsewhere.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
        >>> decay, no_decay = weight_decay_groups(net, 0.05)
        >>> [tuple(p.shape) for p in decay["params"]], len(no_decay["params"])
        ([(3, 2)], 3)
    """
    decay, no_decay = [], []
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if not param.requires_grad:  # frozen: not the optimizer's
                continue
            is_matrix = name == "weight" and isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d))
            (decay if is_matrix else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizers(
    config: TrainConfig, model: REMModel, actor_critic: ActorCritic
) -> dict[str, torch.optim.Optimizer]:
    """AdamW for ``"tokenizer"``, ``"world_model"`` and ``"actor_critic"`` (the run's settings).

    With ``world_model.retnet_only`` the world model's additions to REM and its token embedding
    stop requiring gradients (:func:`freeze_additions`) and are left out of its optimizer.
    """
    tok, wm, ac = config.tokenizer, config.world_model, config.actor_critic
    if wm.retnet_only:
        freeze_additions(model.world_model)
    return {
        "tokenizer": torch.optim.AdamW(
            model.tokenizer.parameters(), lr=tok.lr, weight_decay=tok.weight_decay
        ),
        "world_model": torch.optim.AdamW(
            weight_decay_groups(model.world_model, wm.weight_decay), lr=wm.lr
        ),
        "actor_critic": torch.optim.AdamW(
            actor_critic.parameters(), lr=ac.lr, weight_decay=ac.weight_decay
        ),
    }


def freeze_additions(world_model: nn.Module) -> list[str]:
    """Stops the gradients of a world model's additions to REM and of its token embedding.

    The frame conv, the event reader and the event window (those the model has) and the token
    embedding, which the frame conv reads, get ``requires_grad = False``: a training step then
    changes only REM's RetNet, prediction tokens and heads, which learn what the additions miss
    (their logits are added to the additions').

    Returns:
        The names of the frozen parameters.

    Example:
        >>> from rem_env.config import WorldModelConfig
        >>> from rem_env.models.world_model import WorldModel
        >>> config = WorldModelConfig(embed_dim=32, num_layers=1, num_heads=2, ffn_dim=64,
        ...                           shared_embeddings=False, frame_conv_layers=1,
        ...                           frame_conv_width=4)
        >>> model = WorldModel(config, num_actions=3, obs_vocab_size=16, tokens_per_obs=16)
        >>> frozen = freeze_additions(model)
        >>> "embedding.weight" in frozen, any(n.startswith("frame_conv.") for n in frozen)
        (True, True)
        >>> model.head_obs[-1].weight.requires_grad
        True
    """
    parts = ["embedding", "frame_conv", "event_reader", "event_window"]
    frozen = []
    for name, param in world_model.named_parameters():
        if name.split(".")[0] in parts:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def clipped_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    module: nn.Module,
    max_norm: float,
    ctx: DistContext | None = None,
) -> float:
    """Back-propagates ``loss``, clips ``module``'s gradient norm, steps; returns the norm.

    With a data-parallel ``ctx`` the gradients are averaged over the ranks between the backward
    pass and the clipping, so every rank clips the same gradient and takes the same step.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if ctx is not None:
        average_gradients(module.parameters(), ctx)
    norm = nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    optimizer.step()
    return float(norm)
