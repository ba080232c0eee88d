"""Multi-scale retention: decays, rotation and the parallel, chunkwise and recurrent forms.

The math follows REM_SPEC section 5.1 (yet-another-retnet as used by REM). Every function here
works on already projected heads: ``q``, ``k`` and ``v`` of shape (B, H, T, d), with ``q`` and
``k`` rotated and ``k`` scaled by ``1/sqrt(d)``. A retention state ``S`` is a (B, H, d, d)
tensor, ``S_n = gamma * S_{n-1} + k_n^T v_n``; ``None`` stands for a zero state.

The three forms compute the same outputs and states (tested to 1e-10 in float64):

* parallel: ``o = (q k^T * D) v`` with ``D[n, m] = gamma^(n-m)`` for ``n >= m``;
* chunkwise: one chunk at a time from the previous state (any chunk size);
* recurrent: one token at a time.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

__all__ = [
    "MultiScaleRetention",
    "block_states",
    "decay_rates",
    "retention_chunk",
    "retention_chunkwise",
    "retention_parallel",
    "retention_recurrent",
    "rotate",
    "rotation_tables",
]

_TABLE_CACHE_SIZE = 64


def decay_rates(num_heads: int, min_window: float = 32.0, max_window: float = 512.0) -> tuple:
    """Per-head decays ``gamma_h = 1 - exp(linspace(ln(1/min_window), ln(1/max_window), H))``.

    For 4 heads and windows 32..512 this gives [0.96875, 0.987598, 0.995078, 0.998047].
    """
    if num_heads == 1:
        return (1.0 - 1.0 / min_window,)
    lo, hi = math.log(1.0 / min_window), math.log(1.0 / max_window)
    steps = [lo + (hi - lo) * h / (num_heads - 1) for h in range(num_heads)]
    return tuple(1.0 - math.exp(s) for s in steps)


@lru_cache(maxsize=_TABLE_CACHE_SIZE)
def _decay_tables(
    gammas: tuple[float, ...], length: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Cached (D, gamma^(i+1)) for a chunk: D (H, T, T) causal decay mask, (H, T, 1) powers."""
    with torch.inference_mode(False), torch.no_grad():
        log_gamma = torch.tensor(gammas, dtype=torch.float64, device=device).log()  # (H,)
        idx = torch.arange(length, dtype=torch.float64, device=device)
        diff = idx[:, None] - idx[None, :]  # (T, T)
        mask = torch.exp(diff.clamp(min=0)[None] * log_gamma[:, None, None])  # (H, T, T)
        mask = mask.masked_fill(diff[None] < 0, 0.0)
        cross = torch.exp((idx + 1)[None, :, None] * log_gamma[:, None, None])  # (H, T, 1)
        return mask.to(dtype), cross.to(dtype)


