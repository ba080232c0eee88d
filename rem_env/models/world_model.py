"""REM's RetNet world model with Parallel Observation Prediction (POP).

Token layout: each time step is one block of ``K + 1`` tokens, the K observation tokens of a
frame (raster order) followed by one action token with id ``obs_vocab_size + a``. The model
owns this layout; nobody else computes token ids.

Entry points:

* :meth:`WorldModel.forward`: the training forward over (B, T) blocks (REM_SPEC 5.3). With POP,
  the K prediction tokens of block t read the retention state from before block t, so
  ``obs_logits[:, t]`` predicts block t's own tokens; rewards and ends come from the real action
  token of block t.
* :meth:`WorldModel.start_state` and :meth:`WorldModel.step`: imagination with an explicit
  :class:`~rem_env.state.ImaginationState` (REM_SPEC 5.4). A POP step is ONE pass of
  ``2K + 1`` tokens (the current frame, the action, then the K prediction tokens riding behind
  them without writing to the state); all K next tokens are sampled at once.
* With ``config.pop = False`` the same entry points run the paper's "no POP" ablation:
  next-token prediction, imagined one token at a time (the baseline that shows what POP buys).
* With ``config.frame_conv_layers > 0`` (not in REM) a :class:`~rem_env.models.frame_conv.
  FrameConv` adds logits read from the 2-D grids of the two (``config.frame_conv_frames``)
  frames before each predicted one; the imagination state then keeps the frame before the
  current one (and with more than two, the frames before it). With
  ``config.frame_conv_events`` its features also add to the reward and end logits of each step
  (read from the step's frame, the one before it and the step's action); with
  ``config.frame_conv_copy`` it adds a per-patch bonus to the logit of each patch's token in
  the frame before; with ``config.frame_conv_pixels`` (a patch tokenizer's) it also reads the
  frames' pixels (each token's codebook patch); with ``config.frame_conv_completion`` a step
  draws its next frame in rounds, each reading the tokens of the frame drawn before it
  (:func:`~rem_env.models.sampling.draw_in_rounds`; the training forward's logits are the
  first round's, each patch on its own).
* With ``config.event_reader_width > 0`` (not in REM) an :class:`~rem_env.models.event_reader.
  EventReader` adds reward and end logits read from the decoded pixels of each step's frame and
  the one before it; the training forward and each step then take those frames (``frames``).
* With ``config.event_window_frames = W > 0`` (not in REM) an :class:`~rem_env.models.
  event_window.EventWindow` adds reward and end logits read from the token grids of each step's
  frame and the W - 1 frames before it; the imagination state then keeps those frames. With
  ``config.event_window_reads_next`` the window ends at the frame the step leads to instead
  (the W - 2 frames before the step's, the step's and the next): a step draws its next frame,
  then its reward and end.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rem_env.config import WorldModelConfig
from rem_env.models.event_reader import EventReader
from rem_env.models.event_window import EventWindow
from rem_env.models.frame_conv import FrameConv
from rem_env.models.retnet import LayerStates, RetNetDecoder
from rem_env.models.sampling import StepNoise, draw_in_rounds, sample_categorical
from rem_env.state import ImaginationState

__all__ = [
    "COMPLETION_ROUNDS",
    "COMPLETION_SURE",
    "ImaginationStep",
    "StepNoise",
    "WorldModel",
    "WorldModelOutput",
    "sample_categorical",
]

COMPLETION_ROUNDS = 4
"""With a frame conv's completion: patches of a frame drawn one at a time, after those it is
sure of and before the rest (each round one more pass of the completion's layers)."""

COMPLETION_SURE = 0.99
"""With a frame conv's completion: a patch whose likeliest token has at least this probability
is drawn in the first round, on its own."""

NUM_REWARD_CLASSES = 3
"""Reward classes: ``sign(r) + 1``, so an imagined reward is ``class - 1``."""


class WorldModelOutput(NamedTuple):
    """Logits of the training forward over (B, T) blocks of K observation tokens."""

    obs_logits: Tensor
    """(B, T, K, V): distribution of block t's observation tokens given all blocks before t."""
    reward_logits: Tensor
    """(B, T, 3): reward class of step t (read at block t's action token)."""
    end_logits: Tensor
    """(B, T, 2): episode end after step t."""


class ImaginationStep(NamedTuple):
    """What one imagination step produced for a batch of B dreams."""

    obs_tokens: Tensor
    """(B, K) int64: the next observation (sampled, or the teacher-forced tokens)."""
    rewards: Tensor
    """(B,) float: sampled reward class - 1, in {-1, 0, 1}."""
    ends: Tensor
    """(B,) bool: sampled episode end."""
    obs_logits: Tensor
    """(B, K, V): logits of the next observation tokens."""
    reward_logits: Tensor
    """(B, 3)."""
    end_logits: Tensor
    """(B, 2)."""


class _WindowStart(NamedTuple):
    """An event window's frames up to a step's own, read by the step."""

    tokens: Tensor
    """(B, M + 1, K) tokens: the M frames before the step's that the window reads, then its
    own; -1 where a frame does not exist."""
    features: Tensor
    """(B, M + 1, F) their :meth:`EventWindow.frame_features`."""


def _head(embed_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, out_dim))


