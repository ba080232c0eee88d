"""How often a dream ends episodes and pays rewards, beside the real game, under simple policies.

A dream can look right frame by frame and still be the wrong game to learn in: if it never
loses a life, an agent trained in it learns nothing about keeping the ball; if it pays rewards
the game would not, the agent learns to collect them. :func:`measure_event_rates` plays the same
action sequences in ``num_envs`` dreams and in as many real games (ale-py, REM's training
preprocessing: a lost life ends an episode) and counts episode ends and non-zero rewards per
1,000 steps on both sides. The sequences come from a simple policy: uniformly random actions,
or one action held (e.g. Breakout's ``RIGHT``: the paddle parked at the right wall) with a share
of random actions. A dream that pays or punishes one such behaviour more than the game does is
one an agent learns to exploit: compare several with :func:`event_table`. For a game with a
player that reads frames (:data:`rem_env.probes.PIXEL_PLAYERS`; Breakout: one that follows the
ball) the policy ``"follow"`` plays it on both sides, each acting on its own frames: a dream
worth training in pays it more than random play, as the game does. For a game with a
reward rule (:mod:`rem_env.rules`; Breakout: a reward breaks a brick) both sides also count how
often a reward comes with the brick it broke, and bricks broken or back: whether the dream keeps
the game's own rules (its ceiling: the same count on the tokenizer's reconstructions of the
real frames). For a game with an object probe (:mod:`rem_env.probes`; Breakout: the ball)
both sides also record, for each episode end, how many steps before it the object was last seen:
real Breakout takes a life about 10 steps after the ball passed the paddle, and a dream that
ends episodes elsewhere punishes an agent for lives it could not save. For a game in
:data:`rem_env.returns.RETURN_PROBES` (Breakout) both sides also count the balls seen coming
down to the paddle that came back up or were lost, by how far the paddle was
(:mod:`rem_env.returns`): in the game a ball that comes down far from the paddle is lost, and a
dream that returns it anyway does not punish a miss; and where the ball went out of sight (up
into the bricks, down past the paddle, or in mid-flight, which the game's ball never does) and
whether it came back (:mod:`rem_env.sightings`). ``rem-env events`` is the command-line form.

Example:
    >>> from rem_env.events import event_table, measure_event_rates
    >>> rates = [
    ...     measure_event_rates("models/breakout", "Breakout", policy=policy)
    ...     for policy in ("random", "RIGHT", "LEFT")
    ... ]  # doctest: +SKIP
    >>> print(event_table(rates))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from rem_env.actions import action_meanings
from rem_env.dream import DreamVectorEnv, temperature_words
from rem_env.fidelity import to_pixels
from rem_env.model import REMModel
from rem_env.probes import PIXEL_PLAYERS, ObjectProbe, probes_for
from rem_env.returns import DISTANCE_BINS, RETURN_PROBES, ReturnCounts, count_returns
from rem_env.rules import REWARD_RULES, RewardRule, RuleCounts, rule_counts
from rem_env.sightings import AGAIN_STEPS, SightCounts, count_departures

__all__ = [
    "DEFAULT_JITTER",
    "FOLLOW",
    "GAP_BINS",
    "EventRates",
    "check_policy",
    "event_table",
    "measure_event_rates",
    "policy_actions",
]

DEFAULT_JITTER = 0.2
"""Share of uniformly random actions in a held-action policy's steps."""

FOLLOW = "follow"
"""The policy that plays the game's frame-reading player (:data:`rem_env.probes.PIXEL_PLAYERS`)
on each side's own frames."""

FOLLOW_EPSILON = 0.05
"""Share of the follower's steps that take a uniformly random action."""


