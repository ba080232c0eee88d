"""Train a world model's event reader alone, on real steps of replay buffers (not in REM).

An event reader (:class:`rem_env.models.event_reader.EventReader`) reads a step's reward and
episode end from the decoded pixels of the step's frame and the frame before it, and the action
after it. This module adds one to a model (or trains the one it has) on a pool of real steps:
``--pool`` steps drawn uniformly from the replay buffers plus every step with a reward or an end
in them, the frames given as the model's tokenizer reconstructs them (``decode(encode(frame))``:
what a dream shows; ``--frames real`` reads the replay's frames as they are, ~5 ms a frame
cheaper to gather). ``--frames dreamed`` gives them as the model dreams them: each step's frames
t-1 and t are imagined 1 to ``--dream-steps`` steps (drawn uniformly) from the real frames before,
with the real actions, and the label stays the real step's, so that the reader learns what a
dreamed frame says of the real reward and end (a step too near its episode's start for a real
context before the dream is reconstructed). ``--min-dream-steps 0`` draws the horizon from 0
instead: a step drawn 0 reads its reconstructed real frames, as a dream's first step does. The
pool holds the events more often than the game does; the output layer's bias is corrected for
it (by the log of each class's rate in the replays over its rate in the pool) before every
evaluation and the export; a reader the starting model already has (exported so) gets the same
correction taken off before it trains on.

``--heads`` says which of the world model's heads the reader takes over: the output layers of
those heads (and of a frame conv's event layers) are set to zero, so that their logits are the
reader's alone; the heads left out keep their logits and the reader's rows for them stay at zero.
Every ``eval_every`` steps the heads' check (:func:`rem_train.event_check.check_events`) scores
the whole world model on held-out segments. The export is the starting model with the event
reader of the evaluation whose held-out NLL (of the heads handed over, summed) was lowest (a
reader this size overfits a pool of ~50,000 steps within a few thousand steps); with ``--frames
dreamed`` that NLL is the one on ``--held-out-pool`` uniformly drawn held-out steps dreamed the
same way (the heads' check reads reconstructed real frames). Its tokenizer, RetNet, start
contexts and actor-critic are unchanged.

Run folder: ``progress.jsonl`` (one line per evaluation) and ``export/``.

Example:
    python -m rem_train.train_event_reader --init-from warm_starts/Breakout-vqvae \\
        --replay runs/breakout/replay --held-out runs/held_out/replay --out runs/er --steps 6000
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rem_env import REMModel
from rem_env.models.event_reader import EventReader
from rem_env.models.world_model import NUM_REWARD_CLASSES
from rem_train.batches import frames_to_tensor
from rem_train.event_check import check_events
from rem_train.replay import ReplayBuffer, StepLabels
from rem_train.run_log import log_line
from rem_train.sources import load_source, parse_replay_training, replay_training_parser
from rem_train.warm_start import export_with_lineage

__all__ = [
    "EventReaderTrainConfig",
    "StepPool",
    "corrected_bias",
    "dreamed_frames",
    "gather_steps",
    "hand_over_heads",
    "main",
    "parse_heads",
    "train",
]

HEADS = ("rewards", "ends")
"""The heads an event reader or window can take over."""
FRAMES = ("reconstructed", "real", "dreamed")
HEAD_CHECKS = {"rewards": "reward", "ends": "end"}
"""Each head's name in :func:`rem_train.event_check.check_events`'s result."""


def parse_heads(text: str) -> tuple[str, ...]:
    """The heads named in ``text`` (comma-separated :data:`HEADS`), checked.

    Example:
        >>> parse_heads("ends, rewards")
        ('ends', 'rewards')
    """
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or set(names) - set(HEADS):
        raise ValueError(f"--heads must name rewards, ends or both, got {text!r}")
    return names


@dataclass(frozen=True)
class EventReaderTrainConfig:
    """Settings of an event-reader training run."""

    width: int = 32
    """Channels of the reader's first layer (``--world-model-event-reader`` of rem-train)."""
    heads: str = "rewards,ends"
    """The heads the reader takes over: ``rewards``, ``ends`` or both, comma-separated."""
    frames: str = "reconstructed"
    """``reconstructed`` (the tokenizer's decodings of the frames, as a dream shows them),
    ``real`` (the replay's frames) or ``dreamed`` (imagined from real contexts)."""
    dream_steps: int = 3
    """With ``frames="dreamed"``: each step is dreamed ``min_dream_steps`` to this many steps
    (uniformly drawn)."""
    min_dream_steps: int = 1
    """With ``frames="dreamed"``: the fewest dream steps; 0 lets a step read its reconstructed
    real frames (as the dream's first step reads the real context)."""
    held_out_pool: int = 10_000
    """With ``frames="dreamed"``: held-out steps (uniformly drawn, dreamed the same way) whose
    NLL picks the export."""
    pool: int = 60_000
    """Steps drawn uniformly from the replays (every step with a reward or an end is added)."""
    steps: int = 6_000
    """Gradient steps (Adam), each on ``batch_size`` steps of the pool."""
    max_minutes: float = 0.0
    """Stop after the step that spends this many minutes of training (0: no limit)."""
    batch_size: int = 128
    """Steps of the pool per gradient step."""
    lr: float = 3e-4
    """Adam's learning rate."""
    eval_every: int = 1_000
    """Steps between the heads' checks on held-out segments (and after the last step); the
    export is the reader of the check with the lowest held-out NLL."""
    eval_segments: int = 1_024
    """Held-out segments of 20 steps the heads' check scores (seed 11, as its command line)."""
    seed: int = 0
    """Seed of the pool drawn, the batches and the new weights."""

    def head_names(self) -> tuple[str, ...]:
        """The heads of ``heads``, checked."""
        return parse_heads(self.heads)


