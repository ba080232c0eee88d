"""Retention forms agree (REM_SPEC 5.1, 5.5 E4): parallel == chunkwise == recurrent, in float64."""

import math

import pytest
import torch

import rem_env.models.retention as retention_module
from rem_env.models.retention import (
    block_states,
    decay_rates,
    retention_chunk,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
    rotate,
    rotation_tables,
)
from rem_env.models.retnet import RetNetDecoder, RetNetDecoderLayer

TOL = 1e-10


def _heads(batch=2, heads=3, length=37, dim=16):
    q, k, v = (torch.randn(batch, heads, length, dim, dtype=torch.float64) for _ in range(3))
    return q, k, v, decay_rates(heads)


def _max_diff(a, b):
    return (a - b).abs().max().item()


def test_decay_rates_match_the_reference_schedule():
    gammas = decay_rates(4, 32.0, 512.0)
    assert gammas == pytest.approx([0.96875, 0.987598, 0.995078, 0.998047], abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 36, 37, 64])
def test_parallel_chunkwise_recurrent_agree(chunk_size):
    q, k, v, gammas = _heads()
    parallel = retention_parallel(q, k, v, gammas)
    chunked, chunk_state = retention_chunkwise(q, k, v, gammas, None, chunk_size)
    recurrent, rec_state = retention_recurrent(q, k, v, gammas)
    assert _max_diff(parallel, recurrent) < TOL
    assert _max_diff(chunked, recurrent) < TOL
    assert _max_diff(chunk_state, rec_state) < TOL


@pytest.mark.parametrize("chunk_size", [3, 7, 20])
def test_chunkwise_from_a_previous_state(chunk_size):
    q, k, v, gammas = _heads(length=20)
    prev = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    chunked, state = retention_chunkwise(q, k, v, gammas, prev, chunk_size)
    recurrent, rec_state = retention_recurrent(q, k, v, gammas, prev)
    assert _max_diff(chunked, recurrent) < TOL
    assert _max_diff(state, rec_state) < TOL


def test_zero_state_behaves_like_none():
    q, k, v, gammas = _heads(length=9)
    zero = torch.zeros(2, 3, 16, 16, dtype=torch.float64)
    out_none, state_none = retention_chunk(q, k, v, gammas, None)
    out_zero, state_zero = retention_chunk(q, k, v, gammas, zero)
    assert _max_diff(out_none, out_zero) == 0.0
    assert _max_diff(state_none, state_zero) == 0.0


def test_state_len_folds_only_the_leading_tokens():
    q, k, v, gammas = _heads(length=12)
    prev = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out, state = retention_chunk(q, k, v, gammas, prev, state_len=5)
    full, _ = retention_recurrent(q, k, v, gammas, prev)
    _, state_after_5 = retention_recurrent(
        q[..., :5, :], k[..., :5, :], v[..., :5, :], gammas, prev
    )
    assert _max_diff(out, full) < TOL
    assert _max_diff(state, state_after_5) < TOL


@pytest.mark.parametrize("with_prev", [False, True])
def test_block_states_equal_chunkwise_state_at_every_boundary(with_prev):
    block = 5
    q, k, v, gammas = _heads(length=4 * block)
    prev = torch.randn(2, 3, 16, 16, dtype=torch.float64) if with_prev else None
    states = block_states(k, v, gammas, block, prev)
    assert states.shape == (2, 4, 3, 16, 16)
    for t in range(4):
        end = (t + 1) * block
        _, expected = retention_chunkwise(
            q[..., :end, :], k[..., :end, :], v[..., :end, :], gammas, prev, 3
        )
        assert _max_diff(states[:, t], expected) < TOL


def test_block_states_reject_partial_blocks():
    _, k, v, gammas = _heads(length=11)
    with pytest.raises(ValueError, match="multiple of block_size"):
        block_states(k, v, gammas, 5)


def test_rotation_pairs_and_direction():
    cos, sin = rotation_tables(3, 1, 8, dtype=torch.float64)
    x = torch.tensor([1.0, 0.0] * 4, dtype=torch.float64)
    y = rotate(x, cos[0], sin[0])
    strided = torch.zeros(16, dtype=torch.float64)
    strided[::2] = x
    y_real = rotate(strided[::2], cos[0], sin[0])  # stride 2: the real-arithmetic path
    assert torch.allclose(y_real, y, atol=1e-15)
    theta = [10000.0 ** (-i / 3) for i in range(4)]
    for i, th in enumerate(theta):  # (1, 0) rotated by +3*theta_i
        assert y[2 * i].item() == pytest.approx(math.cos(3 * th), abs=1e-14)
        assert y[2 * i + 1].item() == pytest.approx(math.sin(3 * th), abs=1e-14)


