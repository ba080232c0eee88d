"""Tests of rem_train.losses: hand-worked lambda-returns, masks, gradient routing."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from rem_env.config import REMConfig
from rem_env.model import REMModel
from rem_env.models.sampling import sample_categorical
from rem_env.models.tokenizer import Tokenizer
from rem_env.models.world_model import WorldModel, WorldModelOutput
from rem_train.losses import (
    actor_critic_loss,
    dreamed_frames,
    foreground_weights,
    lambda_returns,
    matching_blocks,
    moving_patch_weights,
    reward_classes,
    tokenizer_loss,
    world_model_loss,
)


def test_lambda_returns_hand_worked_no_ends() -> None:
    # gamma = 0.5, lambda = 0.5, r = [1, 2, 3], V = [4, 8, 16]
    # G2 = V2 = 16
    # G1 = r1 + 0.5 * (0.5 * V2 + 0.5 * G2) = 2 + 0.5 * (8 + 8) = 10
    # G0 = r0 + 0.5 * (0.5 * V1 + 0.5 * G1) = 1 + 0.5 * (4 + 5) = 5.5
    r = torch.tensor([[1.0, 2.0, 3.0]])
    v = torch.tensor([[4.0, 8.0, 16.0]])
    g = lambda_returns(r, v, torch.zeros(1, 3), gamma=0.5, lambda_=0.5)
    assert torch.allclose(g, torch.tensor([[5.5, 10.0, 16.0]]))


def test_lambda_returns_hand_worked_with_end() -> None:
    # gamma = 0.9, lambda = 0.5, r = [1, 1, 0], V = [2, 4, 10], d = [0, 1, 0]
    # G2 = 10; G1 = r1 + 0 = 1 (end after step 1: no bootstrap)
    # G0 = 1 + 0.9 * (0.5 * 4 + 0.5 * 1) = 1 + 0.9 * 2.5 = 3.25
    r = torch.tensor([[1.0, 1.0, 0.0]])
    v = torch.tensor([[2.0, 4.0, 10.0]])
    d = torch.tensor([[False, True, False]])
    g = lambda_returns(r, v, d, gamma=0.9, lambda_=0.5)
    assert torch.allclose(g, torch.tensor([[3.25, 1.0, 10.0]]))


def test_lambda_returns_limits() -> None:
    # lambda = 1: discounted Monte Carlo return bootstrapped with V_{T-1};
    # lambda = 0: one-step TD targets r_t + gamma * V_{t+1}.
    r = torch.tensor([[1.0, 2.0, 0.0]])
    v = torch.tensor([[0.0, 3.0, 5.0]])
    d = torch.zeros(1, 3)
    g1 = lambda_returns(r, v, d, gamma=0.5, lambda_=1.0)
    assert torch.allclose(g1, torch.tensor([[1 + 0.5 * 2 + 0.25 * 5, 2 + 0.5 * 5, 5.0]]))
    g0 = lambda_returns(r, v, d, gamma=0.5, lambda_=0.0)
    assert torch.allclose(g0, torch.tensor([[1 + 0.5 * 3, 2 + 0.5 * 5, 5.0]]))


def test_lambda_returns_no_grad_and_shape_errors() -> None:
    v = torch.ones(2, 4, requires_grad=True)
    g = lambda_returns(torch.zeros(2, 4), v, torch.zeros(2, 4))
    assert not g.requires_grad
    with pytest.raises(ValueError, match="share one"):
        lambda_returns(torch.zeros(2, 3), v, torch.zeros(2, 4))


def test_reward_classes() -> None:
    assert reward_classes(torch.tensor([-3.0, 0.0, 0.5, 7.0])).tolist() == [0, 1, 2, 2]


def _wm_output(b: int, t: int, k: int, v: int) -> WorldModelOutput:
    return WorldModelOutput(
        torch.randn(b, t, k, v, requires_grad=True),
        torch.randn(b, t, 3, requires_grad=True),
        torch.randn(b, t, 2, requires_grad=True),
    )


def test_world_model_loss_masks_padding_and_context() -> None:
    torch.manual_seed(0)
    b, t, k, v = 2, 5, 3, 7
    out = _wm_output(b, t, k, v)
    tokens = torch.randint(v, (b, t, k))
    rewards = torch.tensor([[0.0, 1.0, -2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0]])
    ends = torch.zeros(b, t, dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    loss, metrics = world_model_loss(out, tokens, rewards, ends, mask, context_length=2)
    loss.backward()
    # No gradient reaches padded blocks or context blocks, in any head (REM_SPEC 4).
    for logits in out:
        assert logits.grad[:, :2].abs().sum() == 0
        assert logits.grad[0, 4].abs().sum() == 0
        assert logits.grad[1, 3:].abs().sum() == 0
        assert logits.grad[0, 2:4].abs().sum() > 0
        assert logits.grad[1, 2].abs().sum() > 0
    # The obs term equals a hand-picked mean over the predicted blocks only.
    picked_logits = torch.cat(
        [out.obs_logits[0, 2:4].reshape(-1, v), out.obs_logits[1, 2:3].reshape(-1, v)]
    )
    picked_labels = torch.cat([tokens[0, 2:4].reshape(-1), tokens[1, 2:3].reshape(-1)])
    expected = torch.nn.functional.cross_entropy(picked_logits, picked_labels)
    assert metrics["obs"] == pytest.approx(expected.item(), rel=1e-5)
    # Changing padded targets changes nothing.
    tokens2 = tokens.clone()
    tokens2[0, 4] = (tokens2[0, 4] + 1) % v
    rewards2 = rewards.clone()
    rewards2[1, 4] = -5.0
    loss2, _ = world_model_loss(out, tokens2, rewards2, ends, mask, context_length=2)
    assert loss2.item() == pytest.approx(loss.item())
    assert metrics["total"] == pytest.approx(metrics["obs"] + metrics["reward"] + metrics["end"])


def test_world_model_loss_reward_labels_and_empty_targets() -> None:
    out = WorldModelOutput(
        torch.zeros(1, 2, 1, 4),
        torch.tensor([[[0.0, 0.0, 10.0], [10.0, 0.0, 0.0]]]),
        torch.zeros(1, 2, 2),
    )
    tokens = torch.zeros(1, 2, 1, dtype=torch.long)
    mask = torch.ones(1, 2, dtype=torch.bool)
    # Rewards +4 and -1: classes 2 and 0, which the logits predict confidently.
    _, metrics = world_model_loss(out, tokens, torch.tensor([[4.0, -1.0]]), mask, mask, 0)
    assert metrics["reward"] < 1e-3
    # Every block is context: each term is 0, not NaN.
    loss, metrics = world_model_loss(out, tokens, torch.tensor([[4.0, -1.0]]), mask, mask, 2)
    assert metrics["obs"] == metrics["reward"] == metrics["end"] == 0.0
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="mask"):
        world_model_loss(out, tokens, torch.zeros(1, 2), mask, mask[:, :1])


def test_moving_patch_weights_mark_the_moved_patch_and_its_neighbours() -> None:
    obs = torch.full((2, 3, 16, 16, 3), 40, dtype=torch.uint8)  # 4x4 patches of 4x4 pixels
    obs[0, 1, 5, 9] = 200  # block 1 of segment 0: a pixel of patch (1, 2) changes
    obs[0, 2, 5, 9] = 200  # and stays: no change at block 2
    obs[1, 2, 0, 0, 1] = 40 + 8  # a change of 8 grey levels is not movement
    weights = moving_patch_weights(obs, 4, 5.0)
    assert weights.shape == (2, 3, 16)
    moved = torch.ones(4, 4)
    moved[0:3, 1:4] = 6.0  # patch (1, 2) and its 8 neighbours
    torch.testing.assert_close(weights[0, 1], moved.flatten())
    assert (weights[0, 0] == 1).all() and (weights[0, 2] == 1).all()  # block 0: no frame before
    assert (weights[1] == 1).all()
    obs[1, 2, 0, 0, 1] = 40 + 9
    assert moving_patch_weights(obs, 4, 5.0)[1, 2, 0] == 6.0
    with pytest.raises(ValueError, match="patches"):
        moving_patch_weights(obs, 5, 1.0)


def test_context_moving_weights_read_the_movement_of_the_frames_before() -> None:
    """moving_from="context": block t weighs where block t-1 moved against t-2, so blocks 0
    and 1 weigh 1 and block 2 carries block 1's movement."""
    obs = torch.full((1, 4, 16, 16, 3), 40, dtype=torch.uint8)
    obs[0, 1:, 5, 9] = 200  # patch (1, 2) changes at block 1, then stays
    target = moving_patch_weights(obs, 4, 5.0)
    context = moving_patch_weights(obs, 4, 5.0, moving_from="context")
    assert (context[:, :2] == 1).all() and (context[:, 3] == 1).all()
    torch.testing.assert_close(context[:, 2], target[:, 1])
    with pytest.raises(ValueError, match="moving_from must be one of"):
        moving_patch_weights(obs, 4, 5.0, moving_from="next")


