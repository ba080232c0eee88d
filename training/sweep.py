"""Many independent training runs (games x seeds) over the available devices, and their scores.

``python -m rem_train.sweep --games Breakout Pong --seeds 0 1 --preset smoke --out sweeps/smoke``
starts one ``python -m rem_train`` process per (game, seed), each in its own run folder
(``OUT/runs/<game>-seed<seed>``, log in ``OUT/logs``), at most ``--parallel`` at a time, devices
given round-robin. When every run has finished it reads each run's final evaluation (the mean
return in ``export/training.json``) and writes:

* ``OUT/scores.json``: the published per-seed format, ``{game: [score of seed 0, seed 1, ...]}``
  (as ``REM.json``: each value is one run's final mean return);
* ``OUT/aggregates.json``: the human-normalised aggregates of REM_SPEC 8 (rliable point
  estimates): mean over runs x games, median of per-game means, IQM (25%-trimmed mean over runs x
  games), optimality gap ``mean(max(1 - x, 0))``, and the number of superhuman games.

Running the same command again skips finished runs and resumes unfinished ones (``--resume``),
so a killed sweep loses at most the interrupted epochs. Options after ``--`` go to every
``rem-train`` run (``-- --epochs 2 --tokenizer.steps-per-epoch 4``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from rem_train.config import PRESET_NAMES
from rem_train.evaluate import HUMAN_SCORES, human_normalized_score

__all__ = [
    "Aggregates",
    "SweepRun",
    "aggregate",
    "default_devices",
    "interquartile_mean",
    "main",
    "parser",
    "plan_runs",
    "read_final_score",
    "run_sweep",
    "write_results",
]

SCORES_FILE = "scores.json"
AGGREGATES_FILE = "aggregates.json"
_RESERVED = ("--out", "--resume", "--game", "--seed", "--preset", "--device", "--export")


class SweepRun(NamedTuple):
    """One run of a sweep."""

    game: str
    """Atari 100K game."""
    seed: int
    """``common.seed`` of the run."""
    device: str
    """Torch device the run trains on."""
    run_dir: Path
    """The run folder."""
    log: Path
    """The file its stdout and stderr go to."""


class Aggregates(NamedTuple):
    """Human-normalised aggregates over runs x games (REM_SPEC 8, rliable point estimates)."""

    mean: float
    """Mean over all runs x games."""
    median: float
    """Median of the per-game means."""
    iqm: float
    """Interquartile mean: 25%-trimmed mean over all runs x games."""
    optimality_gap: float
    """``mean(max(1 - x, 0))`` over all runs x games."""
    superhuman: int
    """Games whose mean human-normalised score is above 1."""
    runs_per_game: int
    """Runs (seeds) per game."""
    num_games: int
    """Games."""


def interquartile_mean(values: Sequence[float]) -> float:
    """Mean of the values left after cutting ``floor(n / 4)`` from each end of the sorted values.

    The same cut as ``scipy.stats.trim_mean(values, 0.25)``, which rliable's IQM uses.

    Example:
        >>> interquartile_mean([0.0, 1.0, 2.0, 3.0, 100.0])
        2.0

    Raises:
        ValueError: If there are no values.
    """
    if len(values) == 0:
        raise ValueError("the interquartile mean of no values is undefined")
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    cut = len(ordered) // 4
    return float(ordered[cut : len(ordered) - cut].mean())


def aggregate(scores: dict[str, list[float]]) -> Aggregates:
    """Human-normalised aggregates of raw scores in the published format.

    Args:
        scores: ``{game: [final score of each run]}``, the same number of runs for every game.

    Raises:
        ValueError: On no games, a game without random/human scores, no runs, or a different
            number of runs for different games.

    Example:
        >>> agg = aggregate({"Breakout": [1.7, 30.5], "Pong": [14.6, 14.6]})
        >>> round(agg.mean, 3), agg.superhuman
        (0.75, 0)
    """
    if not scores:
        raise ValueError("no scores to aggregate")
    counts = {game: len(runs) for game, runs in scores.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ValueError(
            f"every game needs the same (non-zero) number of runs to aggregate, got {counts}"
        )
    normalized = np.array(
        [[human_normalized_score(game, s) for s in runs] for game, runs in scores.items()]
    )  # (games, runs)
    per_game = normalized.mean(axis=1)  # (games,)
    return Aggregates(
        mean=float(normalized.mean()),
        median=float(np.median(per_game)),
        iqm=interquartile_mean(normalized.ravel().tolist()),
        optimality_gap=float(np.maximum(1.0 - normalized, 0.0).mean()),
        superhuman=int((per_game > 1.0).sum()),
        runs_per_game=normalized.shape[1],
        num_games=normalized.shape[0],
    )


def default_devices() -> list[str]:
    """Every CUDA device (``cuda:0``, ``cuda:1``, ...), or ``["cpu"]`` when there is none."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]


