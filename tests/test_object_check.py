"""The trainer's object check: real Breakout frames, the bundled model, predictors we control."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import rem_env
from rem_env import REMModel
from rem_env.atari import make_atari_env
from rem_env.models.world_model import WorldModelOutput
from rem_env.probes import SCRIPTED_PLAYERS, BreakoutBallProbe, ProbeHits
from rem_train.config import TrainConfig
from rem_train.object_check import (
    ObjectCheck,
    _extrapolated,
    _patch_of,
    _steady,
    check_objects,
    main,
)
from rem_train.replay import ReplayBuffer
from rem_train.trainer import Trainer

BUNDLED = Path(rem_env.__file__).parent / "weights" / "Breakout"
PROBES = (BreakoutBallProbe(),)


@pytest.fixture(scope="module")
def model() -> REMModel:
    return REMModel.from_pretrained(BUNDLED).eval()


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> ReplayBuffer:
    """300 real steps of the scripted player (the ball in play most of the time)."""
    env = make_atari_env("Breakout", train=True, seed=5)
    player = SCRIPTED_PLAYERS["Breakout"](epsilon=0.1, seed=5)
    buffer = ReplayBuffer(tmp_path_factory.mktemp("objects") / "replay", (64, 64, 3))
    obs, _ = env.reset(seed=5)
    for _ in range(300):
        action = int(player.act(env.unwrapped.ale.getRAM()[None])[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.append(obs, action, float(reward), terminated, truncated)
        obs = next_obs if not (terminated or truncated) else env.reset()[0]
    env.close()
    return buffer


def _predicting(model: REMModel, shift: int) -> None:
    """Makes the world model put all its mass on the tokens of frame t - ``shift``."""

    def forward(
        tokens: torch.Tensor,
        actions: torch.Tensor,
        codebook: torch.Tensor,
        frames: torch.Tensor | None = None,
    ) -> WorldModelOutput:
        b, t, _ = tokens.shape
        source = torch.cat([tokens[:, :1].expand(b, shift, -1), tokens[:, : t - shift]], dim=1)
        vocab = model.config.tokenizer.vocab_size
        logits = torch.nn.functional.one_hot(source, vocab).float() * 10.0  # (B, T, K, V)
        return WorldModelOutput(logits, torch.zeros(b, t, 3), torch.zeros(b, t, 2))

    model.world_model.forward = forward  # type: ignore[method-assign]


def _check(model: REMModel, replay: ReplayBuffer, shift: int) -> ObjectCheck:
    _predicting(model, shift)
    try:
        return check_objects(model, replay, PROBES, np.random.default_rng(0), segments=24)["ball"]
    finally:
        del model.world_model.forward  # back to the class's forward


def test_a_perfect_prediction_scores_what_the_tokenizer_shows(
    model: REMModel, replay: ReplayBuffer
) -> None:
    perfect = _check(model, replay, shift=0)
    assert perfect.frames > 50  # real frames with the ball in the open band
    assert perfect.reconstruction is not None and perfect.reconstruction > 0.2
    assert perfect.predicted == perfect.reconstruction  # same tokens, same pictures
    assert perfect.predicted_anywhere >= perfect.predicted
    assert perfect.patch_accuracy == 1.0 and perfect.patch_nll < 0.05  # logits 10 vs 0
    assert perfect.predicted_roughly >= perfect.predicted
    # the ball mostly flies straight; there the perfect prediction is as good as the tokenizer
    assert perfect.frames > perfect.steady_frames > 0.5 * perfect.frames
    assert perfect.steady_predicted is not None and perfect.steady_predicted > 0.2
    # a rule that carries the ball on by its last step is right in every steady frame at least
    # (a property of the real frames: the rule needs no model), so in most of them
    assert perfect.extrapolated is not None
    assert perfect.steady_frames / perfect.frames <= perfect.extrapolated <= 1.0
    # by the ball's row: the bands split the frames, and each band's shares are its own
    assert [band.rows for band in perfect.bands] == ["<36", "36-48", ">=48"]
    assert sum(band.frames for band in perfect.bands) == perfect.frames
    assert all(band.frames > 0 for band in perfect.bands)  # the ball is in play
    for band in perfect.bands:
        assert band.predicted == band.reconstruction <= band.predicted_anywhere
    shown = sum(band.frames * band.reconstruction for band in perfect.bands)
    assert shown == pytest.approx(perfect.frames * perfect.reconstruction)


def test_the_last_frame_again_is_not_the_next_one(model: REMModel, replay: ReplayBuffer) -> None:
    """Predicting frame t-1's tokens for frame t (a dream that stands still) puts the ball where
    it was: it still shows a ball, but mostly not within 2 px of the moved one."""
    still = _check(model, replay, shift=1)
    perfect = _check(model, replay, shift=0)
    assert still.frames == perfect.frames
    assert still.predicted_anywhere > 0.5 * perfect.predicted_anywhere
    assert still.predicted < 0.5 * perfect.predicted
    assert still.steady_frames == perfect.steady_frames  # a property of the real frames
    assert still.extrapolated == perfect.extrapolated  # so is the rule's share
    assert still.steady_predicted < 0.5 * perfect.steady_predicted  # a flying ball moved on
    assert still.predicted_roughly >= still.predicted
    # the ball's patch: the last frame's token there is mostly another one (the ball moved on)
    assert still.patch_accuracy < 0.5 and still.patch_nll > 1.0
    assert [band.frames for band in still.bands] == [band.frames for band in perfect.bands]


def test_the_real_world_model_is_checked_too(model: REMModel, replay: ReplayBuffer) -> None:
    """The bundled world model itself (its dreams rarely draw the ball: a share below the
    tokenizer's, and the same numbers for the same seed)."""
    first = check_objects(model, replay, PROBES, np.random.default_rng(0), segments=16)["ball"]
    again = check_objects(model, replay, PROBES, np.random.default_rng(0), segments=16)["ball"]
    assert first == again
    assert first.predicted is not None and first.predicted <= first.reconstruction


def test_the_command_prints_the_check_and_refuses_a_missing_replay(
    replay: ReplayBuffer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(BUNDLED), str(replay.root), "--segments", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"ball"} and printed["ball"]["frames"] > 0
    with pytest.raises(SystemExit):
        main([str(BUNDLED), str(tmp_path / "none")])
    assert "cannot read the replay buffer" in capsys.readouterr().err


def test_steady_motion_is_the_same_step_as_the_frame_before() -> None:
    """Two segments of five frames: positions (row, column) and whether the probe found it."""
    positions = np.array(
        [
            [(0, 0), (1, 2), (2, 4), (3, 6.8), (5, 6)],  # steps (1,2) (1,2) (1,2.8) (2,-0.8)
            [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)],  # steady, but not found in frame 2
        ],
        dtype=float,
    )
    found = np.array([[True] * 5, [True, True, False, True, True]])
    hits = ProbeHits(positions.reshape(10, 2), found.reshape(10))
    everything = np.ones((2, 5), dtype=bool)
    assert _steady(hits, everything).reshape(2, 5).tolist() == [
        [False, False, True, True, False],  # a step off by 0.8 px is steady, by 2 px is not
        [False, False, False, False, False],  # frames 3 and 4 lack frame 2's position
    ]
    chosen = np.zeros((2, 5), dtype=bool)
    chosen[0, 2:4] = chosen[1, 4] = True
    assert _steady(hits, chosen).tolist() == [True, True, False]  # the chosen frames, in order


