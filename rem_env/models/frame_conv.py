"""A frame conv: next-frame token logits from the 2-D grids of the two latest frames (not in REM).

REM's world model reads a frame as a row of K tokens; where a patch sits in the frame, and which
patches are its neighbours, it learns only through the positions of the sequence. A small object
that moves a patch or less per step (Breakout's ball) is then learned slowly. The frame conv
reads the token embeddings of frames t-2 and t-1 as two images of ``sqrt(K) x sqrt(K)`` pixels
(one pixel per patch, the embedding's components as channels) with the action taken after frame
t-1, and gives logits of frame t's K tokens from 3x3 neighbourhoods; the world model adds them to
its observation head's logits. Its last layer starts at zero, so a world model that gains a frame
conv starts as exactly the model it was.

With ``events=True`` the same features, read from frames t-1 and t and the action after t, also
give logits of the reward and the episode end of step t (a ball about to hit a brick, or to pass
the paddle, is seen where it is on the grid), which the world model adds to its reward and end
heads' logits; their output layer starts at zero too.

With ``copy=True`` a 1x1 convolution of the same features gives each patch a bonus added to the
logit of the token the patch has in frame t-1 (a copy gate): most patches stay from one frame to
the next, and the output layer, a few channels wide, cannot tell hundreds of codes apart sharply
enough to keep each one for sure (sampled at temperature 1, a frame would change a static patch
here and there). It starts at zero too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FrameConv"]

ACTION_CHANNELS = 16
"""Channels of the action's embedding, broadcast over the grid."""

EVENT_LOGITS = 5
"""Event logits: 3 reward classes, then 2 end classes (the world model's heads' layout)."""

COPY_SCALE = 10.0
"""The copy gate's output is multiplied by this: a bonus of several nats is reached in a few
hundred Adam steps at a learning rate of 1e-3, not thousands."""


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
        events: Also give reward and end logits (:meth:`event_logits`), from the features
            pooled over the grid (mean and max of a 1x1 convolution's ReLU outputs).
        copy: Add a per-patch bonus to the logit of the patch's token in frame t-1 (the token
            logits then need that frame's tokens).

    Example:
        >>> import torch
        >>> conv = FrameConv(embed_dim=8, num_actions=4, vocab_size=16, tokens_per_obs=16,
        ...                  num_layers=2, width=32)
        >>> frames = torch.randn(3, 2, 16, 8)  # (N, 2, K, E): frames t-2 and t-1
        >>> logits = conv(frames, torch.tensor([0, 1, 4]))  # action 4: none
        >>> logits.shape, float(logits.detach().abs().max())  # the last layer starts at zero
        (torch.Size([3, 16, 16]), 0.0)
        >>> conv = FrameConv(8, 4, 16, 16, num_layers=2, width=32, events=True)
        >>> features = conv.features(frames, torch.tensor([0, 1, 4]))  # (N, width, 4, 4)
        >>> conv.token_logits(features).shape, conv.event_logits(features).shape
        (torch.Size([3, 16, 16]), torch.Size([3, 5]))
        >>> conv = FrameConv(8, 4, 16, 16, num_layers=2, width=32, copy=True)
        >>> before = torch.randint(16, (3, 16))  # frame t-1's tokens; -1: no frame
        >>> conv(frames, torch.tensor([0, 1, 4]), before).shape
        torch.Size([3, 16, 16])
    """

    def __init__(
        self,
        embed_dim: int,
        num_actions: int,
        vocab_size: int,
        tokens_per_obs: int,
        num_layers: int,
        width: int,
        events: bool = False,
        copy: bool = False,
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
        self.events: nn.Sequential | None = None
        self.event_out: nn.Linear | None = None
        if events:
            self.events = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU())
            self.event_out = nn.Linear(2 * width, EVENT_LOGITS)
            nn.init.zeros_(self.event_out.weight)
            nn.init.zeros_(self.event_out.bias)
        self.copy_gate: nn.Conv2d | None = None
        if copy:
            self.copy_gate = nn.Conv2d(width, 1, 1)
            nn.init.zeros_(self.copy_gate.weight)
            nn.init.zeros_(self.copy_gate.bias)

    def forward(self, frames: Tensor, actions: Tensor, before: Tensor | None = None) -> Tensor:
        """(N, 2, K, E) embeddings of frames t-2, t-1 and (N,) actions -> (N, K, V) logits.

        A frame that does not exist (before the first one) is all zeros; an action that does not
        exist is ``num_actions``. ``before``: frame t-1's (N, K) tokens, for the copy gate.
        """
        return self.token_logits(self.features(frames, actions), before)

    def features(self, frames: Tensor, actions: Tensor) -> Tensor:
        """(N, 2, K, E) embedded frames and (N,) actions -> (N, width, s, s) features."""
        n, e = frames.shape[0], frames.shape[-1]
        grid = frames.permute(0, 1, 3, 2).reshape(n, 2 * e, self.side, self.side)  # (N, 2E, s, s)
        action = self.action_embedding(actions)[:, :, None, None]  # (N, 16, 1, 1)
        x = torch.cat([grid, action.expand(-1, -1, self.side, self.side)], dim=1)
        return self.layers(x)

    def token_logits(self, features: Tensor, before: Tensor | None = None) -> Tensor:
        """(N, width, s, s) features -> (N, K, V) logits of the next frame's tokens.

        Args:
            features: From :meth:`features`.
            before: (N, K) tokens of frame t-1 (-1 where there is no such frame), which the
                copy gate adds its bonus to; needed with ``copy``, ignored without.

        Raises:
            ValueError: If the frame conv copies and ``before`` is missing or of another shape.
        """
        logits = self.out(features).flatten(2).transpose(1, 2)  # (N, K, V), raster order
        if self.copy_gate is None:
            return logits
        if before is None or tuple(before.shape) != tuple(logits.shape[:2]):
            got = None if before is None else tuple(before.shape)
            raise ValueError(
                f"this frame conv copies (copy=True): give frame t-1's {tuple(logits.shape[:2])} "
                f"tokens, got {got}"
            )
        bonus = COPY_SCALE * self.copy_gate(features).flatten(1)  # (N, K)
        bonus = bonus * (before >= 0)  # no bonus where there is no frame before
        return logits.scatter_add(-1, before.clamp(min=0)[..., None], bonus[..., None])

    def event_logits(self, features: Tensor) -> Tensor:
        """(N, width, s, s) features -> (N, 5) logits: 3 reward classes, then 2 end classes.

        Raises:
            ValueError: If the frame conv was built without ``events``.
        """
        if self.events is None or self.event_out is None:
            raise ValueError("this frame conv was built without events (events=False)")
        x = self.events(features).flatten(2)  # (N, width, K)
        return self.event_out(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))
