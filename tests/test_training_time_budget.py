"""rem-train --max-minutes: a time budget that stops at an epoch boundary and exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rem_env import REMModel
from rem_train.cli import main
from rem_train.run_log import read_metrics

FAST = [
    "--preset",
    "smoke",
    "--common.env-steps-per-epoch",
    "30",
    "--common.progress-bars",
    "false",
]


def test_a_spent_budget_stops_after_the_epoch_exports_and_resume_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, model = tmp_path / "run", tmp_path / "model"
    # a budget already spent when the first epoch ends: one epoch, then the export
    assert main([*FAST, "--out", str(run), "--export", str(model), "--max-minutes", "1e-6"]) == 0
    assert "time budget of 1e-06 min reached after epoch 1 of 5" in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert json.loads((model / "training.json").read_text())["epochs"] == 1
    REMModel.from_pretrained(model)  # a whole model folder
    assert json.loads((run / "config.json").read_text())["common"]["epochs"] == 5  # unchanged
    # the budget belongs to the process, not to the run: --resume takes another one
    assert main(["--resume", str(run), "--max-minutes", "1e-6"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert "max_minutes" not in (run / "config.json").read_text()


def test_a_budget_must_not_be_negative(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*FAST, "--out", str(tmp_path / "run"), "--max-minutes", "-1"]) == 2
    assert "--max-minutes must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_zero_budget_exports_a_run_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, model = tmp_path / "run", tmp_path / "model"
    # a new run has nothing to export: refused before a folder is made
    assert main([*FAST, "--out", str(run), "--max-minutes", "0"]) == 2
    assert "give the run with --resume" in capsys.readouterr().err
    assert not run.exists()
    assert main([*FAST, "--out", str(run), "--max-minutes", "1e-6"]) == 0
    before = (run / "checkpoints" / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["--resume", str(run), "--export", str(model), "--max-minutes", "0"]) == 0
    assert "exporting the model of epoch 1 as it is, training nothing" in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(run)] == [1]  # no epoch trained
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == before
    assert json.loads((model / "training.json").read_text())["epochs"] == 1
    REMModel.from_pretrained(model)
