"""Counted FLOPs of one training epoch per phase, the GPU time they imply, and measured CPU rates.

No GPU has been lent to the project yet, so the Training page cannot give measured GPU times.
This script gives the next best thing, clearly labelled as an estimate: it runs one real training
step of each phase (tokenizer, world model, actor-critic in imagination) of a preset at a small
batch on the CPU under ``torch.utils.flop_counter.FlopCounterMode``, scales the counted FLOPs to
the preset's batch sizes and steps per epoch, and divides by a few sustained throughputs. Small
models rarely keep a GPU busy, so the times are **lower bounds**: real runs are slower.

    python benchmarks/training_flops.py                     # atari100k, paper sizes
    python benchmarks/training_flops.py --preset cpu --tflops 0.1
    python benchmarks/training_flops.py --preset breakout --frame-conv 4 --frame-conv-events

``--measure`` times real steps instead, at the preset's own batch sizes on the CPU, and states
each phase's achieved FLOP/s against this machine's measured float32 matrix-product rate. Times
are CPU seconds of this process (``time.process_time``), which a shared core's other jobs do not
inflate the way they inflate wall time; the product rate is sampled between the phases, in the
same process, so that both see the same machine. ``--compare`` runs the steps with this
repository's CPU speed-ups off and on, alternating, and prints the ratios::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/training_flops.py --preset cpu --measure
    OMP_NUM_THREADS=1 python benchmarks/training_flops.py --preset cpu --measure --compare
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from rem_train.config import MODEL_SIZES, PHASES, PRESETS, TrainConfig
from rem_train.imagination import Imagination
from rem_train.lpips import LPIPS
from rem_train.trainer import Trainer

MATMUL_SIZE = 1024
"""Side of the square float32 matrices whose product rate is the reference of ``--measure``."""


@dataclasses.dataclass(frozen=True)
class FrameConvOption:
    """The world model's frame conv a count or measurement adds to the preset (``--frame-conv``).

    Attributes:
        layers: Convolution layers; 0 leaves the preset's world model as it is.
        width: Channels of each layer.
        events: Whether the reward and end heads read the conv's features too.
    """

    layers: int = 0
    width: int = 128
    events: bool = False

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with this frame conv (the same as ``rem-train --world-model-frame-conv``)."""
        if not self.layers:
            return cfg
        return dataclasses.replace(
            cfg, world_model_frame_conv=self.layers, world_model_frame_conv_width=self.width,
            world_model_frame_conv_events=self.events,
        )  # fmt: skip


def small_config(
    preset: str, game: str, batch: int, frame_conv: FrameConvOption = FrameConvOption()
) -> TrainConfig:
    """The preset with one step per phase at ``batch`` and a short, quiet collection."""
    cfg = frame_conv.apply(TrainConfig.from_preset(preset, game))
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


def count_flops(
    preset: str, game: str, batch: int, lpips: bool, frame_conv: FrameConvOption = FrameConvOption()
) -> dict[str, Any]:
    """FLOPs of one step of each phase at ``batch`` and scaled to one epoch of ``preset``."""
    full = TrainConfig.from_preset(preset, game)
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(small_config(preset, game, batch, frame_conv), Path(run) / "run")
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
    out: dict[str, Any] = {
        "preset": preset, "game": game, "counted_at_batch": batch,
        "frame_conv": dataclasses.asdict(frame_conv), "phases": {},
    }  # fmt: skip
    for name in PHASES:
        phase = getattr(full, name)
        per_step = steps[name] * phase.batch_size / batch
        out["phases"][name] = {
            "flops_per_step": per_step,
            "steps_per_epoch": phase.steps_per_epoch,
            "flops_per_epoch": per_step * phase.steps_per_epoch,
            "epochs_trained": epochs_trained(full, name),
        }
    return out


def epochs_trained(config: TrainConfig, phase: str) -> int:
    """Epochs in which ``phase`` trains: those after its start, none if it starts after the last
    (the ``breakout`` preset never trains its tokenizer itself)."""
    return max(0, config.common.epochs - getattr(config, phase).start_after_epoch)


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


# ------------------------------------------------------------------------------ measured (CPU)


