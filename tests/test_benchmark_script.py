"""Smoke test of the imagination benchmark script (benchmarks/imagination.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_benchmark
from hang_guard import HANG_GUARD_S

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
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )
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
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )
    assert result.returncode == 2
    assert "cuda" in result.stderr.lower()


def test_neighbour_run_measures_quiet_then_busy_and_tabulates_both(tmp_path: Path) -> None:
    module = load_benchmark("imagination")
    out = tmp_path / "busy.json"
    argv = ["--preset", "tiny", "--batch-sizes", "2", "--steps", "1", "--warmup", "0"]
    argv += ["--paths", "pop", "--modes", "tokens", "--neighbour", "--step-threads", "1"]
    started: list[bool] = []
    real = module.busy_neighbour

    def recording(active: bool = True):
        started.append(active)
        return real(active)

    module.busy_neighbour = recording
    try:
        assert module.main([*argv, "--json", str(out)]) == 0
    finally:
        module.busy_neighbour = real
    assert started == [False, True]
    payload = json.loads(out.read_text())
    assert payload["metadata"]["neighbour"] == "both"
    assert payload["metadata"]["step_threads"] == 1
    assert payload["metadata"]["matmul_gflops"] > 0
    records = [module.Record(**r) for r in payload["records"]]
    assert [(r.neighbour, r.mode) for r in records] == [(False, "tokens"), (True, "tokens")]
    lines = module.neighbour_table(records).splitlines()
    assert lines[0].startswith("| batch size | path | mode | quiet (env-steps/s) | busy")
    assert lines[2].startswith("| 2 | POP | tokens | ") and lines[2].endswith("x |")
    table = module.markdown_table(records[:1], {2: 1e9}, matmul=100.0)
    assert table.splitlines()[0].endswith("| POP tokens GFLOP/s | share of matmul rate |")


@pytest.mark.parametrize(
    ("argv", "neighbour", "step_threads"),
    [
        ([], "off", "auto"),
        (["--neighbour"], "both", "auto"),
        (["--neighbour", "on", "--step-threads", "3"], "on", 3),
        (["--step-threads", "off"], "off", "off"),
    ],
)
def test_neighbour_and_thread_flags_parse(argv, neighbour, step_threads) -> None:
    args = load_benchmark("imagination").parse_args(["--preset", "tiny", *argv])
    assert (args.neighbour, args.step_threads, args.modes) == (
        neighbour,
        step_threads,
        ["tokens", "rgb"],
    )


@pytest.mark.parametrize("bad", [["--step-threads", "0"], ["--step-threads", "many"]])
def test_bad_step_threads_are_refused(bad) -> None:
    with pytest.raises(SystemExit):
        load_benchmark("imagination").parse_args(bad)


def test_busy_neighbour_spins_inside_the_block_and_stops_after() -> None:
    neighbour = load_benchmark("imagination").busy_neighbour
    with neighbour(False) as nothing:
        assert nothing is None
    with pytest.raises(KeyboardInterrupt), neighbour() as process:
        assert process is not None and process.poll() is None  # running
        raise KeyboardInterrupt
    assert process.poll() is not None  # stopped, also when the block failed


def test_pop_flops_count_the_step_s_products() -> None:
    from rem_env import REMConfig

    module = load_benchmark("imagination")
    config = REMConfig.preset("paper", num_actions=4)
    one, many = module.pop_step_flops(config, 1), module.pop_step_flops(config, 64)
    assert 1.0e9 < many < one < 1.3e9  # ~1.2 GFLOP; a batch shares the prediction tokens


def test_cpu_description_names_family_model_and_int8_features(tmp_path: Path) -> None:
    module = load_benchmark("imagination")
    cpuinfo = tmp_path / "cpuinfo"
    block = (
        "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
        "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni sha_ni\n\n"
    )
    cpuinfo.write_text(block.format(n=0) + block.format(n=1).replace("26", "25"))
    assert module.cpu_model(cpuinfo) == "AMD EPYC (cpu family 26, model 2)"
    assert module.cpu_int8_features(cpuinfo) == ["avx2", "avx512f", "avx512_vnni"]
    assert module.cpu_model(tmp_path / "missing") is None
    assert module.cpu_int8_features(tmp_path / "missing") == []
    meta = {
        "device": "cpu",
        "device_name": "AMD EPYC",
        "torch_version": "2.13",
        "threads": 2,
        "preset": "paper",
        "pop_flops_per_env_step": 1e9,
        "cpu_features": ["avx2", "avx512_vnni"],
    }
    assert module.header(meta).endswith("| CPU features: avx2 avx512_vnni")


def test_bf16_path_runs_under_autocast_and_gets_its_columns(tmp_path: Path) -> None:
    module = load_benchmark("imagination")
    out = tmp_path / "bf16.json"
    argv = ["--preset", "tiny", "--batch-sizes", "2", "--steps", "1", "--warmup", "0"]
    assert module.main([*argv, "--paths", "pop", "bf16", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    assert {(r["path"], r["mode"]) for r in records} == {
        (p, m) for p in ("pop", "bf16") for m in ("tokens", "rgb")
    }
    table = module.markdown_table([module.Record(**r) for r in records], 1)
    assert table.splitlines()[0].endswith("| POP bf16 tokens | POP bf16 rgb |")
    assert module.parse_args(["--preset", "tiny"]).paths == ["pop", "int8", "token"]


def test_make_step_runs_the_model_under_the_requested_autocast() -> None:
    from rem_env import REMConfig, REMModel

    module = load_benchmark("imagination")
    model = REMModel(REMConfig.preset("tiny", num_actions=4)).eval()
    seen: list[tuple[bool, torch.dtype]] = []
    inner = model.imagine_step

    def recording(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return inner(*args, **kwargs)

    model.imagine_step = recording  # type: ignore[method-assign]
    cpu = torch.device("cpu")
    with torch.inference_mode():
        module.make_step(model, 2, "tokens", cpu, 0, torch.bfloat16)()
        module.make_step(model, 2, "tokens", cpu, 0)()
    assert seen[0] == (True, torch.bfloat16)
    assert seen[1][0] is False


def test_compile_paths_run_the_step_through_torch_compile_and_get_their_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_benchmark("imagination")
    calls: list[dict] = []
    compile_ = torch.compile

    def recording(fn, **kwargs):
        calls.append(kwargs)
        return compile_(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", recording)
    out = tmp_path / "compile.json"
    argv = ["--preset", "tiny", "--batch-sizes", "2", "--steps", "1", "--warmup", "0"]
    argv += ["--paths", "compile", "bf16-compile", "--compile-backend", "eager"]
    assert module.main([*argv, "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert {(r["path"], r["mode"]) for r in payload["records"]} == {
        (p, m) for p in ("pop", "compile", "bf16-compile") for m in ("tokens", "rgb")
    }
    assert calls and all(
        c == {"fullgraph": True, "mode": "default", "backend": "eager"} for c in calls
    )
    assert payload["metadata"]["compile_backend"] == "eager"
    table = module.markdown_table([module.Record(**r) for r in payload["records"]], 1)
    assert table.splitlines()[0].endswith(
        "| POP compiled tokens | POP compiled rgb | POP bf16 compiled tokens "
        "| POP bf16 compiled rgb |"
    )
    assert "compile" not in module.parse_args(["--preset", "tiny"]).paths
    assert module.parse_args(["--preset", "tiny"]).compile_mode == "default"


def test_profile_steps_list_the_operators_of_the_smallest_and_largest_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_benchmark("imagination")
    argv = ["--preset", "tiny", "--batch-sizes", "1", "2", "3", "--steps", "1", "--warmup", "0"]
    out = str(tmp_path / "profile.json")
    assert (
        module.main(
            [*argv, "--paths", "pop", "--modes", "tokens", "--profile-steps", "2", "--json", out]
        )
        == 0
    )
    err = capsys.readouterr().err
    profiled = [line for line in err.splitlines() if line.startswith("profile of")]
    assert profiled == [
        "profile of 2 steps, B=1 POP tokens:",
        "profile of 2 steps, B=3 POP tokens:",
    ]
    assert "Self CPU" in err and "aten::" in err  # the profiler's operator table
    with pytest.raises(SystemExit):
        module.parse_args(["--profile-steps", "-1"])
