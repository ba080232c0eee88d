"""Train a world model's frame conv alone, on the tokens of real segments (not in REM).

A frame conv (:class:`rem_env.models.frame_conv.FrameConv`) reads the two (``--frames``) frames
before each predicted one as 2-D grids of token embeddings and adds its logits to the world
model's. It learns where a small object goes far faster per CPU-hour than the RetNet layers do,
and alone it is cheap: a step is a few 3x3 convolutions over an 8x8 grid, no retention. This
module trains it alone, with the world model's observation loss (cross-entropy of each token of
frame t, moving patches weighted as ``--world-model.moving-weight`` weighs them), on triples of
real frames (t-2, t-1, t; with ``--frames F``, frames t-F .. t) and the action between t-1 and t
drawn from replay buffers of rem-train runs, the tokens given by the starting model's tokenizer.
Every ``eval_every`` steps the game's object check (:func:`rem_train.object_check.check_objects`)
scores the whole world model (RetNet logits plus the frame conv's) on held-out segments. The
export is the starting model with the frame conv added (its tokenizer, RetNet, start contexts
and actor-critic unchanged), which ``rem-train --init-from EXPORT --world-model-frame-conv N``
trains on, all of it together.

With ``events_weight > 0`` the frame conv's reward and end layers train too, on every step of
the same segments whose frame before is in the segment (frames t-1 and t and the action after
t give the reward and end of step t, as ``--world-model-frame-conv-events`` reads them): a run's
reward and end heads see a few hundred rewards, the replay buffers of several runs thousands.
The rewards and ends of the whole world model are then the frame conv's alone: the output
layers of the RetNet's reward and end heads are set to zero (adding the logits of heads trained
without the frame conv counts what both know twice), and the evaluations add the heads' check
(:func:`rem_train.event_check.check_events`) on the held-out segments. With ``token_weight 0``
only the event layers train, on the features the frame conv already has.

Run folder: ``progress.jsonl`` (one line per evaluation), ``frame_conv.safetensors`` (the last
weights) and ``export/``.

Example:
    python -m rem_train.pretrain_frame_conv --init-from warm_starts/Breakout-vqvae \\
        --replay runs/breakout/replay --held-out runs/held_out/replay --out runs/fc --steps 3000
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.nn import functional as F

from rem_env import REMModel
from rem_env.models.frame_conv import FrameConv
from rem_env.models.world_model import NUM_REWARD_CLASSES
from rem_env.probes import probes_for
from rem_train.batches import frames_to_tensor
from rem_train.event_check import check_events
from rem_train.losses import MOVING_FROM, moving_patch_weights, reward_classes
from rem_train.object_check import check_objects
from rem_train.replay import ReplayBuffer
from rem_train.run_log import log_line
from rem_train.sources import load_source, parse_replay_training, replay_training_parser
from rem_train.warm_start import export_with_lineage

__all__ = [
    "LR_SCHEDULES",
    "EventSteps",
    "FrameConvPretrainConfig",
    "TokenTriples",
    "embed_frames",
    "gather",
    "gather_triples",
    "learning_rate",
    "main",
    "pretrain",
]

SEGMENT = 10
"""Frames per segment drawn from a replay buffer (the world model's segment length)."""

LR_SCHEDULES = ("constant", "cosine")
"""The learning-rate schedules of :attr:`FrameConvPretrainConfig.lr_schedule`."""


@dataclass(frozen=True)
class FrameConvPretrainConfig:
    """Settings of a frame-conv pretraining run."""

    layers: int = 4
    """3x3 convolutions of the frame conv (``--world-model-frame-conv`` of rem-train)."""
    width: int = 128
    """Channels of those convolutions."""
    frames: int = 2
    """Frames the frame conv reads before the predicted one (``--world-model-frame-conv-frames``
    of rem-train): with more than a starting frame conv reads, it is given the older frames'
    channels at zero (the same function, :meth:`FrameConv.load_fewer_frames
    <rem_env.models.frame_conv.FrameConv.load_fewer_frames>`); frames before a segment's first
    are missing (zeros), as before a dream's first."""
    pixels: bool = False
    """The frame conv also reads the frames' pixels (``frame_conv_pixels`` of the world model:
    each token's patch of the tokenizer's codebook; a patch tokenizer only). A starting frame
    conv that reads none gains them, their weights at zero (the same function)."""
    copy: bool = False
    """Give the frame conv a copy gate (``--world-model-frame-conv-copy`` of rem-train): a
    per-patch bonus to the logit of the patch's token in the frame before, added at zero to a
    starting frame conv without one."""
    completion: int = 0
    """Give the frame conv a completion of this many dilated convolutions
    (``--world-model-frame-conv-completion`` of rem-train; 0: none), added at zero to a starting
    frame conv without one: its logits of the predicted frame's tokens read some of that frame's
    real tokens (each patch's shown with a probability drawn uniformly for each frame), and its
    cross-entropy on the others joins the token loss (weighted as it is)."""
    completion_only: bool = False
    """Train the completion alone (it needs ``completion``, which a starting model's completion
    must match): the rest of the frame conv keeps its weights and its token loss is not
    computed, so the completion's own, rare signal (what one patch's token tells of another's: a
    serve comes in one place) is all the step learns; with ``--start-share`` its segments can
    hold more serves."""
    segments: int = 12_000
    """Segments of 10 frames drawn from the replay buffers (spread evenly over them); each gives
    every triple of consecutive real frames in it (8 in a whole segment)."""
    end_share: float = 0.0
    """Share of those segments that are the last 10 steps of an episode that ended (for
    Breakout a lost life: the ball past the paddle, the frames without it, the end), drawn
    per ended episode; the rest are drawn uniformly over every step (0: all of them; one or two
    of a long episode's steps come before its end). The event layers then see ends more often
    than the game has them, and learn to predict more."""
    start_share: float = 0.0
    """Share of the segments that are the first 10 steps of an episode (for Breakout under
    REM's protocol a life: no ball until FIRE serves one), drawn per episode; with
    ``end_share`` the two shares may add up to 1 at most. The frame conv then sees what comes
    (and what does not) before a serve more often than uniform segments show it."""
    end_lead: int = 0
    """Those segments stop this many steps before the episode's end (0: they hold its last 10
    steps). Breakout's ball passes the paddle about 10 steps before the end, so its last 10
    steps show no ball; with 6 the segments show the ball leave where the paddle missed it,
    which uniform segments show rarely (in a replay of random and scripted play a few hundred
    times in 100,000 steps), and the end itself is not in them."""
    steps: int = 3_000
    """Gradient steps (Adam), each on ``batch_size`` real steps drawn from the gathered ones."""
    max_minutes: float = 0.0
    """Stop after the step that spends this many minutes of training (0: no limit); the last
    step is evaluated and exported as ``steps`` would be."""
    batch_size: int = 256
    """Predicted frames per step."""
    lr: float = 1e-3
    """Adam's learning rate (the first, with ``lr_schedule="cosine"``)."""
    lr_schedule: str = "constant"
    """``"constant"``: ``lr`` throughout; ``"cosine"``: from ``lr`` down to ``lr_final`` along a
    half cosine over the run, its length the larger share spent of ``steps`` and of
    ``max_minutes`` (so a run stopped by its time budget ends at ``lr_final`` too)."""
    lr_final: float = 1e-5
    """The learning rate a ``"cosine"`` schedule ends at."""
    moving_weight: float = 10.0
    """Extra weight of the patches that moved since the frame before (0: REM's plain mean)."""
    moving_from: str = "target"
    """Where that movement is read (:func:`rem_train.losses.moving_patch_weights`):
    ``"target"``, the predicted frame against the one before it (the weights depend on the
    answer, which raises the odds of a change the frames before cannot tell up to
    ``1 + moving_weight`` times); ``"context"``, the last frame read against the one before it
    (the weights depend on the frames read only, which leaves the best prediction unbiased)."""
    token_weight: float = 1.0
    """Weight of the next frame's token cross-entropy (0: the layers that give the token
    logits do not train; needs ``events_weight > 0``)."""
    events_weight: float = 0.0
    """Weight of the reward and end cross-entropies of the frame conv's event layers (0: they
    do not train, and the RetNet's reward and end heads stay as they are)."""
    train_embedding: bool = False
    """Also train the world model's own token embedding, which the frame conv reads (only for a
    world model that does not share the tokenizer's codebook, such as the ``patch`` model's).
    The RetNet reads it too: for a world model whose RetNet has yet to train."""
    eval_every: int = 250
    """Steps between the object checks on held-out segments (and after the last step)."""
    eval_segments: int = 256
    """Held-out segments of 10 frames the object check scores (seed 11, as its command line)."""
    seed: int = 0
    """Seed of the segments drawn, the batches and the new weights."""


@dataclass
class TokenTriples:
    """Frames t-F .. t as tokens (N, F+1, K), the action after t-1 (N,), and the weight of each
    token of frame t (N, K). Frames t-2, t-1 and t are real; an older one is -1 where it is
    not in the segment (F = 2: triples of real frames)."""

    tokens: Tensor
    actions: Tensor
    weights: Tensor

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class EventSteps:
    """Real steps t as the tokens of frames t-F+1 .. t (N, F, K; t-1 and t real, an older frame
    -1 where it is not in the segment), the action after t (N,), and the step's reward class
    ``sign(r) + 1`` (N,) and end (N,) bool."""

    tokens: Tensor
    actions: Tensor
    rewards: Tensor
    ends: Tensor

    def __len__(self) -> int:
        return len(self.actions)


def gather_triples(
    model: REMModel, replays: list[ReplayBuffer], count: int, moving_weight: float, seed: int
) -> TokenTriples:
    """The triples of consecutive real frames in ``count`` segments of 10 frames, tokenized.

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL))
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (64, 64, 3)) as buf:
        ...     for t in range(6):
        ...         buf.append(np.zeros((64, 64, 3), np.uint8), t % 4, 0.0, terminated=t == 5)
        ...     triples = gather_triples(model, [buf], 5, 10.0, seed=0)
        >>> len(triples) <= 5 * 4  # an episode of 6 frames holds 4 triples
        True
        >>> triples.tokens.shape[1:], float(triples.weights.max())
        (torch.Size([3, 64]), 1.0)
    """
    return gather(model, replays, count, moving_weight, seed, events=False)[0]


@torch.no_grad()
def gather(
    model: REMModel,
    replays: list[ReplayBuffer],
    count: int,
    moving_weight: float,
    seed: int,
    events: bool,
    end_share: float = 0.0,
    end_lead: int = 0,
    frames: int = 2,
    start_share: float = 0.0,
    moving_from: str = "target",
) -> tuple[TokenTriples, EventSteps | None]:
    """The triples of :func:`gather_triples` and, with ``events``, the :class:`EventSteps` of
    the same segments (each step whose frame before is in the segment, its last one too: the
    step that ends an episode has no frame after it). ``end_share`` of the segments are the
    last steps of ended episodes, less ``end_lead`` (:attr:`FrameConvPretrainConfig.end_share`,
    :attr:`FrameConvPretrainConfig.end_lead`), ``start_share`` the first steps of episodes
    (:attr:`FrameConvPretrainConfig.start_share`). Each predicted frame comes with the ``frames``
    frames before it, each step with its frame and the ``frames - 1`` before it; its tokens'
    weights are :func:`rem_train.losses.moving_patch_weights` read as ``moving_from`` says.

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL))
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (64, 64, 3)) as buf:
        ...     for t in range(6):
        ...         buf.append(np.zeros((64, 64, 3), np.uint8), t % 4, float(t == 2),
        ...                    terminated=t == 5)
        ...     _, steps = gather(model, [buf], 5, 10.0, seed=0, events=True)
        >>> bool(steps.ends.any()), int(steps.rewards.max())  # reward class 2: a reward of +1
        (True, 2)
    """
    rng = np.random.default_rng(seed)
    side = model.config.tokenizer.latent_size
    row_offset = model.config.tokenizer.row_offset
    # Filled in place: many small tensors kept between the tokenizer's large temporaries
    # fragment the heap (measured: ~8x the triples' own size, 9 GB for 30,000 segments).
    most = count * (SEGMENT - 2)
    tokens = torch.empty((most, frames + 1, side * side), dtype=torch.long)
    actions = torch.empty((most,), dtype=torch.long)
    weights = torch.empty((most, side * side))
    filled = 0
    steps = None
    if events:
        pairs = count * (SEGMENT - 1)
        steps = EventSteps(
            torch.empty((pairs, frames, side * side), dtype=torch.long),
            torch.empty((pairs,), dtype=torch.long),
            torch.empty((pairs,), dtype=torch.long),
            torch.empty((pairs,), dtype=torch.bool),
        )
    stepped = 0
    model.tokenizer.eval()
    for index, replay in enumerate(replays):
        left = count * (index + 1) // len(replays) - count * index // len(replays)
        ending = round(left * end_share)
        starting = min(round(left * start_share), left - ending)
        while left > 0:
            if ending > 0:  # the last steps of ended episodes, padded at the front
                batch = replay.sample_episode_ends(min(16, ending), SEGMENT, rng, end_lead)
                ending -= len(batch.actions)
            elif starting > 0:  # the first steps of episodes, padded at the end
                batch = replay.sample_episode_starts(min(16, starting), SEGMENT, rng)
                starting -= len(batch.actions)
            else:
                batch = replay.sample_segments(min(16, left), SEGMENT, rng, "right", min_real=3)
            n = len(batch.actions)
            obs = torch.as_tensor(np.asarray(batch.obs))  # (n, T, H, W, C)
            codes = model.tokenizer.encode(frames_to_tensor(obs.flatten(0, 1))).tokens
            codes = codes.unflatten(0, (n, SEGMENT))  # (n, T, K)
            moved = moving_patch_weights(
                obs, side, moving_weight, moving_from=moving_from, row_offset=row_offset
            )
            real = torch.as_tensor(np.asarray(batch.mask))  # (n, T): padding at an end
            codes = torch.where(real[..., None], codes, -1)  # a frame not in the segment: -1
            # Frame t-j of step t is column t - j + F of the frames padded with F missing ones.
            codes = torch.cat([codes.new_full((n, frames, codes.shape[2]), -1), codes], dim=1)
            whole = real[:, 2:] & real[:, 1:-1] & real[:, :-2]  # (n, T-2): t-2, t-1, t real
            row, last = torch.nonzero(whole, as_tuple=True)  # triples (t-2, t-1, t)
            last = last + 2
            end = filled + len(row)
            for back in range(frames + 1):  # frames t-F .. t: padded columns t .. t+F
                tokens[filled:end, back] = codes[row, last + back]
            taken = torch.as_tensor(np.asarray(batch.actions))  # (n, T)
            actions[filled:end] = taken[row, last - 1]
            weights[filled:end] = moved[row, last]  # (m, K)
            filled = end
            if steps is not None:  # steps t with frames t-1 and t real
                row, now = torch.nonzero(real[:, 1:] & real[:, :-1], as_tuple=True)
                now = now + 1
                done = stepped + len(row)
                for back in range(frames):  # frames t-F+1 .. t: padded columns t+1 .. t+F
                    steps.tokens[stepped:done, back] = codes[row, now + 1 + back]
                steps.actions[stepped:done] = taken[row, now]
                rewards = torch.as_tensor(np.asarray(batch.rewards))[row, now]
                steps.rewards[stepped:done] = reward_classes(rewards)
                steps.ends[stepped:done] = torch.as_tensor(np.asarray(batch.ends))[row, now]
                stepped = done
            left -= n
    triples = TokenTriples(tokens[:filled], actions[:filled], weights[:filled])
    if steps is None:
        return triples, None
    return triples, EventSteps(
        steps.tokens[:stepped], steps.actions[:stepped], steps.rewards[:stepped],
        steps.ends[:stepped],
    )  # fmt: skip


def pretrain(
    config: FrameConvPretrainConfig,
    out: Path,
    init_from: str,
    replay_dirs: list[str],
    held_out_dir: str | None,
    command: str,
) -> Path:
    """Trains the frame conv alone; returns the export folder.

    Raises:
        ValueError: If nothing would train (``token_weight`` and ``events_weight`` both 0), the
            source cannot be read, or its frame conv has other sizes.
    """
    if not config.token_weight and not config.events_weight:
        raise ValueError("--token-weight 0 trains only the event layers: give --events-weight too")
    if config.train_embedding and not config.token_weight:
        raise ValueError("--token-weight 0 keeps the frame conv's features: no --train-embedding")
    if config.completion_only and (config.events_weight or config.train_embedding):
        raise ValueError(
            "--completion-only true trains the completion alone: no --events-weight or "
            "--train-embedding"
        )
    if config.completion_only and not config.token_weight:
        raise ValueError("--completion-only true trains on the tokens: give --token-weight > 0")
    torch.manual_seed(config.seed)
    source = load_source(init_from, need_actor_critic=False)
    model = _with_frame_conv(source.model, config)
    conv = model.world_model.frame_conv
    assert conv is not None
    if config.completion_only and conv.completion is None:
        raise ValueError("--completion-only true trains a completion: give --completion C")
    vocab = model.config.tokenizer.vocab_size
    if config.train_embedding and model.config.world_model.shared_embeddings:
        raise ValueError(
            "--train-embedding trains the world model's own token embedding, but this one embeds "
            "tokens with the tokenizer's codebook (shared_embeddings)"
        )
    with torch.no_grad():  # what the frame conv reads of every code, (V, E)
        embeddings = model.world_model.embed_obs(torch.arange(vocab), model.tokenizer.codebook)
    pixels = model.tokenizer.codebook.detach().clone() if config.pixels else None  # (V, 3pp)
    if pixels is not None:  # each code's patch of pixels after its embedding
        embeddings = torch.cat([embeddings, pixels], dim=1)
    trained = _trained_parameters(conv, config)
    if config.train_embedding:
        trained.append(model.world_model.embedding.weight)
    replays = [ReplayBuffer(path, read_only=True) for path in replay_dirs]
    held_out = ReplayBuffer(held_out_dir, read_only=True) if held_out_dir else replays[0]
    events = config.events_weight > 0
    if events:
        heads = (model.world_model.head_reward[-1], model.world_model.head_end[-1])
        with torch.no_grad():  # rewards and ends: the frame conv's alone from now on
            for layer in heads:
                layer.weight.zero_()
                layer.bias.zero_()
    start = time.time()
    data, steps = gather(
        model, replays, config.segments, config.moving_weight, config.seed, events,
        config.end_share, config.end_lead, config.frames, config.start_share,
        config.moving_from,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with (out / "progress.jsonl").open("w") as progress:
        counts = {"triples": len(data), "gather_s": round(time.time() - start, 1)}
        if steps is not None:
            counts.update(event_steps=len(steps), rewards=int((steps.rewards != 1).sum()))
            counts["ends"] = int(steps.ends.sum())
        log_line(progress, counts)
        probes = probes_for(source.game)
        optimizer = torch.optim.Adam(trained, lr=config.lr)
        fixed = None
        if steps is not None and not config.token_weight:
            begun = time.time()
            fixed = _fixed_features(conv, steps, embeddings)
            log_line(progress, {"fixed_features_s": round(time.time() - begun, 1)})
        rng = np.random.default_rng(config.seed + 1)
        losses: list[float] = []
        start = time.time()
        for step in range(1, config.steps + 1):
            conv.train()
            spent = (step - 1) / config.steps
            if config.max_minutes:
                spent = max(spent, (time.time() - start) / (config.max_minutes * 60))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, spent)
            loss = torch.zeros(())
            if config.train_embedding:  # (V, E), with gradient to the embedding
                embeddings = model.world_model.embedding.weight[:vocab]
                if pixels is not None:
                    embeddings = torch.cat([embeddings, pixels], dim=1)
            if config.token_weight:
                rows = torch.as_tensor(rng.integers(len(data), size=config.batch_size))
                frames = embed_frames(data.tokens[rows, :-1], embeddings)  # (B, F, K, E)
                with torch.set_grad_enabled(not config.completion_only):
                    features = conv.features(frames, data.actions[rows])
                    logits = conv.token_logits(features, data.tokens[rows, -2])  # (B, K, V)
                target, weight = data.tokens[rows, -1], data.weights[rows]
                if not config.completion_only:
                    token = F.cross_entropy(
                        logits.flatten(0, 1), target.flatten(), reduction="none"
                    )
                    loss = config.token_weight * (token * weight.flatten()).sum() / weight.sum()
                if conv.completion is not None:
                    loss = loss + config.token_weight * _completion_loss(
                        conv, features, logits, target, weight, embeddings
                    )
            if steps is not None:
                events_loss = _event_loss(conv, steps, fixed, embeddings, rng, config)
                loss = loss + config.events_weight * events_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            out_of_time = 0 < config.max_minutes * 60 <= time.time() - start
            if step % config.eval_every == 0 or step == config.steps or out_of_time:
                record = {"step": step, "train_s": round(time.time() - start, 1)}
                record["lr"] = float(f"{optimizer.param_groups[0]['lr']:.3g}")
                record["loss"] = round(float(np.mean(losses[-config.eval_every :])), 4)
                changes = config.token_weight and not config.completion_only
                if probes and (changes or step <= config.eval_every):
                    # With token_weight 0 or the completion alone the next frame's logits do
                    # not change: checked once.
                    checks = check_objects(
                        model, held_out, probes, np.random.default_rng(11), config.eval_segments
                    )
                    record.update({name: dataclasses.asdict(c) for name, c in checks.items()})
                if events:
                    heads = check_events(
                        model, held_out, np.random.default_rng(11), config.eval_segments
                    )
                    record.update({name: dataclasses.asdict(c) for name, c in heads.items()})
                log_line(progress, record)
            if out_of_time:
                break
    save_file(
        {k: v.contiguous() for k, v in conv.state_dict().items()}, out / "frame_conv.safetensors"
    )
    counted = {"triples": len(data)}
    if steps is not None:
        counted["event_steps"] = len(steps)
    return _export(model, source, out, config, init_from, command, counted, step)


def learning_rate(config: FrameConvPretrainConfig, spent: float) -> float:
    """The learning rate of a step taken when ``spent`` (0 to 1) of the run has passed.

    Example:
        >>> cosine = FrameConvPretrainConfig(lr=1e-3, lr_schedule="cosine", lr_final=1e-5)
        >>> [round(learning_rate(cosine, s), 6) for s in (0.0, 0.5, 1.0, 2.0)]
        [0.001, 0.000505, 1e-05, 1e-05]
        >>> learning_rate(FrameConvPretrainConfig(lr=1e-3), 0.5)
        0.001

    Raises:
        ValueError: If the schedule is not one of :data:`LR_SCHEDULES`.
    """
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule != "cosine":
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}")
    spent = min(max(spent, 0.0), 1.0)
    return config.lr_final + (config.lr - config.lr_final) * (1 + math.cos(math.pi * spent)) / 2


