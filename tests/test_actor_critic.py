"""Tests of rem_env.models.actor_critic: shapes, explicit state, masking, burn-in flag, size."""

from __future__ import annotations

import pytest
import torch

from rem_env.config import REMConfig
from rem_env.models.actor_critic import ActorCritic, LSTMState, TokenCodes, sample_actions


@pytest.fixture
def ac() -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(num_actions=3, embed_dim=8, latent_size=4, hidden_size=16)


def test_param_count_paper_sizes() -> None:
    ac = ActorCritic.from_config(REMConfig.preset("paper", num_actions=18))
    n = sum(p.numel() for p in ac.parameters())
    assert abs(n - 4.58e6) / 4.58e6 < 0.02, n
    assert ac.embed_dim == 256 and ac.latent_size == 8


def test_shapes_and_no_state_on_module(ac: ActorCritic) -> None:
    state = ac.initial_state(5)
    assert state.h.shape == (5, 16) and state.c.abs().sum() == 0
    out = ac(torch.randn(5, 8, 4, 4), state)
    assert out.logits.shape == (5, 3) and out.value.shape == (5,)
    assert isinstance(out.state, LSTMState)
    assert not any(isinstance(v, torch.Tensor) for v in vars(ac).values())
    with pytest.raises(ValueError, match="codes must have shape"):
        ac(torch.randn(5, 8, 2, 2), state)
    with pytest.raises(ValueError, match="actions"):
        ac.observe_action(torch.zeros(5, 1, dtype=torch.long), state)


def test_same_inputs_same_outputs(ac: ActorCritic) -> None:
    codes = torch.randn(2, 8, 4, 4)
    s0 = ac.initial_state(2)
    a = ac(codes, s0)
    b = ac(codes, s0)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.state.h, b.state.h)
    # A different state gives a different output: the state is really an input.
    c = ac(codes, a.state)
    assert not torch.allclose(a.logits, c.logits)
    # Rows are independent.
    single = ac(codes[1:], ac.initial_state(1))
    assert torch.allclose(single.logits, a.logits[1:], atol=1e-6)


def test_action_step_changes_state(ac: ActorCritic) -> None:
    s = ac(torch.randn(2, 8, 4, 4), ac.initial_state(2)).state
    s1 = ac.observe_action(torch.tensor([0, 0]), s)
    s2 = ac.observe_action(torch.tensor([1, 1]), s)
    assert not torch.allclose(s1.h, s2.h)


def test_state_select_and_reset() -> None:
    old = LSTMState(torch.zeros(3, 2), torch.zeros(3, 2))
    new = LSTMState(torch.ones(3, 2), torch.full((3, 2), 2.0))
    mixed = old.select(torch.tensor([True, False, True]), new)
    assert mixed.h[:, 0].tolist() == [1.0, 0.0, 1.0] and mixed.c[:, 0].tolist() == [2.0, 0.0, 2.0]
    reset = new.reset(torch.tensor([False, True, False]))
    assert reset.h[:, 0].tolist() == [1.0, 0.0, 1.0]


def _manual(ac: ActorCritic, codes, actions, with_actions: bool) -> LSTMState:
    state = ac.initial_state(codes.shape[0])
    for i in range(codes.shape[1]):
        state = ac(codes[:, i], state).state
        if with_actions:
            state = ac.observe_action(actions[:, i], state)
    return state