def test_weights_read_from_the_target_inflate_a_change_the_context_cannot_tell() -> None:
    """The probability that minimises a weighted cross-entropy is the weighted share of the
    answers. Where a still patch starts to change in one segment of ten (nothing before tells
    which), weights read from the target put that share at 11/20 with moving weight 10;
    weights read from the context leave it at the real 1/10."""
    obs = torch.full((10, 3, 16, 16, 3), 40, dtype=torch.uint8)  # still frames ...
    obs[0, 2, 0, 0] = 200  # ... but block 2 of one segment changes at patch (0, 0)
    changed = (obs[:, 2, :4, :4] != obs[:, 1, :4, :4]).flatten(1).any(1).float()  # (10,)
    for moving_from, share in (("target", 11 / 20), ("context", 1 / 10)):
        weights = moving_patch_weights(obs, 4, 10.0, moving_from=moving_from)[:, 2, 0]
        best = float((weights * changed).sum() / weights.sum())  # argmin of the weighted loss
        assert best == pytest.approx(share)


def test_world_model_loss_with_token_weights_is_their_weighted_mean() -> None:
    torch.manual_seed(0)
    b, t, k, v = 2, 5, 3, 7
    out = _wm_output(b, t, k, v)
    tokens = torch.randint(v, (b, t, k))
    rewards, ends = torch.zeros(b, t), torch.zeros(b, t, dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    plain, plain_metrics = world_model_loss(out, tokens, rewards, ends, mask, 2)
    ones = torch.ones(b, t, k)
    same, same_metrics = world_model_loss(out, tokens, rewards, ends, mask, 2, ones)
    assert same.item() == pytest.approx(plain.item(), rel=1e-6)
    assert same_metrics["obs_weighted"] == pytest.approx(plain_metrics["obs"], rel=1e-6)
    weights = torch.rand(b, t, k) * 10
    weighted, metrics = world_model_loss(out, tokens, rewards, ends, mask, 2, weights)
    # By hand: the predicted blocks are (0, 2), (0, 3) and (1, 2).
    ce = torch.nn.functional.cross_entropy(
        out.obs_logits.reshape(-1, v), tokens.reshape(-1), reduction="none"
    ).view(b, t, k)
    picked = [(0, 2), (0, 3), (1, 2)]
    num = sum((ce[i, j] * weights[i, j]).sum() for i, j in picked)
    den = sum(weights[i, j].sum() for i, j in picked)
    assert metrics["obs_weighted"] == pytest.approx((num / den).item(), rel=1e-5)
    assert metrics["obs"] == pytest.approx(plain_metrics["obs"], rel=1e-6)  # unweighted, still
    assert weighted.item() == pytest.approx(
        (num / den).item() + metrics["reward"] + metrics["end"], rel=1e-5
    )
    with pytest.raises(ValueError, match="token_weights"):
        world_model_loss(out, tokens, rewards, ends, mask, 2, weights[:, :2])


def test_tokenizer_loss_terms_and_gradient_routing() -> None:
    torch.manual_seed(0)
    tok = Tokenizer(REMConfig.preset("tiny", num_actions=4).tokenizer)
    frames = torch.rand(2, 3, 16, 16)
    out = tok(frames)
    loss, metrics = tokenizer_loss(out, frames, beta=1.0)
    x = frames * 2 - 1
    recon = torch.mean((out.reconstruction - x) ** 2).item()
    assert metrics["reconstruction"] == pytest.approx(recon, rel=1e-5)
    assert metrics["codebook"] == pytest.approx(metrics["commitment"], rel=1e-5)
    assert "perceptual" not in metrics
    assert metrics["total"] == pytest.approx(loss.item())

    # Codebook gets gradient from the codebook term only; the encoder from commitment and
    # reconstruction only.
    def grads(term: str) -> tuple[float, float]:
        tok.zero_grad()
        o = tok(frames)
        value = {
            "codebook": torch.mean((o.codes - o.z.detach()) ** 2),
            "commitment": torch.mean((o.z - o.codes.detach()) ** 2),
            "reconstruction": torch.mean((o.reconstruction - x) ** 2),
        }[term]
        value.backward()
        cb = tok.embedding.weight.grad
        enc = tok.encoder.conv_in.weight.grad
        return (
            0.0 if cb is None else cb.abs().sum().item(),
            0.0 if enc is None else enc.abs().sum().item(),
        )

    assert grads("codebook")[0] > 0 and grads("codebook")[1] == 0
    assert grads("commitment")[0] == 0 and grads("commitment")[1] > 0
    assert grads("reconstruction")[0] == 0 and grads("reconstruction")[1] > 0
    # The combined loss reaches both.
    tok.zero_grad()
    loss, _ = tokenizer_loss(tok(frames), frames)
    loss.backward()
    assert tok.embedding.weight.grad.abs().sum() > 0
    assert tok.decoder.conv_out.weight.grad.abs().sum() > 0


def test_tokenizer_loss_perceptual_and_errors() -> None:
    tok = Tokenizer(REMConfig.preset("tiny", num_actions=4).tokenizer)
    frames = torch.rand(3, 3, 16, 16)
    out = tok(frames)
    seen = {}

    def fake_perceptual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen["range"] = (a.min().item(), a.max().item())
        return torch.full((a.shape[0],), 0.25)

    base, _ = tokenizer_loss(out, frames)
    loss, metrics = tokenizer_loss(out, frames, perceptual=fake_perceptual)
    assert metrics["perceptual"] == pytest.approx(0.25)
    assert loss.item() == pytest.approx(base.item() + 0.25, rel=1e-5)
    assert seen["range"][0] >= -1.0 and seen["range"][0] < -0.5  # images given in [-1, 1]
    with pytest.raises(TypeError, match="floating"):
        tokenizer_loss(out, (frames * 255).to(torch.uint8))


def test_actor_critic_loss_by_hand() -> None:
    # T = 3, so t = 0..1 enter the loss; uniform policy over 2 actions, so log pi = log 0.5.
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    values = torch.tensor([[1.0, 2.0, 4.0]], requires_grad=True)
    actions = torch.tensor([[0, 1, 0]])
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    ends = torch.zeros(1, 3)
    gamma, lam = 0.5, 0.5
    # G2 = 4; G1 = 0 + 0.5 * (0.5 * 4 + 0.5 * 4) = 2; G0 = 1 + 0.5 * (0.5 * 2 + 0.5 * 2) = 2
    g = torch.tensor([2.0, 2.0])
    adv = g - torch.tensor([1.0, 2.0])  # [1, 0]
    log_half = torch.log(torch.tensor(0.5))
    policy = -(log_half * adv).mean()
    entropy = -log_half  # H of uniform over 2 = log 2
    value = ((torch.tensor([1.0, 2.0]) - g) ** 2).mean()  # 0.5
    loss, m = actor_critic_loss(logits, values, actions, rewards, ends, gamma, lam, 0.001)
    assert m["policy"] == pytest.approx(policy.item(), rel=1e-5)
    assert m["entropy"] == pytest.approx(entropy.item(), rel=1e-5)
    assert m["value"] == pytest.approx(value.item(), rel=1e-5)
    expected = policy - 0.001 * entropy + value
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    # The last step contributes no gradient (t = 0..T-2 only).
    assert logits.grad[0, 2].abs().sum() == 0 and values.grad[0, 2] == 0
    assert values.grad[0, 0] != 0


def test_actor_critic_loss_errors() -> None:
    with pytest.raises(ValueError, match="T >= 2"):
        actor_critic_loss(torch.zeros(1, 1, 2), *(torch.zeros(1, 1),) * 4)
    with pytest.raises(ValueError, match="values"):
        actor_critic_loss(torch.zeros(1, 3, 2), *(torch.zeros(1, 2),) * 4)


def test_foreground_weights_mark_pixels_that_differ_from_the_background() -> None:
    background = torch.zeros(3, 4, 4)
    frames = torch.zeros(2, 3, 4, 4)
    frames[0, 1, 2, 3] = 0.5  # one channel of one pixel differs
    frames[1, :, 0, 0] = 0.05  # below the threshold
    w = foreground_weights(frames, background, weight=9.0)
    assert w.shape == (2, 1, 4, 4)
    expected = torch.ones(2, 1, 4, 4)
    expected[0, 0, 2, 3] = 10.0
    assert torch.equal(w, expected)


def test_tokenizer_loss_pixel_weights() -> None:
    torch.manual_seed(0)
    tok = Tokenizer(REMConfig.preset("tiny", num_actions=4).tokenizer)
    frames = torch.rand(2, 3, 16, 16)
    out = tok(frames)
    plain, _ = tokenizer_loss(out, frames)
    ones, _ = tokenizer_loss(out, frames, pixel_weights=torch.ones(2, 1, 16, 16))
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)
    w = torch.ones(2, 1, 16, 16)
    w[1, 0, 3, 5] = 41.0
    _, metrics = tokenizer_loss(out, frames, pixel_weights=w)
    err = (out.reconstruction - (frames * 2 - 1)).square()  # (2, 3, 16, 16)
    expected = (err.sum() + 40.0 * err[1, :, 3, 5].sum()) / (3 * (2 * 256 + 40))
    assert metrics["reconstruction"] == pytest.approx(expected.item(), rel=1e-5)