@dataclass
class StepPool:
    """Real steps: frames t-1 and t as uint8 (N, 2, H, W, 3), the action after t (N,), the
    reward class ``sign(r) + 1`` (N,) and the end (N,) bool; ``rates`` are the (3,) reward class
    and (2,) end rates of the replays the pool was drawn from."""

    frames: np.ndarray
    actions: Tensor
    rewards: Tensor
    ends: Tensor
    rates: tuple[Tensor, Tensor]

    def __len__(self) -> int:
        return len(self.actions)


@torch.no_grad()
def gather_steps(
    model: REMModel,
    replays: list[ReplayBuffer],
    count: int,
    seed: int,
    reconstructed: bool,
    dream_steps: int = 0,
    events: bool = True,
    min_dream_steps: int = 1,
) -> StepPool:
    """``count`` uniformly drawn steps of the replays plus (``events``) every step with a reward
    or an end.

    The frame before an episode's first step is the step's own frame (as a dream's first step
    reads it where no frame came before). ``dream_steps > 0`` gives the frames as the model
    dreams them ``min_dream_steps`` to ``dream_steps`` steps (see :func:`dreamed_frames`).

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL))
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (64, 64, 3)) as buf:
        ...     for t in range(6):
        ...         buf.append(np.full((64, 64, 3), t, np.uint8), t % 4, float(t == 2),
        ...                    terminated=t == 5)
        ...     pool = gather_steps(model, [buf], 2, seed=0, reconstructed=False)
        >>> len(pool) >= 2, int(pool.rewards.max()), bool(pool.ends.any())
        (True, 2, True)
        >>> int(pool.frames[pool.rewards.argmax(), 0, 0, 0, 0])  # the frame before step 2
        1
    """
    rng = np.random.default_rng(seed)
    total = sum(r.num_steps for r in replays)
    if total == 0:
        raise ValueError("the replays hold no steps")
    frames, actions, rewards, ends = [], [], [], []
    counts = np.zeros(3), np.zeros(2)
    for replay in replays:
        labels = replay.step_labels()
        reward = np.sign(labels.rewards).astype(np.int64) + 1  # (n,)
        end, first = labels.terminated, labels.episode_first
        counts[0][:] += np.bincount(reward, minlength=3)
        counts[1][:] += np.bincount(end, minlength=2)
        share = round(count * replay.num_steps / total)
        chosen = np.unique(rng.integers(replay.num_steps, size=share))
        if events:
            chosen = np.union1d(chosen, np.flatnonzero((reward != 1) | end))
        for part in np.array_split(chosen, max(1, len(chosen) // 512)):
            if dream_steps > 0:
                frames.append(
                    dreamed_frames(model, replay, labels, part, dream_steps, rng, min_dream_steps)
                )
                continue
            before = np.maximum(part - 1, first[part])  # (n,): each step's frame before
            pair = np.stack([replay.observations_at(before), replay.observations_at(part)], 1)
            if reconstructed:
                pair = _reconstructed(model, pair)
            frames.append(pair)
        actions.append(labels.actions[chosen])
        rewards.append(reward[chosen])
        ends.append(end[chosen])
    rates = tuple(torch.as_tensor(c / c.sum(), dtype=torch.float32) for c in counts)
    return StepPool(
        np.concatenate(frames),
        torch.as_tensor(np.concatenate(actions), dtype=torch.long),
        torch.as_tensor(np.concatenate(rewards)),
        torch.as_tensor(np.concatenate(ends)),
        (rates[0], rates[1]),
    )


@torch.no_grad()
def dreamed_frames(
    model: REMModel,
    replay: ReplayBuffer,
    labels: StepLabels,
    steps: np.ndarray,
    dream_steps: int,
    rng: np.random.Generator,
    min_dream_steps: int = 1,
) -> np.ndarray:
    """(n, 2, H, W, 3) uint8: frames t-1 and t of each step t as the model dreams them.

    Each step draws a horizon h from ``min_dream_steps`` to ``dream_steps``; the dream starts
    from the real frames up to t-h (the model's context length of them), is fed the real
    actions and is sampled at temperature 1, and the frames are those an event reader reads at
    its step t (as :meth:`REMModel.reader_frames` gives them). A step without that many real
    frames of its episode before it dreams fewer steps; one drawn 0, or without any, is
    reconstructed (as :func:`gather_steps` does).
    ``labels`` are ``replay.step_labels()``.

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL)).eval()
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (64, 64, 3)) as buf:
        ...     for t in range(8):
        ...         buf.append(np.full((64, 64, 3), 20 * t, np.uint8), t % 4, 0.0, terminated=False)
        ...     rng = np.random.default_rng(0)
        ...     frames = dreamed_frames(model, buf, buf.step_labels(), np.arange(8), 3, rng)
        >>> frames.shape, frames.dtype
        ((8, 2, 64, 64, 3), dtype('uint8'))
    """
    context = model.config.world_model.context_length
    first = labels.episode_first[steps]
    # (n,): dream steps; the context frames start - context + 1 .. start = t - h are the episode's
    drawn = rng.integers(min_dream_steps, dream_steps + 1, size=len(steps))
    horizon = np.minimum(drawn, steps - first - context + 1)
    out = np.empty((len(steps), 2, *replay.obs_shape), np.uint8)
    near = horizon < 1
    if near.any():
        t = steps[near]
        pair = [replay.observations_at(np.maximum(t - 1, first[near])), replay.observations_at(t)]
        out[near] = _reconstructed(model, np.stack(pair, 1))
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for h in np.unique(horizon[~near]):
        rows = np.flatnonzero(horizon == h)
        start = steps[rows] - h  # (m,): the last real frame
        index = start[:, None] + np.arange(1 - context, 1)  # (m, C)
        frames = frames_to_tensor(torch.as_tensor(replay.observations_at(index.ravel())))
        tokens = model.encode(frames).unflatten(0, index.shape)  # (m, C, K)
        actions = torch.as_tensor(labels.actions[index[:, :-1]])  # (m, C-1)
        state = model.start_state(tokens, actions, check_values=False)
        previous, current = tokens[:, max(context - 2, 0)], tokens[:, -1]  # (m, K) each
        for k in range(h):
            action = torch.as_tensor(labels.actions[start + k])  # (m,)
            step, state = model.imagine_step(state, action, generator=generator)
            previous, current = current, step.obs_tokens
        pixels = model.decode(torch.cat([previous, current]), check_values=False)  # (2m, 3, H, W)
        out[rows] = _to_uint8(torch.stack(pixels.chunk(2), dim=1)).numpy()
    return out


def _to_uint8(frames: Tensor) -> Tensor:
    """(..., 3, H, W) frames in [0, 1] as (..., H, W, 3) uint8."""
    return (frames * 255).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)


def _reconstructed(model: REMModel, frames: np.ndarray) -> np.ndarray:
    """(n, 2, H, W, 3) uint8 frames as the tokenizer reconstructs them."""
    x = frames_to_tensor(torch.as_tensor(frames).flatten(0, 1))  # (2n, 3, H, W)
    y = model.decode(model.encode(x), check_values=False)  # (2n, 3, H, W)
    return _to_uint8(y).unflatten(0, frames.shape[:2]).numpy()


def train(
    config: EventReaderTrainConfig,
    out: Path,
    init_from: str,
    replay_dirs: list[str],
    held_out_dir: str | None,
    command: str,
) -> Path:
    """Trains the event reader alone; returns the export folder.

    Raises:
        ValueError: If ``heads`` or ``frames`` is not understood, the source cannot be read, or
            its event reader has another width.
    """
    heads = config.head_names()
    if config.frames not in FRAMES:
        raise ValueError(f"--frames must be one of {', '.join(FRAMES)}, got {config.frames!r}")
    torch.manual_seed(config.seed)
    source = load_source(init_from, need_actor_critic=False)
    trained_on = source.model.world_model.event_reader is not None  # exported bias-corrected
    model = _with_event_reader(source.model, config.width)
    reader = model.world_model.event_reader
    assert reader is not None
    hand_over_heads(model, heads, keep=reader)
    replays = [ReplayBuffer(path, read_only=True) for path in replay_dirs]
    held_out = ReplayBuffer(held_out_dir, read_only=True) if held_out_dir else replays[0]
    start = time.time()
    dream_steps = config.dream_steps if config.frames == "dreamed" else 0
    reconstructed = config.frames != "real"
    fewest = config.min_dream_steps
    pool = gather_steps(
        model, replays, config.pool, config.seed, reconstructed, dream_steps, True, fewest
    )
    held_pool = None  # uniformly drawn held-out steps, dreamed: what picks the export
    if dream_steps:
        held_args = (model, [held_out], config.held_out_pool, config.seed + 2, True, dream_steps)
        held_pool = gather_steps(*held_args, events=False, min_dream_steps=fewest)
    # Columns of the 5 event logits that train: the heads handed over.
    columns = torch.zeros(5, dtype=torch.bool)
    columns[:NUM_REWARD_CLASSES] = "rewards" in heads
    columns[NUM_REWARD_CLASSES:] = "ends" in heads
    pool_rates = (
        torch.bincount(pool.rewards, minlength=3).float() / len(pool),
        torch.bincount(pool.ends.long(), minlength=2).float() / len(pool),
    )
    ratios = torch.cat([pool.rates[i] / pool_rates[i].clamp(min=1e-12) for i in (0, 1)])
    seen = torch.cat(pool_rates) > 0  # a class the pool lacks the replays lack too: kept as is
    shift = torch.where(seen, ratios.clamp(min=1e-12).log(), torch.zeros(()))
    shift = torch.where(columns, shift, torch.zeros(()))  # (5,): log(replay rate / pool rate)
    if trained_on:  # its export added a shift: taken off, so that it reads the pool's rates
        with torch.no_grad():
            reader.out.bias -= shift
    out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(reader.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed + 1)
    with (out / "progress.jsonl").open("w") as progress:
        log_line(
            progress,
            {
                "pool": len(pool),
                "rewards": int((pool.rewards != 1).sum()),
                "ends": int(pool.ends.sum()),
                **({"held_out_pool": len(held_pool)} if held_pool is not None else {}),
                "gather_s": round(time.time() - start, 1),
            },
        )
        losses: list[float] = []
        best: tuple[float, int, dict[str, Tensor]] | None = None  # held-out NLL, step, weights
        start = time.time()
        for step in range(1, config.steps + 1):
            reader.train()
            rows = rng.integers(len(pool), size=config.batch_size)
            frames = torch.as_tensor(pool.frames[rows]).permute(0, 1, 4, 2, 3).float() / 255
            logits = reader(frames, pool.actions[rows])  # (B, 5)
            loss = torch.zeros(())
            if "rewards" in heads:
                loss = loss + F.cross_entropy(logits[:, :NUM_REWARD_CLASSES], pool.rewards[rows])
            if "ends" in heads:
                end = pool.ends[rows].long()
                loss = loss + F.cross_entropy(logits[:, NUM_REWARD_CLASSES:], end)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            reader.out.weight.grad[~columns] = 0  # rows of heads not handed over stay at zero
            reader.out.bias.grad[~columns] = 0
            optimizer.step()
            losses.append(loss.item())
            out_of_time = 0 < config.max_minutes * 60 <= time.time() - start
            if step % config.eval_every == 0 or step == config.steps or out_of_time:
                record: dict[str, Any] = {"step": step, "train_s": round(time.time() - start, 1)}
                record["loss"] = round(float(np.mean(losses[-config.eval_every :])), 4)
                with corrected_bias(reader, shift):
                    checks = check_events(
                        model, held_out, np.random.default_rng(11), config.eval_segments
                    )
                    dreamed = _pool_nll(reader, held_pool) if held_pool is not None else None
                record.update({name: dataclasses.asdict(c) for name, c in checks.items()})
                if dreamed is not None:
                    record["dreamed_nll"] = {k: round(dreamed[k], 5) for k in heads}
                log_line(progress, record)
                nll = dreamed or {name: checks[HEAD_CHECKS[name]].nll for name in HEADS}
                held = sum(nll[name] for name in heads)
                if best is None or held < best[0]:
                    weights = {k: v.detach().clone() for k, v in reader.state_dict().items()}
                    best = (held, step, weights)
            if out_of_time:
                break
    assert best is not None  # the last step is always evaluated
    reader.load_state_dict(best[2])
    with torch.no_grad():
        reader.out.bias += shift
    return _export(model, source, out, config, init_from, command, len(pool), best[1], step)


@torch.no_grad()
def _pool_nll(reader: EventReader, pool: StepPool, batch: int = 512) -> dict[str, float]:
    """The reader's mean NLL of the pool's rewards and ends (a uniformly drawn pool: the
    replay's NLL); the reader in eval mode."""
    reader.eval()
    totals = {"rewards": 0.0, "ends": 0.0}
    for lo in range(0, len(pool), batch):
        rows = slice(lo, lo + batch)
        frames = torch.as_tensor(pool.frames[rows]).permute(0, 1, 4, 2, 3).float() / 255
        logits = reader(frames, pool.actions[rows])  # (b, 5)
        reward = F.cross_entropy(
            logits[:, :NUM_REWARD_CLASSES], pool.rewards[rows], reduction="sum"
        )
        end = F.cross_entropy(
            logits[:, NUM_REWARD_CLASSES:], pool.ends[rows].long(), reduction="sum"
        )
        totals["rewards"] += reward.item()
        totals["ends"] += end.item()
    return {name: total / len(pool) for name, total in totals.items()}


@contextlib.contextmanager
def corrected_bias(reader: nn.Module, shift: Tensor) -> Iterator[None]:
    """The output bias of ``reader`` (an event reader or window: its ``out`` layer) shifted by
    ``shift`` (the export's) inside, then restored."""
    with torch.no_grad():
        reader.out.bias += shift
    try:
        yield
    finally:
        with torch.no_grad():
            reader.out.bias -= shift


def hand_over_heads(model: REMModel, heads: tuple[str, ...], keep: nn.Module | None = None) -> None:
    """Zeroes the output layers whose logits the reader (or window) ``keep`` takes over: the
    RetNet's reward and/or end head and the matching rows of a frame conv's event layer and of
    the world model's event reader and event window other than ``keep``."""
    wm = model.world_model
    others = [m.out for m in (wm.event_reader, wm.event_window) if m is not None and m is not keep]
    conv_outs = [wm.frame_conv.event_out] if wm.frame_conv is not None else []
    conv_outs = [layer for layer in conv_outs + others if layer is not None]
    with torch.no_grad():
        for name, head, rows in (
            ("rewards", wm.head_reward[-1], slice(0, NUM_REWARD_CLASSES)),
            ("ends", wm.head_end[-1], slice(NUM_REWARD_CLASSES, None)),
        ):
            if name not in heads:
                continue
            head.weight.zero_()
            head.bias.zero_()
            for layer in conv_outs:
                layer.weight[rows] = 0
                layer.bias[rows] = 0


def _with_event_reader(model: REMModel, width: int) -> REMModel:
    """``model`` with a fresh event reader (output layer at zero: the same function), or
    ``model`` itself where it has one of ``width`` channels (trained on)."""
    sizes = model.config.world_model
    if model.world_model.event_reader is not None:
        if sizes.event_reader_width != width:
            raise ValueError(
                f"the starting model has an event reader of width {sizes.event_reader_width}; "
                f"give --width {sizes.event_reader_width} to train it on"
            )
        return model.eval()
    grown = REMModel(
        dataclasses.replace(
            model.config, world_model=dataclasses.replace(sizes, event_reader_width=width)
        ),
        num_start_contexts=len(model.start_tokens),
    )
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".event_reader." in key for key in missing), missing
    grown.manifest = getattr(model, "manifest", None)
    return grown.eval()


