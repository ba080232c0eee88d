"""`rem-env fidelity` without --seed plays and dreams the same way every time (seed 0)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rem_env.fidelity as fidelity
from rem_env.cli import main


@pytest.mark.parametrize("agent", ["scripted", "random"])
def test_same_command_same_real_games(agent: str, tmp_path, monkeypatch) -> None:
    played: list[list[np.ndarray]] = []
    record = fidelity.record_real_trajectories

    def recording(*args, **kwargs):
        trajectories = record(*args, **kwargs)
        played.append([t.actions for t in trajectories])
        return trajectories

    monkeypatch.setattr(fidelity, "record_real_trajectories", recording)
    reports = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        argv = ["fidelity", "REM-Breakout-v0", "--random-weights", "tiny", "--agent", agent,
                "--games", "1", "--horizon", "2", "--stride", "40", "--max-steps", "400",
                "--device", "cpu", "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        reports.append(json.loads((out / "fidelity.json").read_text()))
    first, second = played
    assert sum(len(a) for a in first) > 100  # enough steps that unseeded choices would differ
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert reports[0]["token_accuracy"] == reports[1]["token_accuracy"]  # the dreams too
    assert reports[0]["seed"] == 0