def plan_runs(
    games: Sequence[str], seeds: Sequence[int], devices: Sequence[str], out: Path
) -> list[SweepRun]:
    """The sweep's runs, game by game and seed by seed, devices given round-robin.

    Raises:
        ValueError: On no games, seeds or devices, an unknown game, or a repeated game or seed.
    """
    if not games or not seeds or not devices:
        raise ValueError("a sweep needs at least one game, one seed and one device")
    unknown = [g for g in games if g not in HUMAN_SCORES]
    if unknown:
        raise ValueError(
            f"unknown games {unknown}; choose Atari 100K games: {sorted(HUMAN_SCORES)}"
        )
    if len(set(games)) != len(games) or len(set(seeds)) != len(seeds):
        raise ValueError(f"games and seeds must not repeat, got {list(games)} and {list(seeds)}")
    pairs = [(game, seed) for game in games for seed in seeds]
    return [
        SweepRun(
            game,
            seed,
            devices[i % len(devices)],
            out / "runs" / f"{game}-seed{seed}",
            out / "logs" / f"{game}-seed{seed}.log",
        )
        for i, (game, seed) in enumerate(pairs)
    ]


def read_final_score(run_dir: Path) -> float:
    """The mean return of a finished run's final evaluation (``export/training.json``).

    Raises:
        ValueError: If the run has not finished (no export, or an export without evaluation).
    """
    path = Path(run_dir) / "export" / "training.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no finished run ({path} is missing)")
    evaluation = json.loads(path.read_text()).get("evaluation")
    if evaluation is None:
        raise ValueError(f"{path} records no evaluation")
    return float(evaluation["mean"])


def _command(run: SweepRun, preset: str, train_args: Sequence[str]) -> list[str]:
    base = [sys.executable, "-m", "training"]
    common = ["--device", run.device, "--common.progress-bars", "false"]
    if (run.run_dir / "config.json").is_file():  # started before: go on with its own config
        return [*base, "--resume", str(run.run_dir), *common]
    return [
        *base, "--game", run.game, "--seed", str(run.seed), "--preset", preset,
        "--out", str(run.run_dir), *common, *train_args,
    ]  # fmt: skip


def _is_finished(run: SweepRun) -> bool:
    try:
        read_final_score(run.run_dir)
    except ValueError:
        return False
    return True


