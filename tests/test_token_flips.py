"""Token changes where no pixel moved: counted per patch, across batch boundaries, in the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.fidelity import RealTrajectory, TokenFlips, _reconstruction_scores
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL


def test_counts_still_and_moving_patches() -> None:
    frames = torch.zeros(3, 3, 16, 16)
    frames[1, :, 9, 9] = 0.5  # bottom-right patch moves in pair (0, 1) and back in pair (1, 2)
    tokens = torch.tensor([[0, 1, 2, 3], [0, 1, 6, 9], [4, 1, 2, 3]])
    flips = TokenFlips()
    flips.add(tokens[1:], tokens[:-1], frames[1:], frames[:-1])
    # pair (0,1): still patches 0,1,2, token 2 flipped (3 flipped too, but its patch moved);
    # pair (1,2): still patches 0,1,2, tokens 0 and 2 flipped
    assert (flips.still, flips.still_flipped, flips.moving) == (6, 3, 2)
    assert flips.still_flip_share() == pytest.approx(3 / 6)
    assert flips.moving_share() == pytest.approx(2 / 8)


def test_patches_are_read_on_a_grid_above_the_frame() -> None:
    """With the grid 2 rows above the frame, the frame's row 7 is the grid's row 9: the bottom
    half's patches, where the frame's own grid has it in the top half."""
    frames = torch.zeros(2, 3, 16, 16)
    frames[1, :, 7, 3] = 0.5
    tokens = torch.tensor([[0, 1, 2, 3], [5, 1, 2, 3]])  # token 0 changed
    plain, moved = TokenFlips(), TokenFlips(row_offset=2)
    for flips in (plain, moved):
        flips.add(tokens[1:], tokens[:-1], frames[1:], frames[:1])
    assert (plain.still, plain.still_flipped, plain.moving) == (3, 0, 1)  # patch 0 moved
    assert (moved.still, moved.still_flipped, moved.moving) == (3, 1, 1)  # patch 2 moved


def test_small_changes_are_not_motion() -> None:
    frames = torch.zeros(2, 3, 16, 16)
    frames[1] += 4 / 255  # below the motion threshold everywhere
    flips = TokenFlips()
    flips.add(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 3, 5]]), frames[1:], frames[:1])
    assert (flips.still, flips.still_flipped, flips.moving) == (4, 1, 0)


def test_tokens_must_tile_the_frame() -> None:
    with pytest.raises(ValueError, match="do not tile"):
        TokenFlips().add(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3, 16, 16),
                         torch.zeros(1, 3, 16, 16))  # fmt: skip
    assert TokenFlips().still_flip_share() is None and TokenFlips().moving_share() is None


def _model() -> REMModel:
    torch.manual_seed(0)
    config = REMConfig(tokenizer=SMOKE_TOKENIZER, world_model=SMOKE_WORLD_MODEL, num_actions=4)
    return REMModel(config).eval()


def test_reconstruction_scores_count_pairs_across_batches() -> None:
    """Every consecutive pair is counted once, whatever the batch size: the pair that spans two
    batches uses the last tokens of the batch before."""
    model = _model()
    size = model.config.tokenizer.image_size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(7, size, size, 3), dtype=np.uint8)
    frames[3] = frames[2]  # a pair where nothing moved
    frames[5, : size // 2] = frames[4, : size // 2]  # a pair where only the bottom half moved
    traj = RealTrajectory(frames=frames, actions=np.zeros(6, dtype=np.int64),
                          rewards=np.zeros(6), ends=np.zeros(6, dtype=bool))  # fmt: skip
    with torch.no_grad():
        real = torch.as_tensor(frames).movedim(-1, -3).float() / 255.0
        tokens = model.encode(real)
        expected = TokenFlips()
        expected.add(tokens[1:], tokens[:-1], real[1:], real[:-1])
        for batch_size in (2, 3, 7):
            *_, flips = _reconstruction_scores(model, [traj], batch_size, ())
            assert (flips.still, flips.still_flipped, flips.moving) == (
                expected.still,
                expected.still_flipped,
                expected.moving,
            ), batch_size
    k = tokens.shape[1]
    assert expected.still + expected.moving == 6 * k
    assert expected.still >= k + k // 2  # the identical pair, and the top half of the other
