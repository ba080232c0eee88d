"""A helper of the world-model tests: segments with one block's frame or action changed."""

from __future__ import annotations

import torch


def nudged(
    obs: torch.Tensor, actions: torch.Tensor, t: int, change: str, vocab: int, num_actions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of a (B, T, K) segment and its (B, T) actions with block ``t``'s frame
    (``change="frame"``: every token moved to the next of ``vocab``) or action changed."""
    obs2, actions2 = obs.clone(), actions.clone()
    if change == "frame":
        obs2[:, t] = (obs2[:, t] + 1) % vocab
    else:
        actions2[:, t] = (actions2[:, t] + 1) % num_actions
    return obs2, actions2