def run_sweep(
    runs: Sequence[SweepRun],
    preset: str,
    train_args: Sequence[str] = (),
    parallel: int = 1,
    stream: IO[str] | None = None,
    poll_s: float = 0.2,
) -> list[SweepRun]:
    """Runs every unfinished run as a subprocess, at most ``parallel`` at a time.

    Args:
        runs: From :func:`plan_runs`.
        preset: ``rem-train`` preset of new runs.
        train_args: Extra ``rem-train`` options of new runs.
        parallel: Runs at a time.
        stream: Where progress lines go (stdout).
        poll_s: Seconds between checks of the running processes.

    Returns:
        The runs that failed (empty when all finished).

    Raises:
        ValueError: On ``parallel < 1`` or a ``train_args`` option the sweep sets itself.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    reserved = [a for a in train_args if a.split("=")[0] in _RESERVED]
    if reserved:
        raise ValueError(f"the sweep sets {reserved} itself; do not pass them to rem-train")
    stream = sys.stdout if stream is None else stream
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the CPU cores between the parallel runs
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    pending = [r for r in runs if not _is_finished(r)]
    for r in runs:
        if r not in pending:
            _say(stream, f"{r.game} seed {r.seed}: already finished")
    active: dict[SweepRun, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
    failed: list[SweepRun] = []
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                run.log.parent.mkdir(parents=True, exist_ok=True)
                log = open(run.log, "ab")  # noqa: SIM115  (closed when the process ends)
                command = _command(run, preset, train_args)
                active[run] = (subprocess.Popen(command, stdout=log, stderr=log, env=env), log)
                _say(stream, f"{run.game} seed {run.seed} on {run.device}: started ({run.log})")
            time.sleep(poll_s)
            for run, (process, log) in list(active.items()):
                if process.poll() is None:
                    continue
                log.close()
                del active[run]
                if process.returncode == 0 and _is_finished(run):
                    score = read_final_score(run.run_dir)
                    _say(stream, f"{run.game} seed {run.seed}: final score {score:g}")
                else:
                    failed.append(run)
                    _say(
                        stream,
                        f"{run.game} seed {run.seed}: FAILED (exit {process.returncode}); "
                        f"see {run.log}",
                    )
    finally:  # interrupted: SIGTERM stops each run at a step boundary; it can be resumed
        for process, _ in active.values():
            process.terminate()
        for process, log in active.values():
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
    return failed


def _say(stream: IO[str], line: str) -> None:
    print(f"[rem-sweep] {line}", file=stream, flush=True)


def write_results(runs: Sequence[SweepRun], out: Path) -> Aggregates:
    """Writes ``scores.json`` (``{game: [score per seed]}``) and ``aggregates.json``.

    Raises:
        ValueError: If a run has not finished.
    """
    scores: dict[str, list[float]] = {}
    for run in runs:
        scores.setdefault(run.game, []).append(read_final_score(run.run_dir))
    agg = aggregate(scores)
    normalized = {g: [human_normalized_score(g, s) for s in v] for g, v in scores.items()}
    seeds = sorted({run.seed for run in runs})
    record = dict(agg._asdict(), seeds=seeds, human_normalized=normalized)
    out.mkdir(parents=True, exist_ok=True)
    (out / SCORES_FILE).write_text(json.dumps(scores, indent=2) + "\n")
    (out / AGGREGATES_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return agg


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m rem_train.sweep``."""
    p = argparse.ArgumentParser(
        prog="rem-sweep",
        description="Train games x seeds as independent rem-train runs over the devices and "
        "collect their final scores (scores.json) and human-normalised aggregates "
        "(aggregates.json). Options after `--` go to every rem-train run.",
    )
    p.add_argument("--games", nargs="+", required=True, help="Atari 100K games")
    p.add_argument("--seeds", nargs="+", type=int, required=True, help="seeds of each game")
    p.add_argument("--preset", default="atari100k", choices=PRESET_NAMES, help="rem-train preset")
    p.add_argument("--out", type=Path, required=True, help="sweep folder (runs, logs, results)")
    p.add_argument("--devices", nargs="+", help="torch devices (default: every GPU, else cpu)")
    p.add_argument("--parallel", type=int, help="runs at a time (default: one per device)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 when a run failed, 2 on bad options)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, train_args = parser().parse_args(argv[:split]), argv[split + 1 :]
    devices = args.devices or default_devices()
    parallel = len(devices) if args.parallel is None else args.parallel
    try:
        runs = plan_runs(args.games, args.seeds, devices, args.out)
        failed = run_sweep(runs, args.preset, train_args, parallel)
    except ValueError as err:
        print(f"rem-sweep: error: {err}", file=sys.stderr)
        return 2
    if failed:
        names = ", ".join(f"{r.game} seed {r.seed} ({r.log})" for r in failed)
        print(
            f"rem-sweep: {len(failed)} run(s) failed: {names}; fix and run the same command "
            "again to resume them",
            file=sys.stderr,
        )
        return 1
    agg = write_results(runs, args.out)
    _say(
        sys.stdout,
        f"{agg.num_games} games x {agg.runs_per_game} seeds: HNS mean {agg.mean:.3f}, median "
        f"{agg.median:.3f}, IQM {agg.iqm:.3f}, optimality gap {agg.optimality_gap:.3f}, "
        f"superhuman {agg.superhuman}; written to {args.out / SCORES_FILE} and "
        f"{args.out / AGGREGATES_FILE}",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
