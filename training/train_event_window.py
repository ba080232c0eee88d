"""Train a world model's event window alone, on the tokens of real replay steps (not in REM).

An event window (:class:`rem_env.models.event_window.EventWindow`) reads a step's reward and
episode end from the token grids of the step's frame and the ``frames - 1`` frames before it,
and the action after it. This module adds one to a model (or trains the one it has) on the
tokens the model's tokenizer gives the frames of replay buffers, every step of them: each
training step draws ``batch_size`` runs of ``frames - 1 + targets`` consecutive frames, a share
``event_share`` of them placed so that a reward or an end (half each, of the heads handed over)
falls among their last ``targets`` steps, the rest anywhere, and scores the window of each of
those steps. A share ``cut_share`` of the windows is cut at a random frame (what came before it
reads as unknown), as a dream's first steps from a short real context and a training segment's
first steps see theirs. The runs hold the events more often than the game does; the output
layer's bias is corrected for it (by the log of each class's rate in the replays over its rate
in the drawn steps) before every evaluation and the export (a window trained on from an export
starts from its corrected bias, which its first steps undo).

``--heads`` says which of the world model's heads the window takes over: the output layers of
those heads (and the matching rows of a frame conv's event layer and of an event reader) are set
to zero, so that their logits are the window's alone; the rows of the heads left out stay at
zero in the window. Every ``eval_every`` steps every step of the held-out replay is scored with
its whole window (frames before its episode's first unknown), and also with a window of its own
frame and the one before only (as a dream's first step from REM's two-frame context reads it).
The export is the starting model with the window of the evaluation whose held-out NLL (of the
heads handed over, summed) was lowest; its tokenizer, RetNet, start contexts and actor-critic
are unchanged.

With ``--reads-next true`` the window ends at each step's next frame instead (the
``frames - 2`` frames before the step's, the step's and the next; ``event_window_reads_next`` of
:class:`rem_env.config.WorldModelConfig`): a reward is read from what the step did. The next
frame of a step that ends a life is the replay's next record (the next life's first frame, one
no-op later); a step whose next record starts an episode without it having ended (a cut-off
episode, the last step of a replay) reads its next frame as unknown. A starting model whose
window reads the other way gets a fresh one (it must take over both heads). The windows cut at a
random frame keep the step's own frame and the next, and the held-out score of "two frames"
reads those two.

With ``--early-ends true`` a lost life's end is scored ``--early-end-lead L`` steps after the
last frame of its episode in which the game's first object probe
(:func:`rem_env.probes.probes_for`; in Breakout the ball) sees the object (L < 0: before it; -1
is the step whose next frame is that frame), not at the step the game takes the life, and the
steps of the episode after that one are not scored (their frames are still read by later
windows). The game takes a life some steps after the ball has gone (in Breakout 4 or 9 steps); a
dream whose window ends the life where the ball left ends it before the dream can bring the ball
back. Both the training and the held-out steps are labelled so.

Run folder: ``progress.jsonl`` (one line per evaluation) and ``export/``.

Example:
    python -m rem_train.train_event_window --init-from warm_starts/Breakout-patch \\
        --replay runs/big/replay --held-out runs/held/replay --out runs/ew --steps 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from rem_env import REMModel
from rem_env.models.event_window import EventWindow
from rem_env.models.world_model import NUM_REWARD_CLASSES
from rem_env.probes import ObjectProbe, probes_for
from rem_train.batches import frames_to_tensor
from rem_train.event_check import EventCheck, EventCounts
from rem_train.replay import ReplayBuffer
from rem_train.run_log import log_line
from rem_train.sources import load_source, parse_replay_training, replay_training_parser
from rem_train.train_event_reader import corrected_bias, hand_over_heads, parse_heads
from rem_train.warm_start import export_with_lineage

__all__ = [
    "EventWindowTrainConfig",
    "TokenSteps",
    "ends_where_object_left",
    "main",
    "token_steps",
    "train",
]

NO_REWARD_CLASS = 1
"""The reward head's class of a zero reward (classes are ``sign(r) + 1``)."""


