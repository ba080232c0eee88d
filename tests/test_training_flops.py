"""benchmarks/training_flops.py counts FLOPs of every phase and scales them to an epoch."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_benchmark

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "training_flops.py"


def _load():
    return load_benchmark("training_flops")


def test_smoke_counts_scale_with_batch_and_steps(tmp_path, capsys):
    script = _load()
    out = tmp_path / "flops.json"
    assert script.main(["--preset", "smoke", "--tflops", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    from rem_train.config import TrainConfig

    cfg = TrainConfig.from_preset("smoke")
    for name in script.PHASES:
        phase = result["phases"][name]
        assert phase["flops_per_step"] > 0
        assert (
            phase["flops_per_epoch"] == phase["flops_per_step"] * getattr(cfg, name).steps_per_epoch
        )
    text = capsys.readouterr().out
    assert "lower bounds" in text and "| world-model |" in text
    # Counting at another batch gives the same per-step figure once scaled (FLOPs are linear
    # in the batch for these models), within a few percent.
    again = script.count_flops("smoke", "Breakout", 4, lpips=False)
    for name in ("tokenizer", "world_model"):
        a, b = result["phases"][name]["flops_per_step"], again["phases"][name]["flops_per_step"]
        assert abs(a - b) / a < 0.05, name


def test_measure_compares_the_speedups_per_phase(tmp_path, capsys):
    """--measure --compare: counted FLOPs and CPU seconds per step with the speed-ups off and on;
    the token cache and the padding skip take the encoder out of the world-model and
    actor-critic steps and leave the tokenizer's alone."""
    script = _load()
    out = tmp_path / "measured.json"
    argv = ["--preset", "smoke", "--measure", "--compare", "--rounds", "1", "--steps", "1"]
    assert script.main([*argv, "--collect", "300", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["matmul_gflops"] > 0 and result["threads"] >= 1
    assert result["speedups"] == sorted(script.speedups())
    phases = result["phases"]
    assert set(phases) == set(script.PHASES)
    for name, row in phases.items():
        for variant in ("before", "after"):
            assert row[variant]["cpu_s_per_step"] > 0 and row[variant]["steps"] == 1, name
    tok = phases["tokenizer"]
    assert tok["before"]["gflop_per_step"] == tok["after"]["gflop_per_step"]
    for name in ("world_model", "actor_critic"):
        assert phases[name]["after"]["gflop_per_step"] < phases[name]["before"]["gflop_per_step"]
    text = capsys.readouterr().out
    assert "% of matmul rate" in text and "| actor-critic |" in text and "speed-up" in text
    # The switches are back on.
    from rem_train.imagination import Imagination
    from rem_train.trainer import Trainer

    assert Trainer.cache_replay_tokens and Imagination.skip_padding
