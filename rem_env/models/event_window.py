"""An event window: rewards and ends read from the tokens of a step's latest frames (not in REM).

REM's world model predicts a step's reward and episode end from the hidden state at the step's
action token, and the frame conv (:mod:`rem_env.models.frame_conv`) and the event reader
(:mod:`rem_env.models.event_reader`) read them from the step's frame and the one before it. Some
events are decided further back: in Breakout a life is lost about ten steps after the ball was
last seen in the open area, so the end of a life is a clock that two frames cannot read and that
the RetNet's memory learns slowly.

The event window reads the token grids of the step's frame and the ``frames - 1`` frames before
it, and the action taken after the step's frame. Each frame's ``sqrt(K) x sqrt(K)`` grid of
token embeddings goes through two 3x3 convolutions, pooled over the grid (mean and max) into one
vector per frame; a frame that does not exist (before a segment's or a dream's first frame)
gets a learned vector of its own instead; the vectors of the window, in order, and the action's
embedding go through a hidden layer to the 5 event logits (3 reward classes, 2 end classes),
which the world model adds to its reward and end heads' logits. The output layer starts at zero,
so a world model that gains an event window starts as exactly the model it was.

A window that *reads the next frame* (``reads_next=True``) ends instead at the frame the step
leads to: the W - 2 frames before the step's, the step's own and the next one. A reward is then
read from what the step did (in Breakout a brick gone between the two frames), not guessed
before it happens, so that a dream's rewards come with the dreamed frames that show them. In a
dream the next frame is the dreamed one, drawn before the step's reward and end; in a training
segment the last step's next frame is not in the segment and reads as one that does not exist.

Pooled over the grid, one frame's features say little of *where* it differs from the next: a
brick gone is one cell of 64. With ``change_width = C > 0`` the window also reads the change
between its last two frames cell by cell: both grids' embeddings side by side go through two 3x3
convolutions of C channels, pooled (mean and max) into one more vector for the hidden layer
(a learned one where either frame does not exist).

A frame's features do not depend on the window it sits in: over a segment of T frames each is
computed once (:meth:`EventWindow.frame_features`) and every step's window reads them
(:meth:`EventWindow.segment_logits`); a dream computes each frame's as it draws the frame and
keeps its window's in the imagination state (:meth:`EventWindow.read`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["EVENT_LOGITS", "EventWindow"]

EVENT_LOGITS = 5
"""Event logits: 3 reward classes, then 2 end classes (the world model's heads' layout)."""

TOKEN_CHANNELS = 32
"""Channels of the event window's own token embedding."""

ACTION_CHANNELS = 32
"""Channels of the action's embedding, read by the hidden layer."""


