"""RetNet decoder layer and stack (pre-LN, multi-scale retention, swish feed-forward).

A layer is ``x += dropout(MSR(LN1(x)))`` then ``x += FFN(LN2(x))`` with
``FFN = dropout(Linear2(dropout(silu(Linear1(x)))))`` (REM_SPEC section 4). There is no final
LayerNorm. States go in as arguments and come back as return values: a stack state is a tuple
with one (B, H, d, d) tensor per layer, or None for zero states.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from rem_env.models.retention import (
    MultiScaleRetention,
    block_states,
    retention_chunk,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
    rotation_tables,
)

__all__ = ["LayerStates", "RetNetDecoder", "RetNetDecoderLayer"]

LayerStates = tuple[Tensor, ...]
"""One retention state (B, H, d, d) per layer."""

FFN_ROWS_PER_PIECE = 1024
"""Rows of the feed-forward block processed at once when no gradient is recorded."""

STEP_ROWS_PER_PIECE = 8192
"""Token rows (batch x tokens) of one imagination pass processed at once without autograd.

Larger batches are split: beyond ~32 MB per activation, CPU allocations are fresh memory maps
whose page faults cost more than the arithmetic. Results do not depend on the split.
"""


class RetNetDecoderLayer(nn.Module):
    """One pre-LN RetNet decoder layer.

    Args:
        embed_dim: Model width E.
        num_heads: Retention heads.
        ffn_dim: Hidden width of the feed-forward block.
        dropout: Dropout probability.
        rope_base: Base of the rotation frequencies.
        min_decay_window: Window of the fastest-decaying head.
        max_decay_window: Window of the slowest-decaying head.

    Example:
        >>> import torch
        >>> layer = RetNetDecoderLayer(embed_dim=32, num_heads=2, ffn_dim=64)
        >>> y, state = layer.forward_chunk(torch.randn(2, 7, 32), start=0, state=None)
        >>> y.shape, state.shape
        (torch.Size([2, 7, 32]), torch.Size([2, 2, 16, 16]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
        min_decay_window: float = 32.0,
        max_decay_window: float = 512.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=1e-6)
        self.retention = MultiScaleRetention(
            embed_dim, num_heads, dropout, rope_base, min_decay_window, max_decay_window
        )
        self.dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim, eps=1e-6)
        self.linear1 = nn.Linear(embed_dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, embed_dim)
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)

    def feed_forward(self, x: Tensor) -> Tensor:
        """The residual feed-forward half of the layer: ``x + FFN(LN2(x))``.

        Without autograd, rows are processed in pieces of ``FFN_ROWS_PER_PIECE`` so that the
        wide hidden activations stay small and in cache (on CPU a (64*129, 1024) float32
        activation costs more in page faults than in arithmetic).
        """
        rows = x.shape[:-1].numel()
        if torch.is_grad_enabled() or rows <= FFN_ROWS_PER_PIECE:
            return x + self._ffn(x)
        flat = x.reshape(rows, x.shape[-1])  # (N, E)
        out = torch.empty_like(flat)
        for begin in range(0, rows, FFN_ROWS_PER_PIECE):
            piece = flat[begin : begin + FFN_ROWS_PER_PIECE]
            torch.add(piece, self._ffn(piece), out=out[begin : begin + FFN_ROWS_PER_PIECE])
        return out.view_as(x)

    def _ffn(self, x: Tensor) -> Tensor:
        hidden = self.dropout(nn.functional.silu(self.linear1(self.norm2(x))))
        return self.dropout(self.linear2(hidden))

    def forward_parallel(self, x: Tensor, start: int) -> Tensor:
        """Parallel form from a zero state over (B, T, E) inputs."""
        q, k, v, g = self.retention.project(self.norm1(x), start)
        o = retention_parallel(q, k, v, self.retention.gammas)
        return self.feed_forward(x + self.dropout(self.retention.combine(o, g)))

    def forward_chunk(
        self, x: Tensor, start: int, state: Tensor | None, state_len: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """One chunk from ``state``; only the first ``state_len`` tokens update the state."""
        q, k, v, g = self.retention.project(self.norm1(x), start)
        o, new_state = retention_chunk(q, k, v, self.retention.gammas, state, state_len)
        return self.feed_forward(x + self.dropout(self.retention.combine(o, g))), new_state

    def forward_with_tail(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        state: Tensor | None,
        real: int,
        keep_from: int = 0,
        tail: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """A chunk whose first ``real`` tokens write the state; the tokens after them (the tail)
        read them but write nothing.

        Equal to :meth:`forward_chunk` on the chunk with ``state_len = real``, but cheaper:
        outputs are computed only from row ``keep_from`` on, and a tail passed apart with batch
        size 1 (the same tokens for every batch entry, as the POP prediction tokens in the
        first layer) is projected once for the whole batch.

        Args:
            x: (B, real + P, E) the whole chunk, or (B, real, E) when ``tail`` is given.
            cos, sin: (real + P, d/2) rotation tables of the chunk's positions.
            state: (B, H, d, d) state before the chunk, or None.
            real: Number of tokens that update the state.
            keep_from: First row of the chunk whose output is returned (at most ``real``).
            tail: (B or 1, P, E) tail tokens, or None when ``x`` holds them.

        Returns:
            ``(y, state)``: y (B, real + P - keep_from, E) and the state after the real tokens.
        """
        msr = self.retention
        if tail is None:
            q, k, v, g = msr.project_with_tables(self.norm1(x), cos, sin, keep_from)
            residual = x[:, keep_from:]
        else:
            batch = x.shape[0]
            q_x, k_x, v_x, g_x = msr.project_with_tables(
                self.norm1(x), cos[:real], sin[:real], query_from=keep_from
            )
            q_t, k_t, v_t, g_t = msr.rotate_heads(
                *self._tail_projections(tail), cos[real:], sin[real:]
            )

            def join(a: Tensor, b: Tensor, dim: int) -> Tensor:
                return torch.cat([a, b.expand(batch, *b.shape[1:])], dim=dim)

            k, v = join(k_x, k_t, 2), join(v_x, v_t, 2)  # (B, H, R+P, d)
            q = join(q_x, q_t, 2)  # (B, H, R+P-keep_from, d)
            g = join(g_x, g_t, 1)  # (B, R+P-keep_from, E)
            residual = join(x[:, keep_from:], tail, 1)
        o, new_state = retention_chunk(q, k, v, msr.gammas, state, real, keep_from)
        return self.feed_forward(residual + self.dropout(msr.combine(o, g))), new_state

    def _tail_projections(self, tail: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q, k, v, g of (1 or B, P, E) tail tokens before rotation, each (1 or B, P, E)."""
        return self.retention.linear_qkvg(self.norm1(tail))

    def forward_chunkwise(
        self, x: Tensor, start: int, state: Tensor | None, chunk_size: int
    ) -> tuple[Tensor, Tensor | None]:
        """Chunkwise form over (B, T, E) in chunks of ``chunk_size`` tokens."""
        q, k, v, g = self.retention.project(self.norm1(x), start)
        o, new_state = retention_chunkwise(q, k, v, self.retention.gammas, state, chunk_size)
        return self.feed_forward(x + self.dropout(self.retention.combine(o, g))), new_state

    def forward_recurrent(
        self, x: Tensor, start: int, state: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Recurrent form, token by token, over (B, T, E) inputs."""
        q, k, v, g = self.retention.project(self.norm1(x), start)
        o, new_state = retention_recurrent(q, k, v, self.retention.gammas, state)
        return self.feed_forward(x + self.dropout(self.retention.combine(o, g))), new_state

    def forward_chunk_with_block_states(
        self, x: Tensor, start: int, state: Tensor | None, block_size: int
    ) -> tuple[Tensor, Tensor]:
        """One chunk of whole blocks; also returns the state after every block.

        Returns:
            ``(y, states)``: y (B, T, E) and states (B, T / block_size, H, d, d).
        """
        q, k, v, g = self.retention.project(self.norm1(x), start)
        o, _ = retention_chunk(q, k, v, self.retention.gammas, state)
        states = block_states(k, v, self.retention.gammas, block_size, state)
        return self.feed_forward(x + self.dropout(self.retention.combine(o, g))), states

    def forward_from_block_states(
        self, u: Tensor, start: int, states: Tensor, block_size: int
    ) -> Tensor:
        """Runs one group of tokens per block, each from its own state, writing no state.

        Group ``t`` (of ``P <= block_size`` tokens) sits at positions
        ``start + t * block_size + j`` and reads ``states[:, t]``.

        Args:
            u: (B, nb, P, E) token groups, one per block.
            start: Absolute position of the first block.
            states: (B, nb, H, d, d) state before each block.
            block_size: Tokens per block (the stride between groups).
        """
        batch, num_blocks, group, _ = u.shape
        cos, sin = rotation_tables(
            start,
            num_blocks * block_size,
            self.retention.head_dim,
            self.retention.rope_base,
            u.dtype,
            u.device,
        )
        cos = cos.unflatten(0, (num_blocks, block_size))[:, :group].flatten(0, 1)  # (nb*P, d/2)
        sin = sin.unflatten(0, (num_blocks, block_size))[:, :group].flatten(0, 1)
        flat = u.flatten(1, 2)  # (B, nb*P, E)
        q, k, v, g = self.retention.project_with_tables(self.norm1(flat), cos, sin)

        def per_block(t: Tensor) -> Tensor:
            # (B, H, nb*P, d) -> (B*nb, H, P, d)
            return t.unflatten(2, (num_blocks, group)).transpose(1, 2).flatten(0, 1)

        o, _ = retention_chunk(
            per_block(q),
            per_block(k),
            per_block(v),
            self.retention.gammas,
            states.flatten(0, 1),  # (B*nb, H, d, d)
        )
        o = o.unflatten(0, (batch, num_blocks)).transpose(1, 2).flatten(2, 3)  # (B, H, nb*P, d)
        y = self.feed_forward(flat + self.dropout(self.retention.combine(o, g)))
        return y.unflatten(1, (num_blocks, group))  # (B, nb, P, E)


class RetNetDecoder(nn.Module):
    """A stack of :class:`RetNetDecoderLayer` sharing one set of sizes.

    Args:
        num_layers: Number of layers.
        embed_dim: Model width.
        num_heads: Retention heads.
        ffn_dim: Hidden width of the feed-forward blocks.
        dropout: Dropout probability.
        rope_base: Base of the rotation frequencies.
        min_decay_window: Window of the fastest-decaying head.
        max_decay_window: Window of the slowest-decaying head.
        identical_init: Start every layer with the same weights (REM deep-copies one layer).

    Example:
        >>> import torch
        >>> dec = RetNetDecoder(2, embed_dim=32, num_heads=2, ffn_dim=64)
        >>> y, states = dec.forward_chunk(torch.randn(2, 7, 32), start=0, states=None)
        >>> y.shape, len(states)
        (torch.Size([2, 7, 32]), 2)
    """

    def __init__(
        self,
        num_layers: int,
        *,
        embed_dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
        min_decay_window: float = 32.0,
        max_decay_window: float = 512.0,
        identical_init: bool = True,
    ) -> None:
        super().__init__()

        def make() -> RetNetDecoderLayer:
            return RetNetDecoderLayer(
                embed_dim,
                num_heads,
                ffn_dim,
                dropout,
                rope_base,
                min_decay_window,
                max_decay_window,
            )

        first = make()
        self.layers = nn.ModuleList(
            [first]
            + [copy.deepcopy(first) if identical_init else make() for _ in range(num_layers - 1)]
        )

    def forward_parallel(self, x: Tensor, start: int = 0) -> Tensor:
        """Parallel form of the whole stack from zero states."""
        for layer in self.layers:
            x = layer.forward_parallel(x, start)
        return x

    def forward_chunk(
        self, x: Tensor, start: int, states: LayerStates | None, state_len: int | None = None
    ) -> tuple[Tensor, LayerStates]:
        """One chunk through every layer; see :meth:`RetNetDecoderLayer.forward_chunk`."""
        new_states = []
        for i, layer in enumerate(self.layers):
            x, state = layer.forward_chunk(x, start, _at(states, i), state_len)
            new_states.append(state)
        return x, tuple(new_states)

    def forward_with_tail(
        self, x: Tensor, tail: Tensor, start: int, states: LayerStates | None, keep_from: int
    ) -> tuple[Tensor, LayerStates]:
        """``x`` (B, R, E) then ``tail`` (B or 1, P, E) through the stack; only ``x`` writes state.

        Equals :meth:`forward_chunk` on ``cat([x, tail])`` with ``state_len=R``, returning rows
        ``keep_from..`` of the output: the last layer computes only those rows (the others
        still contribute keys and values), and a batch-1 tail is projected once in layer 0.
        Without autograd, batches beyond ``STEP_ROWS_PER_PIECE`` rows run in pieces.
        """
        real, batch = x.shape[1], x.shape[0]
        if not 0 <= keep_from <= real:
            raise ValueError(f"keep_from must be in [0, {real}], got {keep_from}")
        head = self.layers[0].retention
        cos, sin = rotation_tables(
            start, real + tail.shape[1], head.head_dim, head.rope_base, x.dtype, x.device
        )
        rows = batch * (real + tail.shape[1])
        if rows <= STEP_ROWS_PER_PIECE or torch.is_grad_enabled():
            return self._forward_with_tail(x, tail, cos, sin, states, keep_from)
        num_pieces = -(-rows // STEP_ROWS_PER_PIECE)
        piece = -(-batch // num_pieces)  # pieces of equal size (the last may be smaller)
        outputs, pieces = [], []
        for begin in range(0, batch, piece):
            part = slice(begin, begin + piece)
            part_tail = tail if tail.shape[0] == 1 else tail[part]
            part_states = None if states is None else tuple(s[part] for s in states)
            y, new = self._forward_with_tail(x[part], part_tail, cos, sin, part_states, keep_from)
            outputs.append(y)
            pieces.append(new)
        return torch.cat(outputs), tuple(torch.cat(layer) for layer in zip(*pieces, strict=True))

    def _forward_with_tail(
        self,
        x: Tensor,
        tail: Tensor,
        cos: Tensor,
        sin: Tensor,
        states: LayerStates | None,
        keep_from: int,
    ) -> tuple[Tensor, LayerStates]:
        real = x.shape[1]
        new_states = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            keep = keep_from if i == last else 0
            first_tail = tail if i == 0 else None  # after layer 0 the rows travel together
            x, state = layer.forward_with_tail(x, cos, sin, _at(states, i), real, keep, first_tail)
            new_states.append(state)
        return x, tuple(new_states)

    def forward_chunkwise(
        self, x: Tensor, start: int, states: LayerStates | None, chunk_size: int
    ) -> tuple[Tensor, LayerStates | None]:
        """Chunkwise form through every layer (each layer splits into ``chunk_size`` chunks)."""
        new_states = []
        for i, layer in enumerate(self.layers):
            x, state = layer.forward_chunkwise(x, start, _at(states, i), chunk_size)
            new_states.append(state)
        return x, tuple(new_states)

    def forward_recurrent(
        self, x: Tensor, start: int, states: LayerStates | None
    ) -> tuple[Tensor, LayerStates]:
        """Recurrent form (token by token) through every layer."""
        new_states = []
        for i, layer in enumerate(self.layers):
            x, state = layer.forward_recurrent(x, start, _at(states, i))
            new_states.append(state)
        return x, tuple(new_states)

    def forward_chunk_with_block_states(
        self, x: Tensor, start: int, states: LayerStates | None, block_size: int
    ) -> tuple[Tensor, LayerStates]:
        """One chunk of whole blocks; per layer, the state after every block (B, nb, H, d, d)."""
        all_states = []
        for i, layer in enumerate(self.layers):
            x, per_block = layer.forward_chunk_with_block_states(
                x, start, _at(states, i), block_size
            )
            all_states.append(per_block)
        return x, tuple(all_states)

    def forward_from_block_states(
        self, u: Tensor, start: int, states: LayerStates, block_size: int
    ) -> Tensor:
        """Token groups (B, nb, P, E), each read from its layer's state before its block."""
        for layer, per_block in zip(self.layers, states, strict=True):
            u = layer.forward_from_block_states(u, start, per_block, block_size)
        return u


def _at(states: LayerStates | None, index: int) -> Tensor | None:
    return None if states is None else states[index]