@dataclass(frozen=True)
class EventRates:
    """Episode ends and non-zero rewards counted in dreams and in the real game.

    Attributes:
        dream_steps: Dreamed transitions (envs x steps per env, less the steps that only reset
            an env after its episode ended).
        dream_ends: Episodes the dreams ended (terminated).
        dream_rewards: Dreamed steps with a non-zero reward.
        real_ends: Episodes the real games ended (with REM's training preprocessing, every lost
            life).
        real_rewards: Real steps with a non-zero reward.
        real_steps: Real transitions, counted like ``dream_steps``.
        temperature: Sampling temperature of the dreams.
        policy: ``"random"``, the action the policy held (an action meaning, e.g. ``"RIGHT"``)
            or ``"follow"`` (the game's frame-reading player, acting on each side's frames).
        jitter: Share of the steps that took a uniformly random action (1 for ``"random"``).
        event_temperature: Sampling temperature of the dreams' rewards and ends (None: the
            same as ``temperature``).
        dream_rule: The game's reward rule counted in the dreams (None: a game without one).
        real_rule: The same in the real games.
        reconstructed_rule: The same in the tokenizer's reconstructions of the real games'
            frames (the rewards the real ones): the most a dream of this tokenizer can show.
        rule: The rule's words for a lost and a regained object (``"bricks broken"``,
            ``"bricks back"``), or None.
        gap_object: For a game with an object probe (:mod:`rem_env.probes`; Breakout: the
            ball), the object the end gaps are counted from, else None.
        dream_end_gaps: One per dreamed episode end: how many steps before the end the object
            was last found (1: in the frame the ending step started from; -1: not found since
            the episode began). The end's own frame is not looked at (in Breakout it may
            already show the next serve). None without ``gap_object``.
        real_end_gaps: The same for the real games' ends.
        dream_returns: For a game in :data:`rem_env.returns.RETURN_PROBES` (Breakout), the
            dreams' balls seen coming down to the paddle, returned or lost, by the paddle's
            distance (:func:`rem_env.returns.count_returns`); else None.
        real_returns: The same in the real games.
        dream_in_sight: With ``gap_object``, the dreamed transitions whose new frame shows
            the object (a dream that loses its ball shows it less often than the game);
            else None.
        real_in_sight: The same in the real games.
        dream_departures: With ``dream_returns``, where the dreams' balls went out of sight
            and whether they came back (:func:`rem_env.sightings.count_departures`); else None.
        real_departures: The same in the real games.
    """

    dream_steps: int
    dream_ends: int
    dream_rewards: int
    real_steps: int
    real_ends: int
    real_rewards: int
    temperature: float
    policy: str = "random"
    jitter: float = 1.0
    event_temperature: float | None = None
    dream_rule: RuleCounts | None = None
    real_rule: RuleCounts | None = None
    reconstructed_rule: RuleCounts | None = None
    rule: tuple[str, str] | None = None
    gap_object: str | None = None
    dream_end_gaps: tuple[int, ...] | None = None
    real_end_gaps: tuple[int, ...] | None = None
    dream_returns: ReturnCounts | None = None
    real_returns: ReturnCounts | None = None
    dream_in_sight: int | None = None
    real_in_sight: int | None = None
    dream_departures: SightCounts | None = None
    real_departures: SightCounts | None = None

    @property
    def temperature_words(self) -> str:
        """``"1"``, or ``"0 (rewards and ends: 1)"`` where they were sampled otherwise."""
        return temperature_words(self.temperature, self.event_temperature)

    @property
    def policy_words(self) -> str:
        """The policy in words, e.g. ``"random policy"`` or ``"RIGHT held, 20% random actions"``."""
        if self.policy == "random":
            return "random policy"
        if self.policy == FOLLOW:
            return f"follows the ball it sees, {self.jitter:.0%} random actions"
        return f"{self.policy} held, {self.jitter:.0%} random actions"

    @staticmethod
    def per_thousand(count: int, steps: int) -> float:
        """``count`` events in ``steps`` steps, per 1,000 steps."""
        return 1000.0 * count / steps

    def to_dict(self) -> dict[str, Any]:
        """The counts and their rates per 1,000 steps, for JSON."""
        rates = {
            f"{side}_{event}_per_1000": self.per_thousand(
                getattr(self, f"{side}_{event}"), getattr(self, f"{side}_steps")
            )
            for side in ("dream", "real")
            for event in ("ends", "rewards")
        }
        return {**asdict(self), **rates}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventRates:
        """The counts of :meth:`to_dict` (read back from JSON; keys it does not know are
        left out, so files of older versions read too)."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for side in ("dream_rule", "real_rule", "reconstructed_rule"):
            if known.get(side) is not None:
                known[side] = RuleCounts(**known[side])
        for side in ("dream_returns", "real_returns"):
            if known.get(side) is not None:
                known[side] = ReturnCounts(*(tuple(known[side][f]) for f in _RETURN_FIELDS))
        for side in ("dream_departures", "real_departures"):
            if known.get(side) is not None:
                known[side] = SightCounts(**known[side])
        for name in ("rule", "dream_end_gaps", "real_end_gaps"):
            if known.get(name) is not None:
                known[name] = tuple(known[name])
        return cls(**known)

    def table(self) -> str:
        """A Markdown table: ends and rewards per 1,000 steps, real game and dream
        (:func:`event_table` of this policy alone)."""
        return event_table([self])


def _span(counts: Sequence[int]) -> str:
    """``"4683"`` or ``"4683-4724"``: the range of ``counts``."""
    low, high = min(counts), max(counts)
    return f"{low}" if low == high else f"{low}-{high}"


def event_table(rates: Sequence[EventRates]) -> str:
    """A Markdown table with a row per policy: ends and rewards per 1,000 steps, game and dream.

    Example:
        >>> rates = EventRates(400, 2, 3, 400, 10, 4, temperature=1.0, policy="RIGHT", jitter=0.2)
        >>> print(event_table([rates]).splitlines()[2])
        | RIGHT held, 20% random actions | 25.0 | 5.0 | 10.0 | 7.5 |
    """
    if not rates:
        raise ValueError("event_table needs at least one EventRates")
    rows = [
        "| policy | episode ends per 1,000 steps: real game | dream "
        "| rewards per 1,000 steps: real game | dream |",
        "|---|---|---|---|---|",
    ]
    for r in rates:
        ends = [
            r.per_thousand(r.real_ends, r.real_steps),
            r.per_thousand(r.dream_ends, r.dream_steps),
        ]
        pay = [
            r.per_thousand(r.real_rewards, r.real_steps),
            r.per_thousand(r.dream_rewards, r.dream_steps),
        ]
        rows.append(
            f"| {r.policy_words} | {ends[0]:.1f} | {ends[1]:.1f} | {pay[0]:.1f} | {pay[1]:.1f} |"
        )
    ruled = [r for r in rates if r.rule is not None]
    if ruled:
        rows.extend(["", *_rule_table(ruled)])
    gapped = [r for r in rates if r.gap_object is not None]
    if gapped:
        rows.extend(["", *_gap_table(gapped)])
    returning = [r for r in rates if r.real_returns is not None and r.dream_returns is not None]
    if returning:
        rows.extend(["", *_return_table(returning)])
    departing = [
        r for r in rates if r.real_departures is not None and r.dream_departures is not None
    ]
    if departing:
        rows.extend(["", *_departure_table(departing)])
    temperatures = ", ".join(sorted({r.temperature_words for r in rates}))
    same = "each policy plays" if all(r.policy != FOLLOW for r in rates) else "the others play"
    follower = (
        "the follower acts on the frames each side shows (so the actions differ); "
        if same == "the others play"
        else ""
    )
    rows.append(
        f"\n{_span([r.real_steps for r in rates])} real and "
        f"{_span([r.dream_steps for r in rates])} dreamed steps per policy; {follower}{same} "
        f"the same action sequences in the dreams and the real games; dream temperature "
        f"{temperatures}."
    )
    return "\n".join(rows)


def policy_actions(
    policy: str,
    meanings: Sequence[str],
    steps: int,
    num_envs: int,
    seed: int,
    jitter: float = DEFAULT_JITTER,
) -> np.ndarray:
    """(steps, num_envs) actions of a simple policy, drawn from ``seed``.

    Args:
        policy: ``"random"`` (uniform actions) or the meaning of an action to hold (e.g.
            ``"RIGHT"``; any case).
        meanings: The game's action meanings (:func:`rem_env.actions.action_meanings`).
        steps: Steps per env.
        num_envs: Envs.
        seed: Seed of the draws.
        jitter: Share of a held action's steps that take a uniformly random action instead.

    Raises:
        ValueError: If ``policy`` is no action of the game or ``jitter`` is outside [0, 1].

    Example:
        >>> policy_actions("right", ("NOOP", "FIRE", "RIGHT", "LEFT"), 2, 3, 0, 0.0).tolist()
        [[2, 2, 2], [2, 2, 2]]
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    rng = np.random.default_rng(seed)
    if policy.lower() == "random":
        return rng.integers(0, len(meanings), (steps, num_envs))
    names = [m.upper() for m in meanings]
    if policy.upper() not in names:
        raise ValueError(f"unknown policy {policy!r}; known: random, {', '.join(names)}")
    actions = np.full((steps, num_envs), names.index(policy.upper()))
    jittered = rng.random((steps, num_envs)) < jitter  # (steps, num_envs)
    actions[jittered] = rng.integers(0, len(meanings), int(jittered.sum()))
    return actions


