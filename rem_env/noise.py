"""Counter-based random numbers: one reproducible stream per dream, computed on its device.

Every dream owns a seed and a step counter. The uniforms it uses at a step are a pure function of
``(seed, counter, slot)``, hashed with the SplitMix64 finaliser in int64 tensor arithmetic. So a
dream's randomness does not depend on which other dreams share its batch, the same seeds give
bit-identical dreams on the same device, and nothing travels between host and device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MAX_SEED", "hash_uniforms", "splitmix64"]

MAX_SEED = 2**63 - 1
"""Largest seed a stream accepts (seeds are stored as int64)."""


def _signed(value: int) -> int:
    """The int64 (two's complement) reading of a 64-bit unsigned constant."""
    return value - 2**64 if value >= 2**63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX_1 = _signed(0xBF58476D1CE4E5B9)
_MIX_2 = _signed(0x94D049BB133111EB)
_COUNTER_KEY = _signed(0xD1B54A32D192ED03)
_FLOAT_BITS = 24  # float32 represents every multiple of 2**-24 in [0, 1) exactly


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical (unsigned) right shift of int64 values: torch's ``>>`` is arithmetic."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """The SplitMix64 output function on int64 tensors (wrapping arithmetic), elementwise.

    Example:
        >>> import torch
        >>> from rem_env.noise import splitmix64
        >>> splitmix64(torch.tensor([0, 1])).tolist() == splitmix64(torch.tensor([0, 1])).tolist()
        True
    """
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX_1
    z = (z ^ _shift_right(z, 27)) * _MIX_2
    return z ^ _shift_right(z, 31)


def hash_uniforms(seeds: Tensor, counters: Tensor, num_slots: int) -> Tensor:
    """Uniform float32 numbers in [0, 1) for each stream at its current counter.

    Args:
        seeds: (B,) int64 seed of each stream.
        counters: (B,) int64 step counter of each stream.
        num_slots: How many numbers each stream needs at this step.

    Returns:
        (B, num_slots) float32 in [0, 1), on the device of ``seeds``; entry ``[i, j]`` depends
        only on ``(seeds[i], counters[i], j)``.

    Example:
        >>> import torch
        >>> from rem_env.noise import hash_uniforms
        >>> u = hash_uniforms(torch.tensor([7, 8]), torch.tensor([0, 0]), num_slots=3)
        >>> u.shape, u.dtype, bool(((u >= 0) & (u < 1)).all())
        (torch.Size([2, 3]), torch.float32, True)
        >>> bool((hash_uniforms(torch.tensor([8]), torch.tensor([0]), 3) == u[1]).all())
        True
    """
    if seeds.shape != counters.shape or seeds.ndim != 1:
        raise ValueError(
            f"seeds and counters must both be (B,), got {tuple(seeds.shape)} and "
            f"{tuple(counters.shape)}"
        )
    if num_slots < 1:
        raise ValueError(f"num_slots must be at least 1, got {num_slots}")
    key = splitmix64(splitmix64(seeds.long()) ^ (counters.long() * _COUNTER_KEY))  # (B,)
    slots = torch.arange(1, num_slots + 1, device=seeds.device, dtype=torch.long)  # (S,)
    bits = splitmix64(key[:, None] + slots[None, :] * _GOLDEN)  # (B, S)
    top = _shift_right(bits, 64 - _FLOAT_BITS)  # (B, S) in [0, 2**24)
    return top.to(torch.float32) * (1.0 / (1 << _FLOAT_BITS))
