"""Collection into the replay buffer and the Atari 100K evaluation, on real ALE Breakout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import REMModel
from rem_env.models.actor_critic import ActorCritic
from rem_train.collect import Collector
from rem_train.config import TrainConfig
from rem_train.evaluate import evaluate, human_normalized_score
from rem_train.replay import ReplayBuffer


@pytest.fixture(scope="module")
def agent() -> tuple[TrainConfig, REMModel, ActorCritic]:
    torch.manual_seed(0)
    config = TrainConfig.from_preset("smoke")
    model = REMModel(config.model_config())
    return config, model, ActorCritic.from_config(model.config, hidden_size=16)


def test_collector_stores_every_step_and_splits_lives(agent: tuple, tmp_path: Path) -> None:
    config, model, actor_critic = agent
    collector = Collector.from_config(config, seed=0)
    with ReplayBuffer(tmp_path, fsync=False) as replay:
        stats = [collector.collect(model, actor_critic, replay, 150)]
        open_after_first = collector.obs is not None
        stats.append(collector.collect(model, actor_critic, replay, 150))
        assert [s["steps"] for s in stats] == [150, 150] and replay.num_steps == 300
        lengths = replay.episode_lengths
        assert lengths.sum() == 300
        # Every finished episode ends with a flag (a lost life in the train env) ...
        ends = [replay.episode(i) for i in range(replay.num_episodes - 1)]
        assert all(e.terminated[-1] or e.truncated[-1] for e in ends)
        assert sum(s["episodes"] for s in stats) == replay.num_episodes - (
            collector.obs is not None
        )
        # ... and the second call went on with the first call's open episode (no new start).
        starts = np.cumsum([0, *lengths[:-1]])
        assert (150 in starts) == (not open_after_first)
        # The epsilon-greedy actions are the executed ones, in the action set.
        actions = np.concatenate([replay.episode(i).actions for i in range(replay.num_episodes)])
        assert set(actions.tolist()) <= set(range(config.num_actions))
        # A stop request ends collection early.
        assert collector.collect(model, actor_critic, replay, 10, stop=lambda: True)["steps"] == 0
    collector.close()


def test_evaluate_plays_whole_rounds(agent: tuple) -> None:
    _, model, actor_critic = agent
    result = evaluate(
        model.tokenizer, actor_critic, "Breakout", episodes=3, num_envs=2, seed=0,
        max_raw_frames=200,
    )  # fmt: skip
    assert len(result.scores) == 4  # 2 rounds of 2 envs, as REM's 104 for 100
    assert all(length <= 50 for length in result.lengths)  # 200 raw frames = 50 steps
    assert result.mean == pytest.approx(np.mean(result.scores))
    assert result.human_normalized == pytest.approx(human_normalized_score("Breakout", result.mean))
    with pytest.raises(ValueError, match="episodes and num_envs must be positive"):
        evaluate(model.tokenizer, actor_critic, "Breakout", episodes=0)