def check_policy(policy: str, game: str, jitter: float = DEFAULT_JITTER) -> None:
    """Refuses a policy :func:`measure_event_rates` cannot play in ``game``.

    Raises:
        ValueError: If ``policy`` is neither ``"random"``, an action of the game nor (for a
            game in :data:`rem_env.probes.PIXEL_PLAYERS`) ``"follow"``, or ``jitter`` is
            outside [0, 1].

    Example:
        >>> check_policy("follow", "Breakout")
        >>> check_policy("follow", "Pong")
        Traceback (most recent call last):
        ...
        ValueError: Pong has no frame-reading player for --policy follow; Breakout has one
    """
    if policy.lower() == FOLLOW:
        if game not in PIXEL_PLAYERS:
            games = ", ".join(sorted(PIXEL_PLAYERS))
            raise ValueError(
                f"{game} has no frame-reading player for --policy follow; {games} has one"
            )
        return
    policy_actions(policy, action_meanings(game), 1, 1, 0, jitter)


class _Sequence:
    """An open-loop policy: the rows of (steps, num_envs) actions, one per step."""

    def __init__(self, actions: np.ndarray) -> None:
        self.actions = actions
        self.step = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.step += 1
        return self.actions[self.step - 1]

    def episodes_ended(self, done: np.ndarray) -> None:
        """It does not look at what happens."""


