"""rem_train.set_openings: a model copy whose dream openings come from replay buffers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.actor_critic_files import ACTOR_CRITIC_WEIGHTS, save_actor_critic
from rem_env.hub import load_pretrained
from rem_env.models.actor_critic import ActorCritic
from rem_train.batches import frames_to_tensor
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
from rem_train.replay import ReplayBuffer
from rem_train.set_openings import main, openings

LENGTHS = (5, 1, 4, 3)
"""Episodes of the test replay: the one of 1 step is too short for an opening of 2 frames."""


def _frame(episode: int, step: int, size: int = 64) -> np.ndarray:
    """A frame that says which episode and step it is (and differs enough to tokenize apart)."""
    frame = np.zeros((size, size, 3), np.uint8)
    frame[: 8 * (episode + 1), :, 0] = 200
    frame[:, : 8 * (step + 1), 1] = 150
    return frame


def _replay(folder: Path, size: int = 64) -> Path:
    """Episodes of LENGTHS steps; the action of step s of episode e is (e + s) % 4."""
    with ReplayBuffer(folder, (size, size, 3)) as buffer:
        for episode, length in enumerate(LENGTHS):
            for step in range(length):
                action = (episode + step) % 4
                ended = step == length - 1
                buffer.append(_frame(episode, step, size), action, 0.0, terminated=ended)
    return folder


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _replay(tmp_path_factory.mktemp("openings") / "replay")


def test_life_starts_are_each_long_enough_episodes_first_frames(replay: Path) -> None:
    buffer = ReplayBuffer(replay, read_only=True)
    frames, actions = openings([buffer], 2, "life-start", 10, np.random.default_rng(0))
    assert frames.shape == (3, 2, 64, 64, 3) and actions.shape == (3, 1)
    found = set()
    for window, taken in zip(frames, actions, strict=True):
        episode = next(e for e in range(len(LENGTHS)) if np.array_equal(window[0], _frame(e, 0)))
        np.testing.assert_array_equal(window[1], _frame(episode, 1))
        assert taken.tolist() == [episode % 4]
        found.add(episode)
    assert found == {0, 2, 3}  # not the episode of one step
    fewer, _ = openings([buffer, buffer], 2, "life-start", 4, np.random.default_rng(1))
    assert len(fewer) == 4  # 6 life starts in two replays, 4 asked for


def test_anywhere_draws_windows_inside_one_episode(replay: Path) -> None:
    buffer = ReplayBuffer(replay, read_only=True)
    frames, actions = openings([buffer], 3, "anywhere", 100, np.random.default_rng(0))
    assert len(frames) == 3 + 2 + 1  # windows of 3 steps in episodes of 5, 4 and 3
    seen = set()
    for window, taken in zip(frames, actions, strict=True):
        episode, step = next(
            (e, s)
            for e, n in enumerate(LENGTHS)
            for s in range(n)
            if np.array_equal(window[0], _frame(e, s))
        )
        for k in range(3):  # never across the end of an episode
            np.testing.assert_array_equal(window[k], _frame(episode, step + k))
        assert taken.tolist() == [(episode + step) % 4, (episode + step + 1) % 4]
        seen.add((episode, step))
    assert len(seen) == 6  # drawn without replacement


def test_openings_errors(replay: Path) -> None:
    buffer = ReplayBuffer(replay, read_only=True)
    with pytest.raises(ValueError, match="at must be one of"):
        openings([buffer], 2, "middle", 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="has the 6 steps an opening needs"):
        openings([buffer], 6, "life-start", 4, np.random.default_rng(0))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, "Breakout")
    folder = tmp_path_factory.mktemp("model") / "tiny"
    REMModel(config).eval().save_pretrained(folder)
    save_actor_critic(ActorCritic.from_config(config, hidden_size=16), folder)
    return folder


def test_the_copy_dreams_from_the_replays_life_starts(
    model_folder: Path, replay: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    argv = [str(model_folder), "--replay", str(replay), "--count", "8", "--out", str(out)]
    assert main(argv) == 0
    before, after = load_pretrained(model_folder), load_pretrained(out)
    assert after.num_start_contexts == 3
    first = np.stack([[_frame(e, 0), _frame(e, 1)] for e in (0, 2, 3)])  # (3, 2, 64, 64, 3)
    with torch.no_grad():
        tokens = before.tokenizer.encode(frames_to_tensor(torch.as_tensor(first).flatten(0, 1)))
    expected = {tuple(row.tolist()) for row in tokens.tokens.unflatten(0, (3, 2)).flatten(1)}
    assert {tuple(row.tolist()) for row in after.start_tokens.flatten(1)} == expected
    assert sorted(after.start_actions.flatten().tolist()) == [0, 2, 3]
    weights = {k: v for k, v in after.state_dict().items() if not k.startswith("start_")}
    for key, value in weights.items():  # tokenizer and world model unchanged
        torch.testing.assert_close(value, before.state_dict()[key], rtol=0, atol=0)
    assert (out / ACTOR_CRITIC_WEIGHTS).read_bytes() == (
        model_folder / ACTOR_CRITIC_WEIGHTS
    ).read_bytes()
    record = json.loads((out / "training.json").read_text())
    assert record["preset"] == "openings (life-start)" and record["openings"] == 3
    assert record["command"].startswith("python -m rem_train.set_openings ")


def test_clear_errors(model_folder: Path, replay: Path, tmp_path: Path) -> None:
    small = _replay(tmp_path / "small", size=16)
    out = str(tmp_path / "copy")
    with pytest.raises(SystemExit, match=r"shape \(16, 16, 3\), not \(64, 64, 3\)"):
        main([str(model_folder), "--replay", str(small), "--out", out])
    with pytest.raises(SystemExit, match="--count must be positive"):
        main([str(model_folder), "--replay", str(replay), "--count", "0", "--out", out])
    with pytest.raises(SystemExit, match=r"set_openings: .*holds no replay buffer"):
        main([str(model_folder), "--replay", str(tmp_path / "none"), "--out", out])
