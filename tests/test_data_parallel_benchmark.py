"""The loss-curve comparison script (benchmarks/data_parallel.py) on hand-written run logs."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from benchmark_scripts import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_parallel.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """benchmarks/data_parallel.py imported as a module (benchmarks/ is not a package)."""
    return load_benchmark("data_parallel")


def _run(folder: Path, ranks: int, tokenizer_steps: list[float]) -> Path:
    folder.mkdir()
    records = [
        {"epoch": 1, "collect": {"steps": 10}, "timings": {"collect": 0.1}, "ranks": ranks},
        {
            "epoch": 2,
            "tokenizer": {"total": 0.0, "steps": tokenizer_steps},
            "timings": {"tokenizer": 2.0 / ranks},
            "ranks": ranks,
        },
    ]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


def test_table_gives_means_and_relative_differences(script: ModuleType, tmp_path: Path) -> None:
    one = script.curves(_run(tmp_path / "one", 1, [1.0, 3.0]))  # mean 2.0
    two = script.curves(_run(tmp_path / "two", 2, [2.0, 2.2]))  # mean 2.1
    other = script.curves(_run(tmp_path / "other", 1, [1.0, 2.0]))  # mean 1.5
    assert set(one) == {1, 2} and "tokenizer" not in one[1] and two[2]["ranks"] == 2
    rows = script.table(one, two, other, ranks=2).splitlines()
    assert len(rows) == 3  # header, rule, the one epoch that trained
    assert rows[2] == "| 2 | tokenizer | 2.00000 | 2.10000 | 5.00e-02 | 2.50e-01 | 2.0 | 1.0 |"


def test_fewer_than_two_ranks_is_refused(script: ModuleType) -> None:
    with pytest.raises(SystemExit):
        script.parse_args(["--ranks", "1"])