def test_the_command_checks_one_checkpoint_of_a_run(
    replay: ReplayBuffer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint file is checked with its own weights, not those of the run's last one."""
    config = TrainConfig.from_preset("smoke", "Breakout")
    trainer = Trainer(config, tmp_path / "run")
    try:
        trainer._save(keep_numbered=True)
        kept = copy.deepcopy(trainer.model).eval()
    finally:
        trainer.close()
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("epoch_*.safetensors")
    later = Trainer(config, tmp_path / "run", resume=True)
    try:
        with torch.no_grad():
            for p in later.model.world_model.parameters():
                p.add_(torch.randn_like(p))
        later._save(keep_numbered=False)
        last = copy.deepcopy(later.model).eval()
    finally:
        later.close()

    def printed(model: str) -> dict:
        capsys.readouterr()
        assert main([model, str(replay.root), "--segments", "8"]) == 0
        return json.loads(capsys.readouterr().out)["ball"]

    def expected(model: REMModel) -> dict:
        check = check_objects(model, replay, PROBES, np.random.default_rng(0), segments=8)
        return json.loads(json.dumps(dataclasses.asdict(check["ball"])))  # as printed

    assert printed(str(checkpoint)) == expected(kept)
    assert printed(str(tmp_path / "run")) == expected(last)
    assert expected(kept)["patch_nll"] != expected(last)["patch_nll"]


def test_the_rule_carries_the_object_on_by_its_last_step() -> None:
    """Two segments of five frames: the guess for frame t is 2 * p[t-1] - p[t-2], right when
    within 2 px of p[t], and only where the probe found the object in all three frames."""
    positions = np.array(
        [
            [(0, 0), (1, 2), (2, 4), (3, 7.5), (8, 9)],  # guesses 0, 1.5 and 4.5 px off
            [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)],  # on the line, but not found in frame 2
        ],
        dtype=float,
    )
    found = np.array([[True] * 5, [True, True, False, True, True]])
    hits = ProbeHits(positions.reshape(10, 2), found.reshape(10))
    everything = np.ones((2, 5), dtype=bool)
    assert _extrapolated(hits, everything).reshape(2, 5).tolist() == [
        [False, False, True, True, False],  # 1.5 px off is right, 4.5 px off is not
        [False, False, False, False, False],  # frames 3 and 4 lack frame 2's position
    ]
    chosen = np.zeros((2, 5), dtype=bool)
    chosen[0, 3:] = chosen[1, 3] = True
    assert _extrapolated(hits, chosen).tolist() == [True, False, False]


def test_the_balls_patch_is_read_on_the_tokenizers_grid() -> None:
    """A ball at row 29.5 is in the fourth row of 8x8 patches; on a grid 3 rows above the
    frame (a patch tokenizer's row_offset) in the fifth."""
    positions = np.array([[29.5, 10.0], [63.0, 63.0]])
    assert _patch_of(positions, 8, 8, 0).tolist() == [3 * 8 + 1, 63]
    assert _patch_of(positions, 8, 8, 3).tolist() == [4 * 8 + 1, 63]  # the last row: clipped
