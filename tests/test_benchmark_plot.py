"""The benchmark chart script (benchmarks/plot.py) on small synthetic results."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from benchmark_scripts import load_benchmark
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "plot.py"


@pytest.fixture(scope="module")
def plot() -> ModuleType:
    """benchmarks/plot.py imported as a module (benchmarks/ is not a package)."""
    return load_benchmark("plot")


def write(path: Path, metadata: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"metadata": metadata, "records": records}))
    return path


def imagination_json(path: Path) -> Path:
    """Results in the layout benchmarks/imagination.py writes: 2 batch sizes x 2 paths x 2 modes."""
    metadata = {"device": "cpu", "device_name": "Test CPU", "torch_version": "2.0", "threads": 2}
    metadata |= {"preset": "tiny", "date": "2026-01-01T00:00:00+00:00", "git_revision": "abc123"}
    records = [
        {
            "device": "cpu",
            "preset": "tiny",
            "batch_size": batch,
            "path": path_,
            "mode": mode,
            "env_steps_per_s": batch * (40.0 if path_ == "pop" else 5.0) / (1 + (mode == "rgb")),
            "ms_per_step": 10.0,
            "steps_timed": 3,
        }
        for batch in (1, 16)
        for path_ in ("pop", "token")
        for mode in ("tokens", "rgb")
    ]
    return write(path, metadata, records)


def dream_env_json(path: Path, with_ale: bool = True) -> Path:
    """Results in the layout benchmarks/dream_env.py writes, with or without the ALE rows."""
    metadata = {"torch_version": "2.0", "threads": 1, "cpu_count": 2, "device": "cpu"}
    metadata |= {"preset": "tiny", "command": ["--preset", "tiny"], "time": "2026-01-01T00:00"}
    cells = [("dream", obs) for obs in ("rgb", "tokens", "latent")]
    cells += [("ale", "grayscale 84x84 x4")] if with_ale else []
    records = [
        {
            "env": env,
            "num_envs": n,
            "obs_type": obs,
            "steps_timed": 3,
            "seconds": 0.1,
            "env_steps_per_s": n * (3000.0 if env == "ale" else 50.0),
            "ms_per_step": 1.0,
            "device": "cpu",
            "preset": "tiny" if env == "dream" else "-",
        }
        for n in (1, 2, 4)
        for env, obs in cells
    ]
    return write(path, metadata, records)


@pytest.mark.parametrize("with_ale", [True, False])
def test_main_writes_both_charts(plot: ModuleType, tmp_path: Path, with_ale: bool) -> None:
    imagination = imagination_json(tmp_path / "imagination.json")
    dream_env = dream_env_json(tmp_path / "dream_env.json", with_ale)
    out = tmp_path / "charts"
    argv = ["--imagination-json", str(imagination), "--dream-env-json", str(dream_env)]
    assert plot.main([*argv, "--out-dir", str(out)]) == 0
    for name in (plot.IMAGINATION_PNG, plot.DREAM_ENV_PNG):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == plot.SIZE
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or ()) > 10  # not blank


def test_charts_have_one_line_per_series(plot: ModuleType, tmp_path: Path) -> None:
    meta, records = plot.load_results(
        imagination_json(tmp_path / "i.json"), "batch_size", plot.IMAGINATION_KEYS
    )
    chart = plot.imagination_chart(meta, records, "i.json")
    labels = [s.label for s in chart.series]
    assert labels == ["POP tokens", "POP rgb", "token-by-token tokens", "token-by-token rgb"]
    assert all(s.points == ((1.0, s.points[0][1]), (16.0, s.points[1][1])) for s in chart.series)
    assert "Test CPU" in chart.subtitle and "torch 2.0" in chart.subtitle
    meta, records = plot.load_results(
        dream_env_json(tmp_path / "d.json"), "num_envs", plot.DREAM_ENV_KEYS
    )
    chart = plot.dream_env_chart(meta, records, "d.json")
    assert [s.label for s in chart.series][-1] == "real ALE Breakout-v5 vector env"
    assert len(chart.series) == 4 and all(len(s.points) == 3 for s in chart.series)


def test_missing_input_is_a_clear_error(plot: ModuleType, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    argv = ["--imagination-json", str(missing), "--dream-env-json", str(missing)]
    with pytest.raises(SystemExit) as exit_info:
        plot.main([*argv, "--out-dir", str(tmp_path / "charts")])
    assert isinstance(exit_info.value.code, str)  # printed to stderr, exit status 1
    assert "nope.json not found" in exit_info.value.code
    assert not (tmp_path / "charts").exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{", "not valid JSON"),
        ('{"metadata": {}}', "no 'records' list"),
        ('{"records": [{"num_envs": 1, "env": "dream", "obs_type": "rgb"}]}', "lacks"),
        (
            '{"records": [{"num_envs": 0, "env": "dream", "obs_type": "rgb", '
            '"env_steps_per_s": 1}]}',
            "num_envs=0, not a positive number",
        ),
    ],
)
def test_malformed_input_is_a_clear_error(
    plot: ModuleType, tmp_path: Path, payload: str, message: str
) -> None:
    bad = tmp_path / "dream_env.json"
    bad.write_text(payload)
    imagination = imagination_json(tmp_path / "imagination.json")
    argv = ["--imagination-json", str(imagination), "--dream-env-json", str(bad)]
    with pytest.raises(SystemExit, match=message):
        plot.main([*argv, "--out-dir", str(tmp_path)])
