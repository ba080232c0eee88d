"""The ``rem-env`` command: dream videos, agents, info, bench and user errors (exit 2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hang_guard import HANG_GUARD_S
from PIL import Image

from rem_env import REMConfig, REMModel
from rem_env.actor_critic_files import ACTOR_CRITIC_WEIGHTS, save_actor_critic
from rem_env.agents import ActorCriticAgent
from rem_env.cli import build_parser, main
from rem_env.hub import bundled_model_folder, save_pretrained
from rem_env.models.actor_critic import ActorCritic

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_default_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """No game has a default model here, whatever the caller's environment says."""
    monkeypatch.delenv("REM_ENV_HUB_ORG", raising=False)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout"))
    return save_pretrained(model, tmp_path_factory.mktemp("models") / "breakout")


def test_dream_writes_a_tiled_upscaled_gif_and_prints_returns(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dream.gif"
    argv = ["dream", "REM-Breakout-v0", "--model", str(model_folder), "--num-envs", "3"]
    status = main([*argv, "--steps", "4", "--seed", "0", "--scale", "2", "--out", str(out)])
    assert status == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 5  # reset + 4 steps
        assert gif.size == (2 * 32 + 1, 2 * 32 + 1)  # 2x2 grid of 16px frames upscaled 2x
    printed = capsys.readouterr().out
    assert "wrote 5 frames of 3 dream(s)" in printed
    assert printed.count("episode returns") == 3


def test_dream_is_seeded(model_folder: Path, tmp_path: Path) -> None:
    common = ["dream", "REM-Breakout-v0", "--model", str(model_folder), "--steps", "3"]
    for name in ("a", "b"):
        assert main([*common, "--seed", "5", "--out", str(tmp_path / f"{name}.gif")]) == 0
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()


def test_dream_with_int8_weights(model_folder: Path, tmp_path: Path) -> None:
    common = ["dream", "REM-Breakout-v0", "--model", str(model_folder), "--steps", "3"]
    for name in ("a", "b"):
        argv = [
            *common,
            "--quantize",
            "int8",
            "--seed",
            "5",
            "--out",
            str(tmp_path / f"{name}.gif"),
        ]
        assert main(argv) == 0
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()


def test_random_weights_are_labelled_untrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "noise.gif"
    argv = ["dream", "REM-Pong-v0", "--random-weights", "tiny", "--steps", "2", "--out", str(out)]
    assert main(argv) == 0
    assert "UNTRAINED" in capsys.readouterr().err
    with Image.open(out) as gif:
        assert gif.size[1] > 16 * 4 + 1  # the caption band above the frames


def test_sb3_policy_acts_in_the_dream(model_folder: Path, tmp_path: Path) -> None:
    from stable_baselines3 import A2C

    from rem_env import DreamVectorEnv
    from rem_env.sb3 import SB3DreamVecEnv

    venv = SB3DreamVecEnv(DreamVectorEnv(str(model_folder), 2, obs_type="tokens"))
    A2C("MlpPolicy", venv, n_steps=2, device="cpu").learn(4).save(tmp_path / "a2c.zip")
    out = tmp_path / "sb3.gif"
    argv = ["dream", "REM-Breakout-v0", "--model", str(model_folder), "--steps", "2"]
    assert main([*argv, "--agent", str(tmp_path / "a2c.zip"), "--out", str(out)]) == 0
    assert out.is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dream", "REM-Breakot-v0"], "Did you mean REM-Breakout-v0"),
        (["dream", "REM-Tetris-v0"], "unknown env id"),
        (["dream", "REM-Breakout-v0", "--out", "dream.avi"], ".gif or .mp4"),
        (["dream", "REM-Pong-v0"], "no default model for Pong"),
        (["dream", "REM-Breakout-v0", "--random-weights", "tiny", "--model", "x"], "either"),
        (["play", "REM-Nope-v0"], "unknown env id"),
        (
            ["dream", "REM-Breakout-v0", "--quantize", "int8", "--device", "cuda"],
            "runs on the CPU only",
        ),
    ],
)
def test_user_errors_exit_2_without_traceback(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "dream.gif").exists()


