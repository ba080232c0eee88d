"""rem_train.return_check: the balls the real game returned or lost, and dreams from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rem_env import REMConfig, REMModel
from rem_env.atari import make_atari_env
from rem_env.probes import SCRIPTED_PLAYERS, BreakoutBallProbe
from rem_env.returns import LOST_STEPS
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
from rem_train.replay import ReplayBuffer
from rem_train.return_check import ReturnShares, check_returns, find_cases, main

Played = tuple[Path, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Played:
    """1,500 real steps, a third of the episodes with random actions (balls lost), the others
    with the scripted player (balls returned): the replay folder, every frame, every end and
    every action."""
    env = make_atari_env("Breakout", train=True, seed=3)
    player = SCRIPTED_PLAYERS["Breakout"](epsilon=0.05, seed=3)
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("returns") / "replay"
    frames, ends, actions = [], [], []
    with ReplayBuffer(folder, (64, 64, 3)) as buffer:
        obs, _ = env.reset(seed=3)
        randomly = False
        for _ in range(1500):
            if randomly:
                action = int(rng.integers(4))
            else:
                action = int(player.act(env.unwrapped.ale.getRAM()[None])[0])
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.append(obs, action, float(reward), terminated, truncated)
            frames.append(obs)
            ends.append(terminated or truncated)
            actions.append(action)
            if terminated or truncated:
                next_obs, _ = env.reset()
                randomly = rng.random() < 1 / 3
            obs = next_obs
    env.close()
    return folder, np.stack(frames), np.array(ends), np.array(actions)


def _tiny_breakout_model() -> REMModel:
    return REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, "Breakout")).eval()


def test_cases_need_the_ball_coming_down_and_gone_the_next_frame() -> None:
    rows = np.array([[40.0, 45, 50, 0, 49, 45, 40, 35, 31, 30, 31, 35]])
    found = rows > 0
    real, ends = np.ones_like(found), np.zeros_like(found)
    assert find_cases(found, rows, real, ends, context=2) == [(0, 2, "returned")]
    later = found.copy()
    later[0, 4] = False  # seen again, but not the step after: neither returned nor lost
    assert find_cases(later, rows, real, ends, context=2) == []
    lost = found.copy()
    lost[0, 4:] = False
    assert find_cases(lost, rows, real, ends, context=2) == [(0, 2, "lost")]
    going_up = rows.copy()
    going_up[0, 2] = 44  # rose from 45: not coming down
    assert find_cases(found, going_up, real, ends, context=2) == []
    high = rows - 10  # its lowest sighting at row 40: not at the paddle
    assert find_cases(found, high, real, ends, context=2) == []
    ended = ends.copy()
    ended[0, 6] = True  # the episode ended before the outcome is known
    assert find_cases(lost, rows, real, ended, context=2) == []
    padded = real.copy()
    padded[0, -1] = False  # frame t+9 is padding
    assert find_cases(lost, rows, real & padded, ends, context=2) == []
    assert find_cases(found, rows, real, ends, context=5) == []  # frames t-3 .. t+1: no t-3
    started = np.concatenate([np.ones((1, 2), bool), found], axis=1)  # two frames before
    padded_rows = np.concatenate([np.full((1, 2), 30.0), rows], axis=1)
    whole = np.ones_like(started)
    assert find_cases(started, padded_rows, whole, ~whole, context=5) == [(0, 4, "returned")]


def test_on_real_frames_a_lost_ball_costs_the_life_and_a_returned_one_does_not(
    played: Played,
) -> None:
    _, frames, ends, _ = played
    hits = BreakoutBallProbe().find(frames)
    real = np.ones(len(frames), bool)
    cases = find_cases(
        hits.found[None], hits.positions[None, :, 0], real[None], ends[None], context=2
    )
    kinds = [kind for _, _, kind in cases]
    assert kinds.count("returned") >= 5 and kinds.count("lost") >= 3, kinds
    end_frames = np.flatnonzero(ends)
    for _, t, kind in cases:
        next_end = end_frames[end_frames > t].min(initial=len(frames))
        if kind == "lost":  # the game takes the life about ten steps after the last sighting
            assert t + LOST_STEPS < next_end <= t + 12, (t, next_end)
        else:  # play goes on
            assert next_end > t + LOST_STEPS + 2, (t, next_end)


def test_dreams_are_started_from_every_case(played: Played) -> None:
    folder, _, _, _ = played
    with ReplayBuffer(folder, read_only=True) as replay:
        shares = check_returns(
            _tiny_breakout_model(), replay, np.random.default_rng(0), segments=96, dreams=3
        )
    assert set(shares) == {"returned", "lost"}
    for kind in shares.values():
        assert kind.cases > 0 and kind.dreams == 3 * kind.cases
        assert 0.0 <= kind.first_step <= kind.within <= 1.0


def test_too_short_segments_or_too_many_steps_are_clear_errors(
    played: Played,
) -> None:
    folder, _, _, _ = played
    model = _tiny_breakout_model()
    with ReplayBuffer(folder, read_only=True) as replay:
        with pytest.raises(ValueError, match="cannot hold 4 context frames"):
            check_returns(model, replay, np.random.default_rng(0), length=12, context=4)
        with pytest.raises(ValueError, match="steps must be in"):
            check_returns(model, replay, np.random.default_rng(0), steps=9)


def test_the_command_prints_the_shares_and_refuses_other_games(
    played: Played,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _, _, _ = played
    _tiny_breakout_model().save_pretrained(tmp_path / "breakout")
    argv = [str(tmp_path / "breakout"), str(folder), "--segments", "16", "--dreams", "2"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"returned", "lost"}
    assert set(printed["lost"]) == set(ReturnShares.__dataclass_fields__)
    REMModel(REMConfig(6, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, "Pong")).save_pretrained(
        tmp_path / "pong"
    )
    with pytest.raises(SystemExit):
        main([str(tmp_path / "pong"), str(folder)])
    assert "no return check for game 'Pong'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--length", "11"])
    assert "--length must be at least --context + 10" in capsys.readouterr().err


def test_each_dream_starts_at_the_frame_after_the_lowest_sighting_with_the_real_actions(
    played: Played, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, frames, _, actions = played
    started = []

    def record(model: REMModel, cases: list, *settings: object) -> ReturnShares:
        started.extend(cases)
        return ReturnShares(len(cases), 0, None, None)

    monkeypatch.setattr("rem_train.return_check._dream", record)
    with ReplayBuffer(folder, read_only=True) as replay:
        check_returns(
            _tiny_breakout_model(), replay, np.random.default_rng(0), segments=64, context=3,
            steps=2,
        )  # fmt: skip
    probe = BreakoutBallProbe()
    assert started
    for context, taken, ahead in started:
        assert context.shape[0] == 3 and len(taken) == 2 and len(ahead) == 2
        hits = probe.find(context)  # frames t-1, t (the lowest sighting), t+1 (not seen)
        assert hits.found[1] and not hits.found[2] and hits.positions[1, 0] >= 48
        fits = [
            at for at in range(len(frames) - 4)
            if all(np.array_equal(frames[at + k], context[k]) for k in range(3))
            and np.array_equal(actions[at : at + 2], taken)  # between the context frames
            and np.array_equal(actions[at + 2 : at + 4], ahead)  # after frames t+1 and t+2
        ]  # fmt: skip
        assert fits, "a context that is not three consecutive real frames and their actions"
