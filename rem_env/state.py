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
    """

    retention: tuple[Tensor, ...]
    obs_tokens: Tensor
    position: int
    num_fed: int = 0

    @property
    def batch_size(self) -> int:
        """Number of dreams in the batch."""
        return self.obs_tokens.shape[0]

    def where(self, mask: Tensor, other: ImaginationState) -> ImaginationState:
        """Takes ``other``'s entries where ``mask`` (B,) is True and this state's elsewhere.

        Used for partial resets. Both states must share ``position`` and ``num_fed``.

        Raises:
            ValueError: If positions, fed counts or batch sizes differ.
        """
        if (other.position, other.num_fed) != (self.position, self.num_fed):
            raise ValueError(
                "cannot merge imagination states at different positions "
                f"({self.position}, {self.num_fed}) vs ({other.position}, {other.num_fed}); "
                "start the new state with position=state.position"
            )
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
        return ImaginationState(retention, tokens, self.position, self.num_fed)