def test_burn_in_left_padding_is_skipped(ac: ActorCritic) -> None:
    torch.manual_seed(1)
    codes = torch.randn(2, 5, 8, 4, 4)
    actions = torch.randint(3, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for flag in (True, False):
        state = ac.burn_in(codes, actions, mask, burn_in_actions=flag)
        assert not state.h.requires_grad
        row0 = _manual(ac, codes[:1, 2:], actions[:1, 2:], flag)
        row1 = _manual(ac, codes[1:], actions[1:], flag)
        assert torch.allclose(state.h[0], row0.h[0], atol=1e-6)
        assert torch.allclose(state.c[1], row1.c[0], atol=1e-6)
    # A fully padded row keeps its start state.
    start = LSTMState(torch.randn(2, 16), torch.randn(2, 16))
    none = torch.zeros(2, 5, dtype=torch.bool)
    kept = ac.burn_in(codes, actions, none, state=start)
    assert torch.equal(kept.h, start.h) and torch.equal(kept.c, start.c)


def test_burn_in_flag_makes_a_difference(ac: ActorCritic) -> None:
    codes = torch.randn(2, 4, 8, 4, 4)
    actions = torch.randint(3, (2, 4))
    mask = torch.ones(2, 4, dtype=torch.bool)
    intended = ac.burn_in(codes, actions, mask, burn_in_actions=True)
    published = ac.burn_in(codes, actions, mask, burn_in_actions=False)
    assert not torch.allclose(intended.h, published.h)
    # The published behaviour ignores the actions entirely.
    other = ac.burn_in(codes, (actions + 1) % 3, mask, burn_in_actions=False)
    assert torch.equal(other.h, published.h)
    with pytest.raises(ValueError, match="mask and actions"):
        ac.burn_in(codes, actions, mask[:, :2])


def test_tokens_through_the_code_table_equal_their_codes() -> None:
    """Tokens of a codebook read through the first layer's table (every cell, the grid's edges
    included) give what their codes give through the convolution, in forward and burn-in."""
    torch.manual_seed(2)
    ac = ActorCritic(num_actions=3, embed_dim=8, latent_size=4, hidden_size=16).double()
    codebook = torch.randn(6, 8, dtype=torch.float64)
    tokens = torch.randint(6, (2, 5, 16))
    codes = codebook[tokens].reshape(2, 5, 4, 4, 8).permute(0, 1, 4, 2, 3)  # (B, T, E, h, w)
    table = ac.code_table(codebook)
    state = ac.initial_state(2)
    fast, slow = ac(TokenCodes(tokens[:, 0], table), state), ac(codes[:, 0], state)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        ac._first_layer(TokenCodes(tokens[:, 0], table)), ac.encoder[0](codes[:, 0]),
        rtol=0, atol=1e-12,
    )  # fmt: skip
    actions = torch.randint(3, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    burned = ac.burn_in(TokenCodes(tokens, table), actions, mask)
    torch.testing.assert_close(burned.h, ac.burn_in(codes, actions, mask).h, rtol=0, atol=1e-12)


def test_a_code_table_is_refused_after_the_weights_change() -> None:
    ac = ActorCritic(num_actions=3, embed_dim=8, latent_size=4, hidden_size=16)
    codebook = torch.randn(6, 8)
    table = ac.code_table(codebook)
    tokens = torch.randint(6, (2, 16))
    ac(TokenCodes(tokens, table), ac.initial_state(2))
    with torch.no_grad():
        ac.encoder[0].weight.add_(0.1)  # what an optimizer step does
    with pytest.raises(ValueError, match="code table was made before"):
        ac(TokenCodes(tokens, table), ac.initial_state(2))
    ac(TokenCodes(tokens, ac.code_table(codebook)), ac.initial_state(2))  # a new one serves
    with pytest.raises(ValueError, match="codebook must have shape"):
        ac.code_table(torch.randn(6, 5))
    with torch.inference_mode():  # a module made there keeps no version counters
        made_there = ActorCritic(num_actions=3, embed_dim=8, latent_size=4, hidden_size=16)
        made_there(TokenCodes(tokens, made_there.code_table(codebook)), ac.initial_state(2))
    with pytest.raises(ValueError, match="tokens must have shape"):
        ac(TokenCodes(tokens[:, :9], table), ac.initial_state(2))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 6\)"):
        ac(TokenCodes(tokens + 6, ac.code_table(codebook)), ac.initial_state(2))
    with pytest.raises(ValueError, match="tokens must have shape"):
        ac.burn_in(TokenCodes(tokens, table), tokens[:, :1], tokens[:, :1].bool())


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="num_actions"):
        ActorCritic(num_actions=0, embed_dim=8, latent_size=4)
    with pytest.raises(TypeError, match="REMConfig"):
        ActorCritic.from_config("paper")  # type: ignore[arg-type]


def test_sample_actions_temperature_epsilon_and_seed() -> None:
    logits = torch.tensor([[0.0, 1.0]]).repeat(20_000, 1)
    g = torch.Generator().manual_seed(0)
    p1 = sample_actions(logits, 1.0, generator=g).float().mean().item()
    p_half = sample_actions(logits, 0.5, generator=g).float().mean().item()
    # P(a=1) = sigmoid(1) = 0.731 at temperature 1 and sigmoid(2) = 0.881 at 0.5.
    assert abs(p1 - 0.731) < 0.015 and abs(p_half - 0.881) < 0.015
    certain = torch.tensor([[0.0, 100.0]]).repeat(20_000, 1)
    explored = sample_actions(certain, 1.0, epsilon=0.1, generator=g)
    assert abs((explored == 0).float().mean().item() - 0.05) < 0.01  # half the random picks
    a = sample_actions(logits[:50], 1.0, 0.5, torch.Generator().manual_seed(3))
    b = sample_actions(logits[:50], 1.0, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.int64
    for kwargs in ({"temperature": 0.0}, {"epsilon": 1.5}):
        with pytest.raises(ValueError):
            sample_actions(logits[:2], **kwargs)