def test_world_model_loss_end_weight_weighs_the_blocks_that_end_an_episode() -> None:
    torch.manual_seed(0)
    b, t, k, v = 2, 5, 3, 7
    out = _wm_output(b, t, k, v)
    tokens = torch.randint(v, (b, t, k))
    rewards = torch.zeros(b, t)
    ends = torch.zeros(b, t, dtype=torch.bool)
    ends[0, 3] = True  # one predicted block ends its episode
    ends[1, 4] = True  # padding: never a target
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    plain, plain_metrics = world_model_loss(out, tokens, rewards, ends, mask, 2)
    assert "end_weighted" not in plain_metrics
    weighted, metrics = world_model_loss(out, tokens, rewards, ends, mask, 2, end_weight=5.0)
    # By hand: the predicted blocks are (0, 2), (0, 3) (an end, weight 5) and (1, 2).
    ce = torch.nn.functional.cross_entropy(
        out.end_logits.reshape(-1, 2), ends.long().reshape(-1), reduction="none"
    ).view(b, t)
    expected = (ce[0, 2] + 5 * ce[0, 3] + ce[1, 2]) / 7
    assert metrics["end_weighted"] == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["end"] == pytest.approx(plain_metrics["end"], rel=1e-6)  # unweighted, still
    assert weighted.item() == pytest.approx(
        plain.item() - plain_metrics["end"] + expected.item(), rel=1e-5
    )
    # Its gradient pushes the end block's logit harder than REM's loss does.
    logits = out.end_logits.detach().requires_grad_(True)
    grads = []
    for weight in (1.0, 5.0):
        logits.grad = None
        out_w = out._replace(end_logits=logits)
        world_model_loss(out_w, tokens, rewards, ends, mask, 2, end_weight=weight)[0].backward()
        grads.append(logits.grad[0, 3, 1].item())
    assert grads[1] < grads[0] < 0  # raising P(end) there lowers the loss, more so at weight 5
    _, no_ends_metrics = world_model_loss(
        out, tokens, rewards, torch.zeros_like(ends), mask, 2, end_weight=5.0
    )
    assert no_ends_metrics["end_weighted"] == pytest.approx(no_ends_metrics["end"], rel=1e-6)
    with pytest.raises(ValueError, match="end_weight"):
        world_model_loss(out, tokens, rewards, ends, mask, 2, end_weight=0.0)