def test_rotation_exact_at_positions_around_a_million():
    start = 10**6 + 12_345
    cos, sin = rotation_tables(start, 4, 16, dtype=torch.float32)
    theta = [10000.0 ** (-i / 7) for i in range(8)]
    for n in range(4):
        for i, th in enumerate(theta):
            assert cos[n, i].item() == pytest.approx(math.cos((start + n) * th), abs=2e-7)
            assert sin[n, i].item() == pytest.approx(math.sin((start + n) * th), abs=2e-7)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 5e-5)])
def test_retention_depends_only_on_relative_positions(dtype, tol):
    layer = RetNetDecoderLayer(32, 2, 64).to(dtype).eval()
    x = torch.randn(2, 9, 32, dtype=dtype)
    near, near_state = layer.forward_chunk(x, 0, None)
    far, far_state = layer.forward_chunk(x, 10**6, None)
    assert _max_diff(near, far) < tol
    # The states live in rotated frames, but continuing from them gives the same outputs.
    y = torch.randn(2, 4, 32, dtype=dtype)
    assert (
        _max_diff(
            layer.forward_chunk(y, 9, near_state)[0],
            layer.forward_chunk(y, 10**6 + 9, far_state)[0],
        )
        < tol
    )


def test_decoder_forms_agree_in_float64():
    decoder = (
        RetNetDecoder(3, embed_dim=32, num_heads=2, ffn_dim=64, identical_init=False)
        .double()
        .eval()
    )
    x = torch.randn(2, 23, 32, dtype=torch.float64)
    parallel = decoder.forward_parallel(x, 7)
    chunked, chunk_states = decoder.forward_chunkwise(x, 7, None, 5)
    recurrent, rec_states = decoder.forward_recurrent(x, 7, None)
    one_chunk, one_states = decoder.forward_chunk(x, 7, None)
    assert _max_diff(parallel, recurrent) < TOL
    assert _max_diff(chunked, recurrent) < TOL
    assert _max_diff(one_chunk, recurrent) < TOL
    for a, b, c in zip(chunk_states, rec_states, one_states, strict=True):
        assert _max_diff(a, b) < TOL
        assert _max_diff(c, b) < TOL


def test_identical_layer_init_is_optional():
    same = RetNetDecoder(2, embed_dim=16, num_heads=2, ffn_dim=32, identical_init=True)
    assert torch.equal(same.layers[0].linear1.weight, same.layers[1].linear1.weight)
    different = RetNetDecoder(2, embed_dim=16, num_heads=2, ffn_dim=32, identical_init=False)
    assert not torch.equal(different.layers[0].linear1.weight, different.layers[1].linear1.weight)


def test_msr_group_norm_and_gate_shapes():
    layer = RetNetDecoderLayer(32, 4, 64)
    assert layer.retention.head_dim == 8
    with pytest.raises(ValueError, match="multiple of 8"):
        RetNetDecoderLayer(24, 2, 64)


@pytest.mark.parametrize("tail_batch", [1, 2])
@pytest.mark.parametrize("keep_from", [0, 4, 6])
def test_forward_with_tail_equals_one_chunk_with_state_len(tail_batch, keep_from):
    decoder = (
        RetNetDecoder(3, embed_dim=32, num_heads=2, ffn_dim=64, identical_init=False)
        .double()
        .eval()
    )
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    tail = torch.randn(tail_batch, 5, 32, dtype=torch.float64)
    _, prev = decoder.forward_chunk(torch.randn(2, 4, 32, dtype=torch.float64), 11, None)
    joined = torch.cat([x, tail.expand(2, -1, -1)], dim=1)
    expected, expected_states = decoder.forward_chunk(joined, 15, prev, state_len=6)
    got, states = decoder.forward_with_tail(x, tail, 15, prev, keep_from)
    assert _max_diff(got, expected[:, keep_from:]) < TOL
    for a, b in zip(states, expected_states, strict=True):
        assert _max_diff(a, b) < TOL


