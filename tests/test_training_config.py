"""TrainConfig presets against REM_SPEC 7 and 8, round trips, the CLI and its clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rem_train.checkpoint import prepare_run_dir
from rem_train.cli import build_config, main, parser
from rem_train.config import TrainConfig
from rem_train.evaluate import human_normalized_score


def test_atari100k_preset_is_the_paper_schedule() -> None:
    cfg = TrainConfig.from_preset("atari100k", "Breakout")
    c, col, tok, wm, ac, ev = (
        cfg.common,
        cfg.collect,
        cfg.tokenizer,
        cfg.world_model,
        cfg.actor_critic,
        cfg.evaluation,
    )
    assert (c.epochs, c.collect_epochs, c.env_steps_per_epoch, c.seed) == (600, 500, 200, 1)
    assert c.collect_epochs * c.env_steps_per_epoch == 100_000
    assert (c.checkpoint_every, c.eval_every, c.eval_start_epoch) == (50, 10, 5)
    assert (col.temperature, col.epsilon) == (1.0, 0.01)
    assert (tok.start_after_epoch, tok.steps_per_epoch, tok.batch_size) == (5, 200, 128)
    assert (tok.lr, tok.weight_decay, tok.grad_clip, tok.beta) == (1e-4, 0.01, 10.0, 1.0)
    assert (wm.start_after_epoch, wm.steps_per_epoch, wm.batch_size, wm.segment_length) == (
        25,
        200,
        64,
        10,
    )
    assert (wm.lr, wm.weight_decay, wm.grad_clip) == (2e-4, 0.05, 100.0)
    assert (ac.start_after_epoch, ac.steps_per_epoch, ac.batch_size) == (50, 100, 128)
    assert (ac.burn_in, ac.horizon, cfg.imagined_steps, ac.hidden_size) == (20, 10, 9, 512)
    assert (ac.lr, ac.weight_decay, ac.grad_clip) == (1e-4, 0.01, 3.0)
    assert (ac.gamma, ac.lambda_, ac.entropy_weight) == (0.995, 0.95, 0.001)
    assert ac.burn_in_actions is True  # the intended behaviour (REM_SPEC 11.1)
    assert (ev.temperature, ev.num_envs, ev.episodes, ev.final_episodes) == (0.5, 8, 16, 100)
    model = cfg.model_config()
    assert model.tokenizer.tokens_per_frame == 64 and model.world_model.num_layers == 5
    assert model.num_actions == 4 and model.game == "Breakout"


def test_smoke_preset_runs_every_phase_at_least_twice() -> None:
    cfg = TrainConfig.from_preset("smoke")
    for phase in (cfg.tokenizer, cfg.world_model, cfg.actor_critic):
        assert cfg.common.epochs - phase.start_after_epoch >= 2
    assert cfg.model_config().tokenizer.image_size == 64


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = TrainConfig.from_preset("smoke", "Pong")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    data = cfg.to_dict()
    data["world_model"]["lr_typo"] = 1.0
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"game": "Tetris"}, "unknown game 'Tetris'"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"model": "giant"}, "unknown model sizes"),
    ],
)
def test_bad_top_level_values(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_unknown_preset_and_bad_numbers() -> None:
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        TrainConfig.from_preset("fast")
    with pytest.raises(ValueError, match=r"world_model\.lr must be positive"):
        build_config({"preset": "smoke", "world_model.lr": 0.0})
    with pytest.raises(ValueError, match=r"collect\.epsilon"):
        build_config({"collect.epsilon": 1.5})
    # the object check may be turned off (0), not given a negative count
    assert build_config({"evaluation.object_segments": 0}).evaluation.object_segments == 0
    with pytest.raises(ValueError, match=r"evaluation\.object_segments must be >= 0"):
        build_config({"evaluation.object_segments": -1})
    assert build_config({"evaluation.event_segments": 0}).evaluation.event_segments == 0
    with pytest.raises(ValueError, match=r"evaluation\.event_segments must be >= 0"):
        build_config({"evaluation.event_segments": -1})
    assert build_config({"world_model.moving_from": "context"}).world_model.moving_from == (
        "context"
    )
    with pytest.raises(ValueError, match=r"world_model\.moving_from must be one of target, con"):
        build_config({"world_model.moving_from": "next"})


def test_the_actor_critic_may_dream_argmax_frames_with_warm_events() -> None:
    argv = ["--preset", "smoke", "--actor-critic.dream-temperature", "0",
            "--actor-critic.dream-event-temperature", "1"]  # fmt: skip
    ac = build_config(vars(parser().parse_args(argv))).actor_critic
    assert (ac.dream_temperature, ac.dream_event_temperature) == (0.0, 1.0)
    assert TrainConfig.from_preset("smoke").actor_critic.dream_event_temperature is None
    with pytest.raises(ValueError, match=r"actor_critic\.dream_event_temperature must be >= 0"):
        build_config({"actor_critic.dream_event_temperature": -1.0})


@pytest.mark.parametrize(
    "field",
    ["actor_critic.dream_temperature", "world_model.dreamed_obs_weight", "world_model.lr"],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_number_that_is_not_finite_is_refused_when_the_run_is_configured(
    field: str, value: float
) -> None:
    """NaN or infinity fails at once, not at the first step of the phase that uses it (the
    actor-critic's dream env is made hours into a run) or as a NaN loss."""
    with pytest.raises(ValueError, match=rf"{re.escape(field)} must be a finite number"):
        build_config({"preset": "smoke", field: value})


def test_cli_overrides_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    args = vars(
        parser().parse_args(
            ["--preset", "smoke", "--epochs", "7", "--world-model.lr", "3e-4", "--seed", "5"]
        )
    )
    cfg = build_config(args)
    assert (cfg.common.epochs, cfg.world_model.lr, cfg.common.seed, cfg.preset) == (
        7,
        3e-4,
        5,
        "smoke",
    )
    cfg = build_config(vars(parser().parse_args(["--evaluation.max-raw-frames", "none"])))
    assert cfg.evaluation.max_raw_frames is None
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--actor-critic.burn-in-actions" in text and "published REM" in text
    assert "gradient-norm clip (default: 100.0)" in text


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--preset", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["--game", "Tetris", "--out", str(tmp_path / "a")]) == 2
    assert "unknown game 'Tetris'" in capsys.readouterr().err
    assert main(["--preset", "smoke"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path / "missing")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_run_folder_rules(tmp_path: Path) -> None:
    smoke = TrainConfig.from_preset("smoke")
    run = prepare_run_dir(tmp_path / "run", smoke, resume=False)
    assert (run / "config.json").is_file()
    with pytest.raises(ValueError, match="already holds this run; pass --resume"):
        prepare_run_dir(run, smoke, resume=False)
    other = build_config({"preset": "smoke", "seed": 2})
    with pytest.raises(ValueError, match=r"different run \(differs in common.seed\)"):
        prepare_run_dir(run, other, resume=False)
    with pytest.raises(ValueError, match="different config"):
        prepare_run_dir(run, other, resume=True)
    assert prepare_run_dir(run, build_config({"preset": "smoke", "device": "meta"}), True) == run
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="non-empty folder that holds no run"):
        prepare_run_dir(tmp_path / "junk", smoke, resume=False)


def test_cli_refuses_resume_with_another_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare_run_dir(tmp_path / "run", TrainConfig.from_preset("smoke"), resume=False)
    assert main(["--resume", str(tmp_path / "run"), "--seed", "3"]) == 2
    assert "different config (differs in common.seed)" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--out", str(tmp_path / "run")]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_human_normalized_score() -> None:
    assert human_normalized_score("Breakout", 1.7) == 0.0
    assert human_normalized_score("Pong", 14.6) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no random/human scores"):
        human_normalized_score("Tetris", 0.0)