def embed_frames(tokens: Tensor, embeddings: Tensor) -> Tensor:
    """(..., K) tokens, -1 where a frame is missing, and (V, E) embeddings -> (..., K, E): a
    missing frame is zeros, as the world model gives its frame conv.

    Example:
        >>> embed_frames(torch.tensor([[1, 0], [-1, -1]]), torch.ones(2, 3))[:, 0]
        tensor([[1., 1., 1.],
                [0., 0., 0.]])
    """
    return F.embedding(tokens.clamp(min=0), embeddings) * (tokens >= 0)[..., None]


def _completion_loss(
    conv: FrameConv, features: Tensor, logits: Tensor, target: Tensor, weight: Tensor,
    embeddings: Tensor,
) -> Tensor:  # fmt: skip
    """Weighted cross-entropy of the completion's logits (added to the frame conv's ``logits``,
    (B, K, V)) on the patches of the (B, K) ``target`` frame it was not shown: each frame shows
    each of its patches with one probability drawn uniformly from [0, 1)."""
    shown = torch.rand(target.shape) < torch.rand(target.shape[0], 1)  # (B, K)
    drawn = embed_frames(target, embeddings[:, : conv.embed_dim])  # (B, K, E)
    full = logits + conv.completion_logits(features, drawn, shown)
    token = F.cross_entropy(full.flatten(0, 1), target.flatten(), reduction="none")
    hidden = weight * shown.logical_not()  # (B, K): the weights of the patches not shown
    return (token * hidden.flatten()).sum() / hidden.sum().clamp(min=1e-8)