def _rule_table(rates: Sequence[EventRates]) -> list[str]:
    """Rows of the reward rule's table (rates that have one): real game, its reconstructions,
    dream."""
    lost, back = rates[0].rule or ("", "")
    sides = "real game | reconstructed | dream"
    rows = [
        f"| policy | rewards with {lost} at their step or the next: {sides} "
        f"| {lost} with a reward at their step or the one before: {sides} "
        f"| {back} per 1,000 steps: {sides} |",
        "|---|" + "---|" * 9,
    ]
    for r in rates:
        sided = [r.real_rule, r.reconstructed_rule, r.dream_rule]
        steps = [r.real_steps, r.real_steps, r.dream_steps]
        cells = []
        for got, of in (("rewards_with_loss", "rewards"), ("losses_with_reward", "lost")):
            cells += [f"{getattr(c, got)} of {getattr(c, of)}" if c else "-" for c in sided]
        for counts, n in zip(sided, steps, strict=True):
            cells.append(f"{r.per_thousand(counts.back, n):.1f}" if counts else "-")
        rows.append(f"| {r.policy_words} | " + " | ".join(cells) + " |")
    return rows


GAP_BINS: tuple[tuple[int, int | None], ...] = ((1, 1), (2, 5), (6, 10), (11, None))
"""The end gaps (:attr:`EventRates.dream_end_gaps`) the table groups: steps from the object's
last sighting to an episode's end (None: no upper bound)."""


class _Counts(NamedTuple):
    """What :func:`_count` counted in one env's steps."""

    transitions: int
    ends: int
    rewards: int
    rules: list[RuleCounts]
    end_gaps: tuple[int, ...] | None
    returns: ReturnCounts | None
    in_sight: int | None
    departures: SightCounts | None