def _dreamed_case() -> tuple[
    WorldModelOutput, WorldModelOutput, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    """Real and dreamed forwards of 2 segments of 5 blocks (3 tokens of 7 codes), their tokens,
    a reward in each segment, an end in the first and the mask: with 2 context blocks, the
    predicted blocks are (0, 2), (0, 3) and (1, 2)."""
    torch.manual_seed(0)
    b, t, k, v = 2, 5, 3, 7
    out, dreamed = _wm_output(b, t, k, v), _wm_output(b, t, k, v)
    tokens = torch.randint(v, (b, t, k))
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0, 0.0]])
    ends = torch.zeros(b, t, dtype=torch.bool)
    ends[0, 3] = True
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    return out, dreamed, tokens, rewards, ends, mask


def test_world_model_loss_adds_the_heads_on_dreamed_frames() -> None:
    out, dreamed, tokens, rewards, ends, mask = _dreamed_case()
    b, t, k, v = 2, 5, 3, 7
    plain, plain_metrics = world_model_loss(out, tokens, rewards, ends, mask, 2)
    assert "end_dreamed" not in plain_metrics
    total, metrics = world_model_loss(
        out, tokens, rewards, ends, mask, 2, end_weight=3.0, dreamed=dreamed, dreamed_weight=0.5
    )
    # By hand, on the predicted blocks (0, 2), (0, 3) and (1, 2) of the dreamed forward.
    picked = [(0, 2), (0, 3), (1, 2)]
    reward_ce = (
        sum(
            torch.nn.functional.cross_entropy(
                dreamed.reward_logits[i, j], (rewards[i, j].sign() + 1).long()
            )
            for i, j in picked
        )
        / 3
    )
    end_ce = [
        torch.nn.functional.cross_entropy(dreamed.end_logits[i, j], ends[i, j].long())
        for i, j in picked
    ]
    end_weighted = (end_ce[0] + 3 * end_ce[1] + end_ce[2]) / 5
    assert metrics["reward_dreamed"] == pytest.approx(reward_ce.item(), rel=1e-5)
    assert metrics["end_dreamed"] == pytest.approx((sum(end_ce) / 3).item(), rel=1e-5)
    real_part = plain.item() - plain_metrics["end"] + metrics["end_weighted"]
    assert total.item() == pytest.approx(
        real_part + 0.5 * (reward_ce + end_weighted).item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="dreamed"):
        world_model_loss(
            out, tokens, rewards, ends, mask, 2,
            dreamed=_wm_output(b, t - 1, k, v), dreamed_weight=1.0,
        )  # fmt: skip


