"""Imagination for the actor-critic phase: burn-in, contexts, rollouts through DreamVectorEnv."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gymnasium.vector import AutoresetMode

from rem_env import REMConfig, REMModel
from rem_env.models.actor_critic import ActorCritic, LSTMState
from rem_train.batches import TensorSegmentBatch, frames_to_tensor
from rem_train.imagination import (
    Imagination,
    StartPoint,
    objective_before_after,
    replay_rollout,
)
from rem_train.losses import actor_critic_loss

B, T = 3, 6


@pytest.fixture
def parts() -> tuple[REMModel, ActorCritic, Imagination]:
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4))
    actor_critic = ActorCritic.from_config(model.config, hidden_size=16)
    return model, actor_critic, Imagination(model, num_envs=B)


def _segments(model: REMModel, padded: int = 2) -> TensorSegmentBatch:
    """Left-padded (B, T) segments of random frames; the first ``padded`` steps are padding."""
    size = model.config.tokenizer.image_size
    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (B, T, size, size, 3), dtype=torch.uint8, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, :padded] = False
    obs[~mask] = 0
    actions = torch.randint(0, 4, (B, T), generator=g).masked_fill(~mask, 0)
    zeros = torch.zeros(B, T)
    return TensorSegmentBatch(obs, actions, zeros, zeros.bool(), mask)


def test_dream_env_is_the_on_device_torch_mode(parts: tuple) -> None:
    _, _, imagination = parts
    env = imagination.env
    assert (env.obs_type, env.output, env.num_envs) == ("tokens", "torch", B)
    assert env.autoreset_mode == AutoresetMode.DISABLED  # REM never resets at a predicted end


def test_start_from_burns_in_all_but_the_last_frame_and_takes_contexts(parts: tuple) -> None:
    model, actor_critic, imagination = parts
    batch = _segments(model)
    start = imagination.start_from(actor_critic, batch, burn_in_actions=True)
    with torch.no_grad():
        tokens = model.tokenizer.encode(frames_to_tensor(batch.obs.flatten(0, 1))).tokens
        tokens = tokens.unflatten(0, (B, T))  # (B, T, K)
        codes = model.tokenizer.to_codes(tokens[:, :-1].flatten(0, 1)).unflatten(0, (B, T - 1))
        expected = actor_critic.burn_in(codes, batch.actions[:, :-1], batch.mask[:, :-1])
    torch.testing.assert_close(start.state.h, expected.h)
    assert torch.equal(start.context_tokens, tokens[:, -2:])
    assert torch.equal(start.context_actions, batch.actions[:, -2:-1])
    # The published behaviour (no actions in burn-in) gives another state.
    other = imagination.start_from(actor_critic, batch, burn_in_actions=False)
    assert not torch.allclose(other.state.h, start.state.h)
    # The start frame is the first observation of the rollout.
    rollout = imagination.rollout(actor_critic, start, steps=3, seed=0)
    assert torch.equal(rollout.tokens[:, 0], tokens[:, -1])


def test_code_tables_give_what_the_codes_give() -> None:
    """The actor-critic reading tokens through its first layer's table (the default) burns in,
    acts and gets gradients as when it convolves the codes (float64: equal to rounding)."""
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4)).double()
    actor_critic = ActorCritic.from_config(model.config, hidden_size=16).double()
    batch = _segments(model)
    results = []
    for tables in (True, False):
        imagination = Imagination(model, num_envs=B)
        imagination.code_tables = tables
        start = imagination.start_from(actor_critic, batch, burn_in_actions=True)
        rollout = imagination.rollout(actor_critic, start, steps=4, seed=2)
        loss, _ = actor_critic_loss(
            rollout.logits, rollout.values, rollout.actions, rollout.rewards, rollout.ends
        )
        actor_critic.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in actor_critic.parameters()]
        results.append((start.state.h, rollout, grads))
    (h_table, fast, grads_table), (h_conv, slow, grads_conv) = results
    torch.testing.assert_close(h_table, h_conv, rtol=0, atol=1e-12)
    assert torch.equal(fast.actions, slow.actions) and torch.equal(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=0, atol=1e-12)
    for a, b in zip(grads_table, grads_conv, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_start_from_needs_real_context_frames(parts: tuple) -> None:
    model, actor_critic, imagination = parts
    batch = _segments(model, padded=T - 1)  # only the last frame is real
    with pytest.raises(ValueError, match="last 2 frames of every segment must be real"):
        imagination.start_from(actor_critic, batch, burn_in_actions=True)


def test_rollout_trains_the_actor_critic_only(parts: tuple) -> None:
    model, actor_critic, imagination = parts
    start = imagination.start_from(actor_critic, _segments(model), burn_in_actions=True)
    rollout = imagination.rollout(actor_critic, start, steps=5, seed=3)
    assert rollout.logits.shape == (B, 5, 4) and rollout.values.shape == (B, 5)
    assert rollout.rewards.shape == rollout.ends.shape == rollout.actions.shape == (B, 5)
    assert set(rollout.rewards.unique().tolist()) <= {-1.0, 0.0, 1.0}
    loss, _ = actor_critic_loss(
        rollout.logits, rollout.values, rollout.actions, rollout.rewards, rollout.ends
    )
    loss.backward()
    assert all(p.grad is not None for p in actor_critic.encoder.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_same_seeds_dream_the_same(parts: tuple) -> None:
    model, actor_critic, imagination = parts
    start = imagination.start_from(actor_critic, _segments(model), burn_in_actions=True)
    rollouts = []
    for _ in range(2):
        torch.manual_seed(5)  # the actor-critic's action draws
        rollouts.append(imagination.rollout(actor_critic, start, steps=5, seed=3))
    for name in ("tokens", "actions", "rewards", "ends"):
        assert torch.equal(getattr(rollouts[0], name), getattr(rollouts[1], name)), name


def test_replay_rollout_reproduces_the_rollout(parts: tuple) -> None:
    model, actor_critic, imagination = parts
    start = imagination.start_from(actor_critic, _segments(model), burn_in_actions=True)
    rollout = imagination.rollout(actor_critic, start, steps=4, seed=0)
    codebook = model.tokenizer.codebook
    logits, values = replay_rollout(actor_critic, rollout, codebook)
    torch.testing.assert_close(logits, rollout.logits)
    torch.testing.assert_close(values, rollout.values)
    before, after = objective_before_after(actor_critic, rollout, codebook)
    assert before == pytest.approx(after, abs=1e-6)


def test_a_trajectory_dreams_the_same_in_any_batch(parts: tuple) -> None:
    """Rows 1..2 imagined alone (``first_row=1``, a data-parallel rank) match the whole batch's."""
    model, actor_critic, imagination = parts
    start = imagination.start_from(actor_critic, _segments(model), burn_in_actions=True)
    whole = imagination.rollout(actor_critic, start, steps=5, seed=3)
    part = Imagination(model, num_envs=B - 1)
    rows = StartPoint(
        LSTMState(start.state.h[1:], start.state.c[1:]),
        start.context_tokens[1:],
        start.context_actions[1:],
    )
    torch.manual_seed(99)  # torch's RNG plays no part
    alone = part.rollout(actor_critic, rows, steps=5, seed=3, first_row=1)
    for name in ("actions", "rewards", "ends"):
        assert torch.equal(getattr(alone, name), getattr(whole, name)[1:]), name
    assert torch.equal(alone.tokens, whole.tokens[1:])
    torch.testing.assert_close(alone.logits, whole.logits[1:], rtol=1e-5, atol=1e-6)