def _count(
    env: Any,
    policy: Any,
    steps: int,
    seed: int,
    rule: RewardRule | None = None,
    views: Sequence[Callable[[np.ndarray], np.ndarray]] = (),
    probe: ObjectProbe | None = None,
    returns: tuple[ObjectProbe, Any] | None = None,
) -> _Counts:
    """Steps ``env`` ``steps`` times with the actions of ``policy`` (``act(obs)`` and
    ``episodes_ended(done)``, as :mod:`rem_env.agents`) and counts its transitions, ends and
    rewards, the rule's counts on each of ``views`` of the frames, with a ``probe`` the gap
    of each end (see :attr:`EventRates.dream_end_gaps`), and with ``returns`` (the ball's probe
    and the paddle's finder) the balls returned and lost (:attr:`EventRates.dream_returns`)
    and where they went out of sight (:attr:`EventRates.dream_departures`).

    The env resets an ended episode on its next step (gymnasium's ``NEXT_STEP`` autoreset):
    that step is no transition and is not counted. With a ``rule`` or a ``probe`` the env's
    observations are (num_envs, H, W, 3) frames, and each view maps them to the frames the rule
    reads.
    """
    obs, _ = env.reset(seed=seed)
    shape = (steps, env.num_envs)
    seen = [view(np.asarray(obs)) for view in views] if rule is not None else []
    # The frame index (reset: 0, step i: i + 1) the object was last found in, this episode.
    last_found = np.full(env.num_envs, -1)
    in_sight = 0  # transitions whose new frame shows the object
    if probe is not None:
        last_found[probe.find(np.asarray(obs)).found] = 0
    gaps: list[int] = []
    resetting = np.zeros(env.num_envs, dtype=bool)
    taken = np.zeros(shape, dtype=bool)  # (steps, num_envs)
    ended = np.zeros(shape, dtype=bool)
    paid = np.zeros(shape, dtype=bool)
    lost = np.zeros((len(seen), *shape), dtype=bool)  # (views, steps, num_envs)
    back = np.zeros_like(lost)
    tracked = _Tracks(returns, steps + 1, env.num_envs) if returns is not None else None
    if tracked is not None:
        tracked.record(0, np.asarray(obs), resetting)
    for i in range(steps):
        obs, reward, terminated, truncated, _ = env.step(policy.act(np.asarray(obs)))
        taken[i] = ~resetting
        ended[i] = np.asarray(terminated) & taken[i]
        paid[i] = (np.asarray(reward) != 0) & taken[i]
        for v, view in enumerate(views if rule is not None else ()):
            frames = view(np.asarray(obs))
            lost[v, i], back[v, i] = rule.compare(seen[v], frames)  # type: ignore[union-attr]
            seen[v] = frames
        if probe is not None:  # ends first: their own frame is not looked at
            gaps += [i + 1 - f if f >= 0 else -1 for f in last_found[ended[i]]]
            last_found[resetting] = -1  # this step's frame is a new episode's first
            found = probe.find(np.asarray(obs)).found
            last_found[found] = i + 1
            in_sight += int((found & taken[i]).sum())
        if tracked is not None:  # a step that resets starts a new episode's frames
            tracked.record(i + 1, np.asarray(obs), resetting)
        resetting = np.asarray(terminated) | np.asarray(truncated)
        policy.episodes_ended(resetting)
    counts = [rule_counts(lost[v], back[v], paid, taken) for v in range(len(seen))]
    end_gaps = tuple(int(g) for g in gaps) if probe is not None else None
    returned = tracked.counts() if tracked is not None else None
    departed = tracked.departures() if tracked is not None else None
    sighted = in_sight if probe is not None else None
    return _Counts(
        int(taken.sum()),
        int(ended.sum()),
        int(paid.sum()),
        counts,
        end_gaps,
        returned,
        sighted,
        departed,
    )


_RETURN_FIELDS = ("returned", "lost", "unclear")


class _Tracks:
    """Where the ball and the paddle were in every frame (64x64 pixels), and the episodes."""

    def __init__(self, finders: tuple[ObjectProbe, Any], frames: int, num_envs: int) -> None:
        self.ball, self.paddle = finders
        self.rows = np.zeros((frames, num_envs))
        self.cols = np.zeros((frames, num_envs))
        self.found = np.zeros((frames, num_envs), dtype=bool)
        self.paddles = np.full((frames, num_envs), np.nan)
        self.episodes = np.zeros((frames, num_envs), dtype=np.int64)

    def record(self, index: int, frames: np.ndarray, resetting: np.ndarray) -> None:
        scale = 64 / frames.shape[1]
        hits = self.ball.find(frames)
        self.rows[index], self.cols[index] = (hits.positions * scale).T
        self.found[index] = hits.found
        self.paddles[index] = self.paddle.find(frames) * scale
        before = self.episodes[index - 1] if index else 0
        self.episodes[index] = before + resetting

    def counts(self) -> ReturnCounts:
        return count_returns(self.rows, self.cols, self.found, self.paddles, self.episodes)

    def departures(self) -> SightCounts:
        return count_departures(self.rows, self.found, self.episodes)