@lru_cache(maxsize=_TABLE_CACHE_SIZE)
def _state_decays(
    gammas: tuple[float, ...], length: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Cached (gamma^(L-1-j) as (H, L, 1), gamma^L as (H, 1, 1)) to fold L tokens into a state."""
    with torch.inference_mode(False), torch.no_grad():
        log_gamma = torch.tensor(gammas, dtype=torch.float64, device=device).log()
        powers = torch.arange(length - 1, -1, -1, dtype=torch.float64, device=device)
        per_token = torch.exp(powers[None, :, None] * log_gamma[:, None, None])  # (H, L, 1)
        whole = torch.exp(length * log_gamma)[:, None, None]  # (H, 1, 1)
        return per_token.to(dtype), whole.to(dtype)


@lru_cache(maxsize=8)
def _frequencies(head_dim: int, base: float, device: torch.device) -> Tensor:
    """Rotation frequencies theta (d/2,) in float64, from 1 down to 1/base."""
    with torch.inference_mode(False), torch.no_grad():
        exponents = torch.linspace(0.0, 1.0, head_dim // 2, dtype=torch.float64, device=device)
        return base ** (-exponents)


def rotation_tables(
    start: int,
    length: int,
    head_dim: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """cos and sin of the angles ``n * theta_i`` for positions ``start .. start+length-1``.

    Angles are computed in float64 so that positions in the millions stay exact to about 1e-10
    radians before the cast to ``dtype``.

    Returns:
        ``(cos, sin)``, each (length, head_dim / 2): entry i rotates the pair (2i, 2i+1).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    theta = _frequencies(head_dim, float(base), device)
    positions = torch.arange(length, dtype=torch.float64, device=device) + float(start)
    angles = positions[:, None] * theta[None, :]  # (T, d/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates each pair (x[2i], x[2i+1]) of the last dim by the angle behind cos/sin[..., i].

    ``(x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)``; cos and sin broadcast against
    ``x[..., ::2]``. float32/float64 use one complex multiplication (several times faster than
    the real-arithmetic form used for other dtypes, and inside ``torch.compile``, whose inductor
    backend has no complex kernels). Without autograd the result is contiguous whatever the
    strides of ``x``.
    """
    pairs = x.unflatten(-1, (-1, 2))  # (..., d/2, 2)
    complex_ok = x.dtype in (torch.float32, torch.float64) and x.stride(-1) == 1
    if complex_ok and not torch.compiler.is_compiling():  # inductor has no complex kernels
        rotation = torch.complex(cos, sin)
        if torch.is_grad_enabled():
            turned = torch.view_as_complex(pairs) * rotation  # (..., d/2)
        else:
            turned = rotation.new_empty(_broadcast_shape(pairs.shape[:-1], rotation.shape))
            torch.mul(torch.view_as_complex(pairs), rotation, out=turned)
        return torch.view_as_real(turned).flatten(-2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def _broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """``torch.broadcast_shapes(a, b)`` without its symbolic-shape checks, which cost ~20 us a
    call on CPU (a POP step rotates 10-20 times: ~3% of a one-dream step)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    if any(x != y and x != 1 and y != 1 for x, y in zip(a, b, strict=True)):
        raise RuntimeError(f"shapes {a} and {b} cannot be broadcast together")
    return tuple(x if y == 1 else y for x, y in zip(a, b, strict=True))


def retention_parallel(q: Tensor, k: Tensor, v: Tensor, gammas: tuple[float, ...]) -> Tensor:
    """Parallel form from a zero state: ``o = (q k^T * D) v``; returns (B, H, T, d)."""
    mask, _ = _decay_tables(gammas, q.shape[-2], q.dtype, q.device)
    return ((q @ k.transpose(-1, -2)) * mask) @ v


def retention_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gammas: tuple[float, ...],
    prev_state: Tensor | None = None,
    state_len: int | None = None,
    query_start: int = 0,
) -> tuple[Tensor, Tensor]:
    """One chunk of the chunkwise form.

    ``o_i = sum_{j<=i} gamma^(i-j) q_i k_j^T v_j + gamma^(i+1) q_i S_prev``.

    Args:
        q: (B, H, T - query_start, d) queries of the chunk's tokens ``query_start..T-1``.
        k: (B, H, T, d) keys of the chunk.
        v: (B, H, T, d) values of the chunk.
        gammas: Per-head decays.
        prev_state: (B, H, d, d) state before the chunk, or None for zero.
        state_len: Only the first ``state_len`` tokens are folded into the returned state
            (default: all ``T``). Tokens after them still read the earlier ones, which is how
            POP prediction tokens ride behind the real tokens without writing to the state.
        query_start: Index of the first token whose output is wanted (default 0: all).

    Returns:
        ``(o, state)``: outputs (B, H, T - query_start, d) and the state after the first
        ``state_len`` tokens.
    """
    length = k.shape[-2]
    state_len = length if state_len is None else state_len
    mask, cross = _decay_tables(gammas, length, q.dtype, q.device)
    if query_start:
        mask, cross = mask[:, query_start:], cross[:, query_start:]
    out = (q @ k.transpose(-1, -2)).mul_(mask) @ v  # in place: matmul keeps no output for backward
    if prev_state is not None:
        out = out.addcmul_(q @ prev_state, cross)
    per_token, whole = _state_decays(gammas, state_len, q.dtype, q.device)
    k_used = k[..., :state_len, :] * per_token  # (B, H, L, d)
    state = k_used.transpose(-1, -2) @ v[..., :state_len, :]  # (B, H, d, d)
    if prev_state is not None:
        state = state + prev_state * whole
    return out, state