class EventWindow(nn.Module):
    """Logits of a step's reward and episode end from the tokens of its latest ``frames`` frames.

    Args:
        vocab_size: Tokenizer vocabulary V.
        num_actions: Actions A.
        tokens_per_obs: Tokens per frame K, a square number (the frame's grid).
        frames: Frames W in a step's window: the step's own frame and the W - 1 before it.
        width: Channels of the convolutions; a frame's pooled features have ``2 * width``, the
            hidden layer ``4 * width``.
        reads_next: Whether the window ends at the step's next frame (the W - 2 frames before
            the step's, the step's and the next) instead of at the step's own frame.
        change_width: Channels of the path over the change between the window's last two
            frames (0: none).

    Example:
        >>> import torch
        >>> window = EventWindow(vocab_size=16, num_actions=4, tokens_per_obs=16, frames=3,
        ...                      width=8)
        >>> tokens = torch.randint(16, (2, 3, 16))  # (N, W, K): the oldest frame first
        >>> tokens[1, 0] = -1  # the second step's window starts before its first frame
        >>> logits = window(tokens, torch.tensor([0, 3]))
        >>> logits.shape, float(logits.detach().abs().max())  # the output layer starts at zero
        (torch.Size([2, 5]), 0.0)
    """

    def __init__(
        self,
        vocab_size: int,
        num_actions: int,
        tokens_per_obs: int,
        frames: int,
        width: int = 64,
        reads_next: bool = False,
        change_width: int = 0,
    ) -> None:
        super().__init__()
        side = math.isqrt(tokens_per_obs)
        if side * side != tokens_per_obs:
            raise ValueError(
                f"an event window reads a square grid of tokens; K = {tokens_per_obs} is not a "
                "square number"
            )
        if min(vocab_size, num_actions, frames, width) < 1 or change_width < 0:
            raise ValueError(
                "an event window needs vocab_size, num_actions, frames and width >= 1 and "
                f"change_width >= 0, got {vocab_size}, {num_actions}, {frames}, {width}, "
                f"{change_width}"
            )
        if change_width and frames < 2:
            raise ValueError(
                f"the change is read between the window's last two frames: it needs frames >= 2, "
                f"got {frames}"
            )
        if reads_next and frames < 2:
            raise ValueError(
                f"an event window that reads the next frame reads it and the step's own: it "
                f"needs frames >= 2, got {frames}"
            )
        self.side = side
        self.frames = frames
        self.reads_next = reads_next
        if reads_next:  # in the state, so that weights of one kind never load into the other
            self.register_buffer("reads_next_frame", torch.ones(()))
        self.token_embedding = nn.Embedding(vocab_size, TOKEN_CHANNELS)
        self.body = nn.Sequential(
            nn.Conv2d(TOKEN_CHANNELS, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
        )
        self.missing = nn.Parameter(torch.zeros(2 * width))
        self.change: nn.Sequential | None = None
        self.missing_change: nn.Parameter | None = None
        if change_width:
            self.change = nn.Sequential(
                nn.Conv2d(2 * TOKEN_CHANNELS, change_width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(change_width, change_width, 3, padding=1),
                nn.GELU(),
            )
            self.missing_change = nn.Parameter(torch.zeros(2 * change_width))
        self.action_embedding = nn.Embedding(num_actions, ACTION_CHANNELS)
        self.hidden = nn.Sequential(
            nn.Linear(frames * 2 * width + 2 * change_width + ACTION_CHANNELS, 4 * width),
            nn.GELU(),
        )
        self.out = nn.Linear(4 * width, EVENT_LOGITS)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def feature_size(self) -> int:
        """Features of one frame (``2 * width``)."""
        return self.missing.shape[0]

    def _grid(self, tokens: Tensor) -> Tensor:
        """(N, K) tokens in [0, V) -> (N, C, side, side) token embeddings on the frame's grid."""
        n = tokens.shape[0]
        grid = self.token_embedding(tokens).view(n, self.side, self.side, TOKEN_CHANNELS)
        return grid.permute(0, 3, 1, 2)

    def frame_features(self, tokens: Tensor) -> Tensor:
        """(N, K) tokens in [0, V) -> (N, 2 * width) features of each frame on its own."""
        h = self.body(self._grid(tokens)).flatten(2)  # (N, width, K)
        return torch.cat([h.mean(-1), h.amax(-1)], dim=-1)

    def change_features(self, before: Tensor, after: Tensor) -> Tensor:
        """(N, K) tokens of two frames in [0, V) -> (N, 2 * change_width) features of the
        change between them, read cell by cell."""
        if self.change is None:
            raise ValueError("this event window reads no change (change_width = 0)")
        grids = torch.cat([self._grid(before), self._grid(after)], dim=1)  # (N, 2C, side, side)
        h = self.change(grids).flatten(2)  # (N, change_width, K)
        return torch.cat([h.mean(-1), h.amax(-1)], dim=-1)

    def window_logits(
        self,
        features: Tensor,
        known: Tensor,
        actions: Tensor,
        change: Tensor | None = None,
    ) -> Tensor:
        """(N, W, F) frame features, (N, W) bool "the frame exists", (N,) actions and, with a
        change path, the (N, 2 * change_width) change features of the last two frames (used
        where both exist) -> (N, 5)."""
        features = torch.where(known[..., None], features, self.missing.to(features.dtype))
        parts = [features.flatten(1)]
        if self.missing_change is not None:
            if change is None:
                raise ValueError(
                    "this event window reads the change of its last two frames: pass change, "
                    "their change_features"
                )
            both = known[:, -2:].all(-1, keepdim=True)  # (N, 1)
            parts.append(torch.where(both, change, self.missing_change.to(change.dtype)))
        x = torch.cat([*parts, self.action_embedding(actions)], dim=-1)
        return self.out(self.hidden(x))

    def forward(self, tokens: Tensor, actions: Tensor) -> Tensor:
        """(N, W, K) tokens of each step's window (oldest first; a frame of -1 tokens does not
        exist) and (N,) actions after the window's last frame -> (N, 5) logits."""
        if tokens.ndim != 3 or tokens.shape[1] != self.frames:
            raise ValueError(
                f"tokens must be (N, {self.frames}, K) windows, got {tuple(tokens.shape)}"
            )
        return self.read(tokens, self.frames_features(tokens), actions)

    def frames_features(self, tokens: Tensor) -> Tensor:
        """(N, W', K) tokens of frames, -1 where a frame does not exist -> (N, W', 2 * width)
        :meth:`frame_features` of each (a frame that does not exist gets some, never read)."""
        n, w, k = tokens.shape
        return self.frame_features(tokens.clamp(min=0).reshape(n * w, k)).view(n, w, -1)

    def read(self, tokens: Tensor, features: Tensor, actions: Tensor) -> Tensor:
        """:meth:`forward` of (N, W, K) windows whose frames' (N, W, 2 * width) features are
        known already (:meth:`frames_features`): a dream computes each frame's once, as it is
        drawn, and keeps those of its window's frames in its state."""
        known = tokens[..., 0] >= 0  # (N, W)
        change = None
        if self.change is not None:
            both = tokens[:, -2:].clamp(min=0)
            change = self.change_features(both[:, 0], both[:, 1])
        return self.window_logits(features, known, actions, change)

    @property
    def frames_before(self) -> int:
        """Frames a step's window reads before the step's own: W - 1, or W - 2 where the window
        reads the next frame."""
        return self.frames - 1 - int(self.reads_next)

    def segment_logits(self, tokens: Tensor, actions: Tensor) -> Tensor:
        """(B, T, K) tokens of segments and (B, T) actions -> (B, T, 5) logits of every step,
        each from its own frame and the W - 1 before it in the segment, or with ``reads_next``
        the W - 2 before it and the next (frames outside the segment do not exist)."""
        b, t, k = tokens.shape
        features = self.frame_features(tokens.reshape(b * t, k)).view(b, t, -1)
        before, after = self.frames_before, int(self.reads_next)
        size = features.shape[-1]
        padded = torch.cat(
            [features.new_zeros(b, before, size), features, features.new_zeros(b, after, size)],
            dim=1,
        )  # (B, T + W - 1, F)
        index = torch.arange(-before, t + after, device=tokens.device)
        known = (index >= 0) & (index < t)  # (T + W - 1,)
        windows = padded.unfold(1, self.frames, 1).transpose(2, 3)  # (B, T, W, F)
        known_windows = known.unfold(0, self.frames, 1).expand(b, t, self.frames)  # (B, T, W)
        change = None
        if self.change is not None:  # the change of frames i -> i+1, for each step's last two
            pairs = self.change_features(tokens[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(0, 1))
            pairs = pairs.view(b, t - 1, pairs.shape[-1])
            empty = pairs.new_zeros(b, 1, pairs.shape[-1])  # read as missing
            ordered = [pairs, empty] if self.reads_next else [empty, pairs]
            change = torch.cat(ordered, dim=1).flatten(0, 1)  # (B * T, 2 * change_width)
        logits = self.window_logits(windows.flatten(0, 1), known_windows.flatten(0, 1),
                                    actions.flatten(), change)  # fmt: skip
        return logits.view(b, t, EVENT_LOGITS)
