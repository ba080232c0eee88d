"""REM's VQ-VAE tokenizer: frames to discrete tokens and back (REM_SPEC section 3)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rem_env.config import TokenizerConfig

__all__ = [
    "Decoder",
    "Encoder",
    "FrameTokenizer",
    "Tokenizer",
    "TokenizerOutput",
    "TokenizerReconstruction",
]

_GN_EPS = 1e-6

ENCODE_FRAMES_PER_PIECE = 8
"""Frames one encoder pass takes at once on CPU without autograd (see DECODE_FRAMES_PER_PIECE)."""

DECODE_FRAMES_PER_PIECE = 16
"""Frames one decoder pass takes at once on CPU without autograd.

Larger batches run in pieces: once the activations of a batch outgrow the CPU caches, the
convolutions cost more per frame. Measured at paper sizes on a 2-core CPU, ms per frame at 16 /
64 / 256 frames: decoder 2.1 / 3.1 / 3.4 in one pass, 2.1 / 2.0 / 2.1 in pieces of 16; encoder
2.2 / 2.8 / 3.6 in one pass, 1.5 / 1.6 / 1.7 in pieces of 8. Every layer works frame by frame,
so the pieces give the same frames (to float32 rounding). GPUs and autograd take whole batches.
"""


class TokenizerOutput(NamedTuple):
    """Result of :meth:`Tokenizer.encode`.

    Attributes:
        z: Encoder output after ``pre_quant_conv``, shape (B, E, h, w).
        z_quantized: Straight-through quantised latents ``z + (codes - z).detach()``, shape
            (B, E, h, w). Equal in value to ``codes``; gradients flow to the encoder only.
        codes: Codebook vectors of ``tokens``, shape (B, E, h, w), differentiable w.r.t. the
            codebook (use it for the codebook/commitment losses).
        tokens: Index of the nearest codebook vector, int64, shape (B, h*w), raster (h-major).
    """

    z: Tensor
    z_quantized: Tensor
    codes: Tensor
    tokens: Tensor


class TokenizerReconstruction(NamedTuple):
    """Result of :meth:`Tokenizer.forward`: the encoding plus the reconstruction.

    Attributes:
        z: Encoder output after ``pre_quant_conv``, shape (B, E, h, w).
        z_quantized: Straight-through quantised latents, shape (B, E, h, w).
        codes: Codebook vectors of ``tokens`` (gradient flows to the codebook), (B, E, h, w).
        tokens: Token ids, int64, shape (B, h*w).
        reconstruction: Decoded frames in [-1, 1] space (not clamped), shape (B, C, H, W).
    """

    z: Tensor
    z_quantized: Tensor
    codes: Tensor
    tokens: Tensor
    reconstruction: Tensor


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with REM's eps and affine parameters."""
    return nn.GroupNorm(groups, channels, eps=_GN_EPS, affine=True)


class _Downsample(nn.Module):
    """Pads right/bottom by one pixel, then a stride-2 3x3 conv without padding."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C_out, H/2, W/2)


class _Upsample(nn.Module):
    """Nearest-exact x2 interpolation, then a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest-exact")  # (B, C, 2H, 2W)
        return self.conv(x)


