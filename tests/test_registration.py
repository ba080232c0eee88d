"""REM-<Game>-v0 registration: ids, entry points, model checks, the games table vs ale-py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hang_guard import HANG_GUARD_S

import rem_env
from rem_env import DreamEnv, DreamVectorEnv, REMConfig, REMModel
from rem_env.registration import ATARI_100K_GAMES, env_id


@pytest.fixture(scope="module")
def model() -> REMModel:
    return REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout"))


def test_all_26_games_are_registered_with_both_entry_points() -> None:
    assert len(ATARI_100K_GAMES) == 26
    for game in ATARI_100K_GAMES:
        spec = gym.spec(env_id(game))
        assert spec.entry_point and spec.vector_entry_point
        assert spec.kwargs == {"game": game}


def test_action_set_sizes_match_ale_py() -> None:
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    for game, num_actions in ATARI_100K_GAMES.items():
        env = gym.make(f"ALE/{game}-v5")
        assert env.action_space.n == num_actions, game
        env.close()


def test_make_and_make_vec(model: REMModel) -> None:
    env = gym.make("REM-Breakout-v0", model=model, obs_type="tokens", max_episode_steps=5)
    assert isinstance(env.unwrapped, DreamEnv)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16,)
    venv = gym.make_vec("REM-Breakout-v0", num_envs=3, model=model, obs_type="rgb")
    assert isinstance(venv, DreamVectorEnv) and venv.num_envs == 3
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 16, 16, 3)
    venv.step(np.zeros(3, dtype=np.int64))
    # max_episode_steps from make_vec reaches the vector env
    short = gym.make_vec("REM-Breakout-v0", num_envs=2, model=model, max_episode_steps=1)
    short.reset(seed=0)
    assert short.step(np.zeros(2, dtype=np.int64))[3].all()


def test_make_without_prior_import() -> None:
    code = (
        "import gymnasium as gym, sys\n"
        "assert 'rem_env' not in sys.modules\n"
        "env = gym.make('rem_env:REM-Breakout-v0')\n"  # the bundled model
        "assert type(env.unwrapped).__name__ == 'DreamEnv'\n"
        "try:\n"
        "    gym.make('rem_env:REM-Pong-v0')\n"  # no weights for Pong
        "except gym.error.Error as err:\n"
        "    assert 'REMModel' in str(err), err\n"
        "    print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_make_without_prior_import_with_a_model(model: REMModel) -> None:
    env = gym.make("rem_env:REM-Breakout-v0", model=model)
    assert env.reset(seed=0)[0].shape == (16, 16, 3)


def test_missing_model_says_how_to_get_one() -> None:
    with pytest.raises(gym.error.Error, match="rem-train"):
        gym.make("REM-Pong-v0")
    with pytest.raises(gym.error.Error, match="REMModel"):
        gym.make_vec("REM-Pong-v0", num_envs=2)


def test_model_for_another_game_or_action_set_is_rejected(model: REMModel) -> None:
    with pytest.raises(gym.error.Error, match="Breakout"):
        gym.make("REM-Pong-v0", model=model)
    generic = REMModel(REMConfig.preset("tiny", num_actions=4))  # no game recorded
    assert isinstance(gym.make("REM-Breakout-v0", model=generic).unwrapped, DreamEnv)
    with pytest.raises(gym.error.Error, match="6 actions"):
        gym.make("REM-Pong-v0", model=generic)
    with pytest.raises(TypeError, match="REMModel"):
        gym.make("REM-Breakout-v0", model=42)


def test_registration_is_idempotent() -> None:
    before = len(gym.registry)
    rem_env.register_dream_envs()
    assert len(gym.registry) == before


def test_model_from_a_folder(model: REMModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "breakout")
    env = gym.make("REM-Breakout-v0", model=str(tmp_path / "breakout"), obs_type="tokens")
    assert torch.equal(env.unwrapped.model.start_tokens, model.start_tokens)
    assert env.reset(seed=0)[0].shape == (16,)
