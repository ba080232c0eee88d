"""Sampling of imagined tokens, rewards and ends from explicit uniform noise."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["StepNoise", "draw_in_rounds", "sample_categorical"]


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


def draw_in_rounds(
    logits: Tensor,
    uniforms: Tensor,
    temperature: float,
    complete: Callable[[Tensor, Tensor], Tensor],
    rounds: int,
    sure: float,
) -> Tensor:
    """Draws a frame's K tokens in rounds, each reading the tokens drawn before it.

    Each patch's token is drawn once, with its own uniform number: first every patch whose
    likeliest token has a probability of at least ``sure`` (from ``logits`` alone), then, for
    ``rounds`` rounds, the one patch not drawn yet that is least sure of its token given the
    drawn ones (``logits + complete(tokens, drawn)``: the lowest probability of its likeliest
    token), then all the others at once, given the drawn ones. Where a new object may show up
    in one of several patches, those patches are the least sure, and the first of them drawn
    settles it for the rest. (Any order of the patches draws from the same joint distribution
    where ``complete`` gives the conditionals; this one spends the rounds where they matter.)

    Args:
        logits: (B, K, V) each patch's logits on its own.
        uniforms: (B, K) uniform numbers in [0, 1), one per patch.
        temperature: Of the draws (0: the likeliest token); how sure a patch is is read at
            temperature 1 when it is 0.
        complete: ``(tokens (B, K), drawn (B, K) bool) -> (B, K, V)`` logits to add to
            ``logits`` given the drawn patches' tokens.
        rounds: Patches drawn one at a time.
        sure: Least probability of a patch's likeliest token for it to be drawn first.

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 2, 2)  # two patches, each with the ball (token 1) at 50%
        >>> def one_ball(tokens, drawn):  # the ball is in exactly one of the two
        ...     ball = ((tokens == 1) & drawn).any(-1)  # (B,): drawn in a patch
        ...     empty = ((tokens == 0) & drawn).any(-1) & ~ball  # (B,): a drawn patch without
        ...     bonus = torch.where(ball, -30.0, torch.where(empty, 30.0, 0.0))
        ...     return torch.stack([torch.zeros_like(bonus), bonus], -1)[:, None].expand(-1, 2, -1)
        >>> draws = [draw_in_rounds(logits, torch.rand(1, 2), 1.0, one_ball, 1, 0.99)
        ...          for _ in range(200)]
        >>> sorted({tuple(d[0].tolist()) for d in draws})  # one ball, in either: never 0 or 2
        [(0, 1), (1, 0)]
        >>> sorted({tuple(sample_categorical(logits, torch.rand(1, 2))[0].tolist())
        ...         for _ in range(200)})  # each patch on its own
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    """
    tokens = sample_categorical(logits, uniforms, temperature)  # (B, K): each on its own
    drawn = _certainty(logits, temperature) >= sure  # (B, K)
    rows = torch.arange(logits.shape[0], device=logits.device)
    for _ in range(rounds):
        full = logits + complete(tokens, drawn)  # (B, K, V)
        left = drawn.logical_not().any(dim=-1)  # (B,): rows with a patch to draw
        pick = _certainty(full, temperature).masked_fill(drawn, 2.0).argmin(dim=-1)  # (B,)
        chosen = sample_categorical(full[rows, pick], uniforms[rows, pick], temperature)
        tokens[rows, pick] = torch.where(left, chosen, tokens[rows, pick])
        drawn[rows, pick] = True
    full = logits + complete(tokens, drawn)
    return torch.where(drawn, tokens, sample_categorical(full, uniforms, temperature))


def _certainty(logits: Tensor, temperature: float) -> Tensor:
    """(..., V) logits -> (...,) probability of the likeliest token at ``temperature`` (at 1
    where it is 0)."""
    return torch.softmax(logits.float() / (temperature or 1.0), dim=-1).amax(dim=-1)
