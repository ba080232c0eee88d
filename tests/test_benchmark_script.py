"""Smoke test of the imagination benchmark script (benchmarks/imagination.py)."""

from __future__ import annotations

import importlib.util
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
    paths = ("pop", "int8", "token")
    expected = {(b, p, m) for b in BATCH_SIZES for p in paths for m in ("tokens", "rgb")}
    assert len(records) == len(expected) == 12
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


def test_peers_table_puts_measured_rows_beside_the_quoted_ones() -> None:
    spec = importlib.util.spec_from_file_location("benchmark_imagination", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    records = [
        module.Record("cpu", "paper", b, path, mode, 10.0 * b, 100.0, 3)
        for b in (1, 16, 64)
        for path in ("pop", "int8")
        for mode in ("tokens", "rgb")
    ]
    lines = module.peers_table(records).splitlines()
    assert lines[0] == "| imagined env-steps/s | B=1 | B=16 | B=64 |"
    assert "| REM code, POP, tokens only (quoted) | 43.2 | 95.5 | 100.3 |" in lines
    assert "| rem-env, POP int8, tokens only (measured) | 10.0 | 160.0 | 640.0 |" in lines
    assert "| rem-env, POP, + pixel decode (measured) | 10.0 | 160.0 | 640.0 |" in lines
    assert not any("token-by-token" in line and "rem-env" in line for line in lines)
