"""REM's latent-space actor-critic ("LSAC", REM_SPEC 6): a CNN on token codes, then an LSTM.

The recurrent state ``(h, c)`` is passed in and returned; the module never stores it. The LSTM
input sequence is o_0, a_0, o_1, a_1, ...: after each observation step (:meth:`ActorCritic.forward`)
the executed action is pushed through the same LSTM as its own step
(:meth:`ActorCritic.observe_action`), whose output is discarded.

Masked steps (``mask`` False, e.g. left padding in a burn-in segment) leave the state unchanged,
so running a left-padded segment from zeros equals running its real frames alone.

In imagination every code is a codebook row, so the first convolution of a frame is a sum of
nine per-token tables (:meth:`ActorCritic.code_table`, :class:`TokenCodes`): the same numbers
as the convolution, at a fraction of its work.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rem_env.config import REMConfig

__all__ = [
    "ActorCritic",
    "ActorCriticOutput",
    "CodeTable",
    "LSTMState",
    "TokenCodes",
    "sample_actions",
]


class LSTMState(NamedTuple):
    """Recurrent state of the actor-critic's LSTM cell."""

    h: Tensor
    """(B, hidden) hidden state."""
    c: Tensor
    """(B, hidden) cell state."""

    def select(self, keep_new: Tensor, new: LSTMState) -> LSTMState:
        """Row-wise choice: ``new`` where ``keep_new`` (B,) is True, ``self`` elsewhere."""
        m = keep_new.bool()[:, None]  # (B, 1)
        return LSTMState(torch.where(m, new.h, self.h), torch.where(m, new.c, self.c))

    def reset(self, done: Tensor) -> LSTMState:
        """Zeros the rows where ``done`` (B,) is True (a new episode starts there)."""
        m = done.bool()[:, None]  # (B, 1)
        return LSTMState(self.h.masked_fill(m, 0.0), self.c.masked_fill(m, 0.0))


class ActorCriticOutput(NamedTuple):
    """Result of one observation step."""

    logits: Tensor
    """(B, A) policy logits."""
    value: Tensor
    """(B,) value estimate."""
    state: LSTMState
    """The LSTM state after this observation."""


class CodeTable(NamedTuple):
    """The actor-critic's first convolution applied to every code of a codebook, from
    :meth:`ActorCritic.code_table`; valid until that layer's weight (checked on use) or the
    codebook (not checked) changes."""

    rows: Tensor
    """(9 * (V + 1), C) float: for kernel offset ``o`` (raster order over the 3x3 kernel) and
    token ``v``, row ``o * (V + 1) + v`` is what code ``v`` adds through that offset to an
    output cell's C channels; row ``o * (V + 1) + V`` is zero (the padding outside the grid)."""
    weight_version: int | None
    """The first layer weight's version counter when the table was made (checked on use; None
    for a module made under ``torch.inference_mode``, whose tensors keep no counter)."""


class TokenCodes(NamedTuple):
    """Frames given as tokens of a codebook, for an actor-critic that reads their codes.

    Where every code is a codebook row (imagination, ``to_codes(tokens)``), the first
    convolution of :class:`ActorCritic` is a sum, per output cell, of the table rows of the
    nine tokens around it: the same numbers (up to the order of float additions) without the
    convolution's work. Pass it where codes go (``forward``, ``burn_in``).
    """

    tokens: Tensor
    """Integer token ids in [0, V): (B, h*w) for ``forward``, (B, T, h*w) for ``burn_in``,
    raster (h-major) order."""
    table: CodeTable
    """:meth:`ActorCritic.code_table` of the codebook the tokens index."""