class Encoder(nn.Module):
    """REM's ``SimpleEncoder``: convs and GroupNorm/SiLU downsampling, no ResNet or attention.

    Maps (B, in_channels, H, W) to (B, embed_dim, H / 2**n, W / 2**n).
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        g, c = config.norm_groups, config.base_channels
        self.conv_in = nn.Conv2d(config.in_channels, c, kernel_size=3, padding=1)
        blocks = []
        for _ in range(config.num_downsamples):
            blocks.append(
                nn.Sequential(
                    _norm(c, g),
                    nn.SiLU(),
                    _Downsample(c, 2 * c),
                    nn.Conv2d(2 * c, 2 * c, kernel_size=3, padding=1),
                )
            )
            c *= 2
        self.down = nn.ModuleList(blocks)
        self.norm_out = _norm(c, g)
        self.conv_out = nn.Conv2d(c, config.embed_dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """REM's ``SimpleDecoder``: mirror of :class:`Encoder` with nearest-exact upsampling.

    Maps (B, embed_dim, h, w) to (B, in_channels, h * 2**n, w * 2**n).
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        g = config.norm_groups
        c = config.base_channels * 2**config.num_downsamples
        self.conv_in = nn.Conv2d(config.embed_dim, c, kernel_size=3, padding=1)
        blocks = []
        for _ in range(config.num_downsamples):
            blocks.append(
                nn.Sequential(
                    _norm(c, g),
                    nn.SiLU(),
                    _Upsample(c, c // 2),
                    nn.Conv2d(c // 2, c // 2, kernel_size=3, padding=1),
                )
            )
            c //= 2
        self.up = nn.ModuleList(blocks)
        self.norm_out = _norm(c, g)
        self.conv_out = nn.Conv2d(c, config.in_channels, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for block in self.up:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class FrameTokenizer(nn.Module):
    """What every tokenizer shares: a codebook of ``vocab_size`` codes, frames to token grids and
    back.

    Subclasses define :meth:`encode` (frames in [0, 1] to :class:`TokenizerOutput`) and
    :meth:`decode_latents` (codes on the token grid to a raw reconstruction in [-1, 1] space);
    the codebook is ``self.embedding``. See :class:`Tokenizer` (REM's VQ-VAE) and
    :class:`~rem_env.models.patch_tokenizer.PatchTokenizer`.
    """

    embedding: nn.Embedding

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        if not isinstance(config, TokenizerConfig):
            raise TypeError(f"config must be a TokenizerConfig, got {type(config).__name__}")
        self.config = config

    @property
    def codebook(self) -> Tensor:
        """The codebook weight, shape (vocab_size, embed_dim)."""
        return self.embedding.weight

    def encode(self, frames: Tensor) -> TokenizerOutput:
        """Encodes frames in [0, 1], shape (B, C, H, W), to their tokens and codes."""
        raise NotImplementedError

    def decode_latents(self, z_quantized: Tensor) -> Tensor:
        """Decodes (B, E, h, w) codes to a raw (B, C, H, W) reconstruction in [-1, 1] space."""
        raise NotImplementedError

    def _quantize(self, z: Tensor) -> TokenizerOutput:
        """The nearest codebook vector (L2) of each latent of ``z``, shape (B, E, h, w)."""
        b, e, h, w = z.shape
        with torch.no_grad():
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, e)  # (B*h*w, E)
            weight = self.codebook.detach()  # (V, E)
            dist = (
                flat.pow(2).sum(dim=1, keepdim=True)
                + weight.pow(2).sum(dim=1)
                - 2.0 * flat @ weight.t()
            )  # (B*h*w, V)
            tokens = dist.argmin(dim=1).reshape(b, h * w)  # (B, h*w)
        codes = self.embedding(tokens).reshape(b, h, w, e).permute(0, 3, 1, 2)  # (B, E, h, w)
        z_quantized = z + (codes - z).detach()
        return TokenizerOutput(z=z, z_quantized=z_quantized, codes=codes, tokens=tokens)

    def _check_latents(self, z_quantized: Tensor) -> None:
        """Raises if ``z_quantized`` is not (B, E, h, w) of this config's sizes."""
        cfg = self.config
        expected = (cfg.embed_dim, cfg.latent_size, cfg.latent_size)
        if z_quantized.ndim != 4 or tuple(z_quantized.shape[1:]) != expected:
            raise ValueError(
                f"latents must have shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(z_quantized.shape)}"
            )

    def decode_tokens(self, tokens: Tensor, check_values: bool = True) -> Tensor:
        """Decodes tokens to frames in [0, 1].

        Args:
            tokens: Integer tensor of shape (B, h*w) (raster order), values in [0, vocab_size).
            check_values: Check the id range (one host sync); callers that produced the tokens
                themselves (the dream env) skip it.

        Returns:
            Frames of shape (B, C, H, W), clamped to [0, 1].

        Raises:
            TypeError: If ``tokens`` is not an integer tensor.
            ValueError: If ``tokens`` has the wrong shape or ids out of range.
        """
        recon = self.decode_latents(self.to_codes(tokens, check_values))
        return ((recon + 1.0) / 2.0).clamp(0.0, 1.0)

    def to_codes(self, tokens: Tensor, check_values: bool = True) -> Tensor:
        """Looks up codebook vectors of tokens, without gradient to the codebook.

        Args:
            tokens: Integer tensor of shape (B, h*w) (raster order), values in [0, vocab_size).
            check_values: Check the id range (one host sync); skip it on the hot path when the
                tokens are known to be valid.

        Returns:
            Codebook vectors of shape (B, E, h, w).

        Raises:
            TypeError: If ``tokens`` is not an integer tensor.
            ValueError: If ``tokens`` has the wrong shape or ids out of range.
        """
        cfg = self.config
        k = cfg.tokens_per_frame
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.ndim != 2 or tokens.shape[1] != k:
            raise ValueError(f"tokens must have shape (B, {k}), got {tuple(tokens.shape)}")
        if check_values and bool(((tokens < 0) | (tokens >= cfg.vocab_size)).any()):  # host sync
            raise ValueError(
                f"token ids must lie in [0, {cfg.vocab_size}), got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        s = cfg.latent_size
        codes = F.embedding(tokens.long(), self.codebook.detach())  # (B, h*w, E)
        codes = codes.reshape(tokens.shape[0], s, s, cfg.embed_dim)  # (B, h, w, E)
        return codes.permute(0, 3, 1, 2)  # (B, E, h, w)

    def forward(self, frames: Tensor) -> TokenizerReconstruction:
        """Encodes, quantises (straight-through) and decodes frames, for the training loss.

        Args:
            frames: Float tensor of shape (B, C, H, W) with values in [0, 1].

        Returns:
            The encoding plus the raw reconstruction in [-1, 1] space.

        Raises:
            TypeError: If ``frames`` is not a floating-point tensor.
            ValueError: If ``frames`` has the wrong shape.
        """
        out = self.encode(frames)
        return TokenizerReconstruction(*out, reconstruction=self.decode_latents(out.z_quantized))

    def _check_frames(self, frames: Tensor) -> None:
        """Raises if ``frames`` is not a float (B, C, H, W) batch of this config's size."""
        if not isinstance(frames, Tensor):
            raise TypeError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
        if not frames.dtype.is_floating_point:
            raise TypeError(
                f"frames must be floating point in [0, 1], got dtype {frames.dtype}; "
                "convert uint8 frames with frames.float() / 255"
            )
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"frames must have shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(frames.shape)}"
            )


class Tokenizer(FrameTokenizer):
    """REM's VQ-VAE: an 8x8 grid of 512 codes per 64x64 RGB frame with the paper's sizes.

    Frames go in as floats in [0, 1], shape (B, C, H, W), and are mapped to [-1, 1] inside.
    Tokens are int64 of shape (B, h*w) in raster (h-major) order. The module holds no loss
    and no perceptual network; :meth:`forward` returns what the training loss needs.

    Args:
        config: Sizes of the tokenizer.

    Example:
        >>> import torch
        >>> from rem_env.config import REMConfig
        >>> tok = Tokenizer(REMConfig.preset("tiny", num_actions=4).tokenizer)
        >>> frames = torch.rand(2, 3, 16, 16)
        >>> out = tok.encode(frames)
        >>> out.tokens.shape, out.tokens.dtype, out.z_quantized.shape
        (torch.Size([2, 16]), torch.int64, torch.Size([2, 32, 4, 4]))
        >>> tok.decode_tokens(out.tokens).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__(config)
        if config.kind != "vqvae":
            raise ValueError(f"Tokenizer is REM's VQ-VAE: its config's kind is {config.kind!r}")
        e = config.embed_dim
        self.encoder = Encoder(config)
        self.pre_quant_conv = nn.Conv2d(e, e, kernel_size=1)
        self.embedding = nn.Embedding(config.vocab_size, e)
        bound = 1.0 / config.vocab_size
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        self.post_quant_conv = nn.Conv2d(e, e, kernel_size=1)
        self.decoder = Decoder(config)

    def encode(self, frames: Tensor) -> TokenizerOutput:
        """Encodes frames in [0, 1] and quantises them to the nearest codebook vectors.

        Args:
            frames: Float tensor of shape (B, C, H, W) with values in [0, 1]; it is cast to the
                parameters' dtype.

        Returns:
            The latents, straight-through quantised latents, codebook vectors and tokens.

        Raises:
            TypeError: If ``frames`` is not a floating-point tensor.
            ValueError: If ``frames`` does not have shape (B, C, H, W) with this config's sizes.
        """
        self._check_frames(frames)
        x = frames.to(dtype=self.codebook.dtype) * 2.0 - 1.0
        features = _in_pieces(self.encoder, x, ENCODE_FRAMES_PER_PIECE)
        return self._quantize(self.pre_quant_conv(features))  # z: (B, E, h, w)

    def decode_latents(self, z_quantized: Tensor) -> Tensor:
        """Decodes quantised latents to a raw reconstruction in [-1, 1] space (not clamped).

        Args:
            z_quantized: Latents of shape (B, E, h, w).

        Returns:
            Reconstruction of shape (B, C, H, W), for losses on [-1, 1] images.

        Raises:
            ValueError: If ``z_quantized`` does not have shape (B, E, h, w).
        """
        self._check_latents(z_quantized)
        return _in_pieces(self.decoder, self.post_quant_conv(z_quantized), DECODE_FRAMES_PER_PIECE)


def _in_pieces(module: nn.Module, x: Tensor, frames_per_piece: int) -> Tensor:
    """``module(x)`` over a batch of frames, in pieces of ``frames_per_piece`` frames on CPU
    without autograd (see ``DECODE_FRAMES_PER_PIECE``)."""
    if x.shape[0] <= frames_per_piece or x.device.type != "cpu" or torch.is_grad_enabled():
        return module(x)
    return torch.cat([module(piece) for piece in x.split(frames_per_piece)])