def retention_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gammas: tuple[float, ...],
    prev_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise form over a whole sequence, split into chunks of ``chunk_size`` tokens.

    The last chunk may be shorter. Returns the outputs (B, H, T, d) and the final state.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    outputs = []
    state = prev_state
    for begin in range(0, q.shape[-2], chunk_size):
        part = slice(begin, begin + chunk_size)
        out, state = retention_chunk(
            q[..., part, :], k[..., part, :], v[..., part, :], gammas, state
        )
        outputs.append(out)
    return torch.cat(outputs, dim=-2), state


def retention_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gammas: tuple[float, ...],
    prev_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Recurrent form, one token at a time.

    ``S_n = gamma S_{n-1} + k_n^T v_n`` and ``o_n = q_n S_n``.
    """
    batch, heads, length, dim = q.shape
    _, gamma = _state_decays(gammas, 1, q.dtype, q.device)  # (H, 1, 1), cached on the device
    state = prev_state if prev_state is not None else q.new_zeros(batch, heads, dim, dim)
    outputs = []
    for n in range(length):
        k_n, v_n = k[..., n, :], v[..., n, :]  # (B, H, d)
        state = gamma * state + k_n[..., :, None] * v_n[..., None, :]  # (B, H, d, d)
        outputs.append((q[..., n, None, :] @ state).squeeze(-2))  # (B, H, d)
    return torch.stack(outputs, dim=-2), state


def block_states(
    k: Tensor,
    v: Tensor,
    gammas: tuple[float, ...],
    block_size: int,
    prev_state: Tensor | None = None,
) -> Tensor:
    """Retention state at the end of every block of ``block_size`` tokens.

    ``S_t = gamma^K S_{t-1} + sum_i gamma^(K-1-i) k_{t,i}^T v_{t,i}``, starting from ``prev_state``.

    Args:
        k: (B, H, T, d) keys, T a multiple of ``block_size``.
        v: (B, H, T, d) values.
        gammas: Per-head decays.
        block_size: Tokens per block.
        prev_state: (B, H, d, d) state before the first block, or None for zero.

    Returns:
        (B, num_blocks, H, d, d): the state after each block.
    """
    _batch, _heads, length, _dim = k.shape
    if length % block_size != 0:
        raise ValueError(f"sequence length {length} is not a multiple of block_size {block_size}")
    per_token, whole = _state_decays(gammas, block_size, k.dtype, k.device)
    k_blocks = k.unflatten(2, (-1, block_size)) * per_token[:, None]  # (B, H, nb, K, d)
    v_blocks = v.unflatten(2, (-1, block_size))  # (B, H, nb, K, d)
    contributions = k_blocks.transpose(-1, -2) @ v_blocks  # (B, H, nb, d, d)
    states = []
    state = prev_state
    for t in range(contributions.shape[2]):
        state = contributions[:, :, t] if state is None else contributions[:, :, t] + whole * state
        states.append(state)
    return torch.stack(states, dim=1)  # (B, nb, H, d, d)


class MultiScaleRetention(torch.nn.Module):
    """Multi-scale retention projections around the retention forms.

    ``y = out_proj(GroupNorm_H(dropout(o)) * swish(g_proj(x)))`` where ``o`` comes from one of the
    retention functions of this module. Projections q, k, v, g, o are biased linear layers with
    xavier-normal weights and zero biases.

    Args:
        embed_dim: Model width E.
        num_heads: Heads H; ``E / H`` must be a multiple of 8.
        dropout: Dropout on the retention output before the group norm.
        rope_base: Base of the rotation frequencies.
        min_decay_window: Window 1/(1-gamma) of the fastest head.
        max_decay_window: Window of the slowest head.

    Example:
        >>> import torch
        >>> msr = MultiScaleRetention(embed_dim=32, num_heads=2)
        >>> q, k, v, g = msr.project(torch.randn(3, 5, 32), start=0)
        >>> o, state = retention_chunk(q, k, v, msr.gammas)
        >>> msr.combine(o, g).shape, state.shape
        (torch.Size([3, 5, 32]), torch.Size([3, 2, 16, 16]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
        min_decay_window: float = 32.0,
        max_decay_window: float = 512.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0 or (embed_dim // num_heads) % 8 != 0:
            raise ValueError(
                f"embed_dim={embed_dim} / num_heads={num_heads} must give a head_dim that is a "
                "multiple of 8"
            )
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.rope_base = rope_base
        self.gammas = decay_rates(num_heads, min_decay_window, max_decay_window)
        self.q_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.k_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.v_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.g_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.dropout = torch.nn.Dropout(dropout)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.out_proj):
            torch.nn.init.xavier_normal_(proj.weight)
            torch.nn.init.zeros_(proj.bias)

    def project(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Projects (B, T, E) inputs at absolute positions ``start..start+T-1``.

        Returns:
            ``(q, k, v, g)``: rotated q and scaled, rotated k, v, each (B, H, T, d), and the gate
            pre-activation g (B, T, E).
        """
        cos, sin = rotation_tables(
            start, x.shape[1], self.head_dim, self.rope_base, x.dtype, x.device
        )
        return self.project_with_tables(x, cos, sin)

    def project_with_tables(
        self, x: Tensor, cos: Tensor, sin: Tensor, query_from: int = 0
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Like :meth:`project` with explicit rotation tables, each (T, d/2).

        With ``query_from > 0`` the queries and gates are computed only for tokens
        ``query_from..T-1`` (keys and values for all).
        """
        return self.rotate_heads(*self.linear_qkvg(x, query_from), cos, sin, query_from)

    def linear_qkvg(self, x: Tensor, query_from: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The q, k, v and g projections of (B, T, E) inputs, before rotation: each (B, ., E).

        With ``query_from > 0`` q and g are computed only for tokens ``query_from..T-1`` (k and
        v for all). The four layers run as they are, with or without autograd: nothing derived
        from the weights is kept between calls, so no way of changing them (an optimizer step, a
        write through ``.data``, ``Module.to``, a swapped parameter) can leave a stale copy.
        """
        k, v = self.k_proj(x), self.v_proj(x)
        x = x[:, query_from:]
        return self.q_proj(x), k, v, self.g_proj(x)

    def rotate_heads(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        g: Tensor,
        cos: Tensor,
        sin: Tensor,
        query_from: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Splits projections (B, ., E) into heads and rotates q and k by tables (T, d/2).

        ``q`` and ``g`` hold tokens ``query_from..T-1``, ``k`` and ``v`` all T. Returns q, k, v
        as (B, H, ., d), k scaled by ``1/sqrt(d)``, and g unchanged.
        """
        scale = self.head_dim**-0.5  # the key scaling rides on the (small) rotation tables
        # Heads are moved in front before rotating, so the rotated q and k come out contiguous
        # in the (B, H, T, d) layout the retention products read.
        k = rotate(self._split(k).transpose(1, 2), cos * scale, sin * scale)  # (B, H, T, d)
        q = rotate(self._split(q).transpose(1, 2), cos[query_from:], sin[query_from:])
        return q, k, self._split(v).transpose(1, 2), g

    def combine(self, o: Tensor, g: Tensor) -> Tensor:
        """Group norm per head, swish gate and output projection: (B, H, T, d) -> (B, T, E)."""
        o = self.dropout(o)
        o = torch.nn.functional.layer_norm(o, (self.head_dim,), eps=1e-6)
        o = o.transpose(1, 2).flatten(2)  # (B, T, E)
        return self.out_proj(o * torch.nn.functional.silu(g))

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))  # (B, T, H, d)
