"""The actor-critic phase's imagination: burn-in on real segments, then rollouts in the dream env.

Imagination goes through the same :class:`rem_env.DreamVectorEnv` users get, in its on-device
torch mode (``obs_type="tokens"``, ``output="torch"``, autoreset disabled): REM never resets at
a predicted end, ends only stop bootstrapping (REM_SPEC 11.5). Each rollout starts from
replay-buffer contexts: the last ``context_length`` real frames' tokens of a left-padded segment
and the actions between them, passed as ``reset(options={"contexts": ...})``. The frames before
the start frame warm up the actor-critic's LSTM (burn-in, REM_SPEC 6); its state goes in and
comes back, the env owns the world-model state. The actor-critic reads each frame's tokens
through its first layer's table of the codebook (:class:`rem_env.models.actor_critic.TokenCodes`),
made once for a burn-in and once for a rollout.

Every imagined trajectory draws its randomness (the dream's and its actions') from counter-based
streams of its own seed (:mod:`rem_env.noise`), so it is the same whichever batch it is part
of: data-parallel ranks that imagine their rows of a global batch (``first_row``) imagine what
one process would.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from rem_env import DreamVectorEnv, REMModel
from rem_env.models.actor_critic import ActorCritic, CodeTable, LSTMState, TokenCodes
from rem_env.models.sampling import sample_categorical
from rem_env.noise import hash_uniforms
from rem_train.batches import TensorSegmentBatch, frames_to_tensor
from rem_train.losses import lambda_returns

__all__ = ["Imagination", "Rollout", "StartPoint", "objective_before_after", "replay_rollout"]


ENCODE_CHUNK = 512
"""Frames the tokenizer encodes at once when preparing a burn-in batch."""
ACTION_STREAM_KEY = 0x2545F4914F6CDD1D
"""XOR-ed into a trajectory's seed for its action stream (apart from its dream's stream)."""


class StartPoint(NamedTuple):
    """Where a batch of imagined trajectories starts."""

    state: LSTMState
    """Actor-critic state after burn-in on the real frames before the start frame."""
    context_tokens: Tensor
    """(B, C, K) tokens of the last C real frames (the last one is the start frame)."""
    context_actions: Tensor
    """(B, C-1) actions between them."""
    history: Tensor | None = None
    """(B, N, K) tokens of the segment's frames before the context, -1 in its padding, for a
    world model whose frame conv or event window reads more frames than the context (None:
    those frames are unknown to the dream, as in REM, whose world model reads none)."""


class Rollout(NamedTuple):
    """An imagined batch of T steps, as :func:`rem_train.losses.actor_critic_loss` wants."""

    tokens: Tensor
    """(B, T, K) tokens of the frames the actor-critic saw (constants)."""
    logits: Tensor
    """(B, T, A) policy logits (with gradient)."""
    values: Tensor
    """(B, T) values (with gradient)."""
    actions: Tensor
    """(B, T) int64 actions taken."""
    rewards: Tensor
    """(B, T) imagined rewards in {-1, 0, 1}."""
    ends: Tensor
    """(B, T) bool imagined episode ends."""
    start: LSTMState
    """The (detached) LSTM state the rollout started from."""


class Imagination:
    """Rolls an actor-critic through a batch of dreams of ``model``; build it once per run.

    Args:
        model: The trainer's REM model (shared, not copied: imagination sees the latest
            weights). The dream env puts it in eval mode at each step.
        num_envs: Trajectories per batch (the actor-critic batch size, 128).
        temperature: Sampling temperature of the world model.
        event_temperature: Sampling temperature of the imagined rewards and ends (None:
            ``temperature``).

    Example:
        >>> import torch
        >>> from rem_env import REMConfig, REMModel
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=3))
        >>> ac = ActorCritic.from_config(model.config, hidden_size=16)
        >>> imagination = Imagination(model, num_envs=2)
        >>> start = StartPoint(ac.initial_state(2), model.start_tokens[:2], model.start_actions[:2])
        >>> rollout = imagination.rollout(ac, start, steps=4, seed=0)
        >>> rollout.logits.shape, rollout.rewards.shape
        (torch.Size([2, 4, 3]), torch.Size([2, 4]))
    """

    def __init__(
        self,
        model: REMModel,
        num_envs: int,
        temperature: float = 1.0,
        event_temperature: float | None = None,
    ) -> None:
        self.model = model
        self.env = DreamVectorEnv(
            model,
            num_envs,
            obs_type="tokens",
            output="torch",
            autoreset_mode="disabled",
            temperature=temperature,
            event_temperature=event_temperature,
            validate_actions=False,
        )

    skip_padding = True
    """:meth:`start_from` encodes only the real frames (the burn-in never reads the padding's
    tokens); False encodes the padding too, as before 2026-11-30 (kept for benchmarks)."""

    code_tables = True
    """The actor-critic reads tokens through its first layer's table of the codebook
    (:meth:`ActorCritic.code_table`); False gives it the codes to convolve, as before 2026-12-07
    (the same numbers up to float rounding; kept for benchmarks)."""

    @torch.no_grad()
    def start_from(
        self,
        actor_critic: ActorCritic,
        batch: TensorSegmentBatch,
        burn_in_actions: bool,
        tokens: Tensor | None = None,
        real_history: bool = True,
    ) -> StartPoint:
        """Encodes a left-padded segment batch, burns in all but its last frame, takes its contexts.

        Args:
            actor_critic: The actor-critic to warm up.
            batch: (B, T) segments from ``ReplayBuffer.sample_segments(pad="left")``; the last
                ``context_length`` frames of every segment must be real.
            burn_in_actions: Feed actions during burn-in (REM_SPEC 11.1).
            tokens: (B, T, K) tokens of ``batch.obs`` if known (the trainer looks them up in
                :class:`rem_train.batches.ReplayTokens`); else the real frames are encoded here.
            real_history: Give a world model whose frame conv or event window reads more
                frames than its context the segment's real frames before the context
                (:attr:`StartPoint.history`); False: only the context's, as before 2026-12-07.
                A world model without either (REM's) reads the context alone either way.
        """
        c = self.model.config.world_model.context_length
        if not bool(batch.mask[:, -c:].all()):
            raise ValueError(f"the last {c} frames of every segment must be real (min_real >= {c})")
        if tokens is None:
            tokens = self._encode(batch)
        burn = tokens[:, :-1]  # (B, T-1, K)
        table = self._table(actor_critic)
        state = actor_critic.burn_in(
            TokenCodes(burn, table) if table is not None else self._codes(burn),
            batch.actions[:, :-1],
            batch.mask[:, :-1],
            burn_in_actions=burn_in_actions,
        )
        history = None
        if real_history and self.model.world_model.recent_frames is not None:
            # (B, T-C, K): the frames before the context, -1 in the left padding
            history = torch.where(batch.mask[:, :-c, None], tokens[:, :-c], -1)
        return StartPoint(state, tokens[:, -c:], batch.actions[:, -c:-1], history)

    def _table(self, actor_critic: ActorCritic) -> CodeTable | None:
        """The actor-critic's first-layer table of the codebook, or None without
        :attr:`code_tables`."""
        if not self.code_tables:
            return None
        return actor_critic.code_table(self.model.tokenizer.codebook.detach())

    def _codes(self, tokens: Tensor) -> Tensor:
        """(..., K) tokens -> (..., E, h, w) codes."""
        codes = self.model.tokenizer.to_codes(tokens.flatten(0, -2), check_values=False)
        return codes.unflatten(0, tokens.shape[:-1])

    def _encode(self, batch: TensorSegmentBatch) -> Tensor:
        """(B, T, K) tokens of the batch's frames; token 0 in the padding (with ``skip_padding``).

        Padded steps leave the burn-in's state unchanged (:meth:`ActorCritic.burn_in`), so their
        tokens are never read; skipping them saves a quarter of the encoding when episodes are
        short (life losses end Breakout's training episodes).
        """
        tokenizer = self.model.tokenizer
        b, t = batch.mask.shape
        obs = batch.obs.flatten(0, 1)  # (B*T, H, W, C) uint8
        real = batch.mask.flatten() if self.skip_padding else None
        if real is not None:
            obs = obs[real]
        tokens = torch.cat(  # chunks bound the encoder's activation memory (B*T = 2688 in REM)
            [tokenizer.encode(frames_to_tensor(chunk)).tokens for chunk in obs.split(ENCODE_CHUNK)]
        )  # (real frames, K)
        if real is not None:
            every = tokens.new_zeros((b * t, tokens.shape[1]))  # (B*T, K)
            every[real] = tokens
            tokens = every
        return tokens.unflatten(0, (b, t))  # (B, T, K)

    def rollout(
        self,
        actor_critic: ActorCritic,
        start: StartPoint,
        steps: int,
        seed: int | None = None,
        first_row: int = 0,
    ) -> Rollout:
        """Imagines ``steps`` steps from ``start`` with the actor-critic acting (temperature 1).

        At each step the actor-critic sees the current frame, samples an action, the action is
        pushed through its LSTM, and the dream env steps. Gradients flow through the
        actor-critic across the whole rollout; the world model's outputs are constants.

        Args:
            actor_critic: The policy being trained.
            start: Where the trajectories start (:meth:`start_from`).
            steps: Imagined steps.
            seed: Trajectory ``i`` uses seed ``seed + first_row + i`` for its dream and its
                actions (None: a seed drawn from torch's RNG).
            first_row: Row of the first trajectory in the global batch (a data-parallel rank's
                offset; 0 for one process).
        """
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        options: dict[str, Any] = {"contexts": (start.context_tokens, start.context_actions)}
        if start.history is not None:
            options["history"] = start.history
        obs, _ = self.env.reset(seed=seed + first_row, options=options)
        seeds = seed + first_row + torch.arange(self.env.num_envs, device=obs.device)  # (B,)
        action_seeds = seeds ^ ACTION_STREAM_KEY
        state = start.state
        table = self._table(actor_critic)  # with gradient: one for the whole rollout
        frames, logits, values, actions, rewards, ends = [], [], [], [], [], []
        for t in range(steps):
            seen = TokenCodes(obs, table) if table is not None else self._codes(obs)
            out = actor_critic(seen, state)
            step = torch.full_like(action_seeds, t)
            uniforms = hash_uniforms(action_seeds, step, 1)[:, 0]  # (B,)
            action = sample_categorical(out.logits.detach(), uniforms)
            state = actor_critic.observe_action(action, out.state)
            frames.append(obs)
            obs, reward, terminated, _, _ = self.env.step(action)
            logits.append(out.logits)
            values.append(out.value)
            actions.append(action)
            rewards.append(reward)
            ends.append(terminated)
        return Rollout(
            torch.stack(frames, 1),  # (B, T, K)
            torch.stack(logits, 1),  # (B, T, A)
            torch.stack(values, 1),  # (B, T)
            torch.stack(actions, 1),
            torch.stack(rewards, 1),
            torch.stack(ends, 1),
            LSTMState(start.state.h.detach(), start.state.c.detach()),
        )

    def close(self) -> None:
        """Closes the dream env."""
        self.env.close()


def replay_rollout(
    actor_critic: ActorCritic, rollout: Rollout, codebook: Tensor
) -> tuple[Tensor, Tensor]:
    """Runs the actor-critic again over a stored rollout's frames and actions.

    Args:
        actor_critic: The actor-critic (its current weights).
        rollout: The rollout to run again.
        codebook: (V, E) codebook the rollout's tokens index (the tokenizer's).

    Returns:
        (B, T, A) logits and (B, T) values, with gradient; used to measure a step's loss on the
        same batch after the update.
    """
    state = rollout.start
    table = actor_critic.code_table(codebook.detach())
    logits, values = [], []
    for t in range(rollout.tokens.shape[1]):
        out = actor_critic(TokenCodes(rollout.tokens[:, t], table), state)
        state = actor_critic.observe_action(rollout.actions[:, t], out.state)
        logits.append(out.logits)
        values.append(out.value)
    return torch.stack(logits, 1), torch.stack(values, 1)


@torch.no_grad()
def objective_before_after(
    actor_critic: ActorCritic,
    rollout: Rollout,
    codebook: Tensor,
    gamma: float = 0.995,
    lambda_: float = 0.95,
    entropy_weight: float = 0.001,
) -> tuple[float, float]:
    """A training step's objective on its own rollout, before and after the update.

    The objective a gradient step descends holds the lambda-returns and the advantages fixed
    (constants of the step), so both values use the rollout's (pre-update) values for them; the
    "after" value re-runs the updated actor-critic over the same frames and actions
    (:func:`replay_rollout`, reading ``codebook``'s codes). A diagnostic: the trainer records it
    with ``track_progress``.
    """
    old_values = rollout.values.detach()
    returns = lambda_returns(rollout.rewards, old_values, rollout.ends, gamma, lambda_)
    returns = returns[:, :-1]  # (B, T-1)
    advantages = returns - old_values[:, :-1]

    def objective(logits: Tensor, values: Tensor) -> float:
        log_probs = torch.log_softmax(logits[:, :-1], -1)  # (B, T-1, A)
        taken = log_probs.gather(-1, rollout.actions[:, :-1, None]).squeeze(-1)  # (B, T-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        policy = -(taken * advantages).mean()
        value = (values[:, :-1] - returns).pow(2).mean()
        return float(policy - entropy_weight * entropy + value)

    before = objective(rollout.logits.detach(), old_values)
    return before, objective(*replay_rollout(actor_critic, rollout, codebook))
