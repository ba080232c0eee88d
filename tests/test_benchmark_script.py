"""Smoke test of the imagination benchmark script (benchmarks/imagination.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "imagination.py"
BATCH_SIZES = (1, 2)


def test_tiny_run_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--preset",
        "tiny",
        "--batch-sizes",
        *map(str, BATCH_SIZES),
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr

    assert "| batch size |" in result.stdout
    assert "threads:" in result.stdout
    for batch_size in BATCH_SIZES:
        assert f"\n| {batch_size} |" in result.stdout

    payload = json.loads(out.read_text())
    assert payload["metadata"]["torch_version"]
    assert payload["metadata"]["pop_flops_per_env_step"] > 0
    records = payload["records"]
    keys = {(r["batch_size"], r["path"], r["mode"]) for r in records}
    expected = {(b, p, m) for b in BATCH_SIZES for p in ("pop", "token") for m in ("tokens", "rgb")}
    assert len(records) == len(expected) == 8
    assert keys == expected
    for record in records:
        assert record["env_steps_per_s"] > 0
        assert record["ms_per_step"] > 0
        assert record["steps_timed"] == 2
        assert record["device"] == "cpu"
        assert record["preset"] == "tiny"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_request_without_cuda_fails_cleanly() -> None:
    command = [sys.executable, str(SCRIPT), "--device", "cuda", "--preset", "tiny"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "cuda" in result.stderr.lower()