def measure_config(
    preset: str,
    game: str,
    model: str | None = None,
    frame_conv: FrameConvOption = FrameConvOption(),
) -> TrainConfig:
    """The preset at its own batch sizes and steps per epoch, quiet, on the CPU, without LPIPS.

    Every phase may start at once (the ``breakout`` preset never trains its tokenizer itself).
    """
    cfg = frame_conv.apply(TrainConfig.from_preset(preset, game))
    common = dataclasses.replace(
        cfg.common, epochs=1, collect_epochs=1, replay_fsync=False, progress_bars=False,
        track_progress=False,
    )  # fmt: skip
    parts = {name: dataclasses.replace(getattr(cfg, name), start_after_epoch=0) for name in PHASES}
    parts["tokenizer"] = dataclasses.replace(parts["tokenizer"], lpips=False)
    return dataclasses.replace(cfg, common=common, model=model or cfg.model, device="cpu", **parts)


def matmul_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """GFLOP/s of one ``a @ b`` of square matrices, in CPU seconds of this process."""
    start = time.process_time()
    a @ b
    return 2 * a.shape[0] ** 3 / max(time.process_time() - start, 1e-9) / 1e9


class PhaseCall(NamedTuple):
    """What one call of a phase took."""

    cpu: list[float]
    """CPU seconds of each step."""
    wall: list[float]
    """Wall seconds of each step."""
    outside: float
    """CPU seconds of the rest of the call (once per epoch in a run)."""
    flops: list[int]
    """Counted FLOPs of each step (empty unless counted)."""


def call_phase(trainer: Trainer, name: str, steps: int, count: bool = False) -> PhaseCall:
    """Runs the phase ``name`` for its first ``steps`` steps, timing (or counting) each.

    A step is one pass of the phase's loop (sampling included); what the phase does once per
    call before its loop (the tokenizer's background picture, bringing the replay frames'
    tokens up to date, which it decides on from the whole epoch's steps) is outside the steps.
    """
    call = PhaseCall([], [], 0.0, [])
    original = trainer._progress

    def progress(iterable: Any, label: str) -> Iterator[Any]:
        last = time.process_time(), time.perf_counter()
        for done, item in enumerate(original(iterable, label)):
            if done == steps:  # the rest of the epoch's steps are the same work
                return
            counter = FlopCounterMode(display=False) if count else contextlib.nullcontext()
            with counter:
                yield item  # the step runs here
            now = time.process_time(), time.perf_counter()
            call.cpu.append(now[0] - last[0])
            call.wall.append(now[1] - last[1])
            if isinstance(counter, FlopCounterMode):
                call.flops.append(counter.get_total_flops())
            last = now

    trainer._progress = progress  # type: ignore[method-assign]
    if count and name == "actor_critic":  # as in count_flops
        trainer.model.requires_grad_(False)
    start = time.process_time()
    try:
        getattr(trainer, f"train_{name}")(epoch=1)
    finally:
        del trainer._progress  # the class's method again
        trainer.model.requires_grad_(True)
    return call._replace(outside=time.process_time() - start - sum(call.cpu))


def speedups() -> dict[str, tuple[Any, str, Any]]:
    """The CPU speed-ups ``--compare`` switches off: name -> (owner, attribute, value when off)."""
    return {
        "replay token cache": (Trainer, "cache_replay_tokens", False),
        "burn-in skips padding": (Imagination, "skip_padding", False),
        "actor-critic code tables": (Imagination, "code_tables", False),
    }


@contextlib.contextmanager
def _variant(levers: dict[str, tuple[Any, str, Any]], before: bool) -> Iterator[None]:
    """The speed-ups off (``before``) or as they are, restored afterwards."""
    kept = {name: getattr(owner, attribute) for name, (owner, attribute, _) in levers.items()}
    try:
        for owner, attribute, off in levers.values():
            if before:
                setattr(owner, attribute, off)
        yield
    finally:
        for name, (owner, attribute, _) in levers.items():
            setattr(owner, attribute, kept[name])


