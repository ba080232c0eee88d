"""benchmarks/training_flops.py counts FLOPs of every phase and scales them to an epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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

    assert Trainer.cache_replay_tokens and Imagination.skip_padding and Imagination.code_tables


def test_a_frame_conv_adds_its_flops_to_the_world_model_only(tmp_path, capsys):
    """--frame-conv counts the world model with the conv rem-train's --world-model-frame-conv
    adds: more world-model FLOPs per step, the tokenizer's unchanged."""
    script = _load()
    plain = script.count_flops("smoke", "Breakout", 2, lpips=False)
    out = tmp_path / "conv.json"
    argv = ["--preset", "smoke", "--no-lpips", "--tflops", "1", "--json", str(out)]
    assert script.main([*argv, "--frame-conv", "2", "--frame-conv-width", "8"]) == 0
    conv = json.loads(out.read_text())
    assert conv["frame_conv"] == {"layers": 2, "width": 8, "events": False}
    assert "frame conv 2x8" in capsys.readouterr().out
    flops = {name: (plain["phases"][name]["flops_per_step"], conv["phases"][name]["flops_per_step"])
             for name in ("tokenizer", "world_model")}  # fmt: skip
    assert flops["tokenizer"][0] == flops["tokenizer"][1]
    assert flops["world_model"][1] > flops["world_model"][0]


def test_frame_conv_events_without_a_frame_conv_is_refused(capsys):
    script = _load()
    with pytest.raises(SystemExit):
        script.main(["--preset", "smoke", "--frame-conv-events"])
    assert "give --frame-conv LAYERS" in capsys.readouterr().err


def test_a_phase_that_never_starts_trains_no_epochs():
    """The breakout preset never trains its tokenizer (it starts after epoch 1,000,000): the
    whole run counted none of its epochs, not minus a million (a negative total before)."""
    script = _load()
    from rem_train.config import TrainConfig

    cfg = TrainConfig.from_preset("breakout")
    assert script.epochs_trained(cfg, "tokenizer") == 0
    assert script.epochs_trained(cfg, "world_model") == cfg.common.epochs - 1
