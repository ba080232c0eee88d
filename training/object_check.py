"""The world model's next frame on real segments, checked object by object (Breakout's ball).

Token accuracy and PSNR hide whether a dream draws the objects that matter: Breakout's ball is
one or two of 64 patches. This check gives the world model real segments of the replay buffer,
takes its most likely tokens for each frame after the first ``context`` (every frame before it
real: the first imagined step of a dream from a real context), decodes them and asks the game's
object probes (:mod:`rem_env.probes`) whether the object is where the real frame has it. The real
frame itself is the reference (the probe finds the ball in real 64x64 frames), so it needs no
emulator RAM and no real game, and takes seconds: the trainer runs it at every evaluation, so a
run's log shows when its world model starts to draw the ball. ``rem-env fidelity`` remains the
full report (sampled dreams, ten steps, rewards and ends, on freshly played games).

Where the prediction misses, the same shares by the row the object is at in the real frame tell
where (:attr:`ObjectCheck.bands`: for Breakout's ball, up at the bricks, in the middle of the
open area and down at the paddle, the rows :mod:`rem_env.sightings` sorts its departures by),
and two more shares tell how: whether the object is at least roughly
in place (within twice the distance), and how the prediction does on frames where the object
moved by the same step as in the frame before (*steady* motion: the two previous real frames
give its position exactly, so a miss there is not the game being unpredictable). And as a
yardstick, how often a rule that reads only the two previous real frames would be right: the
object moved on by the same step again (``2 * p[t-1] - p[t-2]``, within the same distance).

From the command line, for a model folder, a run folder or one checkpoint file of a run (see
:func:`rem_train.sources.load_source`) and a run's replay buffer::

    python -m rem_train.object_check MODEL RUN_FOLDER/replay --segments 64
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rem_env import REMModel
from rem_env.fidelity import to_pixels
from rem_env.probes import NEAR_PIXELS, ObjectProbe, ProbeHits, probes_for
from rem_env.returns import LOW_ROW
from rem_env.sightings import TOP_ROW
from rem_train.batches import frames_to_tensor
from rem_train.replay import ReplayBuffer
from rem_train.sources import replay_check_parser, run_replay_check

__all__ = ["ROW_EDGES", "BandCheck", "ObjectCheck", "check_objects", "main"]

ROW_EDGES = (TOP_ROW, LOW_ROW)
"""Rows (of a 64x64 frame) that split the real frames into the bands of
:attr:`ObjectCheck.bands`: above the first, between the two, at or below the last."""


@dataclass(frozen=True)
class BandCheck:
    """The object check over the real frames with the object in one band of rows.

    Attributes:
        rows: The band, e.g. ``"36-48"`` (rows at or above 36 and below 48), ``"<36"``,
            ``">=48"`` (pixels of a 64x64 frame).
        frames: Real frames with the object in the band.
        reconstruction: Share whose tokenizer reconstruction has it within ``NEAR_PIXELS``.
        predicted: Share whose prediction has it within ``NEAR_PIXELS``.
        predicted_anywhere: Share whose prediction shows the object at all.
    """

    rows: str
    frames: int
    reconstruction: float | None
    predicted: float | None
    predicted_anywhere: float | None


@dataclass(frozen=True)
class ObjectCheck:
    """How often an object is drawn within ``NEAR_PIXELS`` (2) of where a real frame has it.

    Attributes:
        frames: Real frames in which the probe found the object (the denominator).
        reconstruction: Share of them whose tokenizer reconstruction has it nearby (the ceiling).
        predicted: Share whose world-model prediction (argmax tokens, decoded) has it nearby.
        predicted_anywhere: Share whose prediction shows the object at all.
        patch_accuracy: Share in which the most likely token of the patch that holds the
            object's centre is the real frame's token there.
        patch_nll: Mean negative log-likelihood (nats) of the real token of that patch: it
            falls as the world model learns the object, long before the argmax draws it.
        predicted_roughly: Share whose prediction has it within ``2 * NEAR_PIXELS`` (4 px).
        steady_frames: Frames (of ``frames``) in which the object moved by the same step as in
            the frame before, within 1 px per axis (found in both previous real frames).
        steady_predicted: Share of the steady frames whose prediction has it within
            ``NEAR_PIXELS`` (a constant-velocity guess from the real frames would be right in
            all of them).
        extrapolated: Share of the frames in which that constant-velocity guess, the object's
            place in the two previous real frames carried on by one more step, is within
            ``NEAR_PIXELS``: what a rule that reads two real frames achieves, a yardstick for
            ``predicted`` (a property of the real frames, not of the model).
        bands: ``reconstruction``, ``predicted`` and ``predicted_anywhere`` by the row of the
            object in the real frame (one :class:`BandCheck` per band of :data:`ROW_EDGES`).
    """

    frames: int
    reconstruction: float | None
    predicted: float | None
    predicted_anywhere: float | None
    patch_accuracy: float | None
    patch_nll: float | None
    predicted_roughly: float | None
    steady_frames: int
    steady_predicted: float | None
    extrapolated: float | None
    bands: tuple[BandCheck, ...] = ()


@torch.no_grad()
def check_objects(
    model: REMModel,
    replay: ReplayBuffer,
    probes: tuple[ObjectProbe, ...],
    rng: np.random.Generator,
    segments: int = 64,
    length: int = 10,
    batch_size: int = 16,
) -> dict[str, ObjectCheck]:
    """Teacher-forced next-frame check of each probe's object on ``segments`` replay segments.

    Args:
        model: The tokenizer and world model (used in eval mode, left in eval mode).
        replay: Real segments are drawn from it (right-padded, as the world model trains on).
        probes: The game's object probes (:func:`rem_env.probes.probes_for`).
        rng: Draws the segments.
        segments: Segments drawn.
        length: Frames per segment.
        batch_size: Segments per forward pass.

    Returns:
        One :class:`ObjectCheck` per probe name (shares are None where no real frame had it).

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_env.probes import BreakoutBallProbe
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL))
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (64, 64, 3)) as buf:
        ...     for t in range(12):
        ...         buf.append(np.zeros((64, 64, 3), np.uint8), 0, 0.0, terminated=t == 11)
        ...     rng = np.random.default_rng(0)
        ...     checks = check_objects(model, buf, (BreakoutBallProbe(),), rng, segments=4)
        >>> checks["ball"].frames, checks["ball"].predicted  # black frames: no ball to look for
        (0, None)
    """
    model.eval()
    context = model.config.world_model.context_length
    device = model.start_tokens.device
    counts = {probe.name: np.zeros(9, dtype=np.int64) for probe in probes}
    by_band = {name: np.zeros((len(ROW_EDGES) + 1, 4), dtype=np.int64) for name in counts}
    nll = dict.fromkeys(counts, 0.0)
    side = model.config.tokenizer.latent_size  # tokens per row of the grid
    patch = model.config.tokenizer.image_size // side  # pixels per patch side
    row_offset = model.config.tokenizer.row_offset
    for first in range(0, segments, batch_size):
        rows = min(batch_size, segments - first)
        batch = replay.sample_segments(rows, length, rng, pad="right").to_torch(device)
        b, t = batch.mask.shape
        frames = frames_to_tensor(batch.obs.flatten(0, 1))  # (B*T, 3, H, W)
        tokens = model.encode(frames).unflatten(0, (b, t))  # (B, T, K)
        logits = model.forward_segments(tokens, batch.actions).obs_logits
        target = batch.mask.clone()
        target[:, :context] = False  # predicted blocks: real, after the context
        if not bool(target.any()):
            continue
        every = to_pixels(frames)  # (B*T, H, W, 3): the frames before the predicted ones too
        chosen = target.cpu().numpy()  # (B, T) bool
        truth, log_p = tokens[target], logits[target].log_softmax(-1)  # (N, K), (N, K, V)
        rebuilt = to_pixels(model.decode(truth, check_values=False))
        predicted = to_pixels(model.decode(log_p.argmax(-1), check_values=False))
        for probe in probes:
            in_segments = probe.find(every)  # frame by frame
            seen = ProbeHits(  # in the predicted real frames, (N, 2) and (N,)
                in_segments.positions.reshape(b, t, 2)[chosen],
                in_segments.found.reshape(b, t)[chosen],
            )
            hits = probe.find(predicted)
            near = [_near(probe.find(rebuilt), seen), _near(hits, seen)]
            roughly = _near(hits, seen, 2 * NEAR_PIXELS)
            steady = _steady(in_segments, chosen)
            anywhere = hits.found & seen.found
            band = np.digitize(seen.positions[:, 0] * 64 / frames.shape[-2], ROW_EDGES)  # (N,)
            for column, hit in enumerate((seen.found, near[0], near[1], anywhere)):
                np.add.at(by_band[probe.name][:, column], band[hit], 1)
            where = torch.as_tensor(_patch_of(seen.positions[seen.found], patch, side, row_offset))
            index = torch.as_tensor(np.flatnonzero(seen.found))
            at = log_p[index, where]  # (n, V): the object's patch in each frame
            real_token = truth[index, where]
            right = int((at.argmax(-1) == real_token).sum())
            nll[probe.name] -= float(at.gather(-1, real_token[:, None]).sum())
            counts[probe.name] += [
                seen.found.sum(),
                near[0].sum(),
                near[1].sum(),
                anywhere.sum(),
                right,
                roughly.sum(),
                steady.sum(),  # found in frame t too
                (steady & near[1]).sum(),
                _extrapolated(in_segments, chosen).sum(),
            ]
    return {name: _check(c, nll[name], by_band[name]) for name, c in counts.items()}


def _patch_of(positions: np.ndarray, patch: int, side: int, row_offset: int) -> np.ndarray:
    """(n,) raster index of the patch holding each of (n, 2) ``(row, column)`` frame positions,
    on a grid of ``side`` x ``side`` patches of ``patch`` pixels that starts ``row_offset`` rows
    above the frame (a patch tokenizer's ``row_offset``)."""
    grid = np.floor(positions + np.array([row_offset, 0])) // patch  # (n, 2) patch row, column
    grid = np.clip(grid, 0, side - 1).astype(np.int64)
    return grid[:, 0] * side + grid[:, 1]


def _near(hits: ProbeHits, seen: ProbeHits, pixels: float = NEAR_PIXELS) -> np.ndarray:
    """(N,) bool: found in both, centres within ``pixels`` (as ``rem-env fidelity`` counts)."""
    close = np.linalg.norm(hits.positions - seen.positions, axis=1) <= pixels
    return seen.found & hits.found & close


def _change_of_step(every: ProbeHits, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over the ``chosen`` (B, T) frames: (N, 2) how far frame t's step differs from frame t-1's,
    ``p[t] - (2 * p[t-1] - p[t-2])`` in real frames of one segment, and (N,) whether the probe
    found the object in all three (frames 0 and 1 of a segment: never)."""
    b, t = chosen.shape
    found = every.found.reshape(b, t)
    position = every.positions.reshape(b, t, 2)
    change = np.zeros((b, t, 2))
    change[:, 2:] = position[:, 2:] - 2 * position[:, 1:-1] + position[:, :-2]
    seen = np.zeros((b, t), dtype=bool)
    seen[:, 2:] = found[:, 2:] & found[:, 1:-1] & found[:, :-2]
    return change[chosen], seen[chosen]


def _steady(every: ProbeHits, chosen: np.ndarray) -> np.ndarray:
    """(N,) bool over the ``chosen`` (B, T) frames: the object moved by the same step (within
    1 px per axis) as from the frame before, in real frames t-2, t-1, t of one segment."""
    change, seen = _change_of_step(every, chosen)
    return seen & (np.abs(change).max(axis=-1) <= 1.0)


def _extrapolated(every: ProbeHits, chosen: np.ndarray) -> np.ndarray:
    """(N,) bool over the ``chosen`` (B, T) frames: the object's place in real frames t-2 and
    t-1 of one segment, carried on by the same step (``2 * p[t-1] - p[t-2]``), is within
    ``NEAR_PIXELS`` of where real frame t has it."""
    change, seen = _change_of_step(every, chosen)
    return seen & (np.linalg.norm(change, axis=-1) <= NEAR_PIXELS)


def _band_name(index: int) -> str:
    """``"<36"``, ``"36-48"`` or ``">=48"``: band ``index`` of :data:`ROW_EDGES`."""
    edges = [f"{edge:g}" for edge in ROW_EDGES]
    if index == 0:
        return f"<{edges[0]}"
    if index == len(edges):
        return f">={edges[-1]}"
    return f"{edges[index - 1]}-{edges[index]}"


def _check(counts: np.ndarray, nll: float, by_band: np.ndarray) -> ObjectCheck:
    frames, steady = int(counts[0]), int(counts[6])
    shares = [float(c) / frames if frames else None for c in counts[1:5]]
    bands = tuple(
        BandCheck(
            _band_name(i), int(row[0]), *(int(c) / int(row[0]) if row[0] else None for c in row[1:])
        )
        for i, row in enumerate(by_band)
    )
    return ObjectCheck(
        frames,
        *shares,
        patch_nll=nll / frames if frames else None,
        predicted_roughly=float(counts[5]) / frames if frames else None,
        steady_frames=steady,
        steady_predicted=float(counts[7]) / steady if steady else None,
        extrapolated=float(counts[8]) / frames if frames else None,
        bands=bands,
    )


def build_parser() -> argparse.ArgumentParser:
    return replay_check_parser(
        "python -m rem_train.object_check",
        "The world model's next frame on real replay segments, checked object by object "
        "(teacher-forced, most likely tokens), beside the tokenizer's reconstruction.",
        segments=64,
        length=10,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rem_train.object_check MODEL REPLAY``: prints the check as JSON."""
    return run_replay_check(
        build_parser(),
        argv,
        lambda source, replay, rng, segments, length: check_objects(
            source.model, replay, probes_for(source.game), rng, segments, length
        ),
        refuse=lambda source: (
            None if probes_for(source.game) else f"no object probes for game {source.game!r}"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