@dataclass(frozen=True)
class EventWindowTrainConfig:
    """Settings of an event-window training run."""

    frames: int = 16
    """Frames in a step's window (``--world-model-event-window`` of rem-train)."""
    width: int = 64
    """Channels of the window's convolutions."""
    heads: str = "rewards,ends"
    """The heads the window takes over: ``rewards``, ``ends`` or both, comma-separated."""
    steps: int = 1_500
    """Gradient steps (Adam), each on ``batch_size`` runs of the replays' tokens."""
    max_minutes: float = 0.0
    """Stop after the step that spends this many minutes of training (0: no limit)."""
    batch_size: int = 32
    """Runs of consecutive frames per step."""
    targets: int = 16
    """Steps scored per run (its last ones; each run holds ``frames - 1 + targets`` frames)."""
    event_share: float = 0.5
    """Share of the runs placed so that an event falls among their scored steps."""
    cut_share: float = 0.5
    """Share of the windows cut at a random frame (the frames before it unknown)."""
    reads_next: bool = False
    """Whether the window ends at each step's next frame instead of at its own frame."""
    change_width: int = 0
    """Channels of the window's path over the change between its last two frames (0: none)."""
    lr: float = 1e-3
    """Adam's learning rate."""
    eval_every: int = 250
    """Steps between the scorings of the held-out replay (and after the last step); the export
    is the window of the scoring with the lowest held-out NLL."""
    early_ends: bool = False
    """Whether a lost life's end is scored where the game's first object probe (in Breakout the
    ball) last saw the object in its episode (see ``early_end_lead``), the episode's later steps
    not scored; otherwise at the step the game takes the life."""
    early_end_lead: int = 1
    """With ``early_ends``, the end is scored this many steps after the last frame that shows
    the object (negative: before it; -1 is the step whose next frame is that frame, which a
    window that reads the next frame sees)."""
    seed: int = 0
    """Seed of the runs drawn, the batches and the new weights."""

    def head_names(self) -> tuple[str, ...]:
        """The heads of ``heads``, checked."""
        return parse_heads(self.heads)


class TokenSteps(NamedTuple):
    """Every step of some replays as tokens: (N, K) int64 tokens of each step's frame, (N,)
    actions after it, reward classes ``sign(r) + 1``, bool ends, and the index of each step's
    episode's first step (replays one after the other); optionally (N,) bool "an object probe
    sees its object in the step's frame" and (N,) bool "the step is scored" (None: all are)."""

    tokens: Tensor
    actions: Tensor
    rewards: Tensor
    ends: Tensor
    first: np.ndarray
    seen: np.ndarray | None = None
    scored: np.ndarray | None = None

    def scored_mask(self) -> np.ndarray:
        """(N,) bool, the steps that are scored."""
        return np.ones(len(self.actions), bool) if self.scored is None else self.scored

    def rates(self) -> Tensor:
        """(5,) the reward classes' and the end classes' rates among the scored steps."""
        keep = torch.as_tensor(self.scored_mask())
        n = max(int(keep.sum()), 1)
        rewards = torch.bincount(self.rewards[keep], minlength=3).double() / n
        ends = torch.bincount(self.ends[keep].long(), minlength=2).double() / n
        return torch.cat([rewards, ends])


def ends_where_object_left(steps: TokenSteps, lead: int) -> TokenSteps:
    """``steps`` with each ended episode's end moved to ``lead`` steps after the last step whose
    frame shows the probed object (``lead`` < 0: before it; within the episode, not later than
    the game's end), and the episode's steps after it not scored. An episode whose frames never
    show the object keeps its end.

    Example:
        >>> import numpy as np, torch
        >>> n = 8  # one episode, the object seen at steps 0-3, the game ends it at step 7
        >>> zeros = torch.zeros(n, dtype=torch.long)
        >>> steps = TokenSteps(torch.zeros(n, 4, dtype=torch.long), zeros, zeros + 1,
        ...                    torch.arange(n) == 7, np.zeros(n, np.int64),
        ...                    seen=np.arange(n) < 4)
        >>> moved = ends_where_object_left(steps, lead=1)
        >>> moved.ends.nonzero().flatten().tolist(), moved.scored.astype(int).tolist()
        ([4], [1, 1, 1, 1, 1, 0, 0, 0])

    Raises:
        ValueError: If ``steps`` has no ``seen``.
    """
    if steps.seen is None:
        raise ValueError("the steps have no object probe's sightings (token_steps(probe=...))")
    ends = steps.ends.clone()
    scored = steps.scored_mask().copy()
    for end in np.flatnonzero(steps.ends.numpy()):
        first = int(steps.first[end])
        shown = np.flatnonzero(steps.seen[first : end + 1])
        if not len(shown):
            continue
        moved = min(max(first + int(shown[-1]) + lead, first), int(end))
        ends[end] = False
        ends[moved] = True
        scored[moved + 1 : end + 1] = False
    return steps._replace(ends=ends, scored=scored)


