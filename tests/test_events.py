"""Episode ends and rewards per 1,000 steps of simple policies: dream beside real Breakout."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env import events as events_module
from rem_env.actions import action_meanings
from rem_env.cli import main
from rem_env.events import EventRates, event_table, measure_event_rates, policy_actions
from rem_env.returns import DISTANCE_BINS

BREAKOUT = action_meanings("Breakout")  # NOOP, FIRE, RIGHT, LEFT


def _model(end_logit: float, reward_class: int | None = None) -> REMModel:
    """A tiny Breakout model whose end head says ``end_logit`` (log-odds of an end) and whose
    reward head, if ``reward_class`` is given, always picks that class (0: -1, 1: 0, 2: +1)."""
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout")).eval()
    wm = model.world_model
    with torch.no_grad():
        wm.head_end[2].weight.zero_()
        wm.head_end[2].bias.copy_(torch.tensor([0.0, end_logit]))
        if reward_class is not None:
            wm.head_reward[2].weight.zero_()
            wm.head_reward[2].bias.fill_(-50.0)
            wm.head_reward[2].bias[reward_class] = 50.0
    return model


def test_dreams_that_always_or_never_end_are_counted_so() -> None:
    always = measure_event_rates(_model(50.0, reward_class=2), "Breakout", num_envs=3, steps=40)
    # Every other step resets the dream that the step before ended: 60 transitions, all ends.
    assert always.dream_steps == 60
    assert always.dream_ends == 60 and always.dream_rewards == 60
    assert 120 - always.real_ends <= always.real_steps < 120  # the steps after an end reset
    never = measure_event_rates(_model(-50.0, reward_class=1), "Breakout", num_envs=3, steps=40)
    assert never.dream_ends == 0 and never.dream_rewards == 0
    # The real side does not depend on the model: same actions, same games.
    assert never.dream_steps == 120
    real = (always.real_steps, always.real_ends, always.real_rewards)
    assert real == (never.real_steps, never.real_ends, never.real_rewards)


def test_random_play_loses_real_lives_and_the_counts_are_reproducible() -> None:
    first = measure_event_rates(_model(-2.0), "Breakout", num_envs=4, steps=150, seed=3)
    # Random play on real Breakout loses a life every ~40 steps (training preprocessing).
    assert 5 <= first.real_ends <= 40
    assert first.real_rewards > 0
    assert 0.03 < first.dream_ends / first.dream_steps < 0.3  # P(end) = sigmoid(-2) = 0.12
    # The game takes a life several steps after the ball was last seen over the paddle (the
    # probe, real 64x64 frames), never in the step after; every end of either side has a gap.
    assert first.gap_object == "ball"
    assert len(first.real_end_gaps) == first.real_ends
    assert min(first.real_end_gaps) >= 6
    assert len(first.dream_end_gaps) == first.dream_ends
    # The real ball is in sight in most frames (not before a serve, not among the bricks); the
    # untrained dream's frames are counted alike.
    assert 0.5 < first.real_in_sight / first.real_steps < 1
    assert 0 <= first.dream_in_sight <= first.dream_steps
    # No real ball that came down 8 pixels or more from the paddle came back (the paddle found
    # in the frames); of the dream's untrained balls the table counts what it sees.
    far = len(DISTANCE_BINS) - 1
    assert first.real_returns.returned[far] == 0 and first.real_returns.lost[far] >= 5
    assert first.dream_returns is not None
    again = measure_event_rates(_model(-2.0), "Breakout", num_envs=4, steps=150, seed=3)
    assert again == first
    other = measure_event_rates(_model(-2.0), "Breakout", num_envs=4, steps=150, seed=4)
    assert other != first


def test_breakout_counts_its_bricks_rule_in_the_dream_the_game_and_its_reconstructions() -> None:
    rates = measure_event_rates(_model(-50.0, reward_class=2), "Breakout", num_envs=2, steps=150)
    real, rebuilt, dream = rates.real_rule, rates.reconstructed_rule, rates.dream_rule
    assert rates.rule == ("bricks broken", "bricks back")
    assert (real.rewards, rebuilt.rewards) == (rates.real_rewards, rates.real_rewards) != (0, 0)
    assert real.losses_with_reward == real.lost and real.back == 0  # the game keeps the rule
    assert real.rewards_with_loss >= real.rewards - 1
    assert dream.rewards == rates.dream_rewards == 300  # it pays every step ...
    assert dream.rewards_with_loss < dream.rewards  # ... with no brick broken at most of them
    table = rates.table()
    assert "| rewards with bricks broken at their step or the next: real game | " in table
    assert f"| random policy | {real.rewards_with_loss} of {real.rewards} | " in table
    assert rates.to_dict()["dream_rule"]["rewards"] == 300
    torch.manual_seed(0)
    pong = REMModel(REMConfig.preset("tiny", num_actions=6, game="Pong")).eval()
    plain = measure_event_rates(pong, "Pong", num_envs=1, steps=3)  # a game without a rule
    assert plain.rule is None and plain.dream_rule is None and plain.real_rule is None
    assert plain.gap_object is None and plain.real_end_gaps is None  # and without a probe
    assert "bricks" not in plain.table() and "last seen" not in plain.table()


def test_table_and_dict_give_rates_per_thousand_steps() -> None:
    rates = EventRates(
        dream_steps=400, dream_ends=2, dream_rewards=3,
        real_steps=400, real_ends=10, real_rewards=4, temperature=1.0,
    )  # fmt: skip
    assert rates.to_dict()["real_ends_per_1000"] == 25.0
    assert rates.to_dict()["dream_rewards_per_1000"] == 7.5
    assert "| random policy | 25.0 | 5.0 | 10.0 | 7.5 |" in rates.table()


def test_end_gaps_are_tabled_by_how_long_the_object_was_unseen() -> None:
    rates = EventRates(
        dream_steps=400, dream_ends=3, dream_rewards=0, real_steps=400, real_ends=5,
        real_rewards=0, temperature=1.0, gap_object="ball",
        dream_end_gaps=(1, 3, -1), real_end_gaps=(10, 10, 7, 12, -1), dream_in_sight=100,
        real_in_sight=372,
    )  # fmt: skip
    table = rates.table()
    assert (
        "| policy: side | episode ends with the ball last seen 1 step before | 2-5 steps " in table
    )
    assert "| not seen in the episode | steps whose frame shows the ball |" in table
    assert "| random policy: real game | 0 | 0 | 3 | 1 | 1 | 93% (372) |" in table
    assert "| random policy: dream | 1 | 1 | 0 | 0 | 1 | 25% (100) |" in table
    assert EventRates.from_dict(json.loads(json.dumps(rates.to_dict()))) == rates


def test_bad_sizes_policies_and_models_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        measure_event_rates(_model(0.0), "Breakout", num_envs=0)
    with pytest.raises(ValueError, match="unknown policy 'UP'; known: random, NOOP, FIRE"):
        measure_event_rates(_model(0.0), "Breakout", policy="UP")
    with pytest.raises(ValueError, match="jitter must be in"):
        measure_event_rates(_model(0.0), "Breakout", policy="LEFT", jitter=1.5)
    with pytest.raises(ValueError, match="the model has 4 actions, Pong has 6"):
        measure_event_rates(_model(0.0), "Pong", steps=2)


def test_held_policies_hold_their_action_but_for_the_jitter() -> None:
    right = policy_actions("right", BREAKOUT, 2000, 4, seed=5, jitter=0.2)
    assert right.shape == (2000, 4)
    # 80% held, and a quarter of the 20% random draws are RIGHT as well.
    assert abs((right == 2).mean() - 0.85) < 0.02
    assert abs((right == 1).mean() - 0.05) < 0.01  # FIRE, so the real game serves
    assert (policy_actions("LEFT", BREAKOUT, 50, 2, seed=5, jitter=0.0) == 3).all()
    # "random" draws what the command drew before it had policies: same seed, same games.
    expected = np.random.default_rng(7).integers(0, 4, (30, 3))
    np.testing.assert_array_equal(policy_actions("random", BREAKOUT, 30, 3, seed=7), expected)


def test_a_paddle_parked_at_either_wall_plays_different_real_games() -> None:
    model = _model(-50.0, reward_class=1)  # a dream that never ends and never pays
    rates = {
        wall: measure_event_rates(model, "Breakout", num_envs=2, steps=300, policy=wall)
        for wall in ("RIGHT", "LEFT")
    }
    for wall, r in rates.items():
        assert (r.policy, r.jitter) == (wall, 0.2)
        assert r.dream_ends == 0 and r.dream_rewards == 0
        assert r.real_ends >= 3  # a parked paddle misses most balls once FIRE has served
    assert rates["RIGHT"].real_ends != rates["LEFT"].real_ends
    table = event_table(list(rates.values()))
    assert "| RIGHT held, 20% random actions | " in table
    assert "| LEFT held, 20% random actions | " in table
    assert "| 0.0 | " in table  # the dream's ends


class _Watcher:
    """A frame-reading player that moves RIGHT and keeps the frames it was shown."""

    made: ClassVar[list[_Watcher]] = []

    def __init__(self, epsilon: float, seed: int) -> None:
        self.frames: list[np.ndarray] = []
        self.ended = 0
        _Watcher.made.append(self)

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.frames.append(np.array(obs))
        return np.full(len(obs), 2)

    def episodes_ended(self, done: np.ndarray) -> None:
        self.ended += int(np.sum(done))


def test_the_follower_acts_on_the_frames_of_each_side(monkeypatch) -> None:
    monkeypatch.setitem(events_module.PIXEL_PLAYERS, "Breakout", _Watcher)
    _Watcher.made.clear()
    model = _model(50.0)  # a dream that ends every episode at once
    rates = measure_event_rates(model, "Breakout", num_envs=2, steps=6, policy="follow")
    dream, game = _Watcher.made  # one player afresh per side
    assert len(dream.frames) == len(game.frames) == 6
    assert dream.frames[0].shape == (2, 16, 16, 3)  # the tiny model's dreamed frames
    assert game.frames[0].shape == (2, 64, 64, 3)
    assert dream.ended >= 6  # told of every ended dream (every other step)
    assert (rates.policy, rates.jitter) == ("follow", 0.05)
    table = event_table([rates, measure_event_rates(model, "Breakout", num_envs=2, steps=4)])
    assert "| follows the ball it sees, 5% random actions | " in table
    assert "the follower acts on the frames each side shows (so the actions differ)" in table
    assert "each policy plays" not in table
    with pytest.raises(ValueError, match="Pong has no frame-reading player for --policy follow"):
        measure_event_rates(model, "Pong", policy="follow")


def test_the_cli_prints_the_table_and_writes_json(tmp_path, capsys) -> None:
    folder = tmp_path / "model"
    _model(50.0).save_pretrained(folder)
    out = tmp_path / "events.json"
    status = main(
        ["events", "REM-Breakout-v0", "--model", str(folder), "--num-envs", "2", "--steps",
         "20", "--out", str(out)]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "| random policy | " in printed and " | 1000.0 | " in printed  # the dream's ends
    (counts,) = json.loads(out.read_text())
    assert counts["dream_ends"] == 20 and counts["policy"] == "random"  # every other step resets
    status = main(
        ["events", "REM-Breakout-v0", "--model", str(folder), "--num-envs", "1", "--steps", "10",
         "--policy", "random", "--policy", "left", "--jitter", "0", "--out", str(out),
         "--temperature", "0", "--event-temperature", "1"]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "| random policy |" in printed and "| LEFT held, 0% random actions |" in printed
    assert [c["policy"] for c in json.loads(out.read_text())] == ["random", "LEFT"]
    assert "dream temperature 0 (rewards and ends: 1)." in printed
    assert [c["event_temperature"] for c in json.loads(out.read_text())] == [1.0, 1.0]
    assert main(["events", "REM-Breakout-v0", "--model", str(folder), "--steps", "0"]) == 2
    # A wrong policy or jitter is refused before the model loads.
    for wrong in (["--policy", "JUMP"], ["--policy", "LEFT", "--jitter", "-0.1"]):
        assert main(["events", "REM-Breakout-v0", "--model", str(tmp_path / "none"), *wrong]) == 2
        assert "--policy / --jitter" in capsys.readouterr().err