def test_unknown_hub_repo_exits_2(
    fake_hub: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["dream", "REM-Breakout-v0", "--model", "nobody/no-such-model"]
    assert main([*argv, "--out", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert "no Hub repo 'nobody/no-such-model'" in err and "Traceback" not in err


def test_wrong_game_and_bad_agents(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "x.gif"), "--steps", "1"]
    assert main(["dream", "REM-Pong-v0", "--model", str(model_folder), *out]) == 2
    assert "trained on 'Breakout'" in capsys.readouterr().err
    base = ["dream", "REM-Breakout-v0", "--model", str(model_folder), *out]
    assert main([*base, "--agent", "actor-critic"]) == 2
    assert f"ships no actor-critic ({ACTOR_CRITIC_WEIGHTS}" in capsys.readouterr().err
    assert main([*base, "--agent", str(tmp_path / "missing.zip")]) == 2
    assert "no SB3 policy file" in capsys.readouterr().err
    assert main([*base, "--algo", "PPO"]) == 2
    assert "--algo applies to an SB3 policy file" in capsys.readouterr().err
    not_a_policy = tmp_path / "junk.zip"
    not_a_policy.write_bytes(b"not a zip")
    assert main([*base, "--agent", str(not_a_policy), "--algo", "DQN"]) == 2
    assert "could not load" in capsys.readouterr().err


def test_the_actor_critic_a_model_folder_ships_plays_the_dream(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "with_ac"
    shutil.copytree(model_folder, folder)
    config = REMModel.from_pretrained(folder).config
    save_actor_critic(ActorCritic.from_config(config, hidden_size=16), folder)
    out = tmp_path / "ac.gif"
    argv = ["dream", "REM-Breakout-v0", "--model", str(folder), "--agent", "actor-critic"]
    assert main([*argv, "--num-envs", "2", "--steps", "4", "--seed", "1", "--out", str(out)]) == 0
    assert out.is_file()
    (folder / ACTOR_CRITIC_WEIGHTS).write_bytes(b"garbage")
    assert main([*argv, "--out", str(tmp_path / "x.gif")]) == 2
    assert "actor-critic in" in capsys.readouterr().err


def test_actor_critic_agent_forgets_an_ended_episode() -> None:
    config = REMConfig.preset("tiny", num_actions=4)
    agent = ActorCriticAgent(ActorCritic.from_config(config, hidden_size=16), 2, seed=0)
    codes = np.random.default_rng(0).normal(size=(2, 32, 4, 4)).astype(np.float32)
    agent.act(codes)
    agent.episodes_ended(np.array([True, False]))
    agent.act(codes)  # env 0 shows its terminal frame here; its action is ignored
    assert torch.all(agent.state.h[0] == 0) and torch.all(agent.state.c[0] == 0)
    assert torch.any(agent.state.h[1] != 0)


def test_mp4_with_imageio_ffmpeg(model_folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("imageio_ffmpeg")
    argv = ["dream", "REM-Breakout-v0", "--model", str(model_folder), "--steps", "2"]
    assert main([*argv, "--num-envs", "2", "--out", str(tmp_path / "dream.mp4")]) == 0
    assert (tmp_path / "dream.mp4").stat().st_size > 0


def test_mp4_without_imageio_ffmpeg_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes the import fail
    assert main(["dream", "REM-Breakout-v0", "--out", str(tmp_path / "dream.mp4")]) == 2
    assert "pip install 'rem-env[video]'" in capsys.readouterr().err


def test_info_lists_ids_versions_and_devices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("REM-") == 26
    assert "REM-Pong-v0: none (pass --model)" in printed
    assert f"REM-Breakout-v0: {bundled_model_folder('Breakout')}" in printed
    for name in ("rem-env", "torch", "gymnasium", "ale-py", "stable-baselines3", "cuda"):
        assert name in printed


def test_info_shows_configured_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REM_ENV_HUB_ORG", "someone")
    assert main(["info"]) == 0
    assert "REM-Pong-v0: someone/rem-pong" in capsys.readouterr().out


def test_bench_passes_arguments_through(tmp_path: Path) -> None:
    """Runs the real console script, as a user does (slowest test here: a subprocess)."""
    argv = ["-m", "rem_env", "bench", "--which", "dream_env", "--", "--preset", "tiny"]
    argv += ["--num-envs", "1", "--obs-types", "tokens", "--steps", "2", "--no-ale"]
    argv += ["--json", str(tmp_path / "bench.json")]
    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "| N | dream tokens" in result.stdout
    assert (tmp_path / "bench.json").is_file()


def test_bench_without_a_checkout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("rem_env.cli.__file__", "/nowhere/site-packages/rem_env/cli.py")
    assert main(["bench", "--which", "imagination"]) == 2
    assert "not in the wheel" in capsys.readouterr().err


def test_help_names_every_subcommand_and_option() -> None:
    text = build_parser().format_help()
    for command in ("dream", "play", "info", "bench"):
        assert command in text
    dream = build_parser().parse_args(["dream", "REM-Breakout-v0"])
    assert (dream.agent, dream.num_envs, dream.out, dream.scale) == ("random", 1, "dream.gif", 4)


def test_help_gives_every_default() -> None:
    """An option that has a value when it is not given says which in ``--help``; ``--seed`` says
    that the dreams are random without it (fidelity: 0)."""
    import argparse

    subcommands = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    for name, parser in subcommands.items():
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in (action.help or ""), f"rem-env {name} {action.option_strings}"
    seeds = {name: subcommands[name].format_help() for name in ("dream", "play", "fidelity")}
    assert "(default: random: a new dream each run)" in " ".join(seeds["dream"].split())
    assert "(default: random: a new dream each run)" in " ".join(seeds["play"].split())
    assert "(default: 0)" in seeds["fidelity"].split("\n  --seed SEED", 1)[1].split("--device")[0]
    from rem_train.cli import parser as training_parser

    shortcuts = " ".join(training_parser().format_help().split())
    assert "--seed SEED shortcut for --common.seed (default: the preset's, 1)" in shortcuts


def test_tile_frames_places_envs_in_a_grid() -> None:
    from rem_env.video import tile_frames

    frames = np.stack([np.full((2, 2, 3), i * 50, np.uint8) for i in range(1, 4)])
    grid = tile_frames(frames, scale=3)
    assert grid.shape == (13, 13, 3)
    assert (grid[:6, :6] == 50).all() and (grid[:6, 7:] == 100).all()
    assert (grid[7:, :6] == 150).all() and (grid[7:, 7:] == 0).all()


def test_rollout_records_the_same_frames_whatever_the_agent_observes() -> None:
    from rem_env import DreamVectorEnv
    from rem_env.agents import RandomAgent, roll_dream

    model = REMModel(REMConfig.preset("tiny", num_actions=4))
    rollouts = [
        roll_dream(
            DreamVectorEnv(model, 2, obs_type=obs_type, render_mode="rgb_array"),
            RandomAgent(4, seed=0),
            steps=4,
            seed=3,
        )
        for obs_type in ("rgb", "tokens", "latent")
    ]
    for other in rollouts[1:]:
        assert all((a == b).all() for a, b in zip(rollouts[0].frames, other.frames, strict=True))
        assert other.episode_returns == rollouts[0].episode_returns


def test_dream_under_bf16_autocast(model_folder: Path, tmp_path: Path) -> None:
    argv = ["dream", "REM-Breakout-v0", "--model", str(model_folder), "--steps", "3"]
    out = tmp_path / "bf16.gif"
    assert main([*argv, "--autocast", "bf16", "--seed", "5", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    both = [*argv, "--autocast", "bf16", "--quantize", "int8", "--out", str(tmp_path / "x.gif")]
    assert main(both) == 2
