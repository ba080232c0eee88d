"""How close a dream is to the real game: the fidelity report behind ``rem-env fidelity``.

The recipe: play the real game (ale-py with REM's training preprocessing, so that a lost life ends
an episode as the world model learned it) with some policy and record every frame, action, reward
and end; then start the world model from the same real context (the last ``context_length`` real
frames) and dream the *same* actions for ``horizon`` steps. Each imagined step ``h`` is scored
against the real step ``h``:

* token accuracy: imagined tokens equal to the tokenizer's tokens of the real frame;
* PSNR of the decoded imagined frame against the real frame (and, as the ceiling a dream cannot
  beat, the PSNR of the tokenizer's own reconstruction of the real frames);
* *motion PSNR*: the PSNR over only the pixels that changed between the real frame and the
  real frame before it (the moving objects, which whole-frame PSNR all but ignores), for the
  dream and for the tokenizer's reconstruction (its ceiling);
* precision and recall of non-zero rewards and of episode ends (over all steps, and per step),
  and of episode ends that come up to :data:`END_EARLY_STEPS` steps before the real one (a lost
  life comes a few frames after the ball was last seen, a timing the frames hardly show);
* for games with object probes (:mod:`rem_env.probes`, e.g. Breakout's ball): how often the
  tokenizer's reconstruction of a real frame shows the object where the emulator's RAM puts it,
  and per imagined step how often the dreamed object lies within
  :data:`~rem_env.probes.NEAR_PIXELS` of the real one;
* for games with a reward rule (:mod:`rem_env.rules`, e.g. Breakout's bricks): per imagined step,
  precision and recall of the dream's losses (a brick broken between a dreamed frame and the one
  before it) against the real game's at the same step, and how often a dreamed brick comes back.

A rollout is compared only while its real episode goes on: after a real end the remaining steps
of that rollout are left out. Dreams sample with the same temperature as the dream envs (1.0).
Rewards are rare when a weak policy plays: :func:`record_real_trajectories` can keep playing
until enough real rewards and ends were seen, and a scripted player
(:class:`~rem_env.probes.BreakoutBallFollower`, ``--agent scripted``) scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Container
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from PIL import Image, ImageDraw

from rem_env.agents import Agent
from rem_env.model import REMModel
from rem_env.models.patch_tokenizer import shift_rows
from rem_env.probes import CLOSE_PIXELS, NEAR_PIXELS, ObjectProbe, probes_for
from rem_env.rules import REWARD_RULES

__all__ = [
    "END_EARLY_STEPS",
    "FidelityReport",
    "ObjectCounts",
    "ObjectHits",
    "RealTrajectory",
    "TokenFlips",
    "measure_fidelity",
    "record_real_trajectories",
    "run_fidelity",
    "save_curve_png",
    "save_strip_png",
    "steps_after_object_left",
    "to_pixels",
]


@dataclass(frozen=True)
class RealTrajectory:
    """One recorded real episode (one life with REM's training preprocessing).

    Attributes:
        frames: (T+1, H, W, 3) uint8 observations, the first one after the reset.
        actions: (T,) int64 actions taken.
        rewards: (T,) float32 rewards received.
        ends: (T,) bool, True at the step that ended the episode (a lost life or game over).
        ram: (T+1, 128) uint8 emulator RAM at each observation (None if not recorded).
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    ends: np.ndarray
    ram: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actions)


END_EARLY_STEPS = 2
"""A dreamed episode end this many steps before the real one, or fewer, counts as found in the
report's ``end_*_early`` figures (the exact-step ones count it only at the real step)."""


@dataclass
class _EndHits:
    """Dreamed episode ends at steps a rule counts right, and the real ends they found.

    Each dream adds its dreamed ends and its real end (if one comes within its horizon); a
    dream is compared only until its real end, so its right ends belong to that real end.
    """

    dreamed: int = 0
    dreamed_right: int = 0
    real: int = 0
    real_found: int = 0

    def add_dream(
        self, dreamed_steps: list[int], real_step: int | None, right: Container[int]
    ) -> None:
        """One dream: the imagined steps it ended at, the step of its real end (or None), and
        the imagined steps that count as right."""
        hits = [d for d in dreamed_steps if d in right]
        self.dreamed += len(dreamed_steps)
        self.dreamed_right += len(hits)
        if real_step is not None:
            self.real += 1
            self.real_found += int(bool(hits))

    def precision(self) -> float | None:
        return self.dreamed_right / self.dreamed if self.dreamed else None

    def recall(self) -> float | None:
        return self.real_found / self.real if self.real else None


class _EarlyEnds(_EndHits):
    """Dreamed episode ends up to ``END_EARLY_STEPS`` before (or at) the real end of a dream."""

    def add(self, dreamed_steps: list[int], real_step: int | None) -> None:
        """One dream: the imagined steps it ended at, and the step of its real end (or None)."""
        window = () if real_step is None else range(real_step - END_EARLY_STEPS, real_step + 1)
        self.add_dream(dreamed_steps, real_step, window)


