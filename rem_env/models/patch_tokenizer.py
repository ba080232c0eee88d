"""A tokenizer without an encoder or decoder: each patch of a frame is its nearest fixed patch.

Not in REM. A VQ-VAE's token for a patch depends on the pixels around it, so a ball that moves
changes the tokens of patches it never touched, and a world model has to predict those changes
too. Here a token is the id of the nearest of ``vocab_size`` fixed patches (fitted by k-means on
real frames, ``python -m rem_train.fit_patch_tokenizer``), so a token changes only where the
patch's own pixels do, and a decoded frame is the fixed patches laid side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rem_env.config import TokenizerConfig
from rem_env.models.tokenizer import FrameTokenizer, TokenizerOutput

__all__ = ["PatchTokenizer", "shift_rows"]


def shift_rows(x: Tensor, rows: int, dim: int = -2, fill: float = 0.0) -> Tensor:
    """``x`` moved ``rows`` along ``dim``: down for ``rows > 0``, up for ``rows < 0``.

    What moves past the end is dropped; what is left empty is ``fill``. A patch tokenizer with
    ``row_offset`` reads its frames moved down by it, so every pixel-to-patch map (which
    patches moved, which patch holds the ball) moves the frames the same way.

    Example:
        >>> import torch
        >>> shift_rows(torch.arange(4.0), 1, dim=0).tolist()
        [0.0, 0.0, 1.0, 2.0]
        >>> shift_rows(torch.arange(4.0), -1, dim=0, fill=-1.0).tolist()
        [1.0, 2.0, 3.0, -1.0]
    """
    if rows == 0:
        return x
    size = x.shape[dim]
    if abs(rows) > size:
        raise ValueError(f"cannot move {size} rows by {rows}")
    kept = x.narrow(dim, 0, size - rows) if rows > 0 else x.narrow(dim, -rows, size + rows)
    empty = list(x.shape)
    empty[dim] = abs(rows)
    blank = x.new_full(empty, fill)
    return torch.cat([blank, kept] if rows > 0 else [kept, blank], dim=dim)


class PatchTokenizer(FrameTokenizer):
    """Frames to the ids of the nearest of ``vocab_size`` fixed patches, and back.

    A frame of (C, H, W) is cut into (H / p) x (W / p) patches of p = ``config.patch_size``
    pixels square; each one's token is the codebook row (its C * p * p pixels in [-1, 1],
    channel-major) nearest to it in L2. Decoding lays the rows of the tokens side by side. Tokens
    are int64 of shape (B, h*w) in raster (h-major) order, as :class:`Tokenizer`'s. With
    ``config.row_offset`` r the grid starts r rows above the frame: the frame is read moved
    down by r rows (black above), and decoding moves the patches back up (black below). The
    codebook is a parameter only so that it saves, loads and moves like any weight; nothing
    trains it by gradient.

    Args:
        config: Sizes of the tokenizer, with ``kind="patch"``.

    Example:
        >>> import torch
        >>> from rem_env.config import TokenizerConfig
        >>> config = TokenizerConfig(
        ...     image_size=16, num_downsamples=2, vocab_size=16, embed_dim=48, kind="patch"
        ... )
        >>> tok = PatchTokenizer(config)
        >>> frames = torch.rand(2, 3, 16, 16)
        >>> out = tok.encode(frames)
        >>> out.tokens.shape, out.codes.shape
        (torch.Size([2, 16]), torch.Size([2, 48, 4, 4]))
        >>> tok.decode_tokens(out.tokens).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__(config)
        if config.kind != "patch":
            raise ValueError(f"PatchTokenizer needs a config of kind 'patch', got {config.kind!r}")
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0, 1.0)

    def set_patches(self, patches: Tensor) -> None:
        """Replaces the codebook with (vocab_size, C, p, p) patches of pixels in [0, 1].

        Raises:
            ValueError: If ``patches`` does not have that shape.
        """
        cfg = self.config
        expected = (cfg.vocab_size, cfg.in_channels, cfg.patch_size, cfg.patch_size)
        if tuple(patches.shape) != expected:
            raise ValueError(f"patches must have shape {expected}, got {tuple(patches.shape)}")
        rows = patches.reshape(cfg.vocab_size, cfg.embed_dim) * 2.0 - 1.0  # (V, C*p*p)
        with torch.no_grad():
            self.embedding.weight.copy_(rows.to(self.embedding.weight))

    def encode(self, frames: Tensor) -> TokenizerOutput:
        """Cuts frames in [0, 1] into patches and finds each one's nearest codebook patch.

        Args:
            frames: Float tensor of shape (B, C, H, W) with values in [0, 1]; it is cast to the
                codebook's dtype.

        Returns:
            The patches as latents ``z`` (B, E, h, w), their codes and tokens.

        Raises:
            TypeError: If ``frames`` is not a floating-point tensor.
            ValueError: If ``frames`` does not have shape (B, C, H, W) with this config's sizes.
        """
        self._check_frames(frames)
        cfg = self.config
        x = frames.to(dtype=self.codebook.dtype) * 2.0 - 1.0
        x = shift_rows(x, cfg.row_offset, fill=-1.0)  # the grid's rows, black above the frame
        p, s = cfg.patch_size, cfg.latent_size
        patches = F.unfold(x, kernel_size=p, stride=p)  # (B, C*p*p, h*w), channel-major
        return self._quantize(patches.reshape(x.shape[0], cfg.embed_dim, s, s))

    def decode_latents(self, z_quantized: Tensor) -> Tensor:
        """Lays (B, E, h, w) codes side by side as (B, C, H, W) frames in [-1, 1] space.

        Raises:
            ValueError: If ``z_quantized`` does not have shape (B, E, h, w).
        """
        self._check_latents(z_quantized)
        cfg = self.config
        size, p = cfg.image_size, cfg.patch_size
        flat = z_quantized.flatten(2)  # (B, C*p*p, h*w)
        grid = F.fold(flat, output_size=(size, size), kernel_size=p, stride=p)  # (B, C, H, W)
        return shift_rows(grid, -cfg.row_offset, fill=-1.0)  # the frame's rows, black below
