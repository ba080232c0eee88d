"""Fit a patch tokenizer by k-means on real frames (not in REM).

A :class:`~rem_env.models.patch_tokenizer.PatchTokenizer` turns each 8x8 patch of a frame into
the id of the nearest of ``vocab_size`` fixed patches, so its tokens change only where a patch's
own pixels change. This module plays the real game (as ``python -m rem_train.pretrain_tokenizer``
does: the scripted player and random actions), cuts the frames into patches, and picks the fixed
patches by k-means over the distinct patches, each weighing its count to the power
``count_power``: at 1 every patch of every frame counts once and the background takes most of the
codes; below 1 rare patches such as Breakout's ball at each of its positions weigh more. The
held-out frames' reconstruction report (PSNR, codes used, object recall of the game's probes)
goes in ``fit.json``, and the model folder ``export/`` (the fitted tokenizer with a fresh
``patch`` world model) is what ``rem-train --model patch --init-from OUT/export --init-parts
tokenizer`` starts a run from.

Run folder: ``frames.npz`` (the frame set, reused by a second fit), ``fit.json``, ``export/``.

Example:
    python -m rem_train.fit_patch_tokenizer --game Breakout --out ~/runs/patches
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rem_env import REMModel
from rem_env.config import TokenizerConfig
from rem_env.models.patch_tokenizer import shift_rows
from rem_train.config import PATCH_TOKENIZER, TrainConfig
from rem_train.config_options import add_config_options
from rem_train.export import START_CONTEXTS, play_start_contexts
from rem_train.pretrain_tokenizer import FrameSet, collect_frames, reconstruction_report
from rem_train.warm_start import LINEAGE_FILE

__all__ = ["FitConfig", "distinct_patches", "fit", "fit_patches", "frame_patches", "main", "parser"]


@dataclass(frozen=True)
class FitConfig:
    """Settings of a patch tokenizer fit."""

    game: str = "Breakout"
    """Atari game whose real frames the patches are fitted to (one of the Atari 100K games)."""
    frames: int = 40_000
    """Real frames collected (agent steps, REM's preprocessing with life loss as episode end)."""
    scripted_share: float = 0.8
    """Share of the frames played by the scripted player (the rest: random actions)."""
    held_out: int = 2_048
    """Frames kept aside for the reconstruction report."""
    vocab_size: int = 512
    """Codes: the patches' cluster centres (k-means), each an 8x8 patch the decoder shows."""
    iterations: int = 30
    """Rounds of k-means (Lloyd's) after a k-means++ start."""
    count_power: float = 0.3
    """A distinct patch weighs its count to this power (1: every patch of every frame counts)."""
    seed: int = 0
    """Seed of the games played and of the k-means start."""
    row_offset: int = 0
    """Rows the patch grid starts above the frame (0-7; the frames' bottom rows that many must be
    black). Breakout: 3 ends a row of patches where the bricks end, so that a ball below them
    has a patch of its own (and the paddle's patch starts 4 rows above the paddle)."""

    def __post_init__(self) -> None:
        for name in ("frames", "held_out", "vocab_size", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.scripted_share <= 1.0:
            raise ValueError(f"scripted_share must lie in [0, 1], got {self.scripted_share}")
        if not 0.0 <= self.count_power <= 1.0:
            raise ValueError(f"count_power must lie in [0, 1], got {self.count_power}")
        side = PATCH_TOKENIZER.patch_size
        if not 0 <= self.row_offset < side:
            raise ValueError(f"row_offset must lie in [0, {side}), got {self.row_offset}")


def frame_patches(frames: np.ndarray, patch_size: int, row_offset: int = 0) -> np.ndarray:
    """Cuts (N, H, W, C) frames into (N * (H/p) * (W/p), C * p * p) patches, raster order,
    each patch channel-major as :class:`~rem_env.models.patch_tokenizer.PatchTokenizer` reads
    them (with ``row_offset``, from the frames moved down by that many rows, black above).

    Raises:
        ValueError: If the bottom ``row_offset`` rows, which such a grid drops, are not black.
    """
    n, h, w, c = frames.shape
    p = patch_size
    if row_offset:
        lit = int(frames[:, h - row_offset :].any(axis=(1, 2, 3)).sum())
        if lit:
            raise ValueError(
                f"a grid {row_offset} rows above the frame drops its bottom {row_offset} rows, "
                f"but they are not black in {lit} of {n} frames: choose a smaller row offset"
            )
        frames = shift_rows(torch.from_numpy(frames), row_offset, dim=1).numpy()
    grid = frames.reshape(n, h // p, p, w // p, p, c)  # (N, h, p, w, p, C)
    grid = grid.transpose(0, 1, 3, 5, 2, 4)  # (N, h, w, C, p, p)
    return grid.reshape(-1, c * p * p)


def distinct_patches(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of (N, D) uint8 patches and how often each occurs.

    ``np.unique(patches, axis=0)`` sorts the rows as opaque records, minutes for the 2.5M
    patches of 40,000 frames; this sorts a 64-bit key of each row instead, and checks that the
    rows sharing a key are equal (falling back to ``np.unique`` where two differ).

    Example:
        >>> distinct, counts = distinct_patches(np.array([[1, 2], [3, 4], [1, 2]], np.uint8))
        >>> sorted(zip(map(tuple, distinct.tolist()), counts.tolist()))
        [((1, 2), 2), ((3, 4), 1)]
    """
    multipliers = np.random.default_rng(0).integers(1, 2**63, patches.shape[1], dtype=np.uint64)
    keys = patches.astype(np.uint64) @ multipliers  # (N,), wrapping modulo 2**64
    _, first, inverse, counts = np.unique(
        keys, return_index=True, return_inverse=True, return_counts=True
    )
    distinct = patches[first]
    if not np.array_equal(distinct[inverse], patches):  # two patches share a key
        return np.unique(patches, axis=0, return_counts=True)
    return distinct, counts


def fit_patches(
    distinct: np.ndarray,
    counts: np.ndarray,
    vocab_size: int,
    iterations: int,
    count_power: float,
    seed: int,
) -> np.ndarray:
    """Weighted k-means of distinct uint8 patches (P, D) seen ``counts`` (P,) times each:
    (vocab_size, D) float32 centres in [0, 1].

    Each distinct patch weighs its count to ``count_power``; k-means++
    picks the starting centres. A centre left without patches moves to the patch that its centre
    serves worst (largest weighted squared distance). With fewer distinct patches than codes,
    every distinct patch is a code and the rest repeat the first.

    Example:
        >>> patches = np.array([[0, 0], [0, 0], [255, 255], [249, 255]], dtype=np.uint8)
        >>> distinct, counts = np.unique(patches, axis=0, return_counts=True)
        >>> centres = fit_patches(distinct, counts, 2, iterations=5, count_power=1.0, seed=0)
        >>> (centres[centres[:, 0].argsort()] * 255).round().tolist()
        [[0.0, 0.0], [252.0, 255.0]]
    """
    points = torch.from_numpy(distinct.astype(np.float32) / 255.0)  # (P, D)
    weights = torch.from_numpy(counts.astype(np.float64) ** count_power).float()  # (P,)
    if len(points) <= vocab_size:
        extra = points[torch.arange(vocab_size - len(points)) % len(points)]
        return torch.cat([points, extra]).numpy()
    generator = torch.Generator().manual_seed(seed)
    norms = points.pow(2).sum(1)  # (P,)

    def distances(centres: torch.Tensor) -> torch.Tensor:
        return (norms[:, None] + centres.pow(2).sum(1) - 2.0 * points @ centres.t()).clamp_(0)

    first = torch.multinomial(weights, 1, generator=generator)
    centres = [points[first[0]]]
    nearest = distances(points[first]).squeeze(1)  # (P,)
    for _ in range(vocab_size - 1):
        index = torch.multinomial(weights * nearest + 1e-12, 1, generator=generator)[0]
        centres.append(points[index])
        nearest = torch.minimum(nearest, distances(points[index][None]).squeeze(1))
    centre = torch.stack(centres)  # (V, D)
    for _ in range(iterations):
        dist = distances(centre)  # (P, V)
        assigned = dist.argmin(1)  # (P,)
        total = torch.zeros_like(centre).index_add_(0, assigned, points * weights[:, None])
        mass = torch.zeros(vocab_size).index_add_(0, assigned, weights)
        centre = total / mass.clamp_min(1e-12)[:, None]
        empty = (mass == 0).nonzero().flatten()
        if len(empty):
            served = dist.gather(1, assigned[:, None]).squeeze(1) * weights  # (P,)
            centre[empty] = points[served.topk(len(empty)).indices]
    return centre.numpy()


def fit(config: FitConfig, out: Path, command: str = "rem_train.fit_patch_tokenizer.fit()") -> Path:
    """Fits a patch tokenizer in ``out`` and exports it; returns the exported model folder."""
    out.mkdir(parents=True, exist_ok=True)
    frames_path = out / "frames.npz"
    started = time.perf_counter()
    if frames_path.is_file():
        data = FrameSet.load(frames_path)
        if len(data) != config.frames + config.held_out:
            raise ValueError(
                f"{frames_path} holds {len(data)} frames, not frames + held_out = "
                f"{config.frames + config.held_out}: give the same --frames and --held-out, or "
                "a new --out"
            )
    else:
        data = collect_frames(
            config.game, config.frames + config.held_out, config.scripted_share, config.seed
        )
        data.save(frames_path)
    collected = time.perf_counter()
    order = np.random.default_rng(config.seed).permutation(len(data))
    held = FrameSet(data.frames[order[: config.held_out]], data.ram[order[: config.held_out]])
    train = data.frames[order[config.held_out :]]

    run = dataclasses.replace(TrainConfig.from_preset("breakout", config.game), model="patch")
    model_config = run.model_config()
    tok = dataclasses.replace(
        model_config.tokenizer, vocab_size=config.vocab_size, row_offset=config.row_offset
    )
    model = REMModel(dataclasses.replace(model_config, tokenizer=tok))
    distinct, counts = distinct_patches(frame_patches(train, tok.patch_size, tok.row_offset))
    centres = fit_patches(
        distinct,
        counts,
        config.vocab_size,
        config.iterations,
        config.count_power,
        config.seed,
    )
    model.tokenizer.set_patches(torch.from_numpy(centres).reshape(_patch_shape(tok)))
    _silence_heads(model)
    _embed_pixels(model)
    model.set_start_contexts(*play_start_contexts(model, config.game, START_CONTEXTS, config.seed))
    fitted = time.perf_counter()
    report: dict[str, Any] = {
        "command": command,
        "config": asdict(config),
        "collect_seconds": round(collected - started, 1),
        "fit_seconds": round(fitted - collected, 1),
        "distinct_patches": len(distinct),
        "held_out": reconstruction_report(model, held, config.game),
    }
    (out / "fit.json").write_text(json.dumps(report, indent=2) + "\n")
    folder = out / "export"
    model.save_pretrained(folder)
    record = {
        "lineage": [],
        "command": command,
        "preset": "patch tokenizer fit",
        "env_steps": len(data),
    }
    (folder / LINEAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def _silence_heads(model: REMModel) -> None:
    """Sets the output layers of the untrained world model's heads to zero: it then predicts
    every token, reward and end alike, instead of random logits that would drown a frame conv
    trained on it first (``python -m rem_train.pretrain_frame_conv``); they learn from the first
    step of a run."""
    wm = model.world_model
    with torch.no_grad():
        for head in (wm.head_obs, wm.head_reward, wm.head_end):
            head[-1].weight.zero_()
            head[-1].bias.zero_()


def _embed_pixels(model: REMModel) -> None:
    """Starts the world model's embedding of each code as the principal components of the
    code's pixels (scaled to unit variance), so that codes that look alike start alike: a ball
    one pixel further on is a neighbour, not a stranger. The rest of the embedding (the actions'
    and the prediction tokens') stays as it is."""
    codebook = model.tokenizer.codebook.detach()  # (V, C*p*p)
    centred = codebook - codebook.mean(0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)  # (min(V, D), D)
    width = model.world_model.embedding.weight.shape[1]
    components = centred @ directions[:width].t()  # (V, min(width, D))
    components = components / components.std()
    with torch.no_grad():
        rows = model.world_model.embedding.weight[: len(codebook)]
        rows.zero_()
        rows[:, : components.shape[1]] = components


def _patch_shape(tok: TokenizerConfig) -> tuple[int, int, int, int]:
    return (tok.vocab_size, tok.in_channels, tok.patch_size, tok.patch_size)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rem_train.fit_patch_tokenizer``."""
    p = argparse.ArgumentParser(
        prog="python -m rem_train.fit_patch_tokenizer", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="run folder (its frames.npz is reused)")
    add_config_options(p, FitConfig())
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = vars(parser().parse_args(argv))
    out = Path(os.path.expanduser(args.pop("out")))
    try:
        config = FitConfig(**args)
    except ValueError as err:
        parser().error(str(err))
    command = shlex.join(["python", "-m", "rem_train.fit_patch_tokenizer", *argv])
    folder = fit(config, out, command)
    report = json.loads((out / "fit.json").read_text())["held_out"]
    print(json.dumps(report))
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
