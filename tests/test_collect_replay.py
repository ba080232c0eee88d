"""``python -m rem_train.collect_replay``: real steps into a replay folder, nothing trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.actor_critic_files import save_actor_critic
from rem_env.models.actor_critic import ActorCritic
from rem_train.collect import Collector
from rem_train.collect_replay import collect_replay, main
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
from rem_train.replay import ReplayBuffer


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke-sized Breakout model with an (untrained) actor-critic."""
    torch.manual_seed(0)
    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, game="Breakout"))
    folder = tmp_path_factory.mktemp("models") / "breakout"
    model.save_pretrained(folder)
    save_actor_critic(ActorCritic.from_config(model.config, hidden_size=16), folder)
    return folder


def test_the_command_stores_the_steps_and_counts_what_it_added(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "held_out"
    argv = ["--steps", "400", "--scripted-share", "1", "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    assert "400 steps added" in capsys.readouterr().out
    record = json.loads((out / "collect.json").read_text())
    with ReplayBuffer(out / "replay", read_only=True) as replay:
        stored = replay._records()
        assert replay.num_steps == record["steps"] == 400
        assert record["rewards"] == int(np.count_nonzero(stored["reward"])) >= 4  # it scores
        assert record["ends"] == int(np.count_nonzero(stored["flags"] & 1))
    assert record["command"].startswith("python -m rem_train.collect_replay --steps 400")

    # run again: the same folder is added to, and collect.json says what this call added
    assert main(["--steps", "100", "--out", str(out), "--seed", "4"]) == 0
    with ReplayBuffer(out / "replay", read_only=True) as replay:
        assert replay.num_steps == 500
    assert json.loads((out / "collect.json").read_text())["steps"] == 100


def test_without_a_model_the_rest_of_the_episodes_are_uniformly_random(tmp_path: Path) -> None:
    added = collect_replay("Breakout", 600, tmp_path / "replay", seed=0)
    assert added.steps == 600 and added.episodes >= 1  # random play loses lives within 600 steps
    with ReplayBuffer(tmp_path / "replay", read_only=True) as replay:
        counts = np.bincount(replay._records()["action"], minlength=4)
    assert (counts > 600 / 4 * 0.7).all(), counts  # all four actions, about equally often


def test_a_models_actor_critic_plays_and_a_model_of_another_game_is_refused(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    added = collect_replay("Breakout", 40, tmp_path / "replay", model=str(model_folder))
    assert added.steps == 40
    with pytest.raises(ValueError, match="trained on Breakout, not Pong"):
        collect_replay("Pong", 10, tmp_path / "pong", model=str(model_folder))
    with pytest.raises(ValueError, match="give both"):  # an actor-critic needs the tokenizer
        Collector("Breakout", 0, 1.0, 0.0, 0, True).collect(
            None, ActorCritic.from_config(REMModel.from_pretrained(model_folder).config, 16),
            ReplayBuffer(tmp_path / "other"), 1,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scripted-share", "0.8", "--parked-share", "0.3"], "add up to at most 1"),
        (["--scripted-share", "1.5"], "must be in [0, 1]"),
        (["--steps", "0"], "at least 1"),
        (["--serve-wait", "-1"], "serve_wait must be >= 0"),
    ],
)
def test_bad_settings_are_refused_before_any_step(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--steps", "10", "--out", str(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "replay").exists()