@torch.no_grad()
def token_steps(
    model: REMModel,
    replays: list[ReplayBuffer],
    chunk: int = 2048,
    probe: ObjectProbe | None = None,
) -> TokenSteps:
    """Every step of ``replays`` with its frame encoded by the model's tokenizer (and, with
    ``probe``, whether the probe sees its object in the frame).

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
        >>> model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL))
        >>> with tempfile.TemporaryDirectory() as d, ReplayBuffer(d, (64, 64, 3)) as buf:
        ...     for t in range(5):
        ...         buf.append(np.zeros((64, 64, 3), np.uint8), t % 4, float(t == 1),
        ...                    terminated=t == 2)
        ...     steps = token_steps(model, [buf, buf])
        >>> tuple(steps.tokens.shape), steps.first.tolist()
        ((10, 64), [0, 0, 0, 3, 3, 5, 5, 5, 8, 8])
    """
    tokens, actions, rewards, ends, first, seen = [], [], [], [], [], []
    offset = 0
    for replay in replays:
        labels = replay.step_labels()
        n = replay.num_steps
        for lo in range(0, n, chunk):
            observations = replay.observations(lo, lo + chunk)
            if probe is not None:
                seen.append(probe.find(observations).found)
            tokens.append(model.encode(frames_to_tensor(observations)).cpu())
        actions.append(torch.as_tensor(labels.actions))
        rewards.append(torch.as_tensor(np.sign(labels.rewards).astype(np.int64) + 1))
        ends.append(torch.as_tensor(labels.terminated))
        first.append(labels.episode_first + offset)
        offset += n
    if offset == 0:
        raise ValueError("the replays hold no steps")
    return TokenSteps(
        torch.cat(tokens), torch.cat(actions), torch.cat(rewards), torch.cat(ends),
        np.concatenate(first), np.concatenate(seen) if probe is not None else None,
    )  # fmt: skip


def _window_index(
    steps: TokenSteps, targets: np.ndarray, frames: int, reads_next: bool = False
) -> tuple[Tensor, Tensor]:
    """(N,) step indices -> the (N, W) indices of their windows' frames (clipped to the steps)
    and the (N, W) bool "the frame is in the step's episode" (with ``reads_next``, the last
    frame is the next record: known where it is in the episode or the step ended it)."""
    shift = int(reads_next)
    index = targets[:, None] + np.arange(1 - frames + shift, 1 + shift)[None]  # (N, W)
    known = index >= steps.first[targets][:, None]
    last = len(steps.first) - 1
    if reads_next:
        has_next = targets < last
        same = steps.first[np.minimum(targets + 1, last)] == steps.first[targets]
        known[:, -1] = has_next & (same | steps.ends.numpy()[targets])
    index = np.clip(index, 0, last)
    return torch.as_tensor(index), torch.as_tensor(known)


