"""The sweep helper: aggregates on hand-worked numbers, run planning, a real 2 x 2 smoke sweep."""

from __future__ import annotations

import io
import json
import re
import shlex
import time
from pathlib import Path

import pytest

from rem_train.cli import build_config
from rem_train.cli import parser as train_parser
from rem_train.sweep import (
    _command,
    aggregate,
    interquartile_mean,
    main,
    parser,
    plan_runs,
    read_final_score,
    run_sweep,
)

ROOT = Path(__file__).resolve().parents[1]

# Few steps per phase and short episodes: each run takes about 6 s on one CPU core.
FAST = [
    "--epochs", "2", "--common.env-steps-per-epoch", "30", "--tokenizer.steps-per-epoch", "2",
    "--evaluation.max-raw-frames", "200",
]  # fmt: skip


def test_aggregates_on_hand_worked_scores() -> None:
    # Human-normalised (random, human): Breakout (1.7, 30.5) -> 0, 1, 3; Pong (-20.7, 14.6)
    # -> 0.5, 0, 1; Boxing (0.1, 12.1) -> 0, 0, 0.
    scores = {
        "Breakout": [1.7, 30.5, 88.1],
        "Pong": [-3.05, -20.7, 14.6],
        "Boxing": [0.1, 0.1, 0.1],
    }
    agg = aggregate(scores)
    assert agg.mean == pytest.approx(5.5 / 9)  # (0+1+3 + .5+0+1 + 0) / 9
    assert agg.median == pytest.approx(0.5)  # per-game means 4/3, 1/2, 0
    # sorted 0 0 0 0 0 .5 1 1 3: cut floor(9/4) = 2 from each end -> 0 0 0 .5 1
    assert agg.iqm == pytest.approx(1.5 / 5)
    # max(1 - x, 0): 1 0 0 | .5 1 0 | 1 1 1 -> 5.5 / 9
    assert agg.optimality_gap == pytest.approx(5.5 / 9)
    assert (agg.superhuman, agg.runs_per_game, agg.num_games) == (1, 3, 3)


