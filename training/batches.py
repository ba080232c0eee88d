"""Typed batches that the replay buffer returns, and the uint8-frames-to-tensor conversion."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["Episode", "FrameBatch", "SegmentBatch", "TensorSegmentBatch", "frames_to_tensor"]


class Episode(NamedTuple):
    """One stored episode (numpy copies)."""

    obs: np.ndarray
    """(L, H, W, C) uint8 observations."""
    actions: np.ndarray
    """(L,) int64 actions taken after each observation."""
    rewards: np.ndarray
    """(L,) float32 rewards received after each action."""
    terminated: np.ndarray
    """(L,) bool: the episode terminated after this step (life loss counts in train mode)."""
    truncated: np.ndarray
    """(L,) bool: the episode was cut (time limit) after this step."""


class FrameBatch(NamedTuple):
    """Single frames for the tokenizer."""

    obs: np.ndarray
    """(B, H, W, C) uint8."""

    def frames(self, device: torch.device | str = "cpu") -> Tensor:
        """The frames as float (B, C, H, W) in [0, 1] on ``device``."""
        return frames_to_tensor(self.obs, device)


class TensorSegmentBatch(NamedTuple):
    """:class:`SegmentBatch` as torch tensors (observations stay uint8)."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    ends: Tensor
    mask: Tensor


class SegmentBatch(NamedTuple):
    """Segments of T consecutive steps of one episode each, padded, with a mask."""

    obs: np.ndarray
    """(B, T, H, W, C) uint8; zeros where padded."""
    actions: np.ndarray
    """(B, T) int64; 0 where padded."""
    rewards: np.ndarray
    """(B, T) float32; 0 where padded."""
    ends: np.ndarray
    """(B, T) bool: terminated after this step (the world model's end label); False if padded."""
    mask: np.ndarray
    """(B, T) bool: True for real steps, False for padding."""

    def to_torch(self, device: torch.device | str = "cpu") -> TensorSegmentBatch:
        """The batch as tensors on ``device`` (obs uint8, actions int64, rewards float32)."""
        return TensorSegmentBatch(
            *(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in self)
        )


def frames_to_tensor(obs: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 frames (..., H, W, C) to float (..., C, H, W) in [0, 1] on ``device``."""
    x = torch.as_tensor(obs).to(device)
    if x.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {x.dtype}")
    return x.movedim(-1, -3).float().div_(255.0)  # (..., C, H, W)
