"""Sampling of imagined tokens, rewards and ends from explicit uniform noise."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["StepNoise", "sample_categorical"]


class StepNoise(NamedTuple):
    """Uniform numbers in [0, 1) that drive the sampling of one imagination step.

    Supplying them (instead of a generator) lets a caller give every dream its own random
    stream, so that a dream does not depend on which other dreams share its batch.
    """

    obs: Tensor
    """(B, K): one number per next-observation token."""
    reward: Tensor
    """(B,)."""
    end: Tensor
    """(B,)."""

    @staticmethod
    def draw(
        batch: int, tokens: int, device: torch.device, generator: torch.Generator | None = None
    ) -> StepNoise:
        """Draws the noise of one step from ``generator``."""
        flat = torch.rand(batch, tokens + 2, generator=generator, device=device)  # (B, K+2)
        return StepNoise(flat[:, :tokens], flat[:, tokens], flat[:, tokens + 1])


def sample_categorical(logits: Tensor, uniforms: Tensor, temperature: float = 1.0) -> Tensor:
    """Samples class indices from logits (..., C) by inverting the CDF at ``uniforms`` (...,).

    ``temperature`` scales the logits; 0 means argmax (the uniforms are then ignored).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(dim=-1)  # (..., C)
    index = (cdf < uniforms[..., None].to(cdf.dtype)).sum(dim=-1)
    return index.clamp_max(logits.shape[-1] - 1)
