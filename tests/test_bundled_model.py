"""The Breakout model shipped inside the package: offline defaults, size, card, other games."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from hang_guard import HANG_GUARD_S

import rem_env
from rem_env import REMModel
from rem_env.fidelity import measure_fidelity, record_real_trajectories
from rem_env.hub import bundled_model_folder, resolve_default_model
from rem_env.probes import BreakoutBallFollower

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = Path(rem_env.__file__).parent / "weights"

OFFLINE_DREAM = """
import gymnasium as gym
import rem_env
env = gym.make("REM-Breakout-v0")
obs, info = env.reset(seed=0)
for _ in range(5):
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
venv = gym.make_vec("REM-Breakout-v0", num_envs=16)
obs16, infos = venv.reset(seed=0)
obs16, rewards, terminated, truncated, infos = venv.step(venv.action_space.sample())
print(obs.shape, obs16.shape, type(venv.unwrapped).__name__)
"""


def test_breakout_dreams_offline_without_arguments(tmp_path: Path) -> None:
    """A fresh process, the Hub offline and an empty HF cache: the bundled model is used."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there
    }
    env.pop("REM_ENV_HUB_ORG", None)
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_DREAM], env=env, capture_output=True, text=True,
        timeout=HANG_GUARD_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "(64,",
        "64,",
        "3)",
        "(16,",
        "64,",
        "64,",
        "3)",
        "DreamVectorEnv",
    ]


def test_the_default_breakout_model_is_the_bundled_one() -> None:
    folder = bundled_model_folder("Breakout")
    assert folder == WEIGHTS / "Breakout"
    assert resolve_default_model("Breakout") == str(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["game"] == "Breakout"
    card = (folder / "README.md").read_text()
    for section in ("## How it was trained", "## Fidelity to the real game",
                    "## Trained in the dream, scored on the real game"):  # fmt: skip
        assert section in card
    assert "rem-train --preset breakout --model patch" in card


def test_the_bundled_dream_puts_the_ball_where_the_game_does() -> None:
    """Real Breakout played by the scripted player; the bundled model dreams the same actions
    from the same real contexts. At the first imagined step its ball lies within 2 px of the
    emulator's in most dreams (0.785 of the fidelity report's 833 dreams; the VQ-VAE model
    bundled before it: 0.178)."""
    model = REMModel.from_pretrained(bundled_model_folder("Breakout")).eval()
    trajectories = record_real_trajectories(
        model, "Breakout", BreakoutBallFollower(seed=0), games=1, seed=0, max_steps=300
    )
    report, _ = measure_fidelity(model, trajectories, horizon=2, stride=3, seed=0)
    ball = report.objects["ball"]
    assert ball["dream_compared"][0] >= 30
    assert ball["dream_near"][0] >= 0.6


def test_bundled_weights_are_small_and_packaged() -> None:
    files = [p for p in WEIGHTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    # tomllib is Python 3.11+; the package-data line is simple enough to read directly.
    line = re.search(r"^rem_env = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert line is not None
    patterns = re.findall(r'"([^"]+)"', line.group(1))
    for path in files:
        relative = path.relative_to(WEIGHTS.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_other_games_still_say_how_to_get_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REM_ENV_HUB_ORG", raising=False)
    with pytest.raises(gym.error.Error, match="no default model for Pong"):
        gym.make("REM-Pong-v0")