def _trained_parameters(conv: FrameConv, config: FrameConvPretrainConfig) -> list[Tensor]:
    """The frame conv's parameters that train: all of them, with ``token_weight 0`` only its
    event layers, with ``completion_only`` only its completion."""
    if config.completion_only:
        assert conv.completion is not None and conv.completion_out is not None
        return [*conv.completion.parameters(), *conv.completion_out.parameters()]
    if config.token_weight:
        return list(conv.parameters())
    assert conv.events is not None and conv.event_out is not None
    return [*conv.events.parameters(), *conv.event_out.parameters()]


@torch.no_grad()
def _fixed_features(conv: FrameConv, steps: EventSteps, embeddings: Tensor) -> Tensor:
    """(N, width, s, s) float16: the frame conv's features of every step, computed once where
    only the event layers above them train (a step then costs those layers alone)."""
    conv.eval()
    chunks = []
    for first in range(0, len(steps), 1024):
        rows = slice(first, first + 1024)
        frames = embed_frames(steps.tokens[rows], embeddings)  # (n, F, K, E): frames t-F+1 .. t
        chunks.append(conv.features(frames, steps.actions[rows]).half())
    return torch.cat(chunks)


def _event_loss(
    conv: FrameConv,
    steps: EventSteps,
    fixed: Tensor | None,
    embeddings: Tensor,
    rng: np.random.Generator,
    config: FrameConvPretrainConfig,
) -> Tensor:
    """Reward plus end cross-entropy of the frame conv's event logits on a batch of steps
    (their features from ``fixed`` where given)."""
    rows = torch.as_tensor(rng.integers(len(steps), size=config.batch_size))
    if fixed is not None:
        features = fixed[rows].float()
    else:
        frames = embed_frames(steps.tokens[rows], embeddings)  # (B, F, K, E): t-F+1 .. t
        features = conv.features(frames, steps.actions[rows])
    logits = conv.event_logits(features)  # (B, 5): 3 reward classes, then 2 end classes
    reward = F.cross_entropy(logits[:, :NUM_REWARD_CLASSES], steps.rewards[rows])
    return reward + F.cross_entropy(logits[:, NUM_REWARD_CLASSES:], steps.ends[rows].long())