def test_matching_blocks_compare_the_tokens_of_the_patches_that_moved() -> None:
    """A dreamed frame matches where its tokens are the real ones at (a share of) the patches
    that moved; tokens of still patches do not matter; block 0 counts every patch as moved."""
    obs = torch.zeros(2, 3, 16, 16, 3, dtype=torch.uint8)  # 4x4 patches of 4x4 pixels
    obs[:, 1, 0, 0] = 200  # block 1: a pixel of patch 0 changes
    obs[:, 2, 15, 15] = 200  # block 2: pixel (0, 0) back (patch 0) and patch 15 changes
    real = torch.randint(9, (2, 3, 16))
    dreamed = real.clone()
    dreamed[0, 1, 1] = (real[0, 1, 1] + 1) % 9  # a still patch of block 1 differs: match
    dreamed[0, 2, 15] = (real[0, 2, 15] + 1) % 9  # one of block 2's two moved patches differs
    dreamed[1, 0, 7] = (real[1, 0, 7] + 1) % 9  # block 0: 15 of its 16 patches right
    dreamed[1, 1, 0] = (real[1, 1, 0] + 1) % 9  # block 1's only moved patch differs
    assert matching_blocks(dreamed, real, obs, 4).tolist() == [
        [True, True, False],
        [False, False, True],
    ]
    assert matching_blocks(dreamed, real, obs, 4, share=0.5).tolist() == [
        [True, True, True],
        [True, False, True],
    ]
    with pytest.raises(ValueError, match="same shape"):
        matching_blocks(dreamed[:, :2], real, obs, 4)
    with pytest.raises(ValueError, match="share"):
        matching_blocks(dreamed, real, obs, 4, share=0.0)


