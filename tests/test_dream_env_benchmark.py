"""Smoke test of the dream env benchmark script (benchmarks/dream_env.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmark_scripts import load_benchmark
from hang_guard import HANG_GUARD_S

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dream_env.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs the script with ``args`` (a hang fails the test; load cannot)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


def test_tiny_run_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = _run("--preset", "tiny", "--num-envs", "1", "2", "--steps", "2", "--warmup", "1",
                  "--threads", "1", "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| N | dream rgb" in result.stdout and "ALE Breakout" in result.stdout
    assert "\n| 1 |" in result.stdout and "\n| 2 |" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["metadata"]["ale_py_version"]
    records = payload["records"]
    kinds = {(r["env"], r["num_envs"], r["obs_type"]) for r in records}
    assert len(records) == len(kinds) == 8  # 2 sizes x (3 obs types + ALE)
    assert all(r["env_steps_per_s"] > 0 and r["steps_timed"] == 2 for r in records)


def test_int8_and_bf16_cells_are_measured_beside_the_float_ones(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = _run("--preset", "tiny", "--num-envs", "2", "--no-ale", "--steps", "2",
                  "--obs-types", "tokens", "--quantize", "none", "int8", "--autocast", "bf16",
                  "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "| N | dream tokens (env-steps/s) | dream tokens int8 (env-steps/s) "
        "| dream tokens bf16 (env-steps/s) |" in result.stdout
    )
    records = json.loads(out.read_text())["records"]
    assert sorted((r["quantize"], r["autocast"]) for r in records) == [
        ("int8", "none"),
        ("none", "bf16"),
        ("none", "none"),
    ]


def test_neighbour_run_measures_quiet_then_busy(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = _run("--preset", "tiny", "--num-envs", "2", "--no-ale", "--steps", "2",
                  "--obs-types", "tokens", "--neighbour", "--step-threads", "1",
                  "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| env | N | obs | quiet (env-steps/s) | busy neighbour (env-steps/s) |" in result.stdout
    assert "\n| dream | 2 | tokens | " in result.stdout
    payload = json.loads(out.read_text())
    assert [r["neighbour"] for r in payload["records"]] == [False, True]
    assert payload["metadata"]["step_threads"] == 1


def test_step_threads_default_to_the_env_s_own() -> None:
    module = load_benchmark("dream_env")
    assert module.parse_args([]).step_threads is None
    assert module.parse_args(["--step-threads", "auto"]).step_threads == "auto"
    assert module.parse_args(["--step-threads", "2"]).step_threads == 2


def test_never_end_stops_the_random_model_ending_dreams() -> None:

    import numpy as np
    import torch

    from rem_env import DreamVectorEnv, REMConfig, REMModel

    module = load_benchmark("dream_env")
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4))
    ends = []
    for fix in (False, True):
        if fix:
            module.never_end(model)
        envs = DreamVectorEnv(model, 16, obs_type="tokens")
        envs.reset(seed=0)
        ended = 0
        for _ in range(5):
            _, _, terminated, _, _ = envs.step(np.zeros(16, dtype=np.int64))
            ended += int(terminated.sum())
        envs.close()
        ends.append(ended)
    assert ends[0] > 0 and ends[1] == 0