def _export(
    model: REMModel,
    source: Any,
    out: Path,
    config: EventReaderTrainConfig,
    init_from: str,
    command: str,
    pool: int,
    steps: int,
    trained: int,
) -> Path:
    record = {
        "command": command,
        "preset": "event reader training",
        "event_reader_steps": steps,
        "event_reader_trained_steps": trained,
        "pool": pool,
        "config": asdict(config),
    }
    return export_with_lineage(model, source.actor_critic, out / "export", init_from, record)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rem_train.train_event_reader``."""
    return replay_training_parser(
        "python -m rem_train.train_event_reader",
        __doc__.split("\n\n")[0],
        "the reader joins",
        "a replay folder (RUN/replay of rem-train, OUT/replay of rem_train.collect_replay) "
        "to draw real steps from; repeat it",
        "a replay folder the heads' check scores (default: the first --replay)",
        EventReaderTrainConfig(),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    numbers = ("width", "pool", "steps", "batch_size", "eval_every", "eval_segments")
    run = parse_replay_training(
        p, argv, EventReaderTrainConfig, (*numbers, "dream_steps", "held_out_pool")
    )
    if not 0 <= run.config.min_dream_steps <= run.config.dream_steps:
        p.error("--min-dream-steps must be 0 to --dream-steps")
    try:
        folder = train(run.config, run.out, run.init_from, run.replays, run.held_out, run.command)
    except ValueError as err:  # heads or frames not understood, a source that cannot be read
        p.error(str(err))
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
