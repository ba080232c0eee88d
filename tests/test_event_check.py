"""The reward and end heads' check on real segments: heads we control, then the command."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.models.world_model import WorldModelOutput
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
from rem_train.event_check import EventCheck, check_events, main
from rem_train.replay import ReplayBuffer

REWARD, END = 1, 2
"""Bits of each step's action in the replay below: the step's reward and end, so that a head
we control can read the labels from the actions it is given."""


@pytest.fixture(scope="module")
def model() -> REMModel:
    return REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, game="Breakout")).eval()


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> ReplayBuffer:
    """Six episodes of 7-12 black frames; a reward every third step, an end at the last."""
    buffer = ReplayBuffer(tmp_path_factory.mktemp("events") / "replay", (64, 64, 3))
    for episode in range(6):
        length = 7 + episode
        for t in range(length):
            reward, end = t % 3 == 1, t == length - 1
            action = REWARD * reward + END * end
            buffer.append(np.zeros((64, 64, 3), np.uint8), action, float(reward), end)
    return buffer


def _heads(model: REMModel, heads: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
    """Makes the world model's reward and end logits ``heads(actions)``."""

    def forward(
        tokens: torch.Tensor,
        actions: torch.Tensor,
        codebook: torch.Tensor,
        frames: torch.Tensor | None = None,
    ) -> WorldModelOutput:
        b, t, k = tokens.shape
        obs = torch.zeros(b, t, k, model.config.tokenizer.vocab_size)
        return WorldModelOutput(obs, *heads(actions))

    model.world_model.forward = forward  # type: ignore[method-assign]


def _check(model: REMModel, replay: ReplayBuffer, heads) -> dict[str, EventCheck]:
    _heads(model, heads)
    try:
        return check_events(model, replay, np.random.default_rng(0), segments=24, length=6)
    finally:
        del model.world_model.forward  # back to the class's forward


def _logits(probability: torch.Tensor, classes: int, event_class: int) -> torch.Tensor:
    """(...) probability of the event class -> (..., classes) logits, the rest on class 0 or 1."""
    p = probability.clamp(1e-9, 1 - 1e-9)
    logits = torch.full((*p.shape, classes), -30.0)
    other = 1 if event_class != 1 else 0
    logits[..., event_class] = p.log()
    logits[..., other] = (1 - p).log()
    return logits


def test_a_head_that_reads_the_labels_is_right_every_time(model, replay) -> None:
    def perfect(actions: torch.Tensor):
        reward = (actions & REWARD).bool().float()
        end = (actions & END).bool().float()
        return _logits(reward, 3, 2), _logits(end, 2, 1)

    checks = _check(model, replay, perfect)
    for name in ("reward", "end"):
        c = checks[name]
        assert 0 < c.events < c.steps, name
        assert c.precision == pytest.approx(1) and c.recall == pytest.approx(1), name
        assert c.likeliest_precision == 1 and c.likeliest_recall == 1, name
        assert c.nll == pytest.approx(0, abs=1e-6) and c.base_nll > 0.2, name


def test_a_head_one_step_late_misses_the_events(model, replay) -> None:
    """Labels read from the step before: the rewards come every third step, so none match."""

    def late(actions: torch.Tensor):
        before = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)
        return _logits((before & REWARD).bool().float(), 3, 2), _logits(actions * 0.0, 2, 1)

    checks = _check(model, replay, late)
    assert checks["reward"].recall == pytest.approx(0, abs=1e-6)
    assert checks["reward"].likeliest_recall == 0 and checks["reward"].likeliest_precision == 0
    assert checks["reward"].nll > checks["reward"].base_nll
    assert checks["end"].likeliest_precision is None  # it never predicts an end


def test_a_coin_flip_scores_the_events_rate(model, replay) -> None:
    """p = 1/2 everywhere: precision is the events' share, recall 1/2, the NLL log 2."""

    def coin(actions: torch.Tensor):
        half = torch.full(actions.shape, 0.5)
        return _logits(half, 3, 2), _logits(half, 2, 1)

    for name, c in _check(model, replay, coin).items():
        rate = c.events / c.steps
        assert c.precision == pytest.approx(rate), name
        assert c.recall == pytest.approx(0.5), name
        assert c.nll == pytest.approx(math.log(2)), name
        assert c.base_nll == pytest.approx(-rate * math.log(rate) - (1 - rate) * math.log(1 - rate))


def test_the_command_prints_both_heads_and_refuses_a_missing_replay(
    model, replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    assert main([str(folder), str(replay.root), "--segments", "4", "--length", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"reward", "end"} and printed["reward"]["steps"] > 0
    with pytest.raises(SystemExit):
        main([str(folder), str(tmp_path / "none")])
    assert "cannot read the replay buffer" in capsys.readouterr().err