def _draw_targets(
    steps: TokenSteps,
    config: EventWindowTrainConfig,
    heads: tuple[str, ...],
    rng: np.random.Generator,
) -> np.ndarray:
    """The (B, S) scored steps of a training step's runs of consecutive frames."""
    n, w, s = len(steps.actions), config.frames, config.targets
    length = w - 1 + s
    events = []
    if "rewards" in heads:
        events.append(np.flatnonzero(steps.rewards.numpy() != NO_REWARD_CLASS))
    if "ends" in heads:
        events.append(np.flatnonzero(steps.ends.numpy()))
    placed = round(config.batch_size * config.event_share) if any(len(e) for e in events) else 0
    kinds = [e for e in events if len(e)]
    centres = [rng.choice(kinds[i % len(kinds)]) for i in range(placed)]
    starts = np.array([c - (w - 1) - rng.integers(0, s) for c in centres], dtype=np.int64)
    uniform = rng.integers(0, max(n - length, 0) + 1, size=config.batch_size - placed)
    starts = np.clip(np.concatenate([starts, uniform]), 0, max(n - length, 0))
    scored = starts[:, None] + np.arange(w - 1, length)[None]  # (B, S)
    return np.minimum(scored, n - 1)


def _logits(
    window: EventWindow, steps: TokenSteps, targets: np.ndarray, known_from: np.ndarray | None
) -> Tensor:
    """(N, 5) logits of the windows of steps ``targets``; ``known_from`` (N,) the first frame
    index each window may read (None: its episode's first)."""
    index, known = _window_index(steps, targets, window.frames, window.reads_next)
    if known_from is not None:
        known &= index >= torch.as_tensor(known_from)[:, None]
    unique, inverse = torch.unique(index, return_inverse=True)  # each frame's features once
    features = window.frame_features(steps.tokens[unique])[inverse]  # (N, W, F)
    change = None
    if window.change is not None:  # of each window's last two frames
        change = window.change_features(steps.tokens[index[:, -2]], steps.tokens[index[:, -1]])
    return window.window_logits(features, known, steps.actions[torch.as_tensor(targets)], change)


@torch.no_grad()
def evaluate(
    window: EventWindow, steps: TokenSteps, heads: tuple[str, ...], batch: int = 2048
) -> dict[str, Any]:
    """Every scored step of ``steps`` scored: ``{head: EventCheck}`` with whole windows, and
    ``{head}_two_frames_nll`` with windows of the step's frame and the one before only (the
    step's frame and the next where the window reads it)."""
    window.eval()
    counts = {"rewards": EventCounts(), "ends": EventCounts()}
    two = {"rewards": 0.0, "ends": 0.0}
    scored = np.flatnonzero(steps.scored_mask())
    n = len(scored)
    for lo in range(0, n, batch):
        targets = scored[lo : lo + batch]
        picked = torch.as_tensor(targets)
        rewards, ends = steps.rewards[picked], steps.ends[picked]
        for cut in (None, targets - 1 + int(window.reads_next)):
            logits = _logits(window, steps, targets, cut)
            reward_p = logits[:, :NUM_REWARD_CLASSES].softmax(-1)
            end_p = logits[:, NUM_REWARD_CLASSES:].softmax(-1)
            if cut is None:
                counts["rewards"].add(
                    1 - reward_p[:, NO_REWARD_CLASS],
                    reward_p.argmax(-1) != NO_REWARD_CLASS,
                    rewards != NO_REWARD_CLASS,
                )
                counts["ends"].add(end_p[:, 1], end_p.argmax(-1) == 1, ends)
                continue
            two["rewards"] += F.cross_entropy(
                logits[:, :NUM_REWARD_CLASSES], rewards, reduction="sum"
            ).item()
            two["ends"] += F.cross_entropy(
                logits[:, NUM_REWARD_CLASSES:], ends.long(), reduction="sum"
            ).item()
    window.train()
    result: dict[str, Any] = {name: counts[name].result() for name in heads}
    result.update({f"{name}_two_frames_nll": two[name] / n for name in heads})
    return result


