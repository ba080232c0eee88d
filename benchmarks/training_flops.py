"""Counted FLOPs of one training epoch per phase, and the GPU time they imply (an estimate).

No GPU has been lent to the project yet, so the Training page cannot give measured GPU times.
This script gives the next best thing, clearly labelled as an estimate: it runs one real training
step of each phase (tokenizer, world model, actor-critic in imagination) of a preset at a small
batch on the CPU under ``torch.utils.flop_counter.FlopCounterMode``, scales the counted FLOPs to
the preset's batch sizes and steps per epoch, and divides by a few sustained throughputs. Small
models rarely keep a GPU busy, so the times are **lower bounds**: real runs are slower.

    python benchmarks/training_flops.py                     # atari100k, paper sizes
    python benchmarks/training_flops.py --preset cpu --tflops 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.config import PRESETS, TrainConfig
from training.lpips import LPIPS
from training.trainer import Trainer

PHASES = ("tokenizer", "world_model", "actor_critic")


def small_config(preset: str, game: str, batch: int) -> TrainConfig:
    """The preset with one step per phase at ``batch`` and a short, quiet collection."""
    cfg = TrainConfig.from_preset(preset, game)
    common = dataclasses.replace(
        cfg.common, epochs=1, collect_epochs=1, env_steps_per_epoch=300, replay_fsync=False,
        progress_bars=False, track_progress=False,
    )  # fmt: skip
    parts = {
        name: dataclasses.replace(getattr(cfg, name), steps_per_epoch=1, batch_size=batch)
        for name in PHASES
    }
    parts["tokenizer"] = dataclasses.replace(parts["tokenizer"], lpips=False)
    return dataclasses.replace(cfg, common=common, **parts)


def count_flops(preset: str, game: str, batch: int, lpips: bool) -> dict[str, Any]:
    """FLOPs of one step of each phase at ``batch`` and scaled to one epoch of ``preset``."""
    full = TrainConfig.from_preset(preset, game)
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(small_config(preset, game, batch), Path(run) / "run")
        try:
            if lpips:  # random weights: the FLOPs of LPIPS do not depend on them
                trainer.lpips = LPIPS().eval()
            trainer.collect(300)
            steps = {}
            for name in PHASES:
                if name == "actor_critic":  # the dream runs without grad; the counter's module
                    trainer.model.requires_grad_(False)  # hooks trip on frozen-but-grad params
                with FlopCounterMode(display=False) as counter:
                    getattr(trainer, f"train_{name}")(epoch=full.common.epochs)
                steps[name] = counter.get_total_flops()
        finally:
            trainer.close()
    out: dict[str, Any] = {"preset": preset, "game": game, "counted_at_batch": batch, "phases": {}}
    for name in PHASES:
        phase = getattr(full, name)
        per_step = steps[name] * phase.batch_size / batch
        out["phases"][name] = {
            "flops_per_step": per_step,
            "steps_per_epoch": phase.steps_per_epoch,
            "flops_per_epoch": per_step * phase.steps_per_epoch,
            "epochs_trained": full.common.epochs - phase.start_after_epoch,
        }
    return out


def table(result: dict[str, Any], tflops: Sequence[float]) -> str:
    """Markdown: FLOPs per epoch per phase and the implied seconds at each throughput."""
    heads = " | ".join(f"s/epoch at {t:g} TFLOP/s" for t in tflops)
    rows = [f"| phase | TFLOP per epoch | {heads} |", "|---" * (2 + len(tflops)) + "|"]
    total_run = 0.0
    for name, phase in result["phases"].items():
        flops = phase["flops_per_epoch"]
        total_run += flops * phase["epochs_trained"]
        cells = " | ".join(f"{flops / (t * 1e12):.2f}" for t in tflops)
        rows.append(f"| {name.replace('_', '-')} | {flops / 1e12:.2f} | {cells} |")
    cells = " | ".join(f"{total_run / (t * 1e12) / 3600:.2f} h" for t in tflops)
    rows.append(f"| whole run (every phase's epochs) | {total_run / 1e12:.1f} | {cells} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Counted training FLOPs per epoch and the GPU time they imply (lower bounds)."
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="atari100k")
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--batch", type=int, default=2, help="batch of the counted steps")
    parser.add_argument("--no-lpips", action="store_true", help="count the tokenizer without LPIPS")
    parser.add_argument(
        "--tflops", type=float, nargs="+", default=[25.0, 100.0],
        help="sustained throughputs (TFLOP/s) to convert FLOPs into seconds",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the counts here")
    args = parser.parse_args(argv)
    if args.batch < 1 or min(args.tflops) <= 0:
        parser.error("--batch and --tflops must be positive")
    torch.manual_seed(0)
    use_lpips = not args.no_lpips and TrainConfig.from_preset(args.preset).tokenizer.lpips
    result = count_flops(args.preset, args.game, args.batch, use_lpips)
    result["lpips_counted"] = use_lpips
    print(
        f"{args.preset} ({args.game}): FLOPs counted on one step per phase at batch "
        f"{args.batch}, scaled to the preset's batches; times are lower bounds, not measurements."
    )
    print(table(result, args.tflops))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
