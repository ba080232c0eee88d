"""Does a Breakout dream serve only after FIRE, as the game does?

In Breakout no ball is in play at the start of a game and after every lost life until the player
presses FIRE. A world model that dreams a ball whatever the agent does teaches its actor-critic
that FIRE does not matter, and that agent may stop serving on the real game (its games then run
to the frame limit). ``python -m rem_train.serve_check MODEL`` measures it (MODEL: a model
folder, a Hub repo id, a run folder or one of its checkpoint files): real serve states
(the start of a game and the first frames after a lost life, then NOOPs until the context is
full; no ball in play), and from each the same dreamed steps twice, NOOP only and FIRE first
(then NOOPs); it reports the share of dreams in which the ball probe finds a ball and the share
in which a life is lost, beside the real game's answers for the same actions (NOOP only: no
ball and no lost life, ever; FIRE: a ball, and with a paddle that never moves the life is lost
within 30 steps in most games). It also reports the share with a ball at the first dreamed step:
the game serves in the very frame after FIRE, and never after a NOOP, so that step shows how
sharply the world model reads the action, before its own frames can mislead it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch

from rem_env.atari import make_atari_env
from rem_env.fidelity import to_pixels
from rem_env.model import REMModel
from rem_env.probes import BreakoutBallFollower, BreakoutBallProbe
from rem_train.batches import frames_to_tensor
from rem_train.sources import load_source

__all__ = ["DreamedServes", "ServeContexts", "dreamed_serves", "main", "serve_contexts"]

NOOP, FIRE = 0, 1
BALL_Y = 101
"""RAM byte of the ball's row; 0 while no ball is in play."""


class ServeContexts(NamedTuple):
    """Real serve states: the frames before each and what the real game did next.

    Attributes:
        frames: (N, C, 64, 64, 3) uint8, the last C frames, no ball in play in any.
        actions: (N, C-1) int64, the actions between them (NOOPs).
        real_noop: (N,) bool, a ball came within the horizon with NOOP only.
        real_fire: (N,) bool, a ball came within the horizon with FIRE first (then NOOPs).
        lost_noop: (N,) bool, the life was lost within the horizon with NOOP only.
        lost_fire: (N,) bool, the life was lost within the horizon with FIRE first.
        first_noop: (N,) bool, a ball was in play right after the first step, a NOOP.
        first_fire: (N,) bool, a ball was in play right after the first step, FIRE.
    """

    frames: np.ndarray
    actions: np.ndarray
    real_noop: np.ndarray
    real_fire: np.ndarray
    lost_noop: np.ndarray
    lost_fire: np.ndarray
    first_noop: np.ndarray
    first_fire: np.ndarray


class DreamedServes(NamedTuple):
    """Shares of the dreams from each serve state, (N,) float each.

    Attributes:
        ball: Dreams in which the ball probe finds a ball at any step before an episode end.
        ended: Dreams with a dreamed episode end.
        first: Dreams with a ball at the first dreamed step.
    """

    ball: np.ndarray
    ended: np.ndarray
    first: np.ndarray


def serve_contexts(num: int, context: int, horizon: int, seed: int = 0) -> ServeContexts:
    """Plays real Breakout (training preprocessing) and keeps ``num`` serve states.

    Each game's start is one; then a scripted player (30% random actions) plays until it loses
    a life, and the next life's start is another.

    Raises:
        ValueError: If ``num``, ``context`` or ``horizon`` is below 1.
    """
    if min(num, context, horizon) < 1:
        raise ValueError(
            f"num, context and horizon must be positive, got {num}, {context} and {horizon}"
        )
    env = make_atari_env("Breakout", train=True, seed=seed)
    ale = env.unwrapped.ale
    player = BreakoutBallFollower(epsilon=0.3, seed=seed)
    kept: list[tuple[np.ndarray, ...]] = []
    try:
        while len(kept) < num:
            obs, _ = env.reset()
            frames = [obs]
            for _ in range(context - 1):
                obs, *_ = env.step(NOOP)
                frames.append(obs)
            if ale.getRAM()[BALL_Y] == 0:
                state = ale.cloneState()
                came, lost, at_once = [], [], []
                for first in (NOOP, FIRE):
                    ale.restoreState(state)
                    seen = ended = False
                    for h in range(horizon):
                        _, _, terminated, truncated, _ = env.step(first if h == 0 else NOOP)
                        seen |= bool(ale.getRAM()[BALL_Y] > 0)
                        if h == 0:
                            at_once.append(seen)
                        if terminated or truncated:
                            ended = True
                            break
                    came.append(seen)
                    lost.append(ended)
                ale.restoreState(state)
                frames_and_actions = (np.stack(frames), np.zeros(context - 1, np.int64))
                kept.append((*frames_and_actions, *came, *lost, *at_once))
            for _ in range(5000):  # play on until this life is lost
                action = int(player.act(ale.getRAM()[None])[0])
                _, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
    finally:
        env.close()
    return ServeContexts(
        np.stack([k[0] for k in kept]),
        np.stack([k[1] for k in kept]),
        *(np.array([k[i] for k in kept]) for i in range(2, 8)),
    )