def test_interquartile_mean_cuts_a_quarter_from_each_end() -> None:
    assert interquartile_mean([5.0]) == 5.0
    assert interquartile_mean([4.0, 0.0, 1.0, 2.0]) == pytest.approx(1.5)  # drops 0 and 4
    assert interquartile_mean([0.0, 1.0, 2.0, 3.0, 100.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no values"):
        interquartile_mean([])


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ({}, "no scores"),
        ({"Breakout": [1.0], "Pong": [1.0, 2.0]}, "same"),
        ({"Breakout": []}, "same"),
        ({"NotAGame": [1.0]}, "no random/human"),
    ],
)
def test_aggregate_rejects_bad_input(scores: dict[str, list[float]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        aggregate(scores)


def test_plan_runs_round_robin(tmp_path: Path) -> None:
    runs = plan_runs(["Breakout", "Pong"], [0, 1, 2], ["cuda:0", "cuda:1"], tmp_path)
    assert [(r.game, r.seed, r.device) for r in runs] == [
        ("Breakout", 0, "cuda:0"), ("Breakout", 1, "cuda:1"), ("Breakout", 2, "cuda:0"),
        ("Pong", 0, "cuda:1"), ("Pong", 1, "cuda:0"), ("Pong", 2, "cuda:1"),
    ]  # fmt: skip
    assert len({r.run_dir for r in runs}) == 6 and runs[0].run_dir.parent == tmp_path / "runs"
    with pytest.raises(ValueError, match="unknown games"):
        plan_runs(["Tetris"], [0], ["cpu"], tmp_path)
    with pytest.raises(ValueError, match="repeat"):
        plan_runs(["Pong"], [0, 0], ["cpu"], tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        plan_runs(["Pong"], [0], [], tmp_path)


def test_run_sweep_rejects_options_it_sets(tmp_path: Path) -> None:
    runs = plan_runs(["Pong"], [0], ["cpu"], tmp_path)
    with pytest.raises(ValueError, match="--seed"):
        run_sweep(runs, "smoke", ["--seed", "3"])
    with pytest.raises(ValueError, match="parallel"):
        run_sweep(runs, "smoke", parallel=0)


def test_failed_run_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--games", "Pong", "--seeds", "0", "--preset", "smoke", "--out", str(tmp_path)]
    assert main([*argv, "--devices", "cpu", "--", "--epochs", "0"]) == 1
    assert "failed: Pong seed 0" in capsys.readouterr().err
    assert "epochs must be positive" in (tmp_path / "logs" / "Pong-seed0.log").read_text()
    assert not (tmp_path / "scores.json").exists()


def test_smoke_sweep_two_games_two_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    argv = ["--games", "Breakout", "Pong", "--seeds", "0", "1", "--preset", "smoke"]
    argv += ["--out", str(out), "--devices", "cpu", "--parallel", "2", "--", *FAST]
    start = time.perf_counter()
    assert main(argv) == 0, capsys.readouterr()
    elapsed = time.perf_counter() - start
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores) == ["Breakout", "Pong"] and all(len(v) == 2 for v in scores.values())
    for game, runs in scores.items():
        for seed, score in zip([0, 1], runs, strict=True):
            run_dir = out / "runs" / f"{game}-seed{seed}"
            assert score == read_final_score(run_dir)
            config = json.loads((run_dir / "config.json").read_text())
            assert (config["game"], config["common"]["seed"], config["preset"]) == (
                game, seed, "smoke",
            )  # fmt: skip
            assert config["common"]["epochs"] == 2
    saved = json.loads((out / "aggregates.json").read_text())
    agg = aggregate(scores)
    assert saved["iqm"] == pytest.approx(agg.iqm) and saved["mean"] == pytest.approx(agg.mean)
    assert saved["seeds"] == [0, 1] and set(saved["human_normalized"]) == {"Breakout", "Pong"}
    assert "IQM" in capsys.readouterr().out

    # The same command again finds every run finished and launches nothing.
    stream = io.StringIO()
    runs = plan_runs(["Breakout", "Pong"], [0, 1], ["cpu"], out)
    again = time.perf_counter()
    assert run_sweep(runs, "smoke", FAST, parallel=2, stream=stream) == []
    assert stream.getvalue().count("already finished") == 4
    assert time.perf_counter() - again < 5 < elapsed


def test_new_runs_start_and_started_runs_resume(tmp_path: Path) -> None:
    (run,) = plan_runs(["Pong"], [3], ["cuda:1"], tmp_path)
    command = _command(run, "smoke", ["--epochs", "2"])
    assert command[1:3] == ["-m", "training"]
    args = vars(train_parser().parse_args(command[3:]))
    config = build_config(args)
    assert (config.game, config.common.seed, config.preset, config.device) == (
        "Pong", 3, "smoke", "cuda:1",
    )  # fmt: skip
    assert (args["out"], config.common.epochs, config.common.progress_bars) == (
        run.run_dir, 2, False,
    )  # fmt: skip
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.json").write_text("{}")  # a run that started, then stopped
    resumed = vars(train_parser().parse_args(_command(run, "smoke", ["--epochs", "2"])[3:]))
    assert resumed == {"resume": run.run_dir, "device": "cuda:1", "common.progress_bars": False}


def test_documented_sweep_commands_parse() -> None:
    text = (ROOT / "docs" / "training.md").read_text()
    prefix = "python -m rem_train.sweep "
    commands = [
        line.split(" #")[0].strip()[len(prefix) :]
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.startswith(prefix)
    ]
    assert len(commands) >= 2
    for command in commands:
        argv = shlex.split(command)
        split = argv.index("--") if "--" in argv else len(argv)
        parser().parse_args(argv[:split])
        train_parser().parse_args(argv[split + 1 :])
