"""The recurrent imagination state of a world model: passed in and returned, never stored."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ImaginationState"]


@dataclass(frozen=True)
class ImaginationState:
    """Everything a world model needs to imagine the next step of a batch of dreams.

    The current observation's tokens are part of the state but (with POP) not yet folded into
    the retention states: a step feeds them together with the chosen action.

    Attributes:
        retention: One retention state per layer, each (B, H, d, d), summarising every token
            before ``position + num_fed``.
        obs_tokens: (B, K) int64 tokens of the current observation.
        position: Absolute position of ``obs_tokens[:, 0]``; shared by the whole batch (retention
            only depends on position differences, so envs started at different times can share
            one counter).
        num_fed: How many leading tokens of ``obs_tokens`` are already folded into ``retention``
            (0 with POP; K-1 on the token-by-token path).
        previous_obs_tokens: (B, K) int64 tokens of the observation before the current one, -1
            where there was none; kept only for a world model with a frame conv (else None).
        recent_obs_tokens: (B, N, K) int64 tokens of the N observations before the current one,
            the oldest first, -1 where there was none; kept only for a world model with an event
            window of W frames (N = W - 1, or W - 2 where it reads the next frame) or a frame
            conv of F > 2 frames (N = F - 1), the more of the two (else None).
        window_features: (B, M + 1, F) the event window's features
            (:meth:`~rem_env.models.event_window.EventWindow.frame_features`) of the M frames
            before the current one that its windows read and of the current one, the oldest
            first, so that each frame's are computed once, as it is drawn; kept only for a world
            model with an event window (else None).
    """

    retention: tuple[Tensor, ...]
    obs_tokens: Tensor
    position: int
    num_fed: int = 0
    previous_obs_tokens: Tensor | None = None
    recent_obs_tokens: Tensor | None = None
    window_features: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Number of dreams in the batch."""
        return self.obs_tokens.shape[0]

    def where(self, mask: Tensor, other: ImaginationState) -> ImaginationState:
        """Takes ``other``'s entries where ``mask`` (B,) is True and this state's elsewhere.

        Used for partial resets. Both states must share ``position`` and ``num_fed``.

        Raises:
            ValueError: If positions, fed counts or batch sizes differ, or only one state keeps
                the frame before the current one.
        """
        self._check_mergeable(other)
        if other.batch_size != self.batch_size or mask.shape != (self.batch_size,):
            raise ValueError(
                f"mask {tuple(mask.shape)} and states ({self.batch_size}, {other.batch_size}) "
                "must share one batch size"
            )
        retention = tuple(
            torch.where(mask[:, None, None, None], new, old)
            for old, new in zip(self.retention, other.retention, strict=True)
        )
        tokens = torch.where(mask[:, None], other.obs_tokens, self.obs_tokens)
        previous = _merge_optional(self.previous_obs_tokens, other.previous_obs_tokens, mask)
        recent = _merge_optional(self.recent_obs_tokens, other.recent_obs_tokens, mask, _ONE_RECENT)
        features = _merge_optional(self.window_features, other.window_features, mask, _ONE_WINDOW)
        return ImaginationState(
            retention, tokens, self.position, self.num_fed, previous, recent, features
        )

    def _check_mergeable(self, other: ImaginationState) -> None:
        if (other.position, other.num_fed) != (self.position, self.num_fed):
            raise ValueError(
                "cannot merge imagination states at different positions "
                f"({self.position}, {self.num_fed}) vs ({other.position}, {other.num_fed}); "
                "start the new state with position=state.position"
            )

    def index_copy(self, index: Tensor, other: ImaginationState) -> ImaginationState:
        """This state with its dreams ``index`` (n,) replaced by ``other``'s n dreams, in order.

        Used for partial resets that compute fresh states for the reset dreams alone. Both
        states must share ``position`` and ``num_fed``.

        Raises:
            ValueError: If positions or fed counts differ, or only one state keeps the frame
                before the current one.
        """
        self._check_mergeable(other)
        retention = tuple(
            old.index_copy(0, index, new)
            for old, new in zip(self.retention, other.retention, strict=True)
        )
        tokens = self.obs_tokens.index_copy(0, index, other.obs_tokens)
        previous, recent, features = None, None, None
        if _both_or_neither(self.previous_obs_tokens, other.previous_obs_tokens):
            previous = self.previous_obs_tokens.index_copy(0, index, other.previous_obs_tokens)
        if _both_or_neither(self.recent_obs_tokens, other.recent_obs_tokens, _ONE_RECENT):
            recent = self.recent_obs_tokens.index_copy(0, index, other.recent_obs_tokens)
        if _both_or_neither(self.window_features, other.window_features, _ONE_WINDOW):
            features = self.window_features.index_copy(0, index, other.window_features)
        return ImaginationState(
            retention, tokens, self.position, self.num_fed, previous, recent, features
        )


_ONE_PREVIOUS = (
    "cannot merge a state that keeps the frame before the current one (a world model with a "
    "frame conv) with one that does not"
)


_ONE_RECENT = (
    "cannot merge a state that keeps the frames before the current one (an event window, a frame "
    "conv of several frames) with one that does not"
)


_ONE_WINDOW = (
    "cannot merge a state that keeps an event window's frame features with one that does not"
)


def _both_or_neither(
    mine: Tensor | None, theirs: Tensor | None, message: str = _ONE_PREVIOUS
) -> bool:
    """True if both states keep the optional frames, False if neither does."""
    if (mine is None) != (theirs is None):
        raise ValueError(message)
    return mine is not None


def _merge_optional(
    mine: Tensor | None, theirs: Tensor | None, mask: Tensor, message: str = _ONE_PREVIOUS
) -> Tensor | None:
    if not _both_or_neither(mine, theirs, message):
        return None
    return torch.where(mask.view(-1, *([1] * (mine.ndim - 1))), theirs, mine)