class ActorCritic(nn.Module):
    """REM's actor-critic on tokenizer codes: conv-conv-linear, LSTMCell, actor and critic heads.

    Layers (paper sizes in brackets): ``Conv3x3(E->128)+SiLU``, ``Conv3x3(128->64)+SiLU``,
    flatten (64*h*w = 4096), ``Linear(->512)+SiLU``, ``LSTMCell(512, 512)``, actor
    ``Linear(512, A)``, critic ``Linear(512, 1)``, and action embeddings
    ``nn.Embedding(A, 512)`` fed through the same LSTM. About 4.58M parameters.

    Args:
        num_actions: Size of the action set A.
        embed_dim: Channels E of the token codes (the tokenizer's ``embed_dim``, 256).
        latent_size: Side h = w of the token grid (8).
        hidden_size: Width of the linear layer and the LSTM (512).

    Example:
        >>> import torch
        >>> ac = ActorCritic(num_actions=4, embed_dim=32, latent_size=4, hidden_size=64)
        >>> state = ac.initial_state(batch_size=2)
        >>> out = ac(torch.randn(2, 32, 4, 4), state)
        >>> out.logits.shape, out.value.shape
        (torch.Size([2, 4]), torch.Size([2]))
        >>> state = ac.observe_action(torch.tensor([0, 3]), out.state)
        >>> state.h.shape
        torch.Size([2, 64])

        The same step from tokens of a codebook, through the first layer's table:

        >>> codebook = torch.randn(10, 32)
        >>> tokens = torch.randint(10, (2, 16))
        >>> codes = codebook[tokens].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
        >>> fast = ac(TokenCodes(tokens, ac.code_table(codebook)), ac.initial_state(2))
        >>> slow = ac(codes, ac.initial_state(2))
        >>> torch.allclose(fast.logits, slow.logits, atol=1e-5)
        True
    """

    def __init__(
        self, num_actions: int, embed_dim: int, latent_size: int, hidden_size: int = 512
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_actions", num_actions),
            ("embed_dim", embed_dim),
            ("latent_size", latent_size),
            ("hidden_size", hidden_size),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_actions = num_actions
        self.embed_dim = embed_dim
        self.latent_size = latent_size
        self.hidden_size = hidden_size
        self.encoder = nn.Sequential(
            nn.Conv2d(embed_dim, 128, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Flatten(),  # (B, 64*h*w)
            nn.Linear(64 * latent_size * latent_size, hidden_size),
            nn.SiLU(),
        )
        self.lstm = nn.LSTMCell(hidden_size, hidden_size)
        self.actor = nn.Linear(hidden_size, num_actions)
        self.critic = nn.Linear(hidden_size, 1)
        self.action_embeddings = nn.Embedding(num_actions, hidden_size)

    @classmethod
    def from_config(cls, config: REMConfig, hidden_size: int = 512) -> ActorCritic:
        """Builds the actor-critic matching a model config (A, E and the token grid)."""
        if not isinstance(config, REMConfig):
            raise TypeError(f"config must be a REMConfig, got {type(config).__name__}")
        tok = config.tokenizer
        return cls(config.num_actions, tok.embed_dim, tok.latent_size, hidden_size)

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> LSTMState:
        """Zero state for ``batch_size`` rows, on ``device`` (default: the parameters' device)."""
        weight = self.actor.weight
        shape = (batch_size, self.hidden_size)
        device = weight.device if device is None else device
        return LSTMState(
            torch.zeros(shape, device=device, dtype=weight.dtype),
            torch.zeros(shape, device=device, dtype=weight.dtype),
        )

    def code_table(self, codebook: Tensor) -> CodeTable:
        """The first convolution applied to each code of ``codebook`` (V, E), per kernel offset.

        Differentiable in this module's weights: made once per training step with gradient, it
        serves every frame of the step's rollout (:class:`TokenCodes`). Make a new one after the
        weights change; using an old one raises.

        Raises:
            ValueError: If ``codebook`` is not (V, E) with this module's E.
        """
        if codebook.ndim != 2 or codebook.shape[1] != self.embed_dim:
            raise ValueError(
                f"codebook must have shape (V, {self.embed_dim}), got {tuple(codebook.shape)}"
            )
        conv = self.encoder[0]
        v, channels = codebook.shape[0], conv.out_channels
        table = torch.einsum("oekl,ve->klvo", conv.weight, codebook.to(conv.weight))  # (3,3,V,C)
        table = table.reshape(9, v, channels)
        padding = table.new_zeros(9, 1, channels)  # the zero code outside the grid
        rows = torch.cat([table, padding], dim=1).reshape(9 * (v + 1), channels)
        return CodeTable(rows, _version(conv.weight))

    def _first_layer(self, codes: Tensor | TokenCodes) -> Tensor:
        """(N, E, h, w) codes or :class:`TokenCodes` of (N, h*w) tokens -> (N, 128, h, w), the
        first convolution's output (before its activation)."""
        conv = self.encoder[0]
        if not isinstance(codes, TokenCodes):
            self._check_codes(codes)
            return conv(codes)
        tokens, table = codes
        s = self.latent_size
        if tokens.ndim != 2 or tokens.shape[1] != s * s:
            raise ValueError(f"tokens must have shape (N, {s * s}), got {tuple(tokens.shape)}")
        if table.weight_version != _version(conv.weight):
            raise ValueError(
                "the code table was made before the first layer's weight last changed: make a "
                "new one with code_table() after each update"
            )
        n, v = tokens.shape[0], table.rows.shape[0] // 9 - 1  # V codes, one padding row each
        # An id outside [0, V) would read another kernel offset's rows; checked where it costs
        # no device sync (imagination's own tokens are always in range).
        if tokens.device.type == "cpu" and bool(((tokens < 0) | (tokens >= v)).any()):
            raise ValueError(
                f"token ids must lie in [0, {v}), got range [{int(tokens.min())}, "
                f"{int(tokens.max())}]"
            )
        grid = F.pad(tokens.long().reshape(n, s, s), (1, 1, 1, 1), value=v)  # (N, s+2, s+2)
        index = torch.stack(  # (N, s, s, 9): each cell's nine neighbours, as table rows
            [
                grid[:, k : k + s, j : j + s] + (3 * k + j) * (v + 1)
                for k in range(3)
                for j in range(3)
            ],
            dim=-1,
        )
        cells = F.embedding_bag(index.reshape(-1, 9), table.rows, mode="sum")  # (N*s*s, C)
        cells = cells.reshape(n, s, s, -1) + conv.bias
        return cells.permute(0, 3, 1, 2)  # (N, C, s, s)

    def _features(self, codes: Tensor | TokenCodes) -> Tensor:
        """(N, hidden) encoder output of N frames' codes."""
        return self.encoder[1:](self._first_layer(codes))

    def forward(self, codes: Tensor | TokenCodes, state: LSTMState) -> ActorCriticOutput:
        """One observation step.

        Args:
            codes: (B, E, h, w) token codes of the current frames (``z_quantized`` of the
                tokenizer when acting, ``to_codes(tokens)`` in imagination), or the frames'
                :class:`TokenCodes` (tokens (B, h*w)).
            state: LSTM state before this observation.

        Returns:
            Policy logits, value and the new state.

        Raises:
            ValueError: If ``codes`` does not have shape (B, E, h, w), or the tokens (B, h*w),
                or the table is older than the weights.
        """
        x = self._features(codes)  # (B, hidden)
        h, c = self.lstm(x, (state.h, state.c))
        return ActorCriticOutput(self.actor(h), self.critic(h).squeeze(-1), LSTMState(h, c))

    def observe_action(self, actions: Tensor, state: LSTMState) -> LSTMState:
        """Pushes the executed actions (B,) through the LSTM as their own step."""
        if actions.ndim != 1:
            raise ValueError(f"actions must have shape (B,), got {tuple(actions.shape)}")
        h, c = self.lstm(self.action_embeddings(actions.long()), (state.h, state.c))
        return LSTMState(h, c)

    @torch.no_grad()
    def burn_in(
        self,
        codes: Tensor,
        actions: Tensor,
        mask: Tensor,
        burn_in_actions: bool = True,
        state: LSTMState | None = None,
    ) -> LSTMState:
        """Runs a (left-padded) segment of real frames under no_grad and returns the state.

        Args:
            codes: (B, T, E, h, w) token codes of the burn-in frames, or their
                :class:`TokenCodes` (tokens (B, T, h*w)).
            actions: (B, T) actions executed after each frame (read only with
                ``burn_in_actions``).
            mask: (B, T) bool, False for padding; masked steps leave the state unchanged.
            burn_in_actions: True (intended, default) feeds o_0, a_0, ..., o_{T-1}, a_{T-1}, as
                when acting; False (the published REM behaviour, REM_SPEC 11.1) feeds the
                observations only.
            state: Start state; zeros when None.

        Returns:
            The state after the segment; the next observation step continues from it.

        Raises:
            ValueError: If the shapes disagree.
        """
        if isinstance(codes, TokenCodes):
            if codes.tokens.ndim != 3:
                raise ValueError(
                    f"tokens must have shape (B, T, h*w), got {tuple(codes.tokens.shape)}"
                )
            b, t = codes.tokens.shape[:2]
            frames: Tensor | TokenCodes = TokenCodes(codes.tokens.flatten(0, 1), codes.table)
            device = codes.tokens.device
        else:
            if codes.ndim != 5:
                raise ValueError(f"codes must have shape (B, T, E, h, w), got {tuple(codes.shape)}")
            b, t = codes.shape[:2]
            frames, device = codes.flatten(0, 1), codes.device
        if tuple(mask.shape) != (b, t) or tuple(actions.shape) != (b, t):
            raise ValueError(
                f"mask and actions must have shape {(b, t)}, got {tuple(mask.shape)} and "
                f"{tuple(actions.shape)}"
            )
        if state is None:
            state = self.initial_state(b, device=device)
        x = self._features(frames).unflatten(0, (b, t))  # (B, T, hidden), one pass
        for i in range(t):
            new = LSTMState(*self.lstm(x[:, i], (state.h, state.c)))
            if burn_in_actions:
                new = self.observe_action(actions[:, i], new)
            state = state.select(mask[:, i], new)
        return state

    def _check_codes(self, codes: Tensor) -> None:
        """Raises if ``codes`` is not (B, E, h, w) with this module's sizes."""
        expected = (self.embed_dim, self.latent_size, self.latent_size)
        if codes.ndim != 4 or tuple(codes.shape[1:]) != expected:
            raise ValueError(
                f"codes must have shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(codes.shape)}"
            )


def _version(weight: Tensor) -> int | None:
    """How often ``weight`` was changed in place (None for an inference tensor)."""
    return None if weight.is_inference() else weight._version


def sample_actions(
    logits: Tensor,
    temperature: float = 1.0,
    epsilon: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Samples actions from policy logits with a temperature and epsilon-uniform exploration.

    REM collects with temperature 1.0 and epsilon 0.01 and evaluates with temperature 0.5 and
    epsilon 0 (REM_SPEC 7, 8). The returned action is the one to execute AND to feed to
    :meth:`ActorCritic.observe_action` (REM_SPEC 11.3: REM fed the sampled one instead).

    Args:
        logits: (B, A) policy logits.
        temperature: Positive divisor of the logits.
        epsilon: Probability in [0, 1] of replacing the sample by a uniform random action.
        generator: Optional torch generator (on the logits' device) for reproducible draws.

    Returns:
        (B,) int64 actions.

    Raises:
        ValueError: If ``temperature`` <= 0, ``epsilon`` is outside [0, 1] or ``logits`` is
            not 2-D.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_actions(torch.tensor([[0.0, 50.0], [50.0, 0.0]]), generator=g).tolist()
        [1, 0]
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, A), got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    b, a = logits.shape
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, A)
    actions = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    if epsilon > 0:
        explore = torch.rand(b, device=logits.device, generator=generator) < epsilon
        uniform = torch.randint(a, (b,), device=logits.device, generator=generator)
        actions = torch.where(explore, uniform, actions)
    return actions