def test_world_model_loss_counts_only_the_dreamed_blocks_given() -> None:
    """``dreamed_blocks`` keeps the dreamed heads' terms to those blocks: the same terms as a
    mask that ignores the others, the real terms unchanged, the counted share logged."""
    out, dreamed, tokens, rewards, ends, mask = _dreamed_case()
    b, t = mask.shape
    blocks = torch.ones(b, t, dtype=torch.bool)
    blocks[0, 2] = False  # of the predicted (0, 2), (0, 3), (1, 2): two count
    _, every = world_model_loss(
        out, tokens, rewards, ends, mask, 2, end_weight=3.0, dreamed=dreamed, dreamed_weight=1.0
    )
    _, same = world_model_loss(
        out, tokens, rewards, ends, mask, 2, end_weight=3.0, dreamed=dreamed, dreamed_weight=1.0,
        dreamed_blocks=torch.ones(b, t, dtype=torch.bool),
    )  # fmt: skip
    assert same.pop("dreamed_counted") == 1.0 and same == every
    _, metrics = world_model_loss(
        out, tokens, rewards, ends, mask, 2, end_weight=3.0, dreamed=dreamed, dreamed_weight=1.0,
        dreamed_blocks=blocks,
    )  # fmt: skip
    picked = [(0, 3), (1, 2)]
    reward_ce = sum(
        torch.nn.functional.cross_entropy(
            dreamed.reward_logits[i, j], (rewards[i, j].sign() + 1).long()
        )
        for i, j in picked
    ) / len(picked)
    end_ce = sum(
        torch.nn.functional.cross_entropy(dreamed.end_logits[i, j], ends[i, j].long())
        for i, j in picked
    ) / len(picked)
    assert metrics["reward_dreamed"] == pytest.approx(reward_ce.item(), rel=1e-5)
    assert metrics["end_dreamed"] == pytest.approx(end_ce.item(), rel=1e-5)
    assert metrics["dreamed_counted"] == pytest.approx(2 / 3)
    for name in ("obs", "reward", "end", "end_weighted"):
        assert metrics[name] == every[name]
    _, none = world_model_loss(
        out, tokens, rewards, ends, mask, 2, dreamed=dreamed, dreamed_weight=1.0,
        dreamed_blocks=torch.zeros(b, t, dtype=torch.bool),
    )  # fmt: skip
    assert none["reward_dreamed"] == 0.0 and none["dreamed_counted"] == 0.0
    with pytest.raises(ValueError, match="dreamed_blocks"):
        world_model_loss(
            out, tokens, rewards, ends, mask, 2, dreamed=dreamed, dreamed_weight=1.0,
            dreamed_blocks=blocks[:, :-1],
        )  # fmt: skip