class WorldModel(nn.Module):
    """RetNet world model over blocks of observation tokens and one action token.

    Args:
        config: Sizes and options.
        num_actions: Number of actions A (the action set of the game).
        obs_vocab_size: Tokenizer vocabulary V (512 in the paper).
        tokens_per_obs: Observation tokens per frame K (64 in the paper).

    With ``config.shared_embeddings`` the observation tokens are embedded by the tokenizer's
    codebook, which callers pass as ``codebook`` (it never receives a gradient here).

    Example:
        >>> import torch
        >>> from rem_env.config import WorldModelConfig
        >>> cfg = WorldModelConfig(embed_dim=32, num_layers=2, num_heads=2, ffn_dim=64,
        ...                        shared_embeddings=False)
        >>> wm = WorldModel(cfg, num_actions=4, obs_vocab_size=16, tokens_per_obs=16).eval()
        >>> out = wm(torch.randint(16, (2, 5, 16)), torch.randint(4, (2, 5)))
        >>> out.obs_logits.shape, out.reward_logits.shape
        (torch.Size([2, 5, 16, 16]), torch.Size([2, 5, 3]))
        >>> state = wm.start_state(torch.randint(16, (2, 2, 16)), torch.randint(4, (2, 1)))
        >>> step, state = wm.step(state, torch.tensor([0, 3]))
        >>> step.obs_tokens.shape, state.position
        (torch.Size([2, 16]), 34)
    """

    def __init__(
        self, config: WorldModelConfig, num_actions: int, obs_vocab_size: int, tokens_per_obs: int
    ) -> None:
        super().__init__()
        self.config = config
        self.num_actions = num_actions
        self.obs_vocab_size = obs_vocab_size
        self.tokens_per_obs = tokens_per_obs
        self.tokens_per_block = tokens_per_obs + 1
        self.action_token_offset = obs_vocab_size
        embed_dim = config.embed_dim
        # Rows: V observation tokens (unused with shared embeddings), A actions, one unused pad.
        self.embedding = nn.Embedding(obs_vocab_size + num_actions + 1, embed_dim)
        self.prediction_embeddings: nn.Embedding | None = None
        if config.pop:
            rows = 1 if config.shared_prediction_token else self.tokens_per_block
            self.prediction_embeddings = nn.Embedding(rows, embed_dim)
        self.decoder = RetNetDecoder(
            config.num_layers,
            embed_dim=embed_dim,
            num_heads=config.num_heads,
            ffn_dim=config.ffn_dim,
            dropout=config.dropout,
            rope_base=config.rope_base,
            min_decay_window=config.min_decay_window,
            max_decay_window=config.max_decay_window,
            identical_init=config.identical_layer_init,
        )
        self.head_obs = _head(embed_dim, obs_vocab_size)
        self.head_reward = _head(embed_dim, NUM_REWARD_CLASSES)
        self.head_end = _head(embed_dim, 2)
        self.frame_conv: FrameConv | None = None
        if config.frame_conv_layers:
            self.frame_conv = FrameConv(
                embed_dim,
                num_actions,
                obs_vocab_size,
                tokens_per_obs,
                config.frame_conv_layers,
                config.frame_conv_width,
                events=config.frame_conv_events,
                copy=config.frame_conv_copy,
                frames=config.frame_conv_frames,
                pixels=config.frame_conv_pixels,
                completion=config.frame_conv_completion,
            )
        self.event_reader: EventReader | None = None
        if config.event_reader_width:
            self.event_reader = EventReader(num_actions, config.event_reader_width)
        self.event_window: EventWindow | None = None
        if config.event_window_frames:
            self.event_window = EventWindow(
                obs_vocab_size,
                num_actions,
                tokens_per_obs,
                config.event_window_frames,
                config.event_window_width,
                reads_next=config.event_window_reads_next,
                change_width=config.event_window_change_width,
            )

    # ----------------------------------------------------------------------------- embeddings

    def embed_obs(self, obs_tokens: Tensor, codebook: Tensor | None = None) -> Tensor:
        """Embeds observation tokens (...,) -> (..., E)."""
        if self.config.shared_embeddings:
            if codebook is None:
                raise ValueError(
                    "this world model shares the tokenizer's codebook (shared_embeddings=True): "
                    "pass codebook=tokenizer.codebook"
                )
            return nn.functional.embedding(obs_tokens, codebook.detach())
        return self.embedding(obs_tokens)

    def embed_actions(self, actions: Tensor) -> Tensor:
        """Embeds actions (...,) -> (..., E)."""
        return self.embedding(actions + self.action_token_offset)

    def embed_blocks(
        self, obs_tokens: Tensor, actions: Tensor, codebook: Tensor | None = None
    ) -> Tensor:
        """Embeds (B, T, K) observation tokens and (B, T) actions as (B, T, K+1, E) blocks."""
        obs = self.embed_obs(obs_tokens, codebook)  # (B, T, K, E)
        act = self.embed_actions(actions)[:, :, None]  # (B, T, 1, E)
        return torch.cat([obs, act], dim=2)

    def prediction_tokens(self) -> Tensor:
        """The K prediction embeddings u_0..u_{K-1} as (K, E)."""
        if self.prediction_embeddings is None:
            raise ValueError(
                "this world model was built with pop=False: it has no prediction tokens"
            )
        weight = self.prediction_embeddings.weight
        if self.config.shared_prediction_token:
            return weight.expand(self.tokens_per_obs, -1)
        # Row K (u_K) is part of the published parameter set; its output is never used.
        return weight[: self.tokens_per_obs]

    # ------------------------------------------------------------------------ training forward

    def forward(
        self,
        obs_tokens: Tensor,
        actions: Tensor,
        codebook: Tensor | None = None,
        frames: Tensor | None = None,
    ) -> WorldModelOutput:
        """Training forward over segments of T blocks.

        Args:
            obs_tokens: (B, T, K) int64 observation tokens.
            actions: (B, T) int64 actions taken after each observation.
            codebook: (V, E) tokenizer codebook, needed with shared embeddings.
            frames: (B, T, 3, H, W) decoded frames in [0, 1] of the observation tokens, needed
                by (and only read by) an event reader.
        """
        self._check_blocks(obs_tokens, actions)
        x = self.embed_blocks(obs_tokens, actions, codebook)  # (B, T, K+1, E)
        if self.config.pop:
            obs_hidden, action_hidden = self._hidden_pop(x)
        else:
            obs_hidden, action_hidden = self._hidden_next_token(x)
        obs_logits = self.head_obs(obs_hidden)
        reward_logits, end_logits = self.head_reward(action_hidden), self.head_end(action_hidden)
        if self.frame_conv is not None:
            seen = x[:, :, :-1]  # (B, T, K, E): the frames as the frame conv reads them
            if self.config.frame_conv_pixels:  # (B, T, K, E + 3pp): and their pixels
                seen = torch.cat([seen, self._pixels(obs_tokens, codebook)], dim=-1)
            conv_obs, conv_events = self._frame_conv_segments(seen, actions, obs_tokens)
            obs_logits = obs_logits + conv_obs
            if conv_events is not None:
                reward_logits = reward_logits + conv_events[..., :NUM_REWARD_CLASSES]
                end_logits = end_logits + conv_events[..., NUM_REWARD_CLASSES:]
        if self.event_reader is not None:
            read = self._read_segments(self._reader_frames(frames, obs_tokens.shape[:2]), actions)
            reward_logits = reward_logits + read[..., :NUM_REWARD_CLASSES]
            end_logits = end_logits + read[..., NUM_REWARD_CLASSES:]
        if self.event_window is not None:
            window = self.event_window.segment_logits(obs_tokens, actions)  # (B, T, 5)
            reward_logits = reward_logits + window[..., :NUM_REWARD_CLASSES]
            end_logits = end_logits + window[..., NUM_REWARD_CLASSES:]
        return WorldModelOutput(obs_logits, reward_logits, end_logits)

    def _reader_frames(self, frames: Tensor | None, blocks: tuple[int, ...]) -> Tensor:
        """``frames`` checked to be the (B, T, 3, H, W) decodings an event reader needs."""
        if frames is None:
            raise ValueError(
                "this world model has an event reader: pass frames, the decoded observations "
                "(e.g. tokenizer.decode_tokens of the tokens), to read rewards and ends from"
            )
        if frames.ndim != 5 or tuple(frames.shape[:3]) != (*blocks, 3):
            raise ValueError(
                f"frames must be {(*blocks, 3)} + (H, W) decoded observations, "
                f"got {tuple(frames.shape)}"
            )
        return frames

    def _read_segments(self, frames: Tensor, actions: Tensor) -> Tensor:
        """(B, T, 3, H, W) frames and (B, T) actions -> the event reader's (B, T, 5) logits of
        every block's step, from the block's frame and the one before (the first block: its own
        frame twice)."""
        reader = self.event_reader
        assert reader is not None
        before = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # (B, T, 3, H, W)
        pairs = torch.stack([before, frames], dim=2)  # (B, T, 2, 3, H, W)
        return reader(pairs.flatten(0, 1), actions.flatten()).unflatten(0, actions.shape)

    def _frame_conv_segments(
        self, obs: Tensor, actions: Tensor, tokens: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """(B, T, K, E) embedded frames, (B, T) actions and the frames' (B, T, K) tokens -> the
        frame conv's (B, T, K, V) logits of every block from the F blocks before it (zeros and
        "no action" before the first), and, with events, its (B, T, 5) event logits of every
        block's step (from the block, the F - 1 before it and the block's action; None without
        events)."""
        conv = self.frame_conv
        assert conv is not None
        b, t = actions.shape
        f = conv.frames
        # Grid n in 0..T reads frames n-F .. n-1 and the action after n-1: grids 0..T-1 predict
        # the blocks' frames, grids 1..T see each block's step (the last one only with events).
        grids = t + 1 if conv.events is not None else t
        before = obs.new_zeros(b, f, *obs.shape[2:])
        padded = torch.cat([before, obs[:, : grids - 1]], dim=1)  # (B, grids-1+F, K, E)
        frames = padded.unfold(1, f, 1).permute(0, 1, 4, 2, 3)  # (B, grids, F, K, E)
        none = actions.new_full((b, 1), self.num_actions)
        previous = torch.cat([none, actions[:, : grids - 1]], dim=1)  # (B, grids)
        features = conv.features(frames.flatten(0, 1), previous.flatten())  # (B*grids, W, s, s)
        features = features.unflatten(0, (b, grids))
        none_before = tokens.new_full((b, 1, tokens.shape[2]), -1)
        before = torch.cat([none_before, tokens[:, : t - 1]], dim=1)  # (B, T, K): block n-1's
        logits = conv.token_logits(features[:, :t].flatten(0, 1), before.flatten(0, 1))
        logits = logits.unflatten(0, (b, t))
        if conv.events is None:
            return logits, None
        events = conv.event_logits(features[:, 1:].flatten(0, 1)).unflatten(0, (b, t))
        return logits, events  # (B, T, K, V), (B, T, 5)

    def _frame_conv_step(
        self, state: ImaginationState, current: Tensor, actions: Tensor, codebook: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The frame conv's (B, K, V) logits of the next frame from the state's frame before the
        current one and ``current``, the (B, K, E) embedded current frame, with events its
        (B, 5) event logits of this step (None without events), and its (B, width, s, s)
        features."""
        conv = self.frame_conv
        assert conv is not None
        if conv.frames == 2:
            previous = state.previous_obs_tokens
            if previous is None:
                raise ValueError(
                    "this world model has a frame conv: its imagination state must keep the "
                    "frame before the current one (previous_obs_tokens); start it with start_state"
                )
            previous = previous[:, None]  # (B, 1, K)
        else:
            previous = self._recent(state)[:, -(conv.frames - 1) :]  # (B, F-1, K)
        known = (previous >= 0)[..., None]  # (B, F-1, K, 1): -1 marks a frame before the first
        before = self.embed_obs(previous.clamp(min=0), codebook)  # (B, F-1, K, E)
        if self.config.frame_conv_pixels:  # each token's pixels after its embedding
            current = torch.cat([current, self._pixels(state.obs_tokens, codebook)], dim=-1)
            before = torch.cat([before, self._pixels(previous.clamp(min=0), codebook)], dim=-1)
        before = before * known
        features = conv.features(torch.cat([before, current[:, None]], dim=1), actions)
        events = conv.event_logits(features) if conv.events is not None else None
        return conv.token_logits(features, state.obs_tokens), events, features

    def _pixels(self, tokens: Tensor, codebook: Tensor | None) -> Tensor:
        """(..., K) tokens -> (..., K, 3*p*p): each token's patch of pixels, the patch
        tokenizer's codebook row, for a frame conv that reads pixels."""
        if codebook is None:
            raise ValueError(
                "this world model's frame conv reads pixels (frame_conv_pixels): pass "
                "codebook=tokenizer.codebook"
            )
        return nn.functional.embedding(tokens, codebook.detach())

    def _hidden_pop(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """POP forward (REM_SPEC 5.3): chunks of whole blocks, parallel inside a chunk."""
        batch, num_blocks, block, embed_dim = x.shape
        k = self.tokens_per_obs
        u = self.prediction_tokens()  # (K, E)
        states: LayerStates | None = None
        obs_hidden, action_hidden = [], []
        for first in range(0, num_blocks, self.config.blocks_per_chunk):
            chunk = x[:, first : first + self.config.blocks_per_chunk]  # (B, Tc, K+1, E)
            count = chunk.shape[1]
            start = first * block
            out, after = self.decoder.forward_chunk_with_block_states(
                chunk.flatten(1, 2), start, states, block
            )
            before = tuple(  # state BEFORE each block of the chunk, (B, Tc, H, d, d)
                torch.cat([_zeros_like_block(a) if s is None else s[:, None], a[:, :-1]], dim=1)
                for s, a in zip(states or (None,) * len(after), after, strict=True)
            )
            u_out = self.decoder.forward_from_block_states(
                u.expand(batch, count, k, embed_dim), start, before, block
            )  # (B, Tc, K, E)
            obs_hidden.append(u_out)
            action_hidden.append(out.unflatten(1, (count, block))[:, :, k])  # (B, Tc, E)
            states = tuple(a[:, -1] for a in after)
        return torch.cat(obs_hidden, dim=1), torch.cat(action_hidden, dim=1)

    def _hidden_next_token(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """No-POP forward: each token's output predicts the next token (IRIS-style)."""
        batch, num_blocks, block, embed_dim = x.shape
        chunk = self.config.blocks_per_chunk * block
        out, _ = self.decoder.forward_chunkwise(x.flatten(1, 2), 0, None, chunk)  # (B, T*(K+1), E)
        # Output at token n predicts token n+1; the first token has no predictor (zeros).
        previous = torch.cat([out.new_zeros(batch, 1, embed_dim), out[:, :-1]], dim=1)
        previous = previous.unflatten(1, (num_blocks, block))  # (B, T, K+1, E)
        action_hidden = out.unflatten(1, (num_blocks, block))[:, :, -1]  # (B, T, E)
        return previous[:, :, :-1], action_hidden

    # ------------------------------------------------------------------------------ imagination

    def start_state(
        self,
        obs_tokens: Tensor,
        actions: Tensor,
        codebook: Tensor | None = None,
        position: int | None = None,
        check_values: bool = True,
        history: Tensor | None = None,
    ) -> ImaginationState:
        """Builds the imagination state from a real context of C frames and C-1 actions.

        Args:
            obs_tokens: (B, C) blocks of (K,) tokens, shape (B, C, K); the last frame becomes
                the current observation.
            actions: (B, C-1) actions between the context frames.
            codebook: Tokenizer codebook (shared embeddings).
            position: Absolute position given to the last frame (default ``(C-1)*(K+1)``);
                pass an existing state's position to merge the two with
                :meth:`ImaginationState.where`.
            check_values: Check token and action ranges (one host sync); callers that
                validated the context already skip it.
            history: (B, N, K) tokens of the N real frames before the context's first, -1
                where a frame is unknown (before its episode began). Only the frames a frame
                conv or an event window reads (:attr:`recent_frames`) are kept, the retention
                layers never see them; None: the frames before the context are unknown.
        """
        if obs_tokens.ndim != 3 or obs_tokens.shape[2] != self.tokens_per_obs:
            raise ValueError(
                f"context tokens must be (B, C, {self.tokens_per_obs}), "
                f"got {tuple(obs_tokens.shape)}"
            )
        batch, frames, _ = obs_tokens.shape
        if frames < 1 or actions.shape != (batch, frames - 1):
            raise ValueError(
                f"a context of {frames} frames needs actions of shape ({batch}, {frames - 1}), "
                f"got {tuple(actions.shape)}"
            )
        k = self.tokens_per_obs
        if history is not None and (
            history.ndim != 3 or history.shape[0] != batch or history.shape[2] != k
        ):
            raise ValueError(
                f"history tokens must be (B, N, {k}) with B = {batch}, got {tuple(history.shape)}"
            )
        if check_values:
            self._check_values(obs_tokens, actions)
            if (
                history is not None
                and history.numel()
                and (history.min() < -1 or history.max() >= self.obs_vocab_size)
            ):
                raise ValueError(f"history tokens must be in [0, {self.obs_vocab_size}) or -1")
        block = self.tokens_per_block
        position = (frames - 1) * block if position is None else position
        if frames > 1:
            x = self.embed_blocks(obs_tokens[:, :-1], actions, codebook).flatten(1, 2)
            _, states = self.decoder.forward_chunk(x, position - (frames - 1) * block, None)
        else:
            states = self._zero_states(batch, obs_tokens.device)
        current = obs_tokens[:, -1]
        num_fed = 0
        if not self.config.pop:  # fold all but the last token, as after a token-by-token step
            num_fed = self.tokens_per_obs - 1
            x = self.embed_obs(current[:, :num_fed], codebook)
            _, states = self.decoder.forward_chunk(x, position, states)
        previous = None
        if self.keeps_previous:  # the frame before the current one; -1: none
            previous = obs_tokens[:, -2] if frames > 1 else torch.full_like(current, -1)
        recent = None
        if self.recent_frames is not None:  # the frames before the current one; -1: none
            kept = self.recent_frames
            before = obs_tokens[:, : frames - 1]  # (B, C-1, K)
            if history is not None:  # (B, N + C - 1, K)
                before = torch.cat([history.to(before.dtype), before], dim=1)
            before = before[:, max(before.shape[1] - kept, 0) :]  # (B, <=kept, K)
            missing = before.new_full((batch, kept - before.shape[1], before.shape[2]), -1)
            recent = torch.cat([missing, before], dim=1)  # (B, kept, K)
        features = None
        if self.event_window is not None:  # (B, M + 1, F): the frames its next window reads
            assert recent is not None
            window = self.event_window
            start = torch.cat([recent[:, kept - window.frames_before :], current[:, None]], dim=1)
            features = window.frames_features(start)
        return ImaginationState(
            self._float_states(states), current, position, num_fed, previous, recent, features
        )

    def step(
        self,
        state: ImaginationState,
        actions: Tensor,
        codebook: Tensor | None = None,
        temperature: float = 1.0,
        noise: StepNoise | None = None,
        next_obs_tokens: Tensor | None = None,
        generator: torch.Generator | None = None,
        event_temperature: float | None = None,
        frames: Tensor | None = None,
    ) -> tuple[ImaginationStep, ImaginationState]:
        """Imagines one step for a batch: reward, end and the next observation.

        Args:
            state: The state before the step (not modified).
            actions: (B,) int64 actions.
            codebook: Tokenizer codebook (shared embeddings).
            temperature: Sampling temperature of the observation tokens, and of the reward and
                end heads unless ``event_temperature`` is given (0 = argmax).
            noise: Uniform numbers that drive the sampling; drawn from ``generator`` if None.
            next_obs_tokens: (B, K) tokens to use as the next observation instead of sampling
                (teacher forcing); logits are still computed.
            generator: Random generator used when ``noise`` is None.
            event_temperature: Sampling temperature of the reward and end heads (None:
                ``temperature``). A dream may draw its frames' likeliest tokens (0) and still
                sample its rewards and ends at their predicted rates (1).
            frames: (B, 2, 3, H, W) decodings in [0, 1] of the frame before the current one
                (the current one again where there is none) and of the current one, needed by
                (and only read by) an event reader; :meth:`REMModel.imagine_step
                <rem_env.model.REMModel.imagine_step>` passes them.

        Returns:
            ``(step, new_state)``.
        """
        if actions.shape != (state.batch_size,):
            raise ValueError(f"actions must be ({state.batch_size},), got {tuple(actions.shape)}")
        if noise is None:
            noise = StepNoise.draw(
                state.batch_size, self.tokens_per_obs, state.obs_tokens.device, generator
            )
        temperatures = (
            temperature,
            temperature if event_temperature is None else event_temperature,
        )
        read = None
        if self.event_reader is not None:
            if frames is None or tuple(frames.shape[:3]) != (state.batch_size, 2, 3):
                raise ValueError(
                    "this world model has an event reader: pass frames, the (B, 2, 3, H, W) "
                    "decodings of the frame before the current one and of the current one "
                    "(REMModel.imagine_step does)"
                )
            read = self.event_reader(frames, actions)  # (B, 5)
        recent = outcome = None
        window = self.event_window
        if self.recent_frames is not None:
            recent = self._recent(state)
            if window is not None:
                kept = window.frames_before
                before = recent[:, recent.shape[1] - kept :]  # (B, kept, K)
                window_start = torch.cat([before, state.obs_tokens[:, None]], 1)
                features = state.window_features  # (B, kept + 1, F)
                if features is None:  # a state not made by start_state or step
                    features = window.frames_features(window_start)
                outcome = _WindowStart(window_start, features)
                if not window.reads_next:
                    windowed = window.read(window_start, features, actions)  # (B, 5)
                    read = windowed if read is None else read + windowed
            # The next state's frames before its current one: these, less the oldest, and this.
            recent = torch.cat([recent, state.obs_tokens[:, None]], dim=1)[:, 1:]
        if self.config.pop:
            step, new_state, drawn = self._step_pop(
                state, actions, codebook, temperatures, noise, next_obs_tokens, read, outcome
            )
        else:
            step, new_state, drawn = self._step_token_by_token(
                state, actions, codebook, temperatures, noise, next_obs_tokens, read, outcome
            )
        if recent is not None:
            new_state = dataclasses.replace(new_state, recent_obs_tokens=recent)
        if window is not None and outcome is not None:  # the next window's frames' features
            if drawn is None:  # (B, F) of the next frame
                drawn = window.frame_features(new_state.obs_tokens)
            features = torch.cat([outcome.features[:, 1:], drawn[:, None]], dim=1)
            new_state = dataclasses.replace(new_state, window_features=features)
        return step, new_state

    def _step_pop(
        self,
        state: ImaginationState,
        actions: Tensor,
        codebook: Tensor | None,
        temperatures: tuple[float, float],
        noise: StepNoise,
        next_obs_tokens: Tensor | None,
        read: Tensor | None = None,
        outcome: _WindowStart | None = None,
    ) -> tuple[ImaginationStep, ImaginationState, Tensor | None]:
        k, block = self.tokens_per_obs, self.tokens_per_block
        real = self.embed_blocks(state.obs_tokens[:, None], actions[:, None], codebook)
        # One pass: the real block (K+1 tokens) then the K prediction tokens at the next
        # block's positions; only the real tokens write to the state, and only the action
        # token's and the prediction tokens' outputs are computed in the last layer.
        action_hidden: Tensor | None = None
        if self._retention_unread():
            # Every head's output layer is zero (a RetNet that never trained beside a frame
            # conv): its logits are zeros whatever the retention layers give, so their pass is
            # skipped and their states are kept as they were (read by nothing).
            states = state.retention
            b, vocab = state.batch_size, self.head_obs[-1].out_features
            obs_logits = real.new_zeros((b, k, vocab))  # (B, K, V)
        else:
            out, states = self.decoder.forward_with_tail(
                real.flatten(1, 2), self.prediction_tokens()[None], state.position,
                state.retention, k,
            )  # fmt: skip  # (B, K+1, E): the action token, then the K prediction tokens
            action_hidden, obs_hidden = out[:, 0], out[:, 1:]
            obs_logits = self.head_obs(obs_hidden)  # (B, K, V)
        events = features = None
        if self.frame_conv is not None:
            current = real[:, 0, :k]  # (B, K, E): the embedded current frame
            conv_obs, events, features = self._frame_conv_step(state, current, actions, codebook)
            obs_logits = obs_logits + conv_obs
        if read is not None:
            events = read if events is None else events + read
        if next_obs_tokens is None:
            next_obs_tokens = self._draw_frame(obs_logits, features, codebook, noise, temperatures)
        step, drawn = self._finish_step(
            action_hidden, obs_logits, next_obs_tokens, temperatures[1], noise, events,
            actions, outcome,
        )  # fmt: skip
        previous = state.obs_tokens if self.keeps_previous else None
        new_state = ImaginationState(
            self._float_states(states), next_obs_tokens, state.position + block, 0, previous
        )
        return step, new_state, drawn

    def _draw_frame(
        self,
        obs_logits: Tensor,
        features: Tensor | None,
        codebook: Tensor | None,
        noise: StepNoise,
        temperatures: tuple[float, float],
    ) -> Tensor:
        """The next frame's (B, K) tokens drawn from its (B, K, V) logits: each patch on its
        own, or with a frame conv's completion in rounds (:data:`COMPLETION_ROUNDS`)."""
        conv = self.frame_conv
        if conv is None or conv.completion is None or features is None:
            return sample_categorical(obs_logits, noise.obs, temperatures[0])

        def complete(tokens: Tensor, drawn: Tensor) -> Tensor:  # (B, K), (B, K) -> (B, K, V)
            return conv.completion_logits(features, self.embed_obs(tokens, codebook), drawn)

        return draw_in_rounds(
            obs_logits, noise.obs, temperatures[0], complete, COMPLETION_ROUNDS, COMPLETION_SURE
        )

    def _step_token_by_token(
        self,
        state: ImaginationState,
        actions: Tensor,
        codebook: Tensor | None,
        temperatures: tuple[float, float],
        noise: StepNoise,
        next_obs_tokens: Tensor | None,
        read: Tensor | None = None,
        outcome: _WindowStart | None = None,
    ) -> tuple[ImaginationStep, ImaginationState, Tensor | None]:
        k, block, fed = self.tokens_per_obs, self.tokens_per_block, state.num_fed
        rest = self.embed_obs(state.obs_tokens[:, fed:], codebook)  # (B, K-fed, E)
        x = torch.cat([rest, self.embed_actions(actions)[:, None]], dim=1)
        out, states = self.decoder.forward_chunk(x, state.position + fed, state.retention)
        action_hidden = out[:, -1]
        hidden, logits, tokens = action_hidden, [], []
        next_block = state.position + block
        for j in range(k):
            logits.append(self.head_obs(hidden))  # (B, V)
            if next_obs_tokens is None:
                tokens.append(sample_categorical(logits[-1], noise.obs[:, j], temperatures[0]))
            else:
                tokens.append(next_obs_tokens[:, j])
            if j < k - 1:
                x = self.embed_obs(tokens[-1][:, None], codebook)  # (B, 1, E)
                hidden, states = self.decoder.forward_recurrent(x, next_block + j, states)
                hidden = hidden[:, 0]
        obs_logits = torch.stack(logits, dim=1)  # (B, K, V)
        next_tokens = torch.stack(tokens, dim=1)  # (B, K)
        step, drawn = self._finish_step(
            action_hidden, obs_logits, next_tokens, temperatures[1], noise, read, actions, outcome
        )
        previous = state.obs_tokens if self.keeps_previous else None
        new_state = ImaginationState(
            self._float_states(states), next_tokens, next_block, k - 1, previous
        )
        return step, new_state, drawn

    def _finish_step(
        self,
        action_hidden: Tensor | None,
        obs_logits: Tensor,
        obs_tokens: Tensor,
        event_temperature: float,
        noise: StepNoise,
        events: Tensor | None = None,
        actions: Tensor | None = None,
        outcome: _WindowStart | None = None,
    ) -> tuple[ImaginationStep, Tensor | None]:
        """The step's rewards and ends drawn, and the (B, F) event window features of
        ``obs_tokens`` (the next frame) where it computed them (else None). ``outcome``, the
        frames up to the current one of an event window and their features, is read with the
        next frame and ``actions`` by a window that reads the next frame."""
        drawn = None
        window = self.event_window
        if outcome is not None and window is not None and window.reads_next:
            assert actions is not None
            drawn = window.frame_features(obs_tokens)  # (B, F)
            tokens = torch.cat([outcome.tokens, obs_tokens[:, None]], dim=1)  # (B, W, K)
            features = torch.cat([outcome.features, drawn[:, None]], dim=1)  # (B, W, F)
            read = window.read(tokens, features, actions)
            events = read if events is None else events + read
        if action_hidden is None:  # the heads' output layers are zero (_retention_unread)
            reward_logits = obs_logits.new_zeros((obs_logits.shape[0], NUM_REWARD_CLASSES))
            end_logits = obs_logits.new_zeros((obs_logits.shape[0], 2))
        else:
            reward_logits = self.head_reward(action_hidden)
            end_logits = self.head_end(action_hidden)
        if events is not None:  # (B, 5): reward, end logits of the frame conv / reader / window
            reward_logits = reward_logits + events[:, :NUM_REWARD_CLASSES]
            end_logits = end_logits + events[:, NUM_REWARD_CLASSES:]
        reward_class = sample_categorical(reward_logits, noise.reward, event_temperature)
        rewards = reward_class.to(self.float_dtype) - 1
        ends = sample_categorical(end_logits, noise.end, event_temperature).bool()
        step = ImaginationStep(obs_tokens, rewards, ends, obs_logits, reward_logits, end_logits)
        return step, drawn

    # ----------------------------------------------------------------------------------- checks

    @property
    def recent_frames(self) -> int | None:
        """How many frames before the current one imagination states keep in
        ``recent_obs_tokens``: the W - 1 of an event window of W frames (W - 2 where it reads
        the next frame) and the F - 1 of a frame conv that reads F > 2 frames, the more of the
        two (None: neither)."""
        kept = []
        if self.event_window is not None:
            kept.append(self.event_window.frames_before)
        if self.frame_conv is not None and self.frame_conv.frames > 2:
            kept.append(self.frame_conv.frames - 1)
        return max(kept) if kept else None

    def _recent(self, state: ImaginationState) -> Tensor:
        """``state.recent_obs_tokens``, checked to hold the frames this model keeps."""
        recent, kept = state.recent_obs_tokens, self.recent_frames
        if recent is None or tuple(recent.shape[:2]) != (state.batch_size, kept):
            readers = []
            if self.event_window is not None:
                readers.append("an event window")
            if self.frame_conv is not None and self.frame_conv.frames > 2:
                readers.append("a frame conv of several frames")
            raise ValueError(
                f"this world model has {' and '.join(readers)}: its imagination state must keep "
                f"the {kept} frames before the current one (recent_obs_tokens); start it with "
                "start_state"
            )
        return recent

    @property
    def keeps_previous(self) -> bool:
        """Whether imagination states keep the frame before the current one (a frame conv or
        an event reader reads it)."""
        return self.frame_conv is not None or self.event_reader is not None

    @property
    def float_dtype(self) -> torch.dtype:
        """The dtype of the model's own numbers (its embedding: linear layers may be quantized),
        kept by retention states and rewards also under ``torch.autocast``."""
        return self.embedding.weight.dtype

    def _retention_unread(self) -> bool:
        """Whether nothing reads the retention layers' outputs in a step: the output layers of
        the observation, reward and end heads are all zero, so the heads give zeros whatever
        those layers give (a patch model whose RetNet never trained beside its frame conv).
        CPU only (reading the layers is a host sync elsewhere); False under autocast and while
        compiling, where the step keeps its one path."""
        if torch.is_autocast_enabled() or torch.compiler.is_compiling():
            return False
        tensors = [t for head in (self.head_obs, self.head_reward, self.head_end)
                   for t in (head[-1].weight, head[-1].bias)]  # fmt: skip
        if tensors[0].device.type != "cpu":
            return False
        return not any(bool(t.any()) for t in tensors)  # read at every step: a head may train

    def _float_states(self, states: LayerStates) -> LayerStates:
        # Under autocast the products that build a state come out in the low precision; the
        # state is a running sum over the whole dream, so it is kept in the model's dtype.
        return tuple(s.to(self.float_dtype) for s in states)

    def _zero_states(self, batch: int, device: torch.device) -> LayerStates:
        heads, dim = self.config.num_heads, self.config.head_dim
        return tuple(
            torch.zeros(batch, heads, dim, dim, dtype=self.float_dtype, device=device)
            for _ in range(self.config.num_layers)
        )

    def _check_blocks(self, obs_tokens: Tensor, actions: Tensor) -> None:
        if obs_tokens.ndim != 3 or obs_tokens.shape[2] != self.tokens_per_obs:
            raise ValueError(
                f"obs_tokens must be (B, T, {self.tokens_per_obs}), got {tuple(obs_tokens.shape)}"
            )
        if actions.shape != obs_tokens.shape[:2]:
            raise ValueError(
                f"actions must be {tuple(obs_tokens.shape[:2])}, got {tuple(actions.shape)}"
            )

    def _check_values(self, obs_tokens: Tensor, actions: Tensor) -> None:
        """Value checks (one host sync): only outside the hot path."""
        if obs_tokens.numel() and (obs_tokens.min() < 0 or obs_tokens.max() >= self.obs_vocab_size):
            raise ValueError(f"observation tokens must be in [0, {self.obs_vocab_size})")
        if actions.numel() and (actions.min() < 0 or actions.max() >= self.num_actions):
            raise ValueError(f"actions must be in [0, {self.num_actions})")


def _zeros_like_block(after: Tensor) -> Tensor:
    """A zero state shaped like one block of ``after`` (B, nb, H, d, d) -> (B, 1, H, d, d)."""
    return after.new_zeros(after[:, :1].shape)