def test_dreams_start_with_the_segments_real_frames_before_the_context() -> None:
    """A world model whose event window reads more frames than its context of 2 gets the
    segment's earlier real frames (-1 in its padding); REM's world model reads none."""
    torch.manual_seed(0)
    config = REMConfig.preset("tiny", num_actions=4)
    config = dataclasses.replace(
        config, world_model=dataclasses.replace(config.world_model, event_window_frames=5)
    )
    model = REMModel(config)  # its dream keeps the 4 frames before the current one
    actor_critic = ActorCritic.from_config(model.config, hidden_size=16)
    imagination = Imagination(model, num_envs=B)
    batch = _segments(model, padded=2)
    with torch.no_grad():
        tokens = model.tokenizer.encode(frames_to_tensor(batch.obs.flatten(0, 1))).tokens
    tokens = tokens.unflatten(0, (B, T))  # (B, T, K)
    start = imagination.start_from(actor_critic, batch, burn_in_actions=True)
    assert start.history is not None and (start.history[:, :2] == -1).all()  # the padding
    assert torch.equal(start.history[:, 2:], tokens[:, 2:-2])
    imagination.rollout(actor_critic, start, steps=1, seed=0)
    state = imagination.env.state
    assert torch.equal(state.recent_obs_tokens, tokens[:, 2:])  # real frames 2..5 seen
    blind = imagination.start_from(actor_critic, batch, burn_in_actions=True, real_history=False)
    assert blind.history is None
    imagination.rollout(actor_critic, blind, steps=1, seed=0)
    assert (imagination.env.state.recent_obs_tokens[:, :2] == -1).all()
    plain = REMModel(REMConfig.preset("tiny", num_actions=4))
    assert Imagination(plain, B).start_from(actor_critic, batch, True).history is None
