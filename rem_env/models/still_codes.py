"""Tokens that stay put where nothing moved: a patch whose pixels did not change keeps its code.

The tokenizer quantises every frame on its own. Its encoder sees past a patch's borders, so a
ball passing a brick nudges the brick's latent, and where two codebook vectors lie close the
brick's token flips although none of its pixels changed. A world model then has to predict
those flips, which no dynamics explains. With ``TokenizerConfig.keep_still_codes`` a sequence
of frames is tokenised as: the first frame afresh; every later frame afresh where any pixel of
a patch changed since the previous frame, and with the previous frame's token where none did.
Within a sequence, unchanged patches then have unchanged tokens by construction.

Two ways in, both equal on the same frames:

* :func:`keep_still` for a whole sequence (training segments, real contexts of dreams);
* :func:`StillCodes.step` for frames that arrive one at a time (an agent acting in the real
  game), carrying the previous frame and tokens from call to call.

Example:
    >>> import torch
    >>> frames = torch.zeros(3, 3, 16, 16)  # (T, C, H, W): 4x4 patches of a 16x16 frame
    >>> frames[2, :, 0, 0] = 1.0  # only the top-left patch changes, at step 2
    >>> tokens = torch.tensor([[5] * 16, [6] * 16, [7] * 16])  # fresh tokens flip everywhere
    >>> kept = keep_still(tokens, frames, latent_size=4)
    >>> kept[:, 0].tolist(), kept[:, 1].tolist()
    ([5, 5, 7], [5, 5, 5])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["StillCodes", "changed_patches", "keep_still", "keep_still_tokens"]


def changed_patches(previous: Tensor, frames: Tensor, latent_size: int) -> Tensor:
    """Which patches have a pixel that differs between two frames.

    Args:
        previous: Frames (..., C, H, W), any dtype.
        frames: Frames of the same shape.
        latent_size: Side of the token grid; patches are (H / latent_size) x (W / latent_size).

    Returns:
        Bool (..., latent_size ** 2), raster order like the tokens.

    Raises:
        ValueError: If the shapes differ or H, W are not multiples of ``latent_size``.
    """
    if previous.shape != frames.shape or frames.ndim < 3:
        raise ValueError(
            f"frames must be (..., C, H, W) of one shape, got {tuple(previous.shape)} and "
            f"{tuple(frames.shape)}"
        )
    *lead, c, h, w = frames.shape
    s = latent_size
    if h % s or w % s:
        raise ValueError(f"a {h}x{w} frame does not split into {s}x{s} patches")
    differs = previous != frames  # (..., C, H, W)
    differs = differs.reshape(*lead, c, s, h // s, s, w // s)  # (..., C, s, ph, s, pw)
    return differs.any(dim=-1).any(dim=-2).any(dim=-3).reshape(*lead, s * s)  # (..., s*s)


def keep_still_tokens(tokens: Tensor, changed: Tensor, mask: Tensor | None = None) -> Tensor:
    """Along the time axis (-2), an unchanged patch takes the token of its last changed step.

    Args:
        tokens: Fresh tokens (..., T, K).
        changed: Bool (..., T, K): the patch changed since the previous step. Step 0 always
            counts as changed (it starts the sequence).
        mask: Optional bool (..., T), False at padded steps: those are never carried into or
            out of (the padding's own tokens stay).

    Returns:
        Tokens (..., T, K).
    """
    if changed.shape != tokens.shape:
        raise ValueError(
            f"changed must have the tokens' shape {tuple(tokens.shape)}, got {tuple(changed.shape)}"
        )
    changed = changed.clone()
    changed[..., 0, :] = True
    if mask is not None:
        real = mask.bool()
        both = real[..., 1:] & real[..., :-1]  # (..., T-1): a real step after a real step
        changed[..., 1:, :] |= ~both[..., None]
    t = tokens.shape[-2]
    steps = torch.arange(t, device=tokens.device).view(t, 1)  # (T, 1)
    anchor = torch.where(changed, steps, 0)  # (..., T, K): step of the last change so far ...
    return tokens.gather(-2, anchor.cummax(dim=-2).values)  # ... once carried forward


def keep_still(
    tokens: Tensor, frames: Tensor, latent_size: int, mask: Tensor | None = None
) -> Tensor:
    """Tokens of a sequence of frames with still patches' tokens carried forward.

    Args:
        tokens: Fresh tokens (..., T, K) of ``frames``.
        frames: (..., T, C, H, W) frames the tokens came from (uint8 or float).
        latent_size: Side of the token grid.
        mask: Optional bool (..., T), False at padded steps (see :func:`keep_still_tokens`).

    Returns:
        Tokens (..., T, K).
    """
    if frames.shape[:-3] != tokens.shape[:-1]:
        raise ValueError(
            f"frames {tuple(frames.shape)} do not match tokens {tuple(tokens.shape)} in (..., T)"
        )
    changed = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)  # (..., T, K)
    if tokens.shape[-2] > 1:
        before, after = frames[..., :-1, :, :, :], frames[..., 1:, :, :, :]  # (..., T-1, C, H, W)
        changed[..., 1:, :] = changed_patches(before, after, latent_size)
    return keep_still_tokens(tokens, changed, mask)


@dataclass(frozen=True)
class StillCodes:
    """The previous frame and tokens of a batch of envs, for :func:`keep_still` step by step.

    Args:
        frames: (B, C, H, W) the frames last seen.
        tokens: (B, K) their (kept) tokens.

    Example:
        >>> import torch
        >>> first = StillCodes.start(torch.zeros(1, 3, 16, 16), torch.full((1, 16), 5))
        >>> nxt = first.step(torch.zeros(1, 3, 16, 16), torch.full((1, 16), 6), latent_size=4)
        >>> nxt.tokens[0, :3].tolist()
        [5, 5, 5]
    """

    frames: Tensor
    tokens: Tensor

    @classmethod
    def start(cls, frames: Tensor, tokens: Tensor) -> StillCodes:
        """The state after the first frames of a sequence (their fresh tokens)."""
        return cls(frames.clone(), tokens.clone())

    def step(
        self, frames: Tensor, tokens: Tensor, latent_size: int, new: Tensor | None = None
    ) -> StillCodes:
        """The state after ``frames`` (B, C, H, W) with fresh ``tokens`` (B, K).

        Args:
            frames: The next frames.
            tokens: Their fresh tokens.
            latent_size: Side of the token grid.
            new: Optional bool (B,): envs whose frame starts a new episode (taken afresh).
        """
        keep = ~changed_patches(self.frames, frames, latent_size)  # (B, K)
        if new is not None:
            keep &= ~new.to(keep.device).bool()[:, None]
        return StillCodes(frames.clone(), torch.where(keep, self.tokens, tokens))