def steps_after_object_left(seen: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The steps at which a life is already lost: after the last frame of its episode that
    shows the probed object, up to the step that ends the episode.

    An episode whose frames never show the object, and the steps after the last end, have
    none. In Breakout the ball's last frame comes some steps before the game takes the life:
    a dream that ends the life anywhere in between ends it after the ball has gone.

    Args:
        seen: (T,) bool, whether the probe sees its object in each step's frame.
        ends: (T,) bool, True at the step that ended the episode.

    Returns:
        (T,) bool.

    Example:
        >>> seen = np.array([1, 1, 0, 1, 0, 0, 0, 1, 0, 0], bool)
        >>> ends = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 1], bool)
        >>> steps_after_object_left(seen, ends).astype(int).tolist()
        [0, 0, 0, 0, 1, 1, 0, 0, 1, 1]
    """
    lost = np.zeros(len(ends), dtype=bool)
    first = 0
    for end in np.flatnonzero(ends):
        shown = np.flatnonzero(seen[first : end + 1])
        if len(shown):
            lost[first + int(shown[-1]) + 1 : end + 1] = True
        first = int(end) + 1
    return lost


@dataclass(frozen=True)
class FidelityReport:
    """Fidelity of a dream against the real game, per imagined step ``h = 1..horizon``.

    Attributes:
        horizon: Imagined steps per rollout.
        token_accuracy: Mean token accuracy at each ``h`` (list of ``horizon`` floats).
        psnr: Mean PSNR (dB) of decoded dream frames against real frames at each ``h``.
        compared: Number of compared (rollout, step) pairs at each ``h``.
        tokenizer_psnr: Mean PSNR of the tokenizer's reconstruction of the real frames.
        reward_precision: Of the imagined non-zero rewards, the fraction that were real.
        reward_recall: Of the real non-zero rewards, the fraction the dream produced.
        real_rewards: Number of real non-zero rewards compared.
        end_precision: Of the imagined episode ends, the fraction that were real.
        end_recall: Of the real episode ends, the fraction the dream produced.
        real_ends: Number of real episode ends compared.
        rollouts: Dreams started from real contexts.
        episodes: Real episodes (lives) recorded.
        real_steps: Real steps recorded.
        temperature: Sampling temperature of the dream.
        seed: Seed of the dream's sampling.
        event_temperature: Sampling temperature of the dream's rewards and ends (None: the same
            as ``temperature``).
        motion_psnr: PSNR (dB) over the pixels that moved in the real game, at each ``h``
            (None where no pixel moved).
        tokenizer_motion_psnr: The same for the tokenizer's reconstructions (the ceiling).
        reward_precision_by_step: Reward precision at each ``h`` (None where nothing was
            predicted); ``reward_recall_by_step``, ``end_precision_by_step`` and
            ``end_recall_by_step`` likewise.
        rule: For games with a reward rule (:data:`rem_env.rules.REWARD_RULES`): ``lost`` and
            ``back`` (the rule's words, e.g. ``"bricks broken"``), ``precision_by_step`` and
            ``recall_by_step`` (per ``h``, of the dreamed steps that lost an object against
            the frame before them, the share whose real step lost one too, and the other way
            round; the first dreamed frame is compared with the tokenizer's reconstruction of
            the last real frame of the context), ``precision`` and ``recall`` over all steps,
            ``real_lost`` and ``dreamed_lost`` (counts), ``back_by_step`` (per ``h``, the share
            of the compared dreamed steps that gained one back) and ``dreamed_back``. Empty for
            other games.
        objects: Per probe name (e.g. ``"ball"``): ``reconstruction_recall`` (of the real
            frames where the probe can check the object, the share whose reconstruction shows
            it within ``NEAR_PIXELS``), ``reconstruction_frames``, ``reconstruction_false`` (of
            the frames without the object, the share whose reconstruction shows one),
            ``dream_near`` (per ``h``, the share of checkable steps whose dreamed object is
            within ``NEAR_PIXELS`` of the real one), ``dream_compared``, ``dream_found`` (per
            ``h``, the share of those steps whose dreamed frame shows the object anywhere),
            ``dream_kept`` (per ``h``, of the dreams whose object was within ``NEAR_PIXELS``
            at step ``h - 1``, the share that has it there at ``h`` too; None at ``h = 1`` and
            where there were none), ``dream_kept_compared`` (how many such dreams),
            ``dream_close`` (per ``h``, the share of checkable steps whose dreamed object is
            within ``CLOSE_PIXELS``), ``dream_kept_from_close`` (per ``h``, of the dreams whose
            object was within ``CLOSE_PIXELS`` at step ``h - 1``, the share that has it within
            ``NEAR_PIXELS`` at ``h``) and ``dream_kept_from_close_compared``.
        policy: Who played the real game.
        still_token_flips: Of the tokens of patches whose pixels did not change since the
            previous real frame, the share the tokenizer gave another code than in that frame:
            changes the world model has to predict although nothing moved there.
        moving_patches: The share of patches whose pixels changed between consecutive real
            frames (what a perfectly stable tokenizer would change).
        dreamed_rewards: Non-zero rewards the dreams produced, over all imagined steps (beside
            ``real_rewards`` on the same steps: a dream that pays too rarely or too often).
        dreamed_ends: Episode ends the dreams produced, likewise (a dream that hardly ever ends
            a life teaches an agent nothing about losing one).
        end_precision_early: Of the dreamed episode ends, the share that came at a real end or
            up to :data:`END_EARLY_STEPS` imagined steps before it, in the same dream (a dream
            is compared until its real episode ends, so a later dreamed end cannot be seen).
        end_recall_early: Of the real episode ends in the dreams' horizons, the share whose
            dream ended at it or up to :data:`END_EARLY_STEPS` steps before it.
        end_precision_object_left: For games with object probes: of the dreamed episode ends,
            the share that came after the real episode's last frame showing the first probe's
            object (in Breakout the ball), when the life is already lost, and no later than
            its real end (:func:`steps_after_object_left`; also where that end comes after the
            dream's horizon). None without probes.
        end_recall_object_left: Likewise: of the real episode ends in the dreams' horizons,
            the share whose dream ended after the object's last real frame, up to the end.
        end_object: The probe's object those two figures go by (None without probes).
        context: Real frames each dream started from, at most (fewer where its episode had
            fewer before the start; None: the world model's ``context_length``).
    """

    horizon: int
    token_accuracy: list[float]
    psnr: list[float]
    compared: list[int]
    tokenizer_psnr: float
    reward_precision: float | None
    reward_recall: float | None
    real_rewards: int
    end_precision: float | None
    end_recall: float | None
    real_ends: int
    rollouts: int
    episodes: int
    real_steps: int
    temperature: float
    seed: int
    motion_psnr: list[float | None] = field(default_factory=list)
    tokenizer_motion_psnr: float | None = None
    reward_precision_by_step: list[float | None] = field(default_factory=list)
    reward_recall_by_step: list[float | None] = field(default_factory=list)
    end_precision_by_step: list[float | None] = field(default_factory=list)
    end_recall_by_step: list[float | None] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy: str = ""
    still_token_flips: float | None = None
    moving_patches: float | None = None
    dreamed_rewards: int = 0
    dreamed_ends: int = 0
    end_precision_early: float | None = None
    end_recall_early: float | None = None
    end_precision_object_left: float | None = None
    end_recall_object_left: float | None = None
    end_object: str | None = None
    event_temperature: float | None = None
    rule: dict[str, Any] = field(default_factory=dict)
    context: int | None = None

    def at(self, step: int) -> dict[str, float]:
        """Token accuracy and PSNR after ``step`` imagined steps (1-based)."""
        if not 1 <= step <= self.horizon:
            raise ValueError(f"step must lie in [1, {self.horizon}], got {step}")
        return {"token_accuracy": self.token_accuracy[step - 1], "psnr": self.psnr[step - 1]}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    def summary_table(self, steps: tuple[int, ...] = (1, 5, 10)) -> str:
        """A markdown table per imagined step (token accuracy, PSNR, motion PSNR, rewards,
        objects), then the tokenizer's ceiling and the event counts."""
        steps = tuple(s for s in steps if s <= self.horizon)
        names = sorted(self.objects)
        header = ["imagined step", "token accuracy", "PSNR (dB)"]
        if self.motion_psnr:
            header.append("motion PSNR (dB)")
        if self.reward_precision_by_step:
            header += ["reward precision", "reward recall"]
        header += [f"{name} within {NEAR_PIXELS:g} px" for name in names]
        if self.rule:
            header += [f"{self.rule['lost']}: precision", f"{self.rule['lost']}: recall"]
        rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for step in steps:
            at = self.at(step)
            cells = [str(step), f"{at['token_accuracy']:.3f}", f"{at['psnr']:.2f}"]
            if self.motion_psnr:
                cells.append(_fmt(self.motion_psnr[step - 1], 2))
            if self.reward_precision_by_step:
                cells += [
                    _fmt(self.reward_precision_by_step[step - 1]),
                    _fmt(self.reward_recall_by_step[step - 1]),
                ]
            cells += [_fmt(self.objects[name]["dream_near"][step - 1]) for name in names]
            if self.rule:
                cells += [
                    _fmt(self.rule["precision_by_step"][step - 1]),
                    _fmt(self.rule["recall_by_step"][step - 1]),
                ]
            rows.append("| " + " | ".join(cells) + " |")
        rows.append("")
        ceiling = f"Tokenizer reconstruction PSNR (the ceiling): {self.tokenizer_psnr:.2f} dB"
        if self.tokenizer_motion_psnr is not None:
            ceiling += f", motion PSNR {self.tokenizer_motion_psnr:.2f} dB"
        for name in names:
            obj = self.objects[name]
            ceiling += (
                f"; {name} shown within {NEAR_PIXELS:g} px in "
                f"{_fmt(obj['reconstruction_recall'])} of {obj['reconstruction_frames']} "
                f"reconstructions of real frames with the {name} (and in "
                f"{_fmt(obj['reconstruction_false'])} of those without it)"
            )
        rows += [ceiling + ".", ""]  # a blank line: one paragraph each in markdown
        for name in names:
            obj = self.objects[name]
            if obj.get("dream_found") and self.horizon >= 2:  # reports before 2026-12-02 lack it
                found = obj["dream_found"]
                rows += [
                    f"Dreamed {name} anywhere in the frame at steps 1 / {self.horizon}: "
                    f"{_fmt(found[0])} / {_fmt(found[-1])}; of the dreams with the {name} "
                    f"within {NEAR_PIXELS:g} px at step 1, {_fmt(obj['dream_kept'][1])} still "
                    f"have it there at step 2 ({obj['dream_kept_compared'][1]} dreams).",
                    "",
                ]
            if obj.get("dream_close") and self.horizon >= 2:  # reports before 2026-12-04 lack it
                rows += [
                    f"Dreamed {name} within {CLOSE_PIXELS:g} px at steps 1 / {self.horizon}: "
                    f"{_fmt(obj['dream_close'][0])} / {_fmt(obj['dream_close'][-1])}; of the "
                    f"dreams with it within {CLOSE_PIXELS:g} px at step 1, "
                    f"{_fmt(obj['dream_kept_from_close'][1])} have it within {NEAR_PIXELS:g} px "
                    f"at step 2 ({obj['dream_kept_from_close_compared'][1]} dreams).",
                    "",
                ]
        if self.still_token_flips is not None and self.moving_patches is not None:
            rows += [
                f"Tokens that change where no pixel moved: {_fmt(self.still_token_flips)} of the "
                f"still patches' tokens ({_fmt(self.moving_patches)} of patches moved).",
                "",
            ]
        if self.rule:
            rule = self.rule
            rows += [
                f"{rule['lost'].capitalize()} over all {self.horizon} steps: precision "
                f"{_fmt(rule['precision'])}, recall {_fmt(rule['recall'])} ({rule['real_lost']} "
                f"real, {rule['dreamed_lost']} dreamed); {rule['back']} in "
                f"{_fmt(rule['dreamed_back'] / max(sum(self.compared), 1))} of the dreamed steps.",
                "",
            ]
        played = f" Played by {self.policy}." if self.policy else ""
        rows.append(
            f"Rewards over all {self.horizon} steps: precision {_fmt(self.reward_precision)}, "
            f"recall {_fmt(self.reward_recall)} ({self.real_rewards} real rewards, "
            f"{self.dreamed_rewards} dreamed). Episode ends: precision "
            f"{_fmt(self.end_precision)}, recall {_fmt(self.end_recall)} ({self.real_ends} real "
            f"ends, {self.dreamed_ends} dreamed); up to {END_EARLY_STEPS} steps early: precision "
            f"{_fmt(self.end_precision_early)}, recall {_fmt(self.end_recall_early)}"
            f"{self._object_left_words()}. "
            f"{self.rollouts} dreams of {self.horizon} "
            f"steps from {self.episodes} real episodes ({self.real_steps} real steps)"
            f"{self._context_words()}.{played}"
        )
        return "\n".join(rows)

    def _object_left_words(self) -> str:
        if self.end_object is None:
            return ""
        return (
            f"; after the real {self.end_object}'s last frame (the life already lost), up to "
            f"the real end: precision {_fmt(self.end_precision_object_left)}, recall "
            f"{_fmt(self.end_recall_object_left)}"
        )

    def _context_words(self) -> str:
        if self.context is None:
            return ""
        return f", each started from up to {self.context} real frames"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _real_obs(model: REMModel, frames: np.ndarray, obs_type: str) -> np.ndarray:
    """Observations of type ``obs_type`` of (N, H, W, 3) uint8 real frames, as a dream gives."""
    if obs_type == "rgb":
        return frames
    with torch.inference_mode():
        device = model.start_tokens.device
        pixels = torch.as_tensor(frames, device=device).permute(0, 3, 1, 2).float() / 255.0
        tokens = model.encode(pixels)  # (N, K)
        if obs_type == "tokens":
            return tokens.cpu().numpy()
        return model.tokenizer.to_codes(tokens).float().cpu().numpy()  # (N, E, h, w)


def record_real_trajectories(
    model: REMModel,
    game: str,
    agent: Agent,
    games: int = 2,
    seed: int = 0,
    max_steps: int = 5_000,
    min_rewards: int = 0,
    min_ends: int = 0,
    max_games: int | None = None,
) -> list[RealTrajectory]:
    """Plays real games and returns one trajectory per life, with the emulator's RAM.

    Args:
        model: The world model (its tokenizer turns real frames into the agent's observations).
        game: Atari 100K game.
        agent: Acts on observations of its ``obs_type``, one env at a time; an agent whose
            ``obs_type`` is ``"ram"`` (a scripted player) gets the (1, 128) RAM instead.
        games: Whole games to play at least (each gives one trajectory per life).
        seed: Seed of the first reset.
        max_steps: Agent steps per game at most (a policy that never serves stops here).
        min_rewards: Keep playing whole games until this many non-zero rewards were seen ...
        min_ends: ... and this many episode ends (lost lives), ...
        max_games: ... but never more than this many games (default: ``4 * games + 20``).
    """
    from rem_env.atari import OBS_SIZE, make_atari_env  # ale-py, only to play the real game

    if games < 1 or max_steps < 1:
        raise ValueError(f"games and max_steps must be positive, got {games}, {max_steps}")
    max_games = 4 * games + 20 if max_games is None else max_games
    env = make_atari_env(game, train=True, seed=seed)
    ale = env.unwrapped.ale
    size = model.config.tokenizer.image_size
    if size != OBS_SIZE:  # a model of smaller frames (tests): the same area resize to its size
        env = gym.wrappers.TransformObservation(
            env,
            lambda obs: cv2.resize(obs, (size, size), interpolation=cv2.INTER_AREA),
            spaces.Box(0, 255, (size, size, 3), np.uint8),
        )
    trajectories: list[RealTrajectory] = []
    played = rewards_seen = ends_seen = 0
    try:
        while played < games or (
            (rewards_seen < min_rewards or ends_seen < min_ends) and played < max_games
        ):
            obs, info = env.reset()
            played += 1
            game_over, steps = False, 0
            while not game_over:
                frames, rams, actions, rewards, ends = [obs], [ale.getRAM().copy()], [], [], []
                while True:
                    if agent.obs_type == "ram":
                        seen = rams[-1][None]
                    else:
                        seen = _real_obs(model, obs[None], agent.obs_type)
                    action = int(agent.act(seen)[0])
                    obs, reward, terminated, truncated, info = env.step(action)
                    steps += 1
                    actions.append(action)
                    rewards.append(float(reward))
                    ends.append(bool(terminated))
                    if terminated or truncated or steps >= max_steps:
                        break
                    frames.append(obs)
                    rams.append(ale.getRAM().copy())
                frames.append(obs)
                rams.append(ale.getRAM().copy())
                agent.episodes_ended(np.ones(1, dtype=bool))
                trajectories.append(
                    RealTrajectory(
                        np.stack(frames),
                        np.asarray(actions, dtype=np.int64),
                        np.asarray(rewards, dtype=np.float32),
                        np.asarray(ends, dtype=bool),
                        np.stack(rams),
                    )
                )
                rewards_seen += int(np.count_nonzero(rewards))
                ends_seen += int(np.count_nonzero(ends))
                game_over = bool(info.get("game_over")) or truncated or steps >= max_steps
                if not game_over:
                    obs, info = env.reset()  # the next life of the same game
    finally:
        env.close()
    return trajectories


def _to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [0, 1]."""
    return torch.as_tensor(frames, device=device).movedim(-1, -3).float() / 255.0


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR (dB) of (N, 3, H, W) frames in [0, 1]."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


@dataclass
class _Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, predicted: torch.Tensor, real: torch.Tensor) -> None:
        self.tp += int((predicted & real).sum())
        self.fp += int((predicted & ~real).sum())
        self.fn += int((~predicted & real).sum())

    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


MOTION_THRESHOLD = 8 / 255
"""A pixel moved when a channel changed by more than this between consecutive real frames."""


@dataclass
class _MotionError:
    """Squared error pooled over the pixels that moved in the real game."""

    squared: float = 0.0
    count: int = 0

    def add(self, predicted: torch.Tensor, real: torch.Tensor, previous: torch.Tensor) -> None:
        """(N, 3, H, W) frames in [0, 1]: the prediction, the real frame, the real one before."""
        moving = (real - previous).abs().amax(dim=1, keepdim=True) > MOTION_THRESHOLD
        mask = moving.expand_as(real)  # (N, 3, H, W)
        self.squared += float((predicted - real).square()[mask].double().sum())
        self.count += int(mask.sum())

    def psnr(self) -> float | None:
        if not self.count:
            return None
        return float(-10.0 * math.log10(max(self.squared / self.count, 1e-10)))


@dataclass
class TokenFlips:
    """Counts how often a tokenizer changes the token of a patch whose pixels did not move.

    A patch moved when any of its pixels changed by more than :data:`MOTION_THRESHOLD` between
    consecutive real frames. Tokens are in raster order over a square grid of patches that
    starts ``row_offset`` rows above the frame (a patch tokenizer's ``row_offset``).

    Example:
        >>> import torch
        >>> frames = torch.zeros(2, 3, 16, 16)
        >>> frames[1, :, :8, :8] = 1.0  # the top-left patch of the second frame moved
        >>> flips = TokenFlips()
        >>> now, before = torch.tensor([[5, 1, 2, 7]]), torch.tensor([[4, 1, 2, 3]])
        >>> flips.add(now, before, frames[1:], frames[:1])
        >>> flips.still_flip_share(), flips.moving_share()  # token 3 flipped in a still patch
        (0.3333333333333333, 0.25)
    """

    row_offset: int = 0
    still: int = 0
    still_flipped: int = 0
    moving: int = 0

    def add(
        self, tokens: torch.Tensor, before: torch.Tensor, real: torch.Tensor, previous: torch.Tensor
    ) -> None:
        """(N, K) tokens of frames and of the frames before them; (N, 3, H, W) those frames."""
        n, k = tokens.shape
        side = math.isqrt(k)
        if side * side != k or real.shape[-1] % side or real.shape[-2] % side:
            raise ValueError(f"{k} tokens do not tile {tuple(real.shape[-2:])} frames")
        moved = (real - previous).abs().amax(dim=1) > MOTION_THRESHOLD  # (N, H, W)
        moved = shift_rows(moved, self.row_offset, fill=False)  # rows of the token grid
        ph, pw = real.shape[-2] // side, real.shape[-1] // side
        patch_moved = moved.view(n, side, ph, side, pw).amax(dim=(2, 4)).reshape(n, k)  # (N, K)
        flipped = tokens != before
        self.still += int((~patch_moved).sum())
        self.still_flipped += int((flipped & ~patch_moved).sum())
        self.moving += int(patch_moved.sum())

    def still_flip_share(self) -> float | None:
        """Of the still patches, the share whose token changed (None if there were none)."""
        return self.still_flipped / self.still if self.still else None

    def moving_share(self) -> float | None:
        """The share of patches that moved (None before any frame pair)."""
        total = self.still + self.moving
        return self.moving / total if total else None


class ObjectHits(NamedTuple):
    """What :meth:`ObjectCounts.add` saw in N frames, as (N,) bool each."""

    near: np.ndarray
    """The object was found within ``NEAR_PIXELS`` of the real one (checkable frames only)."""
    close: np.ndarray
    """Within ``CLOSE_PIXELS`` (checkable frames only)."""
    checkable: np.ndarray
    """The probe could check the object in the real frame."""


@dataclass
class ObjectCounts:
    """How often a probe found its object at the real place (checkable frames), and found one
    where there was none."""

    near: int = 0
    checked: int = 0
    found: int = 0
    false: int = 0
    absent: int = 0
    close: int = 0

    def add(self, probe: ObjectProbe, pictures: np.ndarray, ram: np.ndarray) -> ObjectHits:
        """Counts a batch of frames; returns which of them had the object near, close, and
        checkable."""
        truth = probe.real_positions(ram, pictures.shape[1])
        hits = probe.find(pictures)
        distance = np.where(
            hits.found, np.linalg.norm(hits.positions - truth.positions, axis=1), np.inf
        )
        near, close = distance <= NEAR_PIXELS, distance <= CLOSE_PIXELS
        self.near += int(near[truth.checkable].sum())
        self.close += int(close[truth.checkable].sum())
        self.checked += int(truth.checkable.sum())
        self.found += int(hits.found[truth.checkable].sum())
        self.false += int(hits.found[~truth.visible].sum())
        self.absent += int((~truth.visible).sum())
        return ObjectHits(near & truth.checkable, close & truth.checkable, truth.checkable)

    def recall(self) -> float | None:
        return self.near / self.checked if self.checked else None

    def close_share(self) -> float | None:
        """Of the checkable frames, the share with the object within ``CLOSE_PIXELS``."""
        return self.close / self.checked if self.checked else None

    def found_share(self) -> float | None:
        """Of the checkable frames, the share where an object was found anywhere."""
        return self.found / self.checked if self.checked else None

    def false_share(self) -> float | None:
        return self.false / self.absent if self.absent else None


def _contexts(
    tokens: list[torch.Tensor],
    trajectories: list[RealTrajectory],
    batch: list[tuple[int, int]],
    length: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (b, length, K) tokens and (b, length - 1) actions of the real frames up to each
    (episode, step) start of ``batch``."""
    ctx_tokens = torch.stack([tokens[i][t - length + 1 : t + 1] for i, t in batch])
    ctx_actions = torch.stack(
        [torch.as_tensor(trajectories[i].actions[t - length + 1 : t]) for i, t in batch]
    ).to(device)
    return ctx_tokens, ctx_actions


@torch.inference_mode()
def measure_fidelity(
    model: REMModel,
    trajectories: list[RealTrajectory],
    horizon: int = 10,
    stride: int = 5,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    autocast: torch.dtype | None = None,
    event_temperature: float | None = None,
    context: int | None = None,
) -> tuple[FidelityReport, dict[str, np.ndarray]]:
    """Dreams the recorded actions from real contexts and scores every imagined step.

    Args:
        model: The world model.
        trajectories: Real episodes from :func:`record_real_trajectories`.
        horizon: Imagined steps per dream.
        stride: A dream starts every ``stride`` real steps of each episode.
        temperature: Sampling temperature of the dream (1.0 as in the dream envs).
        seed: Seed of the dream's sampling.
        batch_size: Dreams imagined together (one forward pass per step for all of them).
        autocast: Dream (and decode the dreamed frames) under ``torch.autocast`` with this
            dtype; the real frames' tokens and the tokenizer ceiling stay in float32.
        event_temperature: Sampling temperature of the dream's rewards and ends (None:
            ``temperature``).
        context: Real frames each dream starts from, at most: as many of the frames before a
            start as its episode has, up to this many (None: the world model's
            ``context_length``, 2 in REM). The dreams start at the same real steps whatever it
            is: the first one ``context_length`` frames into an episode.

    Returns:
        ``(report, strip)``: the report, and the real and dreamed frames ``(horizon+1, H, W, 3)``
        uint8 of the first dream that runs its whole horizon (for :func:`save_strip_png`).

    Raises:
        ValueError: If no episode is long enough to start a dream, or ``context`` is below
            the world model's ``context_length``.
    """
    if horizon < 1 or stride < 1 or batch_size < 1:
        raise ValueError(f"horizon, stride and batch_size must be positive: {horizon}, {stride}")
    model.eval()
    device = model.start_tokens.device
    shortest = model.config.world_model.context_length
    longest = shortest if context is None else context
    if longest < shortest:
        raise ValueError(
            f"context must be at least the world model's context_length ({shortest}), got {longest}"
        )
    starts = [
        (i, t)
        for i, traj in enumerate(trajectories)
        for t in range(shortest - 1, len(traj), stride)
    ]
    if not starts:
        raise ValueError(f"no recorded episode has {shortest} frames to start a dream from")
    tokens = [model.encode(_to_tensor(traj.frames, device)) for traj in trajectories]  # (T+1, K)

    def dreaming() -> torch.autocast:
        return torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)

    hits = torch.zeros(horizon, dtype=torch.float64)
    psnr = torch.zeros(horizon, dtype=torch.float64)
    compared = torch.zeros(horizon, dtype=torch.int64)
    rewards, ends = _Counts(), _Counts()
    step_rewards = [_Counts() for _ in range(horizon)]
    step_ends = [_Counts() for _ in range(horizon)]
    early_ends = _EarlyEnds()
    after_left = _EndHits()
    motion = [_MotionError() for _ in range(horizon)]
    with_ram = all(traj.ram is not None for traj in trajectories)
    probes = probes_for(model.config.game or "") if with_ram else ()
    dream_objects = {p.name: [ObjectCounts() for _ in range(horizon)] for p in probes}
    # Per episode: the steps at which its life is already lost, by the first probe's object.
    lost_steps = [
        steps_after_object_left(probes[0].find(traj.frames[: len(traj)]).found, traj.ends)
        for traj in trajectories
    ] if probes else None  # fmt: skip
    # Per step h >= 2: [dreams whose object was near at h-1 and is checkable at h, of them near]
    kept = {p.name: np.zeros((horizon, 2), dtype=np.int64) for p in probes}
    # The same for the dreams whose object was close at h-1.
    kept_close = {p.name: np.zeros((horizon, 2), dtype=np.int64) for p in probes}
    rule = REWARD_RULES.get(model.config.game or "")
    step_lost = [_Counts() for _ in range(horizon)]
    step_back = np.zeros(horizon, dtype=np.int64)
    generator = torch.Generator(device=device).manual_seed(seed)
    strip: dict[str, np.ndarray] = {}
    for first in range(0, len(starts), batch_size):
        batch = starts[first : first + batch_size]
        b = len(batch)
        ctx_tokens, ctx_actions = _contexts(tokens, trajectories, batch, shortest, device)
        lengths = [min(longest, t + 1) for _, t in batch]  # each dream's real frames
        with dreaming():
            if longest == shortest:
                state = model.start_state(ctx_tokens, ctx_actions)
            else:  # every group of one context length started at one shared position
                position = (longest - 1) * model.world_model.tokens_per_block
                state = model.start_state(ctx_tokens, ctx_actions, position=position)
                for length in sorted(set(lengths) - {shortest}):
                    rows = [j for j, n in enumerate(lengths) if n == length]
                    group = [batch[j] for j in rows]
                    more = _contexts(tokens, trajectories, group, length, device)
                    part = model.start_state(*more, position=position)
                    state = state.index_copy(torch.tensor(rows, device=device), part)
            # What the first dreamed frame is read against by the rule: the context's last frame
            # as the tokenizer draws it.
            last_pictures = (
                to_pixels(model.decode(ctx_tokens[:, -1]).float()) if rule is not None else None
            )  # (b, H, W, 3)
        alive = torch.ones(b, dtype=torch.bool, device=device)
        near_before = {p.name: np.zeros(b, dtype=bool) for p in probes}  # at the last step
        close_before = {p.name: np.zeros(b, dtype=bool) for p in probes}
        dreamed_end_steps: list[list[int]] = [[] for _ in range(b)]
        real_end_step: list[int | None] = [None] * b
        dreamed: list[np.ndarray] = []
        for h in range(1, horizon + 1):
            index = [t + h - 1 for _, t in batch]  # the real step taken from the last frame
            valid = (
                torch.tensor(
                    [j < len(trajectories[i]) for (i, _), j in zip(batch, index, strict=True)],
                    device=device,
                )
                & alive
            )
            if not valid.any():
                break
            actions = torch.tensor(
                [
                    int(trajectories[i].actions[j]) if j < len(trajectories[i]) else 0
                    for (i, _), j in zip(batch, index, strict=True)
                ],
                device=device,
            )
            with dreaming():
                step, state = model.imagine_step(
                    state,
                    actions,
                    temperature,
                    generator=generator,
                    event_temperature=event_temperature,
                )
            real_reward = torch.tensor(
                [
                    _at(trajectories[i].rewards, j) != 0
                    for (i, _), j in zip(batch, index, strict=True)
                ],
                device=device,
            )
            real_end = torch.tensor(
                [
                    bool(_at(trajectories[i].ends, j))
                    for (i, _), j in zip(batch, index, strict=True)
                ],
                device=device,
            )
            rewards.add((step.rewards != 0)[valid], real_reward[valid])
            ends.add(step.ends[valid], real_end[valid])
            step_rewards[h - 1].add((step.rewards != 0)[valid], real_reward[valid])
            step_ends[h - 1].add(step.ends[valid], real_end[valid])
            for row in (valid & step.ends).nonzero().flatten().tolist():
                dreamed_end_steps[row].append(h)
            for row in (valid & real_end).nonzero().flatten().tolist():
                real_end_step[row] = h
            # The next frame exists only while the real episode goes on.
            seen = valid & ~real_end
            if seen.any():
                rows = seen.nonzero().squeeze(1)
                real_tokens = torch.stack(
                    [tokens[batch[r][0]][index[r] + 1] for r in rows.tolist()]
                )
                real_frames = _to_tensor(
                    np.stack(
                        [trajectories[batch[r][0]].frames[index[r] + 1] for r in rows.tolist()]
                    ),
                    device,
                )
                previous_frames = _to_tensor(
                    np.stack([trajectories[batch[r][0]].frames[index[r]] for r in rows.tolist()]),
                    device,
                )
                with dreaming():
                    dream_frames = model.decode(step.obs_tokens[rows]).float()
                hits[h - 1] += (step.obs_tokens[rows] == real_tokens).float().mean(1).sum().item()
                psnr[h - 1] += _psnr(dream_frames, real_frames).sum().item()
                motion[h - 1].add(dream_frames, real_frames, previous_frames)
                pictures = to_pixels(dream_frames) if probes or rule is not None else None
                if rule is not None:
                    picked = rows.cpu().numpy()
                    dream_lost, dream_back = rule.compare(last_pictures[picked], pictures)
                    real_before, real_after = (
                        np.stack([trajectories[batch[r][0]].frames[index[r] + k] for r in picked])
                        for k in (0, 1)
                    )
                    real_lost, _ = rule.compare(real_before, real_after)
                    step_lost[h - 1].add(torch.as_tensor(dream_lost), torch.as_tensor(real_lost))
                    step_back[h - 1] += int(dream_back.sum())
                    last_pictures[picked] = pictures
                if probes:
                    ram = np.stack(
                        [trajectories[batch[r][0]].ram[index[r] + 1] for r in rows.tolist()]  # type: ignore[index]
                    )
                    picked = rows.cpu().numpy()
                    for probe in probes:
                        seen_now = dream_objects[probe.name][h - 1].add(probe, pictures, ram)
                        for before, counts, now in (
                            (near_before, kept, seen_now.near),
                            (close_before, kept_close, seen_now.close),
                        ):
                            was = before[probe.name][picked] & seen_now.checkable
                            counts[probe.name][h - 1] += (
                                int(was.sum()),
                                int(seen_now.near[was].sum()),
                            )
                            before[probe.name][:] = False
                            before[probe.name][picked] = now
                compared[h - 1] += len(rows)
                if not strip and bool(seen[0]):
                    dreamed.append(to_pixels(dream_frames[:1])[0])
            if dreamed and len(dreamed) < h:
                dreamed = []  # the first dream's episode ended: no strip from it
            alive = seen
        for (i, t), steps_ended, real_step in zip(
            batch, dreamed_end_steps, real_end_step, strict=True
        ):
            early_ends.add(steps_ended, real_step)
            if lost_steps is not None:  # imagined step h is real step t + h - 1
                right = {h for h in steps_ended if lost_steps[i][t + h - 1]}
                after_left.add_dream(steps_ended, real_step, right)
        if not strip and len(dreamed) == horizon:
            i, t = batch[0]
            strip = {
                "real": trajectories[i].frames[t : t + horizon + 1],
                "dream": np.stack([trajectories[i].frames[t], *dreamed]),
            }
    tokenizer_psnr, tokenizer_motion, recon_objects, flips = _reconstruction_scores(
        model, trajectories, batch_size, probes
    )
    objects = {
        name: {
            "reconstruction_recall": recon_objects[name].recall(),
            "reconstruction_frames": recon_objects[name].checked,
            "reconstruction_false": recon_objects[name].false_share(),
            "dream_near": [c.recall() for c in counts],
            "dream_compared": [c.checked for c in counts],
            "dream_found": [c.found_share() for c in counts],
            "dream_kept": [int(n) / int(of) if of else None for of, n in kept[name]],
            "dream_kept_compared": [int(of) for of, _ in kept[name]],
            "dream_close": [c.close_share() for c in counts],
            "dream_kept_from_close": [
                int(n) / int(of) if of else None for of, n in kept_close[name]
            ],
            "dream_kept_from_close_compared": [int(of) for of, _ in kept_close[name]],
        }
        for name, counts in dream_objects.items()
    }
    count = compared.clamp_min(1).double()
    rule_scores: dict[str, Any] = {}
    if rule is not None:
        lost = _Counts(*(sum(getattr(c, f) for c in step_lost) for f in ("tp", "fp", "fn")))
        rule_scores = {
            "lost": rule.lost,
            "back": rule.back,
            "precision_by_step": [c.precision() for c in step_lost],
            "recall_by_step": [c.recall() for c in step_lost],
            "precision": lost.precision(),
            "recall": lost.recall(),
            "real_lost": lost.tp + lost.fn,
            "dreamed_lost": lost.tp + lost.fp,
            "back_by_step": [
                int(n) / int(c) if c else None for n, c in zip(step_back, compared, strict=True)
            ],
            "dreamed_back": int(step_back.sum()),
        }
    report = FidelityReport(
        horizon=horizon,
        token_accuracy=[float(v) for v in hits / count],
        psnr=[float(v) for v in psnr / count],
        compared=[int(v) for v in compared],
        tokenizer_psnr=tokenizer_psnr,
        reward_precision=rewards.precision(),
        reward_recall=rewards.recall(),
        real_rewards=rewards.tp + rewards.fn,
        end_precision=ends.precision(),
        end_recall=ends.recall(),
        real_ends=ends.tp + ends.fn,
        rollouts=len(starts),
        episodes=len(trajectories),
        real_steps=sum(len(traj) for traj in trajectories),
        temperature=temperature,
        seed=seed,
        event_temperature=event_temperature,
        context=context,
        motion_psnr=[m.psnr() for m in motion],
        tokenizer_motion_psnr=tokenizer_motion,
        reward_precision_by_step=[c.precision() for c in step_rewards],
        reward_recall_by_step=[c.recall() for c in step_rewards],
        end_precision_by_step=[c.precision() for c in step_ends],
        end_recall_by_step=[c.recall() for c in step_ends],
        objects=objects,
        still_token_flips=flips.still_flip_share(),
        moving_patches=flips.moving_share(),
        dreamed_rewards=rewards.tp + rewards.fp,
        dreamed_ends=ends.tp + ends.fp,
        end_precision_early=early_ends.precision(),
        end_recall_early=early_ends.recall(),
        end_precision_object_left=after_left.precision() if probes else None,
        end_recall_object_left=after_left.recall() if probes else None,
        end_object=probes[0].name if probes else None,
        rule=rule_scores,
    )
    return report, strip


def _at(values: np.ndarray, index: int) -> Any:
    return values[index] if index < len(values) else 0


def to_pixels(frames: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return (frames * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _reconstruction_scores(
    model: REMModel,
    trajectories: list[RealTrajectory],
    batch_size: int,
    probes: tuple[ObjectProbe, ...],
) -> tuple[float, float | None, dict[str, ObjectCounts], TokenFlips]:
    """The tokenizer's ceiling: mean PSNR and motion PSNR of its reconstructions of the real
    frames, the probes' counts on them, and how often its tokens change where nothing moved."""
    device = model.start_tokens.device
    total, frames_seen = 0.0, 0
    motion = _MotionError()
    flips = TokenFlips(row_offset=model.config.tokenizer.row_offset)
    objects = {probe.name: ObjectCounts() for probe in probes}
    for traj in trajectories:
        last_tokens = None  # (1, K) tokens of the previous batch's last frame
        for first in range(0, len(traj.frames), batch_size):
            real = _to_tensor(traj.frames[first : first + batch_size], device)
            tokens = model.encode(real)  # (N, K)
            rebuilt = model.decode(tokens)
            total += _psnr(rebuilt, real).sum().item()
            frames_seen += len(real)
            if first > 0 or len(real) > 1:  # frames with a real frame before them
                lo = 1 if first == 0 else 0
                before = _to_tensor(traj.frames[first + lo - 1 : first + len(real) - 1], device)
                motion.add(rebuilt[lo:], real[lo:], before)
                before_tokens = tokens[:-1] if first == 0 else torch.cat([last_tokens, tokens[:-1]])
                flips.add(tokens[lo:], before_tokens, real[lo:], before)
            last_tokens = tokens[-1:]
            if probes:
                pictures = to_pixels(rebuilt)
                ram = traj.ram[first : first + batch_size]  # type: ignore[index]
                for probe in probes:
                    objects[probe.name].add(probe, pictures, ram)
    return total / frames_seen, motion.psnr(), objects, flips


def save_strip_png(
    strip: dict[str, np.ndarray],
    path: str | os.PathLike[str],
    scale: int = 3,
    per_row: int = 4,
) -> None:
    """A PNG of real frames above dreamed frames, step 0 = the context.

    The steps wrap after ``per_row`` of them, each block a row of real frames above a row of
    dreamed ones, so that a page or a model card shows the frames large enough to see the ball.
    """
    real, dream = strip["real"], strip["dream"]
    n, h, w, _ = real.shape
    gap, block_gap = 2, 8
    cols = max(1, min(per_row, n))
    blocks = math.ceil(n / cols)
    block_h = 2 * h + gap
    canvas = Image.new(
        "RGB", (cols * (w + gap) - gap, blocks * (block_h + block_gap) - block_gap), (255, 255, 255)
    )
    for k in range(n):
        x = (k % cols) * (w + gap)
        y = (k // cols) * (block_h + block_gap)
        canvas.paste(Image.fromarray(real[k]), (x, y))
        canvas.paste(Image.fromarray(dream[k]), (x, y + h + gap))
    canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST).save(path)


def save_curve_png(report: FidelityReport, path: str | os.PathLike[str]) -> None:
    """A PNG with token accuracy and PSNR over the imagined steps (PIL only, no matplotlib)."""
    width, height, pad = 360, 220, 36
    canvas = Image.new("RGB", (2 * width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    panels = [
        ("token accuracy", report.token_accuracy, 0.0, 1.0, None),
        ("PSNR (dB); dashed: tokenizer", report.psnr, 0.0, _ceil_to(report.tokenizer_psnr + 2, 5),
         report.tokenizer_psnr),
    ]  # fmt: skip
    for p, (title, values, low, high, line) in enumerate(panels):
        x0, x1 = p * width + pad, (p + 1) * width - 10
        y0, y1 = 20, height - pad

        def xy(i: int, v: float, x0: int = x0, x1: int = x1, y0: int = y0, y1: int = y1,
               low: float = low, high: float = high) -> tuple[float, float]:  # fmt: skip
            x = x0 + (x1 - x0) * (i / max(1, report.horizon - 1))
            return x, y1 - (y1 - y0) * (min(max(v, low), high) - low) / (high - low)

        draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
        draw.text((x0, 4), title, fill=(0, 0, 0))
        for tick in (low, (low + high) / 2, high):
            y = xy(0, tick)[1]
            draw.text((p * width + 2, y - 5), f"{tick:g}", fill=(0, 0, 0))
        for i in range(report.horizon):
            x = xy(i, low)[0]
            draw.text((x - 3, y1 + 4), str(i + 1), fill=(0, 0, 0))
        if line is not None:
            y = xy(0, line)[1]
            for x in range(x0, x1, 8):
                draw.line((x, y, x + 4, y), fill=(120, 120, 120))
        points = [xy(i, v) for i, v in enumerate(values) if not math.isnan(v)]
        if len(points) > 1:
            draw.line(points, fill=(31, 119, 180), width=2)
        for x, y in points:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(31, 119, 180))
        draw.text(((x0 + x1) // 2 - 40, height - 14), "imagined step", fill=(0, 0, 0))
    canvas.save(path)


def _ceil_to(value: float, step: float) -> float:
    return step * math.ceil(value / step)


def run_fidelity(
    model: REMModel,
    game: str,
    agent: Agent,
    out_dir: str | os.PathLike[str],
    games: int = 2,
    horizon: int = 10,
    stride: int = 5,
    seed: int = 0,
    max_steps: int = 5_000,
    temperature: float = 1.0,
    autocast: torch.dtype | None = None,
    min_rewards: int = 0,
    min_ends: int = 0,
    event_temperature: float | None = None,
    context: int | None = None,
) -> FidelityReport:
    """Records real play, measures fidelity and writes ``fidelity.json``, ``fidelity_curve.png``
    and ``fidelity_strip.png`` into ``out_dir``. ``context``: see :func:`measure_fidelity`.

    The real games are played in float32; with ``autocast`` (e.g. ``torch.bfloat16``) only the
    dreams run under ``torch.autocast`` (see :func:`measure_fidelity`), so reports with and
    without it compare the same real games.

    Example:
        >>> import tempfile
        >>> from rem_env import REMConfig
        >>> from rem_env.agents import RandomAgent
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout"))
        >>> with tempfile.TemporaryDirectory() as out:
        ...     report = run_fidelity(model, "Breakout", RandomAgent(4, seed=0), out, games=1,
        ...                           horizon=3, max_steps=40)
        ...     sorted(p.name for p in Path(out).iterdir())
        ['fidelity.json', 'fidelity_curve.png', 'fidelity_strip.png']
    """
    trajectories = record_real_trajectories(
        model, game, agent, games, seed, max_steps, min_rewards=min_rewards, min_ends=min_ends
    )
    report, strip = measure_fidelity(
        model,
        trajectories,
        horizon,
        stride,
        temperature,
        seed,
        autocast=autocast,
        event_temperature=event_temperature,
        context=context,
    )
    report = dataclasses.replace(report, policy=getattr(agent, "description", type(agent).__name__))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"game": game, "agent": type(agent).__name__, "games": games, **report.to_dict()}
    (out / "fidelity.json").write_text(json.dumps(data, indent=2) + "\n")
    save_curve_png(report, out / "fidelity_curve.png")
    if strip:
        save_strip_png(strip, out / "fidelity_strip.png")
    return report
