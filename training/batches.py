"""Typed batches that the replay buffer returns, the uint8-frames-to-tensor conversion, and the
tokens of the replay frames (:class:`ReplayTokens`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from rem_env.models.tokenizer import FrameTokenizer
    from rem_train.replay import ReplayBuffer

__all__ = [
    "Episode",
    "FrameBatch",
    "ReplayTokens",
    "SegmentBatch",
    "TensorSegmentBatch",
    "frames_to_tensor",
]


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
    index: Tensor | None = None


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
    index: np.ndarray | None = None
    """(B, T) int64 record numbers of the steps in the replay buffer (0 where padded), the keys
    of :meth:`ReplayTokens.lookup`; None if unknown."""

    def to_torch(self, device: torch.device | str = "cpu") -> TensorSegmentBatch:
        """The batch as tensors on ``device`` (obs uint8, actions int64, rewards float32)."""
        return TensorSegmentBatch(
            *(
                None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)
                for a in self
            )
        )


def frames_to_tensor(obs: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """uint8 frames (..., H, W, C) to float (..., C, H, W) in [0, 1] on ``device``.

    Without ``device``, a tensor stays on its own device (a batch moved to the GPU is encoded
    there) and an array goes to the CPU.
    """
    x = torch.as_tensor(obs)
    if device is not None:
        x = x.to(device)
    if x.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {x.dtype}")
    return x.movedim(-1, -3).float().div_(255.0)  # (..., C, H, W)


class ReplayTokens:
    """The tokens of every frame of a replay buffer under a tokenizer's current weights.

    The world-model and actor-critic phases draw many more frames per epoch than the buffer
    holds, while the tokenizer does not change (the ``cpu`` preset's phases encode 12,800 and
    26,880 frames per epoch from a buffer of at most 20,000, most of them several times).
    Encoding every stored frame once and looking the drawn ones up costs less. :meth:`update`
    encodes what changed since its last call: the frames collected since (from the start of
    their chunk), or all of them again when the tokenizer's weights changed (their in-place
    version counters moved: an optimizer step, a dead-code restart, a loaded checkpoint). The
    tokens are those that encoding the drawn frames would give: the encoder works frame by
    frame, so only float rounding can differ with the batch a frame is encoded in (a token
    flips only at a near-tie).

    Args:
        chunk: Frames encoded at once (bounds the encoder's activation memory).

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_env.models.tokenizer import Tokenizer
        >>> from rem_train.replay import ReplayBuffer
        >>> tok = Tokenizer(REMConfig.preset("tiny", num_actions=4).tokenizer).eval()
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (16, 16, 3)) as buf:
        ...     for t in range(5):
        ...         buf.append(np.full((16, 16, 3), 40 * t, np.uint8), 0, 0.0, terminated=t == 4)
        ...     cache = ReplayTokens()
        ...     cache.stale_frames(tok, buf), cache.update(tok, buf), cache.stale_frames(tok, buf)
        ...     seg = buf.sample_segments(2, 6, np.random.default_rng(0), pad="right").to_torch()
        ...     direct = tok.encode(frames_to_tensor(seg.obs.flatten(0, 1))).tokens
        ...     bool((cache.lookup(seg.index, seg.mask).flatten(0, 1) == direct).all())
        (5, 5, 0)
        True
    """

    def __init__(self, chunk: int = 512) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.chunk = chunk
        self.tokens: Tensor | None = None
        """(N, K) int32 tokens of records 0..N-1."""
        self.padding: Tensor | None = None
        """(K,) int64 tokens of an all-zero frame (what a padded step holds)."""
        self._weights: tuple[tuple[int, int], ...] = ()

    @staticmethod
    def _fingerprint(tokenizer: FrameTokenizer) -> tuple[tuple[int, int], ...]:
        """Where each weight lives and how often it was changed in place."""
        return tuple((p.data_ptr(), p._version) for p in tokenizer.parameters())

    def _start(self, tokenizer: FrameTokenizer, stop: int) -> int:
        """The first record :meth:`update` encodes, given ``stop`` stored records.

        0 when the weights changed; else the start of the chunk that holds the first missing
        record. Chunks start at multiples of ``chunk``, so a frame's tokens come from the same
        chunk of frames however the buffer grew (a resumed run gets an uninterrupted run's).
        """
        if self.tokens is None or self._fingerprint(tokenizer) != self._weights:
            return 0
        have = self.tokens.shape[0]
        return have if have >= stop else have - have % self.chunk

    def stale_frames(self, tokenizer: FrameTokenizer, replay: ReplayBuffer) -> int:
        """Frames :meth:`update` would encode now."""
        return max(replay.num_steps - self._start(tokenizer, replay.num_steps), 0)

    @torch.no_grad()
    def update(self, tokenizer: FrameTokenizer, replay: ReplayBuffer) -> int:
        """Encodes the new or stale frames (the tokenizer as it is); returns how many."""
        stop = replay.num_steps
        start = self._start(tokenizer, stop)
        device = tokenizer.codebook.device
        if start == 0:
            blank = torch.zeros((1, *replay.obs_shape), dtype=torch.uint8)
            self.padding = tokenizer.encode(frames_to_tensor(blank, device)).tokens[0]
            self.tokens = torch.zeros((0, self.padding.shape[0]), dtype=torch.int32, device=device)
        assert self.tokens is not None
        parts = [self.tokens[:start]]
        for first in range(start, stop, self.chunk):
            obs = replay.observations(first, min(first + self.chunk, stop))
            parts.append(tokenizer.encode(frames_to_tensor(obs, device)).tokens.to(torch.int32))
        self.tokens = torch.cat(parts)
        self._weights = self._fingerprint(tokenizer)
        return max(stop - start, 0)

    def lookup(self, index: Tensor, mask: Tensor) -> Tensor:
        """(..., K) int64 tokens of the records ``index``; an all-zero frame's where not ``mask``.

        Args:
            index: Record numbers, e.g. (B, T) :attr:`TensorSegmentBatch.index`.
            mask: Bool of ``index``'s shape, False for padded steps.

        Raises:
            ValueError: Before :meth:`update`, or for a real step it has not encoded.
        """
        if self.tokens is None or self.padding is None:
            raise ValueError("no tokens yet: call update() first")
        index = index.to(self.tokens.device)
        mask = mask.to(self.tokens.device).bool()
        if bool((index[mask] >= self.tokens.shape[0]).any()):
            raise ValueError(
                f"records up to {int(index[mask].max())} asked for; {self.tokens.shape[0]} encoded"
            )
        tokens = self.tokens[torch.where(mask, index, 0)].long()  # (..., K)
        return torch.where(mask[..., None], tokens, self.padding)