def train(
    config: EventWindowTrainConfig,
    out: Path,
    init_from: str,
    replay_dirs: list[str],
    held_out_dir: str | None,
    command: str,
) -> Path:
    """Trains the event window alone; returns the export folder.

    Raises:
        ValueError: If ``heads`` is not understood, the source cannot be read, its tokens are
            not a square grid, or its event window has other sizes.
    """
    heads = config.head_names()
    torch.manual_seed(config.seed)
    source = load_source(init_from, need_actor_critic=False)
    model = _with_event_window(source.model, config, heads)
    window = model.world_model.event_window
    assert window is not None
    hand_over_heads(model, heads, keep=window)
    probe = None
    if config.early_ends:
        probes = probes_for(source.game)
        if not probes:
            raise ValueError(f"--early-ends needs an object probe, and {source.game} has none")
        probe = probes[0]
    start = time.time()
    replays = [ReplayBuffer(path, read_only=True) for path in replay_dirs]
    steps = token_steps(model, replays, probe=probe)
    held_out = steps
    if held_out_dir is not None:
        held_out = token_steps(model, [ReplayBuffer(held_out_dir, read_only=True)], probe=probe)
    if probe is not None:
        steps = ends_where_object_left(steps, config.early_end_lead)
        held_out = ends_where_object_left(held_out, config.early_end_lead)
    columns = torch.zeros(5, dtype=torch.bool)
    columns[:NUM_REWARD_CLASSES] = "rewards" in heads
    columns[NUM_REWARD_CLASSES:] = "ends" in heads
    rng = np.random.default_rng(config.seed + 1)
    drawn = torch.zeros(5, dtype=torch.float64)  # class counts of the scored steps drawn
    replay_rates = steps.rates()
    is_scored = steps.scored_mask()
    out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(window.parameters(), lr=config.lr)
    with (out / "progress.jsonl").open("w") as progress:
        log_line(
            progress,
            {
                "steps": len(steps.actions),
                "scored_steps": int(is_scored.sum()),
                "rewards": int((steps.rewards != NO_REWARD_CLASS).sum()),
                "ends": int(steps.ends.sum()),
                "held_out_steps": len(held_out.actions),
                "tokenize_s": round(time.time() - start, 1),
            },
        )
        losses: list[float] = []
        best: tuple[float, int, dict[str, Tensor], Tensor] | None = None
        start = time.time()
        for step in range(1, config.steps + 1):
            scored = _draw_targets(steps, config, heads, rng)
            targets = scored.reshape(-1)  # (B*S,)
            known_from = None
            if config.cut_share > 0:
                cut = targets - rng.integers(0, window.frames_before + 1, size=len(targets))
                keep_all = rng.random(len(targets)) >= config.cut_share
                known_from = np.where(keep_all, -1, cut)
            logits = _logits(window, steps, targets, known_from)
            rewards, ends = steps.rewards[targets], steps.ends[targets].long()
            weight = torch.as_tensor(is_scored[targets], dtype=torch.float32)  # (B*S,) 0: unscored
            counted = weight.bool()
            drawn[:3] += torch.bincount(rewards[counted], minlength=3)
            drawn[3:] += torch.bincount(ends[counted], minlength=2)
            loss = torch.zeros(())
            for name, part, labels in (
                ("rewards", logits[:, :NUM_REWARD_CLASSES], rewards),
                ("ends", logits[:, NUM_REWARD_CLASSES:], ends),
            ):
                if name in heads:
                    each = F.cross_entropy(part, labels, reduction="none")
                    loss = loss + (each * weight).sum() / weight.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            window.out.weight.grad[~columns] = 0  # rows of heads not handed over stay at zero
            window.out.bias.grad[~columns] = 0
            optimizer.step()
            losses.append(loss.item())
            out_of_time = 0 < config.max_minutes * 60 <= time.time() - start
            if step % config.eval_every == 0 or step == config.steps or out_of_time:
                shift = _shift(replay_rates, drawn, columns)
                with corrected_bias(window, shift):
                    checks = evaluate(window, held_out, heads)
                record: dict[str, Any] = {"step": step, "train_s": round(time.time() - start, 1)}
                record["loss"] = round(float(np.mean(losses[-config.eval_every :])), 4)
                record.update(
                    {k: asdict(v) if isinstance(v, EventCheck) else round(v, 5)
                     for k, v in checks.items()}
                )  # fmt: skip
                log_line(progress, record)
                held = sum(checks[name].nll for name in heads)
                if best is None or held < best[0]:
                    weights = {k: v.detach().clone() for k, v in window.state_dict().items()}
                    best = (held, step, weights, shift)
            if out_of_time:
                break
    assert best is not None  # the last step is always evaluated
    window.load_state_dict(best[2])
    with torch.no_grad():
        window.out.bias += best[3]
    record = {
        "command": command,
        "preset": "event window training",
        "event_window_steps": best[1],
        "event_window_trained_steps": step,
        "event_window_shift": [round(float(v), 6) for v in best[3]],
        "config": asdict(config),
    }
    return export_with_lineage(model, source.actor_critic, out / "export", init_from, record)