def _with_frame_conv(model: REMModel, config: FrameConvPretrainConfig) -> REMModel:
    """``model`` with a fresh frame conv (its output layers at zero: the same function), or
    ``model`` itself where it has a frame conv of ``config``'s sizes (an earlier pretraining's
    export, trained on), given event layers where ``events_weight`` needs them, a copy gate
    where ``copy`` asks for one and a completion where ``completion`` does (all at zero), the
    channels of the older frames where ``frames`` reads more than it does, and of the pixels
    where ``pixels`` asks for them (their weights at zero)."""
    model = _with_frame_conv_of_sizes(model, config)
    have = model.config.world_model.frame_conv_completion
    if have == config.completion:
        return model
    if have:
        raise ValueError(
            f"the starting model's frame conv has a completion of {have} layers; give "
            f"--completion {have} to train it on"
        )
    return _grown(model, frame_conv_completion=config.completion).eval()


def _with_frame_conv_of_sizes(model: REMModel, config: FrameConvPretrainConfig) -> REMModel:
    """:func:`_with_frame_conv` for every part of the frame conv but its completion."""
    sizes = model.config.world_model
    events = config.events_weight > 0 or sizes.frame_conv_events
    copy = config.copy or sizes.frame_conv_copy
    pixels = model.config.tokenizer.patch_size if config.pixels else 0
    if pixels and model.config.tokenizer.kind != "patch":
        raise ValueError(
            "--pixels true reads the pixels of a patch tokenizer's codes; this model's "
            f"tokenizer is of kind {model.config.tokenizer.kind!r}"
        )
    if model.world_model.frame_conv is not None:
        if (sizes.frame_conv_layers, sizes.frame_conv_width) != (config.layers, config.width):
            raise ValueError(
                f"the starting model has a frame conv of {sizes.frame_conv_layers} layers of "
                f"{sizes.frame_conv_width} channels; give --layers {sizes.frame_conv_layers} "
                f"--width {sizes.frame_conv_width} to train it on"
            )
        if sizes.frame_conv_pixels != pixels:
            if sizes.frame_conv_pixels:
                raise ValueError(
                    "the starting model's frame conv reads pixels: give --pixels true to train "
                    "it on"
                )
            if sizes.frame_conv_frames != config.frames:
                raise ValueError(
                    f"--pixels true adds pixels to the starting model's frame conv of "
                    f"{sizes.frame_conv_frames} frames: give --frames {sizes.frame_conv_frames}"
                )
            conv = model.world_model.frame_conv
            model = _grown(model, conv_too=False, frame_conv_pixels=pixels)
            assert model.world_model.frame_conv is not None
            model.world_model.frame_conv.load_without_pixels(conv.state_dict())
            sizes = model.config.world_model
        if config.frames < sizes.frame_conv_frames:
            raise ValueError(
                f"the starting model's frame conv reads {sizes.frame_conv_frames} frames; give "
                f"--frames {sizes.frame_conv_frames} or more to train it on"
            )
        if (sizes.frame_conv_events, sizes.frame_conv_copy) != (events, copy):
            model = _grown(model, frame_conv_events=events, frame_conv_copy=copy)
        if config.frames == sizes.frame_conv_frames:
            return model.eval()
        conv = model.world_model.frame_conv
        assert conv is not None
        grown = _grown(model, conv_too=False, frame_conv_frames=config.frames)
        assert grown.world_model.frame_conv is not None
        grown.world_model.frame_conv.load_fewer_frames(conv.state_dict())
        return grown.eval()
    return _grown(
        model, frame_conv_layers=config.layers, frame_conv_width=config.width,
        frame_conv_events=events, frame_conv_copy=copy, frame_conv_frames=config.frames,
        frame_conv_pixels=pixels,
    ).eval()  # fmt: skip