def test_world_model_loss_adds_the_observations_predicted_from_dreamed_frames() -> None:
    """``dreamed_obs_weight`` adds the dreamed forward's observation cross-entropy against
    the real tokens, weighted by ``token_weights`` as the real one is."""
    torch.manual_seed(0)
    b, t, k, v = 2, 5, 3, 7
    out, dreamed = _wm_output(b, t, k, v), _wm_output(b, t, k, v)
    tokens = torch.randint(v, (b, t, k))
    rewards, ends = torch.zeros(b, t), torch.zeros(b, t, dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    weights = 1.0 + torch.rand(b, t, k)
    heads_only, heads_metrics = world_model_loss(
        out, tokens, rewards, ends, mask, 2, weights, dreamed=dreamed, dreamed_weight=1.0
    )
    assert "obs_dreamed" not in heads_metrics  # 0 is the loss without the term
    total, metrics = world_model_loss(
        out, tokens, rewards, ends, mask, 2, weights,
        dreamed=dreamed, dreamed_weight=1.0, dreamed_obs_weight=0.5,
    )  # fmt: skip
    # By hand, on the predicted blocks (0, 2), (0, 3) and (1, 2) of the dreamed forward.
    picked = [(0, 2), (0, 3), (1, 2)]
    ce = {
        (i, j): torch.nn.functional.cross_entropy(
            dreamed.obs_logits[i, j], tokens[i, j], reduction="none"
        )
        for i, j in picked
    }  # (K,) each
    plain = sum(ce[p].sum() for p in picked) / (3 * k)
    weighted = sum((ce[p] * weights[p]).sum() for p in picked) / sum(
        weights[p].sum() for p in picked
    )
    assert metrics["obs_dreamed"] == pytest.approx(plain.item(), rel=1e-5)
    assert total.item() == pytest.approx(heads_only.item() + 0.5 * weighted.item(), rel=1e-5)
    for name in ("obs", "obs_weighted", "reward_dreamed", "end_dreamed"):
        assert metrics[name] == heads_metrics[name]
    # Without token weights every token weighs 1.
    total, metrics = world_model_loss(
        out, tokens, rewards, ends, mask, 2, dreamed=dreamed, dreamed_obs_weight=2.0
    )
    alone, _ = world_model_loss(out, tokens, rewards, ends, mask, 2, dreamed=dreamed)
    assert total.item() == pytest.approx(alone.item() + 2 * plain.item(), rel=1e-5)


def _tiny_segments(b: int, t: int) -> tuple[WorldModel, Tensor, Tensor, Tensor, Tensor]:
    """A tiny world model (train mode), (B, T, K) random tokens, (B, T) actions, an all-real
    mask and the codebook."""
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4))
    k, v = model.config.tokenizer.tokens_per_frame, model.config.tokenizer.vocab_size
    tokens, actions = torch.randint(v, (b, t, k)), torch.randint(4, (b, t))
    mask = torch.ones(b, t, dtype=torch.bool)
    return model.world_model.train(), tokens, actions, mask, model.tokenizer.codebook.detach()