def _shift(replay_rates: Tensor, drawn: Tensor, columns: Tensor) -> Tensor:
    """(5,) log(rate in the replays / rate among the drawn steps) of the handed-over columns."""
    drawn_rates = drawn / drawn[:3].sum().clamp(min=1)
    seen = (drawn_rates > 0) & (replay_rates > 0)
    ratio = torch.where(seen, replay_rates / drawn_rates.clamp(min=1e-12), torch.ones(()))
    return torch.where(columns, ratio.log(), torch.zeros(())).float()


def _with_event_window(
    model: REMModel, config: EventWindowTrainConfig, heads: tuple[str, ...]
) -> REMModel:
    """``model`` with a fresh event window (output layer at zero: the same function), or
    ``model`` itself where it has one of these sizes (trained on). A window that reads the other
    way is replaced by a fresh one, which must take over both heads."""
    sizes = model.config.world_model
    frames, width, reads_next = config.frames, config.width, config.reads_next
    if model.world_model.event_window is not None:
        if sizes.event_window_reads_next == reads_next:
            have = (sizes.event_window_frames, sizes.event_window_width)
            have_change = sizes.event_window_change_width
            if have != (frames, width) or have_change != config.change_width:
                raise ValueError(
                    f"the starting model has an event window of {have[0]} frames, width "
                    f"{have[1]} and change width {have_change}; give --frames {have[0]} "
                    f"--width {have[1]} --change-width {have_change} to train it on"
                )
            return model.eval()
        if set(heads) != {"rewards", "ends"}:
            raise ValueError(
                "the starting model's event window reads "
                + (
                    "up to the next frame"
                    if sizes.event_window_reads_next
                    else "up to each step's frame"
                )
                + "; a fresh window in its place must take over both heads: give --heads "
                "rewards,ends"
            )
    grown_config = dataclasses.replace(
        model.config,
        world_model=dataclasses.replace(
            sizes,
            event_window_frames=frames,
            event_window_width=width,
            event_window_reads_next=reads_next,
            event_window_change_width=config.change_width,
        ),
    )
    try:
        grown = REMModel(grown_config, num_start_contexts=len(model.start_tokens))
    except ValueError as err:  # e.g. tokens that are not a square grid
        raise ValueError(f"cannot add an event window to this model: {err}") from err
    state = {k: v for k, v in model.state_dict().items() if ".event_window." not in k}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    assert not unexpected and all(".event_window." in key for key in missing), missing
    grown.manifest = getattr(model, "manifest", None)
    return grown.eval()


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rem_train.train_event_window``."""
    return replay_training_parser(
        "python -m rem_train.train_event_window",
        __doc__.split("\n\n")[0],
        "the window joins",
        "a replay folder (RUN/replay of rem-train, OUT/replay of rem_train.collect_replay) "
        "to train on, every step of it; repeat it",
        "a replay folder scored every --eval-every steps (default: --replay)",
        EventWindowTrainConfig(),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    numbers = ("frames", "width", "steps", "batch_size", "targets", "eval_every")
    run = parse_replay_training(p, argv, EventWindowTrainConfig, numbers)
    if run.config.change_width < 0:
        p.error("--change-width must be 0 (none) or positive")
    for name in ("event_share", "cut_share"):
        if not 0 <= getattr(run.config, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must lie in [0, 1]")
    try:
        folder = train(run.config, run.out, run.init_from, run.replays, run.held_out, run.command)
    except ValueError as err:  # heads not understood, a source that cannot be read
        p.error(str(err))
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
