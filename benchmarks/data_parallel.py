"""Loss curves of one rem-train run on one process beside the same run on N data-parallel ranks.

What it measures
----------------
It runs ``rem-train`` twice from the same seed and config: once as one process
(``python -m rem_train``) and once under ``torchrun --standalone --nproc_per_node=N`` (gloo on
CPU, NCCL with ``--device cuda``). Batch sizes are global, so both runs take the same optimizer
steps on the same replay batches; only the dropout masks of ranks other than 0 differ (see
docs/training.md, "Data-parallel training"). The script reads both runs' ``metrics.jsonl`` and
prints, per epoch and phase, the mean of the phase's per-step total loss on one process and on N
ranks, their relative difference, and the wall time of the epoch's training phases. As the scale
of "noise", a third run on one process from the next seed (other data, other initial weights)
gives the difference between two seeds.

How to run
----------
From the repository root, with the package installed (``pip install -e .``)::

    python benchmarks/data_parallel.py                       # smoke preset, 8 epochs, 2 ranks
    python benchmarks/data_parallel.py --epochs 4 --ranks 2 --threads 1

The markdown table goes to stdout, the commands and progress to stderr, and the per-step curves
of both runs to ``--json`` (default ``benchmarks/results/data_parallel.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PHASES = ("tokenizer", "world_model", "actor_critic")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "data_parallel.json"
Curves = dict[int, dict[str, Any]]
"""Per epoch: each phase's per-step losses and seconds, and the rank count."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        description="Loss curves of rem-train on one process vs N data-parallel ranks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the data-parallel run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)"
    )
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.ranks < 2 or args.threads < 1:
        parser.error("need --epochs >= 1, --ranks >= 2 and --threads >= 1")
    return args


def train_args(args: argparse.Namespace, out: Path, seed: int) -> list[str]:
    """The rem-train arguments of a run (evaluation only after the last epoch)."""
    return [
        "--game", args.game, "--preset", args.preset, "--epochs", str(args.epochs),
        "--common.seed", str(seed), "--common.eval-start-epoch", str(args.epochs),
        "--common.progress-bars", "false", "--common.replay-fsync", "false",
        "--device", args.device, "--out", str(out),
    ]  # fmt: skip


def run(command: list[str], threads: int) -> None:
    """Runs ``command``; its output goes to stderr; a failure stops the script."""
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(command, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"command failed with exit status {done.returncode}")


def curves(run_dir: Path) -> Curves:
    """Per epoch: each phase's per-step total losses, its wall time, and the rank count."""
    epochs: dict[int, dict[str, Any]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        entry: dict[str, Any] = {"ranks": record.get("ranks", 1)}
        for phase in PHASES:
            if phase in record:
                entry[phase] = record[phase]["steps"]
                entry[f"{phase}_seconds"] = record["timings"][phase]
        epochs[record["epoch"]] = entry
    return epochs


def table(single: Curves, multi: Curves, other_seed: Curves, ranks: int) -> str:
    """Markdown rows: epoch, phase, mean loss of each run, relative differences, seconds."""
    lines = [
        f"| epoch | phase | mean loss, 1 process | mean loss, {ranks} ranks | rel. diff. "
        "| rel. diff. of the next seed (1 process) "
        f"| seconds, 1 process | seconds, {ranks} ranks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for epoch in sorted(single):
        for phase in PHASES:
            if phase not in single[epoch] or phase not in multi.get(epoch, {}):
                continue
            a = statistics.fmean(single[epoch][phase])
            b = statistics.fmean(multi[epoch][phase])
            diff = abs(a - b) / max(abs(a), 1e-12)
            seed_diff = "-"
            if phase in other_seed.get(epoch, {}):
                c = statistics.fmean(other_seed[epoch][phase])
                seed_diff = f"{abs(a - c) / max(abs(a), 1e-12):.2e}"
            lines.append(
                f"| {epoch} | {phase} | {a:.5f} | {b:.5f} | {diff:.2e} | {seed_diff} "
                f"| {single[epoch][f'{phase}_seconds']:.1f} "
                f"| {multi[epoch][f'{phase}_seconds']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the three trainings, prints the table, writes the JSON."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rem_dp_") as tmp:
        root = args.out or Path(tmp)
        one, many = root / "one_process", root / f"{args.ranks}_ranks"
        other = root / "one_process_next_seed"
        run([sys.executable, "-m", "training", *train_args(args, one, args.seed)], args.threads)
        next_seed = train_args(args, other, args.seed + 1)
        run([sys.executable, "-m", "training", *next_seed], args.threads)
        torchrun = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={args.ranks}", "-m", "training",
        ]  # fmt: skip
        run([*torchrun, *train_args(args, many, args.seed)], args.threads)
        single, multi, other_seed = curves(one), curves(many), curves(other)
    if any(entry["ranks"] != args.ranks for entry in multi.values()):
        raise SystemExit(f"the data-parallel run did not log {args.ranks} ranks")
    print(table(single, multi, other_seed, args.ranks))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "one": single,
        "many": multi,
        "next_seed": other_seed,
    }
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
