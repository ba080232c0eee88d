"""The world model's reward and end heads on real segments (teacher-forced), against the labels.

``rem-env fidelity`` measures rewards and ends in dreams, where a head can be wrong because the
dreamed frames went astray or because the head cannot read even real frames. This check tells
the two apart: it gives the world model real segments of a replay buffer (every frame real, as
in training) and compares its reward and end heads with the real labels, step by step. Run on a
run's own replay buffer and on one it never trained on, it also tells a head that underfits
(weak on both) from one that overfits (weak only on the new one).

For each head: the mean negative log-likelihood of the real label (event or not), beside that
of a head that knows only how often the event comes (``base_nll``: the labels' own entropy), and
precision and recall, both as a dream at temperature 1 samples them (expected counts from the
predicted probabilities) and for the likeliest class. A reward event is a non-zero reward (the
fidelity report's definition); an end event is an episode end (a lost life in training).

From the command line, for a model folder, a run folder or one checkpoint file of a run (see
:func:`rem_train.sources.load_source`) and a replay buffer::

    python -m rem_train.event_check MODEL RUN_FOLDER/replay --segments 256
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rem_env import REMModel
from rem_train.batches import frames_to_tensor
from rem_train.replay import ReplayBuffer
from rem_train.sources import replay_check_parser, run_replay_check

__all__ = ["EventCheck", "EventCounts", "check_events", "main"]

NO_REWARD_CLASS = 1
"""The reward head's class of a zero reward (classes are ``sign(r) + 1``)."""


@dataclass(frozen=True)
class EventCheck:
    """How well one head (rewards or ends) reads real steps.

    Attributes:
        steps: Real steps checked.
        events: Of them, steps with the event (a non-zero reward; an episode end).
        nll: Mean negative log-likelihood (nats) of each step's real label, event or not.
        base_nll: The same for a head that predicts only the events' share of the steps (the
            labels' entropy): ``nll`` below it is what the head learned from the frames.
        precision: Of the events a dream at temperature 1 would draw (expected counts), the
            share at real events (None if it would draw none).
        recall: Of the real events, the share a dream at temperature 1 would draw.
        likeliest_precision: Precision of the likeliest class (temperature 0).
        likeliest_recall: Recall of the likeliest class.
    """

    steps: int
    events: int
    nll: float | None
    base_nll: float | None
    precision: float | None
    recall: float | None
    likeliest_precision: float | None
    likeliest_recall: float | None


class EventCounts:
    """Running sums of one head's figures over batches; :meth:`result` gives the check.

    Example:
        >>> counts = EventCounts()
        >>> counts.add(torch.tensor([0.9, 0.1]), torch.tensor([True, False]),
        ...            torch.tensor([True, False]))
        >>> counts.result().likeliest_precision, round(counts.result().recall, 2)
        (1.0, 0.9)
    """

    def __init__(self) -> None:
        self.steps = self.events = self.likeliest = self.likeliest_hits = 0
        self.nll = self.drawn = self.drawn_hits = 0.0

    def add(self, p_event: Tensor, likeliest: Tensor, real: Tensor) -> None:
        """(N,) predicted probability of the event, (N,) bool likeliest is the event, (N,)
        bool real event."""
        p = p_event.double().clamp(1e-12, 1 - 1e-12)
        self.steps += len(real)
        self.events += int(real.sum())
        self.nll -= float(torch.where(real, p.log(), (1 - p).log()).sum())
        self.drawn += float(p.sum())
        self.drawn_hits += float(p[real].sum())
        self.likeliest += int(likeliest.sum())
        self.likeliest_hits += int((likeliest & real).sum())

    def result(self) -> EventCheck:
        def share(part: float, whole: float) -> float | None:
            return part / whole if whole else None

        rate = share(self.events, self.steps)
        base = None
        if rate is not None:
            base = sum(-q * math.log(q) for q in (rate, 1 - rate) if q > 0)
        return EventCheck(
            self.steps,
            self.events,
            share(self.nll, self.steps),
            base,
            share(self.drawn_hits, self.drawn),
            share(self.drawn_hits, self.events),
            share(self.likeliest_hits, self.likeliest),
            share(self.likeliest_hits, self.events),
        )


@torch.no_grad()
def check_events(
    model: REMModel,
    replay: ReplayBuffer,
    rng: np.random.Generator,
    segments: int = 256,
    length: int = 20,
    batch_size: int = 16,
) -> dict[str, EventCheck]:
    """Teacher-forced check of the reward and end heads on ``segments`` replay segments.

    Every real step of the segments counts, the first ones too (their heads read fewer frames
    before them than a dream's first step does).

    Args:
        model: The tokenizer and world model (used in eval mode, left in eval mode).
        replay: Real segments are drawn from it (right-padded, as the world model trains on).
        rng: Draws the segments.
        segments: Segments drawn.
        length: Steps per segment.
        batch_size: Segments per forward pass.

    Returns:
        ``{"reward": EventCheck, "end": EventCheck}``.

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL))
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (64, 64, 3)) as buf:
        ...     for t in range(12):
        ...         buf.append(np.zeros((64, 64, 3), np.uint8), 0, 1.0, terminated=t == 11)
        ...     checks = check_events(model, buf, np.random.default_rng(0), segments=4)
        >>> rewards = checks["reward"]  # every step rewarded: nothing to learn beyond the rate
        >>> rewards.events == rewards.steps, rewards.base_nll
        (True, 0.0)
    """
    model.eval()
    device = model.start_tokens.device
    counts = {"reward": EventCounts(), "end": EventCounts()}
    for first in range(0, segments, batch_size):
        rows = min(batch_size, segments - first)
        batch = replay.sample_segments(rows, length, rng, pad="right").to_torch(device)
        b, t = batch.mask.shape
        frames = frames_to_tensor(batch.obs.flatten(0, 1))  # (B*T, 3, H, W)
        tokens = model.encode(frames).unflatten(0, (b, t))  # (B, T, K)
        out = model.forward_segments(tokens, batch.actions)
        mask = batch.mask
        reward_p = out.reward_logits[mask].softmax(-1)  # (N, 3)
        counts["reward"].add(
            1 - reward_p[:, NO_REWARD_CLASS],
            reward_p.argmax(-1) != NO_REWARD_CLASS,
            batch.rewards[mask] != 0,
        )
        end_p = out.end_logits[mask].softmax(-1)  # (N, 2)
        counts["end"].add(end_p[:, 1], end_p.argmax(-1) == 1, batch.ends[mask])
    return {name: c.result() for name, c in counts.items()}


def build_parser() -> argparse.ArgumentParser:
    return replay_check_parser(
        "python -m rem_train.event_check",
        "The world model's reward and end heads on real replay segments (teacher-forced), "
        "against the real labels.",
        segments=256,
        length=20,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rem_train.event_check MODEL REPLAY``: prints the check as JSON."""
    return run_replay_check(
        build_parser(),
        argv,
        lambda source, replay, rng, segments, length: check_events(
            source.model, replay, rng, segments, length
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
