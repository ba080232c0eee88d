"""A frame conv: next-frame token logits from the 2-D grids of the two latest frames (not in REM).

REM's world model reads a frame as a row of K tokens; where a patch sits in the frame, and which
patches are its neighbours, it learns only through the positions of the sequence. A small object
that moves a patch or less per step (Breakout's ball) is then learned slowly. The frame conv
reads the token embeddings of frames t-2 and t-1 as two images of ``sqrt(K) x sqrt(K)`` pixels
(one pixel per patch, the embedding's components as channels) with the action taken after frame
t-1, and gives logits of frame t's K tokens from 3x3 neighbourhoods; the world model adds them to
its observation head's logits. Its last layer starts at zero, so a world model that gains a frame
conv starts as exactly the model it was.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FrameConv"]

ACTION_CHANNELS = 16
"""Channels of the action's embedding, broadcast over the grid."""


class FrameConv(nn.Module):
    """Logits of a frame's K tokens from the two frames before it and the action between.

    Args:
        embed_dim: Channels of a token's embedding E (the world model's observation embedding).
        num_actions: Actions A; row A of the action embedding stands for "no action" (the first
            frame of a segment has none before it).
        vocab_size: Tokenizer vocabulary V.
        tokens_per_obs: Tokens per frame K, a square number.
        num_layers: 3x3 convolutions (each followed by ReLU) before the 1x1 output layer.
        width: Channels of those convolutions.

    Example:
        >>> import torch
        >>> conv = FrameConv(embed_dim=8, num_actions=4, vocab_size=16, tokens_per_obs=16,
        ...                  num_layers=2, width=32)
        >>> frames = torch.randn(3, 2, 16, 8)  # (N, 2, K, E): frames t-2 and t-1
        >>> logits = conv(frames, torch.tensor([0, 1, 4]))  # action 4: none
        >>> logits.shape, float(logits.detach().abs().max())  # the last layer starts at zero
        (torch.Size([3, 16, 16]), 0.0)
    """

    def __init__(
        self,
        embed_dim: int,
        num_actions: int,
        vocab_size: int,
        tokens_per_obs: int,
        num_layers: int,
        width: int,
    ) -> None:
        super().__init__()
        side = math.isqrt(tokens_per_obs)
        if side * side != tokens_per_obs:
            raise ValueError(
                f"the frame conv needs a square grid of tokens, got {tokens_per_obs} per frame"
            )
        if num_layers < 1:
            raise ValueError(f"the frame conv needs at least one layer, got {num_layers}")
        self.side = side
        self.action_embedding = nn.Embedding(num_actions + 1, ACTION_CHANNELS)
        layers: list[nn.Module] = []
        channels = 2 * embed_dim + ACTION_CHANNELS
        for _ in range(num_layers):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        self.layers = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, vocab_size, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, frames: Tensor, actions: Tensor) -> Tensor:
        """(N, 2, K, E) embeddings of frames t-2, t-1 and (N,) actions -> (N, K, V) logits.

        A frame that does not exist (before the first one) is all zeros; an action that does not
        exist is ``num_actions``.
        """
        n, e = frames.shape[0], frames.shape[-1]
        grid = frames.permute(0, 1, 3, 2).reshape(n, 2 * e, self.side, self.side)  # (N, 2E, s, s)
        action = self.action_embedding(actions)[:, :, None, None]  # (N, 16, 1, 1)
        x = torch.cat([grid, action.expand(-1, -1, self.side, self.side)], dim=1)
        return self.out(self.layers(x)).flatten(2).transpose(1, 2)  # (N, K, V), raster order