@torch.inference_mode()
def dreamed_serves(
    model: REMModel,
    contexts: ServeContexts,
    first_action: int,
    horizon: int,
    samples: int = 8,
    seed: int = 0,
    temperature: float = 1.0,
    threshold: float = BreakoutBallProbe.threshold,
) -> DreamedServes:
    """Shares of ``samples`` dreams from each context in which a ball shows up / a life ends.

    Every dream takes ``first_action`` and then NOOPs for ``horizon`` steps in all; a dream
    stops looking for the ball at its first dreamed episode end. ``threshold`` is the probe's
    least redness of a ball (its default finds the faint red smudges of a dream too; the real
    ball measures 61 or more in 64x64 frames).

    Returns:
        The shares of the dreams with a ball found by the probe, with a dreamed episode end,
        and with a ball at the first dreamed step.
    """
    model.eval()
    device = model.start_tokens.device
    n, context = contexts.frames.shape[:2]
    size = model.config.tokenizer.image_size
    frames = contexts.frames.reshape(n * context, *contexts.frames.shape[2:])
    if frames.shape[1] != size:  # a model of smaller frames (tests): the same area resize
        frames = np.stack(
            [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
        )
    tokens = model.encode(frames_to_tensor(frames, device)).view(n, context, -1)  # (N, C, K)
    tokens = tokens.repeat_interleave(samples, 0)  # (N * samples, C, K)
    actions = torch.as_tensor(contexts.actions, device=device).repeat_interleave(samples, 0)
    generator = torch.Generator(device=device).manual_seed(seed)
    state = model.start_state(tokens, actions)
    probe = BreakoutBallProbe(threshold=threshold)
    seen = np.zeros(n * samples, dtype=bool)
    ended = np.zeros(n * samples, dtype=bool)
    first = np.zeros(n * samples, dtype=bool)
    for h in range(horizon):
        step_actions = torch.full((n * samples,), first_action if h == 0 else NOOP, device=device)
        step, state = model.imagine_step(state, step_actions, temperature, generator=generator)
        seen |= probe.find(to_pixels(model.decode(step.obs_tokens))).found & ~ended
        if h == 0:
            first = seen.copy()
        ended |= step.ends.cpu().numpy()
    shares = (found.reshape(n, samples).mean(axis=1) for found in (seen, ended, first))
    return DreamedServes(*shares)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rem_train.serve_check",
        description="Does a Breakout world model serve only after FIRE? From real serve states "
        "(no ball in play), dream NOOPs only and FIRE first; print how often a ball shows up "
        "in each, beside the real game.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="Breakout model folder, Hub repo id, rem-train run folder or checkpoint file",
    )
    parser.add_argument("--contexts", type=int, default=16, help="real serve states")
    parser.add_argument(
        "--context-frames", type=int, default=20, help="real frames each dream starts from"
    )
    parser.add_argument(
        "--horizon",
        type=int,
        default=30,
        help="dreamed steps (30: after FIRE and NOOPs the real game loses the life in most)",
    )
    parser.add_argument("--samples", type=int, default=8, help="dreams per serve state")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature of the dreams"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=BreakoutBallProbe.threshold,
        help="least redness (0-255) of a dreamed ball (61: as red as the real ball at least)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the real games and of the dreams' samples"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the serve table; returns 0."""
    args = build_parser().parse_args(argv)
    if min(args.contexts, args.context_frames, args.horizon, args.samples) < 1:
        raise SystemExit("--contexts, --context-frames, --horizon and --samples must be positive")
    try:
        loaded = load_source(args.model, need_actor_critic=False)
    except ValueError as err:
        raise SystemExit(f"python -m rem_train.serve_check: {err}") from err
    if loaded.game != "Breakout":
        raise SystemExit(f"serve_check is for Breakout models; {args.model} is {loaded.game}")
    model = loaded.model
    contexts = serve_contexts(args.contexts, args.context_frames, args.horizon, args.seed)
    print(
        f"{args.contexts} real serve states ({args.context_frames} frames, no ball in play), "
        f"{args.samples} dreams of {args.horizon} steps each (temperature {args.temperature:g}, "
        f"ball threshold {args.threshold:g})"
    )
    print(
        "| actions | ball shows up: dream / real | a life is lost: dream / real "
        "| a ball at the first step: dream / real |"
    )
    print("|---|---|---|---|")
    for name, first, real_ball, real_lost, real_first in (
        ("NOOP only", NOOP, contexts.real_noop, contexts.lost_noop, contexts.first_noop),
        ("FIRE, then NOOP", FIRE, contexts.real_fire, contexts.lost_fire, contexts.first_fire),
    ):
        dreamed = dreamed_serves(
            model, contexts, first, args.horizon, args.samples, args.seed, args.temperature,
            args.threshold,
        )  # fmt: skip
        print(
            f"| {name} | {dreamed.ball.mean():.3f} / {real_ball.mean():.3f} | "
            f"{dreamed.ended.mean():.3f} / {real_lost.mean():.3f} | "
            f"{dreamed.first.mean():.3f} / {real_first.mean():.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
