"""benchmarks/gpu_check.sh, the one-shot GPU measurement script, run as a CPU smoke test."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import torch
from hang_guard import HANG_GUARD_S

from rem_env import REMModel
from rem_train.config import TrainConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
SMOKE = {
    "DEVICE": "cpu",
    "PRESET": "tiny",
    "SIZES": "1 2",
    "STEPS": "1",
    "CELL_SECONDS": "5",
    "COMPILE_SIZES": "1",  # each size compiles anew; one shows that the step is captured
    "COMPILE_BACKEND": "eager",  # dynamo captures the step whole; no backend compiles it
    "BALL_OPTIONS": "",  # the GPU's batches and epochs would take minutes on a CPU
}


def bare_python(folder: Path) -> str:
    """A python that imports the installed packages but not this checkout's (no .pth files, so
    no editable install): what the script finds on a lent machine that starts bare."""
    site = ":".join(p for p in sys.path if p.endswith("site-packages"))
    wrapper = folder / "bare-python"
    path = f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site}"'
    wrapper.write_text(f'#!/bin/sh\n{path} exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def run(out: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, **settings}
    return subprocess.run(
        [str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


def unpack_ball(out: Path, into: Path) -> None:
    """Puts the Breakout run's tar parts together and unpacks them into ``into``."""
    joined = b"".join(p.read_bytes() for p in sorted(out.glob("ball.tar.part-*")))
    with tarfile.open(fileobj=io.BytesIO(joined)) as ball:
        ball.extractall(into, filter="data")


def test_smoke_run_writes_every_table_and_each_phase_timing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(
        out, **SMOKE, TRAIN_PRESET="smoke", TRAIN_EPOCHS="1", TRAIN_ENV_STEPS="60",
        TRAIN_STEPS="2", BALL_PRESET="smoke", BALL_INIT="", BALL_MINUTES="0.0001",
        PYTHON=bare_python(tmp_path),
    )  # fmt: skip
    log = (out / "log.txt").read_text()
    assert result.returncode == 0, log
    assert "failed=0" in log
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "ball.tar.part-aa",
        "compile.md",
        "data.tar",
        "device.txt",
        "dream_env.md",
        "imagination.md",
        "log.txt",
    ]  # within what a remote runner sends back (8 files of at most 16 MiB)
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
    with tarfile.open(out / "data.tar") as data:
        data.extractall(tmp_path / "data", filter="data")
    data = tmp_path / "data"
    assert "POP bf16 tokens" in (out / "imagination.md").read_text()
    assert "profile of 3 steps, B=2 POP bf16 rgb:" in log  # where the step's time goes
    assert (
        "| POP bf16 compiled tokens | POP bf16 compiled rgb |" in (out / "compile.md").read_text()
    )
    assert "dream rgb bf16" in (out / "dream_env.md").read_text()
    records = json.loads((data / "imagination.json").read_text())["records"]
    assert {r["path"] for r in records} == {"pop", "bf16"}
    assert {r["batch_size"] for r in records} == {1, 2}
    epochs = [json.loads(line) for line in (data / "train_metrics.jsonl").open()]
    assert [e["epoch"] for e in epochs] == [1]
    for epoch in epochs:
        assert set(epoch["timings"]) >= {"collect", "tokenizer", "world_model", "actor_critic"}
        for phase in ("tokenizer", "world_model", "actor_critic"):
            assert epoch[phase]["num_steps"] == 2, phase  # TRAIN_STEPS reached every phase
    # The Breakout run's export comes back whole: the parts put together give a model folder.
    unpack_ball(out, tmp_path / "ball")
    model = REMModel.from_pretrained(tmp_path / "ball" / "export")
    assert model.config.game == "Breakout"
    stopped = [json.loads(line) for line in (tmp_path / "ball" / "metrics.jsonl").open()]
    assert [e["epoch"] for e in stopped] == [1]  # the time budget ended it after one epoch
    assert "time budget of 0.0001 min reached after epoch 1" in log