def measure(
    preset: str,
    game: str,
    rounds: int = 3,
    steps: int = 2,
    collect: int = 600,
    model: str | None = None,
    compare: bool = False,
    phases: Sequence[str] = PHASES,
    frame_conv: FrameConvOption = FrameConvOption(),
) -> dict[str, Any]:
    """Counted FLOPs and measured CPU seconds per step of each phase at the preset's batches.

    One warm-up call per phase (and variant) counts the FLOPs of its steps; then ``rounds``
    rounds run ``steps`` steps of every phase (with ``compare``: with the speed-ups off, then
    on) with matrix-product rate samples in between. Medians over all rounds.

    Args:
        preset: Preset whose sizes and batches are measured.
        game: Game of the real env that fills the replay buffer.
        rounds: Interleaved rounds.
        steps: Steps timed per phase call (its first; the epoch has the preset's count).
        collect: Real env steps collected first (with the untrained actor-critic).
        model: Model sizes instead of the preset's (e.g. ``cpu512``).
        compare: Also measure every phase with :func:`speedups` switched off.
        phases: The phases to measure.
        frame_conv: A frame conv added to the world model.
    """
    torch.manual_seed(0)
    levers = speedups() if compare else {}
    variants = ("before", "after") if compare else ("after",)
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    rates: list[float] = []
    calls: dict[tuple[str, str], list[PhaseCall]] = {}
    flops: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(measure_config(preset, game, model, frame_conv), Path(run) / "run")
        try:
            trainer.collect(collect)
            for name in phases:
                for variant in variants:
                    with _variant(levers, variant == "before"):
                        flops[variant, name] = statistics.median(
                            call_phase(trainer, name, steps, count=True).flops
                        )
            for _ in range(rounds):
                for name in phases:
                    for variant in variants:
                        rates.extend(matmul_rate(a, b) for _ in range(3))
                        with _variant(levers, variant == "before"):
                            call = call_phase(trainer, name, steps)
                            calls.setdefault((variant, name), []).append(call)
            rates.extend(matmul_rate(a, b) for _ in range(3))
        finally:
            trainer.close()
    rate = statistics.median(rates)
    out: dict[str, Any] = {
        "preset": preset,
        "model": model or TrainConfig.from_preset(preset).model,
        "frame_conv": dataclasses.asdict(frame_conv),
        "threads": torch.get_num_threads(),
        "matmul_size": MATMUL_SIZE,
        "matmul_gflops": rate,
        "matmul_gflops_range": [min(rates), max(rates)],
        "speedups": sorted(levers),
        "replay_steps": collect,
        "phases": {},
    }
    for name in phases:
        row: dict[str, Any] = {}
        for variant in variants:
            done = calls[variant, name]
            seconds = statistics.median(s for call in done for s in call.cpu)
            gflop = flops[variant, name] / 1e9
            row[variant] = {
                "gflop_per_step": gflop,
                "cpu_s_per_step": seconds,
                "wall_s_per_step": statistics.median(s for call in done for s in call.wall),
                "cpu_s_per_call_outside_steps": statistics.median(call.outside for call in done),
                "gflops": gflop / seconds,
                "percent_of_matmul": 100 * gflop / seconds / rate,
                "steps": sum(len(call.cpu) for call in done),
            }
        out["phases"][name] = row
    return out