def test_dreamed_frames_sample_each_predicted_frame_from_the_real_ones_before_it() -> None:
    wm, tokens, actions, mask, codebook = _tiny_segments(3, 5)
    mask[2, 4] = False  # padding
    dreams = dreamed_frames(
        wm, tokens, actions, mask, codebook, 2, torch.Generator().manual_seed(1)
    )
    assert wm.training  # its mode is given back
    assert dreams.shape == tokens.shape and dreams.dtype == torch.int64
    assert torch.equal(dreams[:, :2], tokens[:, :2])  # the context stays real
    assert torch.equal(dreams[2, 4], tokens[2, 4])  # and so does padding
    with torch.no_grad():
        logits = wm.eval()(tokens, actions, codebook).obs_logits  # (B, T, K, V)
    uniforms = torch.rand(logits.shape[:-1], generator=torch.Generator().manual_seed(1))
    expected = sample_categorical(logits, uniforms)
    assert torch.equal(dreams[:, 2:4], expected[:, 2:4])
    assert torch.equal(dreams[:2, 4], expected[:2, 4])
    assert not torch.equal(dreams, tokens)  # they are samples, not the real frames


def test_dreamed_frames_of_n_passes_begin_with_a_dream_of_n_steps() -> None:
    """After ``steps`` passes the first ``steps`` predicted frames are those of a dream that
    samples one frame after the other from its own frames, with the same random numbers."""
    wm, tokens, actions, mask, codebook = _tiny_segments(4, 7)
    wm.eval()
    uniforms = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(3))
    dream = tokens.clone()  # frame after frame, each from the frames dreamed before it
    with torch.no_grad():
        for t in range(2, 7):
            logits = wm(dream, actions, codebook).obs_logits[:, t]  # (B, K, V)
            dream[:, t] = sample_categorical(logits, uniforms[:, t])
    one = dreamed_frames(wm, tokens, actions, mask, codebook, 2, torch.Generator().manual_seed(3))
    three = dreamed_frames(
        wm, tokens, actions, mask, codebook, 2, torch.Generator().manual_seed(3), steps=3
    )
    assert torch.equal(one[:, :3], dream[:, :3])  # the first dreamed frame: one step
    assert torch.equal(three[:, :2], tokens[:, :2])  # the context stays real
    assert torch.equal(three[:, :5], dream[:, :5])  # three steps: the first three frames
    assert not torch.equal(one[:, 3:5], dream[:, 3:5])  # one pass dreams them from real frames
    five = dreamed_frames(
        wm, tokens, actions, mask, codebook, 2, torch.Generator().manual_seed(3), steps=5
    )
    assert torch.equal(five, dream)  # as many passes as predicted frames: the whole dream
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dreamed_frames(wm, tokens, actions, mask, codebook, 2, steps=0)


def test_moved_patches_are_read_on_a_grid_above_the_frame() -> None:
    """A patch tokenizer's grid 1 row above the frame: a pixel in the frame's row 3 is in the
    grid's row 4, the second row of 4x4 patches, where the frame's own grid has it in the first."""
    obs = torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8)
    obs[0, 1, 3, 0] = 255
    rows = [
        moving_patch_weights(obs, 4, 9.0, row_offset=offset)[0, 1].view(4, 4)[:, 0].tolist()
        for offset in (0, 1)
    ]
    assert rows == [[10.0, 10.0, 1.0, 1.0], [10.0, 10.0, 10.0, 1.0]]  # with 3x3 neighbours
    real = torch.zeros(1, 2, 16, dtype=torch.long)
    dreamed = real.clone()
    dreamed[0, 1, 0] = 1  # the top-left token differs: the pixel's patch on the frame's grid
    assert matching_blocks(dreamed, real, obs, 4).tolist() == [[True, False]]
    assert matching_blocks(dreamed, real, obs, 4, row_offset=1).tolist() == [[True, True]]