def test_a_failing_step_is_logged_the_others_still_run_and_the_status_is_1(
    tmp_path: Path,
) -> None:
    device = "cpu" if torch.cuda.is_available() else "cuda"  # cuda fails here without a GPU
    bad = {**SMOKE, "DEVICE": device, "SKIP_TRAIN": "1", "BALL_MINUTES": "0"}
    if device == "cpu":
        bad["SIZES"] = bad["COMPILE_SIZES"] = "0"  # a batch size the benchmarks refuse
    result = run(tmp_path, **bad)
    log = (tmp_path / "log.txt").read_text()
    assert result.returncode == 1
    assert "== imagination: FAILED" in log and "== dream_env: FAILED" in log
    assert "== compile: FAILED" in log
    assert "== device: done" in log and "failed=1" in log


def test_the_breakout_run_keeps_the_frame_conv_of_its_init(tmp_path: Path) -> None:
    config = TrainConfig.from_preset("smoke", "Breakout")
    config = dataclasses.replace(
        config, world_model_frame_conv=1, world_model_frame_conv_events=True
    )
    REMModel(config.model_config()).save_pretrained(tmp_path / "init")
    out = tmp_path / "out"
    result = run(
        out, **SMOKE, SKIP_TRAIN="1", COMPILE_PATHS="", BALL_PRESET="smoke", BALL_LAYERS="",
        BALL_INIT=str(tmp_path / "init"), BALL_MINUTES="0.0001",
    )  # fmt: skip
    log = (out / "log.txt").read_text()
    assert result.returncode == 0, log
    unpack_ball(out, tmp_path / "ball")
    world_model = REMModel.from_pretrained(tmp_path / "ball" / "export").config.world_model
    assert world_model.frame_conv_layers == 1 and world_model.frame_conv_events


def test_the_breakout_run_starts_from_the_bundled_patch_model_in_its_shape(
    tmp_path: Path,
) -> None:
    """The default init, the bundled model: its patch tokenizer, frame conv and event window
    (not in REM) come from its config.json, so the warm start takes it whole."""
    out = tmp_path / "out"
    result = run(
        out, **SMOKE, SKIP_TRAIN="1", COMPILE_PATHS="", BALL_PRESET="smoke",
        BALL_MINUTES="0.0001", BALL_EPOCHS="1", PYTHON=bare_python(tmp_path),
        BALL_PARTS="tokenizer,world_model",  # the smoke preset's actor-critic is narrower
    )  # fmt: skip
    log = (out / "log.txt").read_text()
    assert result.returncode == 0, log
    unpack_ball(out, tmp_path / "ball")
    bundled = REMModel.from_pretrained(
        SCRIPT.parents[1] / "rem_env" / "weights" / "Breakout"
    ).config
    assert REMModel.from_pretrained(tmp_path / "ball" / "export").config == bundled


def test_the_gpu_options_of_the_breakout_run_are_valid_rem_train_options() -> None:
    from rem_train.cli import build_config, parser

    text = SCRIPT.read_text()
    options = re.search(r'^GPU_BALL_OPTIONS="([^"]*)"', text, re.MULTILINE)
    assert options is not None
    argv = ["--preset", "breakout", *options.group(1).split()]
    config = build_config(vars(parser().parse_args(argv)))
    assert (config.world_model.batch_size, config.world_model.start_after_epoch) == (128, 0)
    assert config.common.env_steps_per_epoch == 6000
    # the world-model loss the VQ-VAE model bundled before last trained with: without them its dream
    # fine-tuned on mostly scripted games all but stopped ending lives
    assert (config.world_model.end_weight, config.world_model.dreamed_heads_weight) == (3, 1)


def test_table_steps_past_the_time_budget_are_skipped_and_logged(tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = {**SMOKE, "SIZES": "1", "COMPILE_SIZES": "1 2", "BUDGET_SECONDS": "0"}
    result = run(out, **settings, BALL_MINUTES="0")
    log = (out / "log.txt").read_text()
    assert result.returncode == 0, log
    for name in ("imagination", "dream_env", "training", "compile B=1", "compile B=2"):
        assert f"== {name}: skipped, " in log
    assert "== imagination: done" not in log and not (out / "imagination.md").exists()


def test_a_table_step_runs_where_its_allowance_fits_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = {**SMOKE, "SIZES": "1", "BUDGET_SECONDS": "10000", "IMAGINATION_SECONDS": "1"}
    result = run(out, **settings, SKIP_TRAIN="1", COMPILE_PATHS="", BALL_MINUTES="0",
                 DREAM_ENV_SECONDS="100000")  # fmt: skip
    log = (out / "log.txt").read_text()
    assert result.returncode == 0, log
    assert "== imagination: done" in log and "== dream_env: skipped" in log