def measured_table(result: dict[str, Any]) -> str:
    """Markdown: per phase GFLOP per step, CPU seconds per step, GFLOP/s, % of the matmul rate;
    with ``before`` and ``after`` (``--compare``) each figure as before -> after, and the
    speed-up. Then the CPU seconds of each phase call outside its steps."""
    compare = all("before" in row for row in result["phases"].values())
    head = "| phase | counted GFLOP per step | s per step | achieved GFLOP/s | % of matmul rate |"
    if compare:
        head += " speed-up per step |"
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, row in result["phases"].items():
        cells = [name.replace("_", "-")]
        for key, form in (
            ("gflop_per_step", "{:.1f}"),
            ("cpu_s_per_step", "{:.3f}"),
            ("gflops", "{:.1f}"),
            ("percent_of_matmul", "{:.0f}%"),
        ):
            cells.append(
                " -> ".join(form.format(row[v][key]) for v in ("before", "after") if v in row)
            )
        if compare:
            cells.append(f"{row['before']['cpu_s_per_step'] / row['after']['cpu_s_per_step']:.2f}x")
        rows.append("| " + " | ".join(cells) + " |")
    outside = ", ".join(
        f"{name.replace('_', '-')} "
        + " -> ".join(
            f"{row[v]['cpu_s_per_call_outside_steps']:.2f}" for v in ("before", "after") if v in row
        )
        for name, row in result["phases"].items()
    )
    rows.append(
        f"\nCPU s of each phase call outside its steps (once per epoch; {result['replay_steps']} "
        f"replay steps): {outside}"
    )
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
    parser.add_argument(
        "--frame-conv", type=int, default=0, metavar="LAYERS",
        help="add a frame conv of this many layers to the world model, as rem-train's "
        "--world-model-frame-conv does (default: the preset's world model)",
    )  # fmt: skip
    parser.add_argument(
        "--frame-conv-width", type=int, default=128, help="channels of the frame conv's layers"
    )
    parser.add_argument(
        "--frame-conv-events", action="store_true",
        help="the reward and end heads read the frame conv too (--world-model-frame-conv-events)",
    )  # fmt: skip
    measured = parser.add_argument_group("measured on this CPU (--measure)")
    measured.add_argument(
        "--measure", action="store_true",
        help="time steps at the preset's batch sizes; GFLOP/s against a measured matmul rate",
    )  # fmt: skip
    measured.add_argument(
        "--compare", action="store_true", help="with --measure: the CPU speed-ups off, then on"
    )
    measured.add_argument("--model", choices=MODEL_SIZES, default=None, help="model sizes")
    measured.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    measured.add_argument("--steps", type=int, default=2, help="steps per phase and round")
    measured.add_argument("--collect", type=int, default=600, help="real env steps first")
    measured.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    args = parser.parse_args(argv)
    if args.batch < 1 or min(args.tflops) <= 0:
        parser.error("--batch and --tflops must be positive")
    if min(args.rounds, args.steps, args.collect) < 1:
        parser.error("--rounds, --steps and --collect must be positive")
    if args.compare and not args.measure:
        parser.error("--compare needs --measure")
    if args.frame_conv < 0 or args.frame_conv_width < 1:
        parser.error("--frame-conv must be >= 0 (0: none) and --frame-conv-width >= 1")
    if args.frame_conv_events and not args.frame_conv:
        parser.error("--frame-conv-events reads the frame conv: give --frame-conv LAYERS too")
    frame_conv = FrameConvOption(args.frame_conv, args.frame_conv_width, args.frame_conv_events)
    conv_text = (
        f", frame conv {frame_conv.layers}x{frame_conv.width}"
        + (" feeding the reward and end heads" if frame_conv.events else "")
        if frame_conv.layers
        else ""
    )
    torch.manual_seed(0)
    if args.measure:
        result = measure(
            args.preset, args.game, args.rounds, args.steps, args.collect, args.model,
            args.compare, args.phases, frame_conv,
        )  # fmt: skip
        print(
            f"{args.preset} (model {result['model']}, {args.game}{conv_text}): medians of "
            f"{args.rounds} x {args.steps} steps per phase at the preset's batches, CPU seconds "
            f"of this process on {result['threads']} thread(s); matmul rate "
            f"({MATMUL_SIZE}x{MATMUL_SIZE} float32, interleaved): {result['matmul_gflops']:.1f} "
            f"GFLOP/s (range {result['matmul_gflops_range'][0]:.1f}-"
            f"{result['matmul_gflops_range'][1]:.1f})"
            + (f"; speed-ups compared: {', '.join(result['speedups'])}" if args.compare else "")
        )
        print(measured_table(result))
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    use_lpips = not args.no_lpips and TrainConfig.from_preset(args.preset).tokenizer.lpips
    result = count_flops(args.preset, args.game, args.batch, use_lpips, frame_conv)
    result["lpips_counted"] = use_lpips
    print(
        f"{args.preset} ({args.game}{conv_text}): FLOPs counted on one step per phase at batch "
        f"{args.batch}, scaled to the preset's batches; times are lower bounds, not measurements."
    )
    print(table(result, args.tflops))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