def test_inference_pieces_do_not_change_results(monkeypatch):
    from rem_env.models import retnet

    decoder = (
        RetNetDecoder(2, embed_dim=32, num_heads=2, ffn_dim=64, identical_init=False)
        .double()
        .eval()
    )
    x = torch.randn(5, 6, 32, dtype=torch.float64)
    tail = torch.randn(1, 5, 32, dtype=torch.float64)
    _, prev = decoder.forward_chunk(torch.randn(5, 4, 32, dtype=torch.float64), 0, None)
    with torch.no_grad():
        whole, whole_states = decoder.forward_with_tail(x, tail, 4, prev, 5)
        monkeypatch.setattr(retnet, "STEP_ROWS_PER_PIECE", 22)  # 2 envs of 11 rows per piece
        monkeypatch.setattr(retnet, "FFN_ROWS_PER_PIECE", 7)
        split, split_states = decoder.forward_with_tail(x, tail, 4, prev, 5)
    assert _max_diff(whole, split) < TOL
    for a, b in zip(whole_states, split_states, strict=True):
        assert _max_diff(a, b) < TOL


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("tail_batch", [1, 2])
@pytest.mark.parametrize("keep_from", [0, 6])
def test_fast_inference_path_equals_one_chunk(mode, tail_batch, keep_from):
    """Without autograd the projections run stacked and the tail's first-layer projections are
    kept between calls: the same numbers as the plain chunk, call after call."""
    decoder = (
        RetNetDecoder(3, embed_dim=32, num_heads=2, ffn_dim=64, identical_init=False)
        .double()
        .eval()
    )
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    tail = torch.randn(tail_batch, 5, 32, dtype=torch.float64)
    _, prev = decoder.forward_chunk(torch.randn(2, 4, 32, dtype=torch.float64), 11, None)
    joined = torch.cat([x, tail.expand(2, -1, -1)], dim=1)
    expected, expected_states = decoder.forward_chunk(joined, 15, prev, state_len=6)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        for _ in range(2):  # the second call reuses what the first kept
            got, states = decoder.forward_with_tail(x, tail, 15, prev, keep_from)
            assert _max_diff(got, expected[:, keep_from:]) < TOL
            for a, b in zip(states, expected_states, strict=True):
                assert _max_diff(a, b) < TOL


def test_kept_projections_follow_weight_and_tail_updates():
    """What the fast path keeps between calls is recomputed after an in-place update of a
    weight (an optimizer step), a load_state_dict, a replaced parameter and a changed tail."""
    decoder = RetNetDecoder(2, embed_dim=32, num_heads=2, ffn_dim=64).double().eval()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    tail_weight = torch.randn(5, 32, dtype=torch.float64)

    def check() -> None:
        tail = tail_weight[None]  # a fresh view each call, as WorldModel passes it
        joined = torch.cat([x, tail.expand(2, -1, -1)], dim=1)
        expected, _ = decoder.forward_chunk(joined, 3, None, state_len=6)
        with torch.no_grad():
            got, _ = decoder.forward_with_tail(x, tail, 3, None, 0)
        assert _max_diff(got, expected) < TOL

    check()
    msr = decoder.layers[0].retention
    with torch.no_grad():
        msr.q_proj.weight.add_(0.5)  # in place, like an optimizer step
        msr.k_proj.bias.add_(0.25)
        decoder.layers[0].norm1.weight.mul_(2.0)
    check()
    other = RetNetDecoder(2, embed_dim=32, num_heads=2, ffn_dim=64).double()
    decoder.load_state_dict(other.state_dict())
    check()
    msr.v_proj.weight = torch.nn.Parameter(torch.randn_like(msr.v_proj.weight))
    check()
    with torch.no_grad():
        tail_weight.mul_(-1.0)
    check()


def test_rotate_without_autograd_returns_contiguous_heads():
    x = torch.randn(2, 7, 3, 8).transpose(1, 2)  # (B, H, T, d), not contiguous
    cos, sin = rotation_tables(4, 7, 8)
    with torch.no_grad():
        fast = rotate(x, cos, sin)
    slow = rotate(x.double(), cos.double(), sin.double())
    assert fast.is_contiguous() and fast.shape == x.shape
    assert _max_diff(fast.double(), slow) < 1e-6


@pytest.mark.parametrize(
    ("a", "b"),
    [((3, 4, 5, 2), (5, 2)), ((5, 2), (3, 1, 5, 2)), ((1, 7), (4, 1)), ((), (2, 3)), ((2,), (2,))],
)
def test_rotation_output_shape_is_the_broadcast_shape(a: tuple, b: tuple) -> None:
    assert retention_module._broadcast_shape(a, b) == tuple(torch.broadcast_shapes(a, b))


def test_rotation_output_shape_refuses_shapes_that_do_not_broadcast() -> None:
    with pytest.raises(RuntimeError, match="cannot be broadcast"):
        retention_module._broadcast_shape((3, 4), (5, 4))
