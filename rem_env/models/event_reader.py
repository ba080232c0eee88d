"""An event reader: reward and end logits of a step read from the pixels of two frames (not in REM).

REM's world model predicts a step's reward and episode end from the hidden state at the action
token, and the frame conv (:mod:`rem_env.models.frame_conv`) reads them from the 8x8 grid of
token embeddings. In Breakout a reward is a ball one or two pixels (at 64x64) away from a brick,
moving towards it: an event that shows in the frames' pixels more plainly than in their tokens.
The event reader is a small convolutional net over the decoded frames t-1 and t and the action
taken after t; its logits are added to the world model's reward and end heads' logits. Its output
layer starts at zero, so a world model that gains an event reader starts as exactly the model it
was.

In a dream the frames are the tokenizer's decodings of the dreamed tokens (see
:meth:`rem_env.model.REMModel.imagine_step`); in training, decodings of real frames' tokens. The
net's features are averaged onto an 8x8 grid whose every cell the hidden layer reads (where the
ball and the bricks are matters), so it reads frames of any size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["EVENT_LOGITS", "EventReader"]

EVENT_LOGITS = 5
"""Event logits: 3 reward classes, then 2 end classes (the world model's heads' layout)."""

GRID = 8
"""Cells per side of the grid the features are averaged onto before the hidden layer (64x64
frames: one cell per 8x8 pixels, the features' own grid)."""


class EventReader(nn.Module):
    """Logits of a step's reward and episode end from frames t-1, t and the action after t.

    Args:
        num_actions: Actions A (one-hot channels broadcast over the frame).
        width: Channels of the first convolution; later ones have 2 and 4 times as many.

    Example:
        >>> import torch
        >>> reader = EventReader(num_actions=4, width=8)
        >>> frames = torch.rand(3, 2, 3, 16, 16)  # (N, 2, 3, H, W): frames t-1 and t in [0, 1]
        >>> logits = reader(frames, torch.tensor([0, 1, 3]))
        >>> logits.shape, float(logits.detach().abs().max())  # the output layer starts at zero
        (torch.Size([3, 5]), 0.0)
    """

    def __init__(self, num_actions: int, width: int) -> None:
        super().__init__()
        if num_actions < 1 or width < 1:
            raise ValueError(
                f"an event reader needs num_actions and width >= 1, got {num_actions}, {width}"
            )
        self.num_actions = num_actions
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(6 + num_actions, w, 4, stride=2, padding=1),  # H/2
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),  # H/4
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1),  # H/8
            nn.ReLU(),
        )
        self.grid = nn.AdaptiveAvgPool2d(GRID)  # where an event is matters: kept, on 8x8 cells
        self.hidden = nn.Sequential(nn.Linear(4 * w * GRID * GRID, 8 * w), nn.ReLU())
        self.out = nn.Linear(8 * w, EVENT_LOGITS)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, frames: Tensor, actions: Tensor) -> Tensor:
        """(N, 2, 3, H, W) frames t-1, t in [0, 1] and (N,) actions -> (N, 5) logits.

        A step with no frame before it (a dream's or an episode's first) reads frame t twice.
        """
        if frames.ndim != 5 or frames.shape[1:3] != (2, 3):
            raise ValueError(f"frames must be (N, 2, 3, H, W), got {tuple(frames.shape)}")
        n, _, _, h, w = frames.shape
        action = nn.functional.one_hot(actions, self.num_actions).to(frames.dtype)
        x = torch.cat(
            [frames.flatten(1, 2), action[:, :, None, None].expand(n, -1, h, w)], dim=1
        )  # (N, 6 + A, H, W)
        x = self.grid(self.body(x)).flatten(1)  # (N, 4w * 8 * 8)
        return self.out(self.hidden(x))
