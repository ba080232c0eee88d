"""``python -m rem_train.serve_check``: real serve states, and dreams of NOOP vs FIRE from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import REMModel
from rem_env.probes import BreakoutBallProbe
from rem_train.config import TrainConfig
from rem_train.serve_check import dreamed_serves, main, serve_contexts


@pytest.fixture(scope="module")
def contexts():
    return serve_contexts(3, context=4, horizon=30, seed=1)


def test_real_serve_states_serve_only_after_fire(contexts) -> None:
    assert contexts.frames.shape == (3, 4, 64, 64, 3) and contexts.actions.shape == (3, 3)
    assert not contexts.real_noop.any()  # the real game: no ball without FIRE ...
    assert contexts.real_fire.all()  # ... and one within 30 steps after it
    assert not contexts.lost_noop.any() and contexts.lost_fire.any()  # a still paddle misses
    assert contexts.first_fire.all() and not contexts.first_noop.any()  # served at once
    no_ball = BreakoutBallProbe().find(contexts.frames.reshape(-1, 64, 64, 3)).found
    assert not no_ball.any()


def _model(game: str) -> REMModel:
    torch.manual_seed(0)
    config = TrainConfig.from_preset("smoke", game).model_config()
    return REMModel(config).eval()


def test_dreamed_serves_are_shares_and_reproducible(contexts) -> None:
    model = _model("Breakout")
    shares = dreamed_serves(model, contexts, first_action=1, horizon=3, samples=4, seed=7)
    again = dreamed_serves(model, contexts, first_action=1, horizon=3, samples=4, seed=7)
    for share, same in zip(shares, again, strict=True):
        assert share.shape == (3,) and ((share >= 0) & (share <= 1)).all()
        assert np.array_equal(share, same)
        assert np.allclose(share * 4, np.round(share * 4))  # counts of 4 dreams
    assert (shares.first <= shares.ball).all()  # a ball at the first step is a ball at all
    one_step = dreamed_serves(model, contexts, first_action=1, horizon=1, samples=4, seed=7)
    assert np.array_equal(one_step.first, one_step.ball)
    assert np.array_equal(one_step.first, shares.first)  # the same first step, whatever follows
    strict = dreamed_serves(model, contexts, 1, horizon=3, samples=4, seed=7, threshold=256)
    assert not strict.ball.any() and not strict.first.any()  # no pixel is that red


def test_serve_contexts_need_a_step_to_compare() -> None:
    with pytest.raises(ValueError, match="horizon must be positive, got 2, 4 and 0"):
        serve_contexts(2, context=4, horizon=0)


def test_serve_check_is_for_breakout_models(tmp_path: Path) -> None:
    _model("Pong").save_pretrained(tmp_path / "pong")
    with pytest.raises(SystemExit, match="serve_check is for Breakout models"):
        main([str(tmp_path / "pong")])