def _grown(model: REMModel, conv_too: bool = True, **sizes: Any) -> REMModel:
    """``model`` with its world model's sizes changed by ``sizes`` (frame conv settings), its
    weights loaded: the frame conv's parts it lacks are new (at zero where they start so);
    without ``conv_too`` the frame conv's weights are left for the caller to load."""
    world_model = dataclasses.replace(model.config.world_model, **sizes)
    grown = REMModel(
        dataclasses.replace(model.config, world_model=world_model),
        num_start_contexts=len(model.start_tokens),
    )
    weights = model.state_dict()
    if not conv_too:
        weights = {key: value for key, value in weights.items() if ".frame_conv." not in key}
    missing, unexpected = grown.load_state_dict(weights, strict=False)
    assert not unexpected and all(".frame_conv." in key for key in missing), missing
    grown.manifest = getattr(model, "manifest", None)
    return grown


def _export(
    model: REMModel,
    source: Any,
    out: Path,
    config: FrameConvPretrainConfig,
    init_from: str,
    command: str,
    counted: dict[str, int],
    steps: int,
) -> Path:
    own = {"command": command, "preset": "frame conv pretraining", "frame_conv_steps": steps}
    record = {**own, **counted, "config": asdict(config)}
    return export_with_lineage(model, source.actor_critic, out / "export", init_from, record)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rem_train.pretrain_frame_conv``."""
    return replay_training_parser(
        "python -m rem_train.pretrain_frame_conv",
        __doc__.split("\n\n")[0],
        "whose tokenizer and world model the frame conv joins",
        "a rem-train run's replay folder (RUN/replay) to draw real frames from; repeat it",
        "a replay folder the object check scores (default: the first --replay; a run's "
        "replay of other games is better)",
        FrameConvPretrainConfig(),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    numbers = ("layers", "width", "segments", "steps", "batch_size", "eval_every")
    hint = " (a rem-train run keeps one in RUN/replay)"
    run = parse_replay_training(p, argv, FrameConvPretrainConfig, numbers, hint)
    config = run.config
    if not 0.0 <= config.end_share <= 1.0:
        p.error(f"--end-share must be in [0, 1], got {config.end_share:g}")
    if not 0.0 <= config.start_share <= 1.0 - config.end_share:
        p.error(
            f"--start-share must be in [0, 1 - --end-share] = [0, {1 - config.end_share:g}], "
            f"got {config.start_share:g}"
        )
    if config.completion < 0:
        p.error(f"--completion must be >= 0 (0: none), got {config.completion}")
    if config.end_lead < 0:
        p.error(f"--end-lead must be >= 0, got {config.end_lead}")
    if config.moving_from not in MOVING_FROM:
        names = ", ".join(MOVING_FROM)
        p.error(f"--moving-from must be one of {names}, got {config.moving_from!r}")
    if not 2 <= config.frames < SEGMENT:
        p.error(f"--frames must be in [2, {SEGMENT}), got {config.frames}")
    if config.token_weight < 0 or config.events_weight < 0:
        p.error("--token-weight and --events-weight must be >= 0")
    if config.lr_schedule not in LR_SCHEDULES:
        names = ", ".join(LR_SCHEDULES)
        p.error(f"--lr-schedule must be one of {names}, got {config.lr_schedule!r}")
    if config.lr_schedule == "cosine" and not 0 < config.lr_final <= config.lr:
        p.error(f"--lr-final must be in (0, --lr], got {config.lr_final:g}")
    try:
        folder = pretrain(config, run.out, run.init_from, run.replays, run.held_out, run.command)
    except ValueError as err:  # nothing to train, a source that cannot be read, other sizes
        p.error(str(err))
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