def _return_table(rates: Sequence[EventRates]) -> list[str]:
    """Rows of the ball-return table: for each policy and side, the balls seen coming down to
    the paddle that came back or were lost, by the paddle's distance."""
    bins = [
        f"{low:g}-{high:g} px" if high is not None else f"{low:g} px or more"
        for low, high in DISTANCE_BINS
    ]
    rows = [
        f"| policy: side | ball down to the paddle, returned / lost: paddle {bins[0]} from it | "
        + " | ".join(bins[1:])
        + " | no paddle seen |",
        "|---|" + "---|" * (len(DISTANCE_BINS) + 1),
    ]
    for r in rates:
        for side, counts in (("real game", r.real_returns), ("dream", r.dream_returns)):
            assert counts is not None
            cells = [counts.cell(i) for i in range(len(DISTANCE_BINS) + 1)]
            rows.append(f"| {r.policy_words}: {side} | " + " | ".join(cells) + " |")
    return rows


def _departure_table(rates: Sequence[EventRates]) -> list[str]:
    """Rows of the departure table: for each policy and side, where the ball went out of sight
    and how often it was found again."""
    rows = [
        "| policy: side | ball went out of sight up at the bricks (found again within "
        f"{AGAIN_STEPS} steps) | down past the paddle | in mid-flight (found again) |",
        "|---|---|---|---|",
    ]
    for r in rates:
        for side, counts in (("real game", r.real_departures), ("dream", r.dream_departures)):
            assert counts is not None
            rows.append(f"| {r.policy_words}: {side} | " + " | ".join(counts.cells()) + " |")
    return rows


def _gap_words(low: int, high: int | None) -> str:
    """A bin of :data:`GAP_BINS` in words (a column of :func:`_gap_table`)."""
    if high == low:
        return f"{low} step before"
    if high is None:
        return f"{low} or more steps before"
    return f"{low}-{high} steps before"


def _gap_table(rates: Sequence[EventRates]) -> list[str]:
    """Rows of the end-gap table (rates that have gaps): for each policy, how many episode
    ends of the real game and of the dream came how long after the object was last seen."""
    name = rates[0].gap_object
    bins = [_gap_words(low, high) for low, high in GAP_BINS]
    rows = [
        f"| policy: side | episode ends with the {name} last seen {bins[0]} | "
        + " | ".join(bins[1:])
        + f" | not seen in the episode | steps whose frame shows the {name} |",
        "|---|" + "---|" * (len(GAP_BINS) + 2),
    ]
    upper = [np.inf if high is None else high for _, high in GAP_BINS]
    for r in rates:
        sides = (
            ("real game", r.real_end_gaps, r.real_in_sight, r.real_steps),
            ("dream", r.dream_end_gaps, r.dream_in_sight, r.dream_steps),
        )
        for side, gaps, in_sight, steps in sides:
            found = np.asarray([g for g in gaps or () if g >= 0], dtype=int)
            cells: list[str | int] = [
                int(((found >= low) & (found <= up)).sum())
                for (low, _), up in zip(GAP_BINS, upper, strict=True)
            ]
            cells.append(len(gaps or ()) - len(found))
            share = f"{in_sight / max(steps, 1):.0%} ({in_sight})" if in_sight is not None else "-"
            cells.append(share)
            rows.append(f"| {r.policy_words}: {side} | " + " | ".join(map(str, cells)) + " |")
    return rows


