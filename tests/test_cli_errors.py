"""User errors of ``rem-env`` and ``rem-train`` that used to point the wrong way.

Each is refused up front with one line and exit status 2 (no traceback, no work done first);
Ctrl-C ends a command with "interrupted" and status 130.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.cli import main
from rem_env.hub import save_pretrained
from rem_env.manifest import Evaluation, ProtocolManifest
from rem_env.model_card import render_model_card

DREAM = ["dream", "REM-Breakout-v0", "--steps", "2"]


@pytest.fixture(autouse=True)
def no_default_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """No game has a default model here, whatever the caller's environment says."""
    monkeypatch.delenv("REM_ENV_HUB_ORG", raising=False)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout"))
    return save_pretrained(model, tmp_path_factory.mktemp("models") / "breakout")


@pytest.fixture
def no_dreaming(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails a test whose command starts dreaming: its error had to come before."""

    def dreamed(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the dream ran before the error was found")

    monkeypatch.setattr("rem_env.cli.roll_dream", dreamed)


def one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped rem-env")


# ------------------------------------------------------------------------- rem-env options


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--fps", "0"], "--fps must be a positive integer, got 0"),
        (["--seed", "-1"], "--seed must be in [0, 2**63 - 1], got -1"),
        (
            ["--num-envs", "3", "--seed", str(2**63 - 1)],
            f"--seed must be in [0, 2**63 - 3] (env i dreams with seed + i), got {2**63 - 1}",
        ),
        (["--temperature", "inf"], "--temperature must be a finite number >= 0, got inf"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--event-temperature", "-0.5"], "--event-temperature must be a finite number >= 0"),
        (["--device", "cuda:99"], "available here: cpu"),
        (["--num-envs", str(10**9)], "num_envs=1,000,000,000 needs at least"),
    ],
)
def test_dream_options_are_checked_up_front(
    extra: list[str],
    fragment: str,
    model_folder: Path,
    tmp_path: Path,
    no_dreaming: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "dream.gif"
    assert run([*DREAM, "--model", str(model_folder), "--out", str(out), *extra]) == 2
    one_line_error(capsys, "rem-env dream: error: ", fragment)
    assert not out.exists()


def test_unwritable_dream_out_is_refused_before_dreaming(
    model_folder: Path, tmp_path: Path, no_dreaming: None, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "videos" / "dream.gif"
    assert run([*DREAM, "--model", str(model_folder), "--out", str(out)]) == 2
    one_line_error(capsys, f"cannot write --out {out}: {blocker} is a file, not a folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_where_nothing_can_be_made_is_refused_before_dreaming(
    model_folder: Path, no_dreaming: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # /proc takes no new files, even from root (a read-only folder would not stop root)
    out = Path("/proc/rem-env-test/d.gif")
    assert run([*DREAM, "--model", str(model_folder), "--out", str(out)]) == 2
    one_line_error(capsys, "cannot write --out", "/proc")


# ------------------------------------------------------------------------------ Ctrl-C


def interrupt(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_in_dream_exits_130_quietly(
    model_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("rem_env.cli.roll_dream", interrupt)
    out = tmp_path / "dream.gif"
    assert run([*DREAM, "--model", str(model_folder), "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "rem-env dream: interrupted"


def test_ctrl_c_in_fidelity_exits_130_quietly(
    model_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("rem_env.fidelity.run_fidelity", interrupt)
    argv = ["fidelity", "REM-Breakout-v0", "--model", str(model_folder)]
    assert run([*argv, "--out", str(tmp_path / "fid")]) == 130
    assert capsys.readouterr().err.strip() == "rem-env fidelity: interrupted"


def test_ctrl_c_in_play_exits_130_quietly(
    model_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setattr("rem_env.play.run", interrupt)
    assert run(["play", "REM-Breakout-v0", "--model", str(model_folder)]) == 130
    assert capsys.readouterr().err.strip() == "rem-env play: interrupted"


# ------------------------------------------------------------------------------ play


@pytest.fixture
def no_display(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Linux session without X11 or Wayland, and no SDL video driver chosen by the user."""
    pytest.importorskip("pygame")
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")


def test_play_without_a_display_refuses_instead_of_playing_unseen(
    no_display: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["play", "REM-Breakout-v0", "--random-weights", "tiny", "--device", "cpu"]
    assert run([*argv, "--max-steps", "2", "--fps", "1000"]) == 2
    one_line_error(capsys, "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)", "dream")


def test_play_refuses_sdl_falling_back_to_a_driver_that_draws_nowhere(
    model_folder: Path,
    no_display: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pygame

    pygame.quit()
    monkeypatch.setenv("DISPLAY", ":987654")  # named, but no X server behind it
    argv = ["play", "REM-Breakout-v0", "--model", str(model_folder), "--device", "cpu"]
    assert run([*argv, "--max-steps", "2", "--fps", "1000"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if "cannot open a game window" in err:  # an SDL that refuses the display instead
        return
    assert "no display could be opened (SDL fell back to its" in err, err
    assert "'offscreen'" in err or "'dummy'" in err


# --------------------------------------------------------------------------- SB3 agents


def test_sb3_policy_of_another_vocabulary_is_refused(
    model_folder: Path, tmp_path: Path, no_dreaming: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from stable_baselines3 import A2C

    from rem_env import DreamVectorEnv
    from rem_env.sb3 import SB3DreamVecEnv

    config = REMConfig.preset("tiny", num_actions=4, game="Breakout")
    config = dataclasses.replace(
        config, tokenizer=dataclasses.replace(config.tokenizer, vocab_size=32)
    )  # same 16 tokens per frame, twice the codes
    other = SB3DreamVecEnv(DreamVectorEnv(REMModel(config), 2, obs_type="tokens"))
    A2C("MlpPolicy", other, n_steps=2, device="cpu").learn(4).save(tmp_path / "other.zip")
    argv = [*DREAM, "--model", str(model_folder), "--out", str(tmp_path / "x.gif")]
    assert run([*argv, "--agent", str(tmp_path / "other.zip")]) == 2
    one_line_error(
        capsys,
        "was trained on token ids in [0, 31], but this model's dream has token ids in [0, 15] "
        "(a vocabulary of 16 codes)",
    )


# --------------------------------------------------------------------------- model card


def test_model_card_figures_are_rounded() -> None:
    manifest = ProtocolManifest(
        "Breakout",
        evaluation=Evaluation(
            mean_return=2.625, human_normalized_score=-0.041666666666666664, episodes=8
        ),
    )
    card = render_model_card(REMConfig.preset("tiny", 4, "Breakout"), manifest, None)
    assert "| human-normalised score | -0.042 |" in card
    assert "| mean return | 2.625 |" in card and "| evaluation episodes | 8 |" in card
    assert "0.0416666" not in card


# ------------------------------------------------------------------------------ rem-train

SMOKE = ["--preset", "smoke", "--epochs", "1", "--common.progress-bars", "false"]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails a test whose rem-train starts a run: its error had to come first."""

    def trained(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the run started before the error was found")

    monkeypatch.setattr("rem_train.cli.Trainer", trained)


def train(argv: list[str]) -> int:
    from rem_train.cli import main as train_main

    try:
        return train_main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped rem-train")


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_rem_train_out_that_is_a_file_is_a_clear_error(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "run"
    assert train([*SMOKE, "--out", str(out)]) == 2
    message = "is a file, not a run folder" if where == "file" else "Not a directory"
    one_line_error(capsys, "rem-train: error: ", message, "choose another --out")


@pytest.mark.parametrize("kind", ["file", "non-empty-folder", "under-a-file"])
def test_rem_train_export_is_checked_before_training(
    kind: str, tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export"
    if kind == "file":
        export.write_text("x")
        fragment = "is a file; name a folder"
    elif kind == "non-empty-folder":
        export.mkdir()
        (export / "notes.txt").write_text("x")
        fragment = "is a non-empty folder that holds no saved model"
    else:
        (tmp_path / "blocker").write_text("x")
        export = tmp_path / "blocker" / "export"
        fragment = f"{tmp_path / 'blocker'} is a file, not a folder"
    assert train([*SMOKE, "--out", str(tmp_path / "run"), "--export", str(export)]) == 2
    one_line_error(capsys, "rem-train: error: ", fragment)
    assert not (tmp_path / "run").exists()


def test_rem_train_export_may_not_replace_the_run(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert train([*SMOKE, "--out", str(run_dir), "--export", str(tmp_path)]) == 2
    one_line_error(capsys, "holds the run folder")


def test_rem_train_ctrl_c_before_training_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("rem_train.cli.Trainer", interrupt)
    assert train([*SMOKE, "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == "rem-train: interrupted"
