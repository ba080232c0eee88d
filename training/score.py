"""Scores a model's own actor-critic on the real game with REM's test protocol.

``python -m rem_train.score SOURCE`` plays real games (ale-py test env: no-op start, whole games
with all lives, 108,000 raw frames at most) with the actor-critic of SOURCE acting on its
tokenizer's codes of each real frame, sampling with temperature 0.5 (REM's evaluation), and
prints the mean, spread and human-normalised score (for Breakout also the score, on the same
games, of a policy that never looks at the screen: :data:`rem_env.probes.BLIND_BASELINES`).
SOURCE is what ``rem-train --init-from`` reads: an exported model folder that ships an
actor-critic, a run folder (its last checkpoint) or one checkpoint file of a run
(``RUN/checkpoints/epoch_0040.safetensors``), so any epoch a run kept can be scored without
exporting it. ``--noop-max 30`` starts every game after 1 to 30 no-op frames instead of REM's
one, so the games do not all start alike.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rem_env.atari import FRAME_SKIP, TEST_SETTINGS
from rem_train.evaluate import NOOP_MAX_HELP, RANDOM_SCORES, blind_baseline, evaluate
from rem_train.sources import load_source

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rem_train.score",
        description="Score a model's own actor-critic on the real game with REM's test protocol "
        "(no-op start, whole games with all lives, 108,000 raw frames at most, temperature 0.5). "
        "SOURCE: a model folder with an actor-critic, a rem-train run folder (its last "
        "checkpoint) or a checkpoint file of a run. Prints the scores; --out writes score.json.",
    )
    parser.add_argument("source", metavar="SOURCE", help="model folder, run folder or checkpoint")
    parser.add_argument("--episodes", type=int, default=16, help="real games (whole rounds)")
    parser.add_argument("--num-envs", type=int, default=8, help="real test envs per round")
    parser.add_argument(
        "--temperature", type=float, default=0.5, help="policy temperature (REM's: 0.5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the games and the policy")
    parser.add_argument(
        "--max-raw-frames", type=int, default=None, help="raw-frame limit of a game"
    )
    parser.add_argument(
        "--noop-max",
        type=int,
        default=1,
        help=NOOP_MAX_HELP,
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device of the actor-critic (default: cpu)"
    )
    parser.add_argument("--out", default=None, help="folder for score.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Scores SOURCE; prints a summary (and writes score.json with ``--out``); returns 0."""
    args = build_parser().parse_args(argv)
    if min(args.episodes, args.num_envs, args.noop_max) < 1:
        raise SystemExit("--episodes, --num-envs and --noop-max must be positive")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise SystemExit(f"--temperature must be a positive number, got {args.temperature}")
    try:
        policy = load_source(args.source, args.device)
    except ValueError as err:
        raise SystemExit(f"python -m rem_train.score: {err}") from err
    assert policy.actor_critic is not None  # need_actor_critic
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with torch.inference_mode():
        result = evaluate(
            policy.tokenizer, policy.actor_critic, policy.game, args.episodes, args.num_envs,
            args.temperature, seed=args.seed, max_raw_frames=args.max_raw_frames,
            noop_max=args.noop_max,
        )  # fmt: skip
    report: dict[str, Any] = {
        "command": "python -m rem_train.score " + " ".join(sys.argv[1:] if argv is None else argv),
        "source": args.source,
        "epoch": policy.epoch,
        "game": policy.game,
        "temperature": args.temperature,
        "seed": args.seed,
        "noop_max": args.noop_max,
        **result.summary(),
        "human_normalized": result.human_normalized,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, device {args.device}",
    }
    blind = blind_baseline(  # a floor that needs no screen, on the same games
        policy.game, args.episodes, args.num_envs, args.seed, args.max_raw_frames, args.noop_max
    )
    if blind is not None:
        report["blind"] = blind
    limit = args.max_raw_frames or TEST_SETTINGS.max_raw_frames
    capped = sum(steps * FRAME_SKIP >= limit for steps in result.lengths)
    print(
        f"{policy.game}, {args.source}"
        + (f" (epoch {policy.epoch})" if policy.epoch is not None else "")
        + f": {result.mean:.2f} ± {result.std:.2f} over {len(result.scores)} games "
        f"(min {report['min']:g}, max {report['max']:g}; human-normalised "
        f"{result.human_normalized:.3f}; a random policy: {RANDOM_SCORES[policy.game]:g})"
    )
    if blind is not None:
        print(f"{blind['policy']}: {blind['mean']:.2f} ± {blind['std']:.2f} on the same games")
    if capped:
        print(f"{capped} game(s) ran to the raw-frame limit (an agent that stopped playing?)")
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "score.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