def _reconstruction(model: REMModel) -> Callable[[np.ndarray], np.ndarray]:
    """Frames (N, H, W, 3) uint8 -> the model's tokenizer's reconstructions of them (frames of
    another size than the model's are first resized to it, as the fidelity report does)."""
    size = model.config.tokenizer.image_size

    def reconstruct(frames: np.ndarray) -> np.ndarray:
        if frames.shape[1:3] != (size, size):  # a model of smaller frames (tests)
            frames = np.stack(
                [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
            )
        device = model.start_tokens.device
        pixels = torch.as_tensor(frames, device=device).movedim(-1, -3).float() / 255.0
        with torch.inference_mode():
            return to_pixels(model.decode(model.encode(pixels)))

    return reconstruct


def _as_they_are(frames: np.ndarray) -> np.ndarray:
    return frames


def measure_event_rates(
    model: REMModel | str | os.PathLike[str],
    game: str,
    *,
    num_envs: int = 16,
    steps: int = 200,
    seed: int = 0,
    temperature: float = 1.0,
    device: str | torch.device | None = None,
    policy: str = "random",
    jitter: float = DEFAULT_JITTER,
    event_temperature: float | None = None,
) -> EventRates:
    """Counts episode ends and rewards of a simple policy in dreams and in the real game.

    Both sides play the same action sequences (one per env, drawn from ``seed`` by
    :func:`policy_actions`). The dreams start from the model's start contexts (dream env
    ``reset(seed=seed)``: env i with seed + i), the real games from ``seed + i`` as well; both
    reset automatically on the step after an episode ends; such a step is not counted.

    Args:
        model: The model, a model folder or a Hub repo id.
        game: The Atari game the model dreams (its real game is played beside it).
        num_envs: Dreams (and real games) side by side.
        steps: Steps per env.
        seed: Seed of the actions, the dreams and the real games.
        temperature: Sampling temperature of the dreams (1: REM's).
        device: Device of the dreams (None: the model's).
        policy: ``"random"`` (uniform actions), the meaning of an action to hold, e.g.
            ``"RIGHT"`` (:func:`rem_env.actions.action_meanings` lists a game's), or
            ``"follow"``: the game's frame-reading player
            (:data:`rem_env.probes.PIXEL_PLAYERS`) on each side, acting on that side's frames
            (with :data:`FOLLOW_EPSILON` of random actions; ``jitter`` is not used).
        jitter: Share of a held action's steps that take a uniformly random action instead
            (Breakout serves only after FIRE: with none the ball never comes into play).
        event_temperature: Sampling temperature of the dreams' rewards and ends (None:
            ``temperature``).

    Returns:
        The counts (:class:`EventRates`); for a game in :data:`rem_env.rules.REWARD_RULES`,
        with its reward rule counted on both sides (the dreams then decode their frames).

    Raises:
        ValueError: If ``num_envs`` or ``steps`` is not positive, the policy is none the game
            can play (:func:`check_policy`), ``jitter`` is outside [0, 1], the model's actions
            are not the game's, or the game has no real env.
    """
    from rem_env.atari import make_atari_vector_env  # ale-py

    if num_envs < 1 or steps < 1:
        raise ValueError(f"num_envs and steps must be positive, got {num_envs} and {steps}")
    meanings = action_meanings(game)
    check_policy(policy, game, jitter)
    follow = policy.lower() == FOLLOW
    if follow:
        jitter = FOLLOW_EPSILON

        def player() -> Any:  # the same player, afresh, on each side
            return PIXEL_PLAYERS[game](epsilon=FOLLOW_EPSILON, seed=seed)
    else:
        actions = policy_actions(policy, meanings, steps, num_envs, seed, jitter)

        def player() -> Any:
            return _Sequence(actions)

    rule = REWARD_RULES.get(game)
    probe = next(iter(probes_for(game)), None)
    returns = RETURN_PROBES.get(game)
    with torch.inference_mode():
        dreams = DreamVectorEnv(
            model,
            num_envs,
            obs_type="rgb" if rule is not None or probe is not None or follow else "tokens",
            device=device,
            temperature=temperature,
            event_temperature=event_temperature,
        )
        num_actions = int(dreams.single_action_space.n)  # type: ignore[attr-defined]
        if num_actions != len(meanings):
            dreams.close()
            raise ValueError(
                f"the model has {num_actions} actions, {game} has {len(meanings)}: "
                "is it a model of this game?"
            )
        dream = _count(dreams, player(), steps, seed, rule, [_as_they_are], probe, returns)
        dreams.close()
    views = [_as_they_are, _reconstruction(dreams.model)]
    real = make_atari_vector_env(game, num_envs, True, seed=seed)
    try:
        game_counts = _count(real, player(), steps, seed, rule, views, probe, returns)
    finally:
        real.close()
    rules = [*dream.rules, *game_counts.rules] if rule is not None else [None] * 3
    random = policy.lower() == "random"
    name = "random" if random else FOLLOW if follow else policy.upper()
    return EventRates(
        dream.transitions,
        dream.ends,
        dream.rewards,
        game_counts.transitions,
        game_counts.ends,
        game_counts.rewards,
        temperature=temperature,
        policy=name,
        jitter=1.0 if random else jitter,
        event_temperature=event_temperature,
        dream_rule=rules[0],
        real_rule=rules[1],
        reconstructed_rule=rules[2],
        rule=(rule.lost, rule.back) if rule is not None else None,
        gap_object=probe.name if probe is not None else None,
        dream_end_gaps=dream.end_gaps,
        real_end_gaps=game_counts.end_gaps,
        dream_returns=dream.returns,
        real_returns=game_counts.returns,
        dream_in_sight=dream.in_sight,
        real_in_sight=game_counts.in_sight,
        dream_departures=dream.departures,
        real_departures=game_counts.departures,
    )
