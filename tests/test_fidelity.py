"""Tests of the fidelity report: real recording on ALE Breakout, scoring, files and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rem_env.fidelity as fidelity_module
from rem_env import REMConfig, REMModel
from rem_env.agents import RandomAgent
from rem_env.cli import main
from rem_env.fidelity import (
    RealTrajectory,
    measure_fidelity,
    record_real_trajectories,
    run_fidelity,
)
from rem_env.probes import ProbeHits, RealObjects


def _model() -> REMModel:
    torch.manual_seed(0)
    return REMModel(REMConfig.preset("tiny", num_actions=4, game="Breakout")).eval()


def _self_dream(model: REMModel, steps: int, seed: int) -> tuple[RealTrajectory, dict]:
    """A "real" episode that is the model's own argmax dream from its first two frames, and a
    table from each of its frames to the tokens it was decoded from."""
    gen = torch.Generator().manual_seed(seed)
    k, v = model.config.tokenizer.tokens_per_frame, model.config.tokenizer.vocab_size
    context = torch.randint(v, (1, 2, k), generator=gen)
    actions = torch.randint(model.num_actions, (steps + 1,), generator=gen)
    tokens, rewards, ends = [context[0, 0], context[0, 1]], [0.0], [False]
    with torch.inference_mode():
        state = model.start_state(context, actions[:1].view(1, 1))
        for t in range(1, steps + 1):  # action t leads from frame t to frame t+1
            step, state = model.imagine_step(state, actions[t : t + 1], temperature=0.0)
            tokens.append(step.obs_tokens[0])
            rewards.append(float(step.rewards[0]))
            ends.append(bool(step.ends[0]))
            if ends[-1]:
                break
        frames = model.decode(torch.stack(tokens))
    pixels = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    table = {p.tobytes(): t for p, t in zip(pixels, tokens, strict=True)}
    n = len(rewards)
    traj = RealTrajectory(
        pixels, actions[:n].numpy(), np.asarray(rewards, np.float32), np.asarray(ends)
    )
    return traj, table


def _lookup_encode(table: dict):
    def encode(frames: torch.Tensor) -> torch.Tensor:
        pixels = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return torch.stack([table[p.tobytes()] for p in pixels])

    return encode


@pytest.mark.parametrize("seed", [7, 1])  # 7: 9 steps, rewards, no end; 1: ends at step 5
def test_a_dream_of_its_own_argmax_play_is_scored_perfect(monkeypatch, seed):
    model = _model()
    traj, table = _self_dream(model, steps=9, seed=seed)
    # The frames are the model's own decodes and their "tokenizer tokens" the tokens they were
    # decoded from; one dream from the same first context (stride past the end) is exact.
    monkeypatch.setattr(model, "encode", _lookup_encode(table))
    report, strip = measure_fidelity(model, [traj], horizon=6, stride=100, temperature=0.0)
    assert report.rollouts == 1 and report.compared[0] == 1
    assert report.token_accuracy[: sum(c > 0 for c in report.compared)] == [1.0] * sum(
        c > 0 for c in report.compared
    )
    # Only the uint8 rounding of the real frames differs: PSNR near 59 dB.
    assert all(p > 50.0 for p, c in zip(report.psnr, report.compared, strict=True) if c)
    for value in (report.reward_precision, report.reward_recall):
        assert value in (1.0, None)
    for value in (report.end_precision, report.end_recall):
        assert value in (1.0, None)
    for value in (report.end_precision_early, report.end_recall_early):
        assert value in (1.0, None)
    assert report.dreamed_rewards == report.real_rewards  # each dreamed where it was real
    assert report.dreamed_ends == report.real_ends
    if seed == 7:
        assert (
            report.compared == [1] * 6 and report.real_rewards == 3
        )  # steps 1..6: -1, 0, +1, +1, 0, 0
        assert report.reward_precision == report.reward_recall == 1.0
        assert strip["real"].shape == strip["dream"].shape == (7, 16, 16, 3)
        np.testing.assert_array_equal(strip["real"], strip["dream"])
    else:
        assert report.compared == [1, 1, 1, 1, 0, 0]  # no frame after the end at step 5
        assert report.real_ends == 1 and report.end_recall == 1.0


def _with_a_wall(decode):
    """``decode``, then Breakout's brick rows painted full (a brick in every cell) in frames
    whose first token is even and empty in the others: a wall that breaks and comes back."""

    def decode_with_wall(tokens: torch.Tensor) -> torch.Tensor:
        frames = decode(tokens).clone()  # (N, 3, 16, 16)
        full = tokens[:, 0] % 2 == 0
        frames[full, :, 4:8] = 110 / 255  # the brick rows at 16x16: raw rows 57-93 of 210
        frames[~full, :, 4:8] = 0.0
        return frames

    return decode_with_wall


def test_a_dream_that_breaks_the_real_bricks_scores_perfect_on_the_rule(monkeypatch):
    model = _model()
    monkeypatch.setattr(model, "decode", _with_a_wall(model.decode))
    traj, table = _self_dream(model, steps=9, seed=7)
    monkeypatch.setattr(model, "encode", _lookup_encode(table))
    # One dream from the first context, the first dreamed frame read against the context's
    # last frame as decoded, step h against real step h.
    report, _ = measure_fidelity(model, [traj], horizon=9, stride=100, temperature=0.0)
    rule = report.rule
    assert rule["lost"] == "bricks broken" and rule["back"] == "bricks back"
    assert rule["real_lost"] == 2 and rule["dreamed_lost"] == 2
    assert rule["precision"] == rule["recall"] == 1.0
    assert all(v in (1.0, None) for v in rule["precision_by_step"] + rule["recall_by_step"])
    assert rule["dreamed_back"] >= 1  # the wall comes back in the self-dream, as in its "game"
    assert "bricks broken: precision" in report.summary_table()
    assert "Bricks broken over all 9 steps: precision 1.000, recall 1.000" in (
        report.summary_table()
    )
    # The same dreams read against other real games: the losses no longer match.
    other = RealTrajectory(traj.frames[::-1].copy(), traj.actions, traj.rewards, traj.ends)
    monkeypatch.setattr(model, "encode", _lookup_encode(table))
    shifted, _ = measure_fidelity(model, [other], horizon=9, stride=100, temperature=0.0)
    assert shifted.rule["recall"] < 1.0


def test_games_without_a_rule_report_none():
    model = REMModel(REMConfig.preset("tiny", num_actions=6, game="Pong")).eval()
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    traj = RealTrajectory(frames, np.zeros(4, np.int64), np.zeros(4, np.float32), np.zeros(4, bool))
    report, _ = measure_fidelity(model, [traj], horizon=2, stride=1)
    assert report.rule == {}
    assert "precision 1" not in report.summary_table() and "bricks" not in report.summary_table()


def test_other_actions_lower_the_scores(monkeypatch):
    model = _model()
    traj, table = _self_dream(model, steps=9, seed=3)
    monkeypatch.setattr(model, "encode", _lookup_encode(table))
    other = RealTrajectory(traj.frames, (traj.actions + 1) % 4, traj.rewards, traj.ends)
    perfect, _ = measure_fidelity(model, [traj], horizon=4, stride=100, temperature=0.0)
    wrong, _ = measure_fidelity(model, [other], horizon=4, stride=100, temperature=0.0)
    assert wrong.compared == perfect.compared
    assert sum(wrong.token_accuracy) < sum(perfect.token_accuracy)


def test_reward_and_end_counts_follow_their_definitions():
    model = _model()
    frames = np.zeros((7, 16, 16, 3), np.uint8)
    traj = RealTrajectory(
        frames, np.zeros(6, np.int64), np.asarray([0, 1, 0, 0, 1, 0], np.float32),
        np.asarray([False] * 5 + [True]),
    )  # fmt: skip
    report, _ = measure_fidelity(model, [traj], horizon=3, stride=1, temperature=1.0, seed=1)
    # Every step compared: starts t=1..5; step h of start t is real step t+h-1 when < 6.
    assert report.rollouts == 5
    assert report.compared == [4, 3, 2]  # the frame after the final end is never compared
    # Real rewards at steps 1 and 4, seen by the dreams (1,h1), (4,h1), (3,h2), (2,h3).
    assert report.real_rewards == 4
    assert report.real_ends == 3  # the end at step 5 is seen from starts 5, 4 and 3
    for value in (report.reward_precision, report.reward_recall, report.end_recall):
        assert value is None or 0.0 <= value <= 1.0
    # Precision is the right share of what was dreamed, recall of what was real: one count of
    # right events behind both.
    for precision, recall, dreamed, real in (
        (
            report.reward_precision,
            report.reward_recall,
            report.dreamed_rewards,
            report.real_rewards,
        ),
        (report.end_precision, report.end_recall, report.dreamed_ends, report.real_ends),
    ):
        assert (precision is None) == (dreamed == 0)
        right = round(recall * real)
        assert precision is None or precision == pytest.approx(right / dreamed)
    assert report.dreamed_rewards + report.dreamed_ends > 0  # random weights, temperature 1


def test_event_temperature_changes_the_events_not_the_frames():
    model = _model()
    frames = np.zeros((7, 16, 16, 3), np.uint8)
    traj = RealTrajectory(
        frames, np.zeros(6, np.int64), np.zeros(6, np.float32), np.asarray([False] * 6)
    )
    runs = {
        ev: measure_fidelity(
            model, [traj], horizon=3, stride=1, temperature=0.0, seed=1, event_temperature=ev
        )[0]
        for ev in (None, 1.0)
    }
    assert runs[None].event_temperature is None and runs[1.0].event_temperature == 1.0
    # Dreamed frames do not depend on the sampled rewards and ends: the same argmax dream.
    assert runs[1.0].token_accuracy == runs[None].token_accuracy
    assert runs[1.0].psnr == runs[None].psnr
    events = {ev: (r.dreamed_rewards, r.dreamed_ends) for ev, r in runs.items()}
    assert events[1.0] != events[None]  # random weights: sampled events differ from argmax


def test_ends_dreamed_up_to_two_steps_early_are_found():
    model = _model()
    with torch.no_grad():  # a world model that ends every dreamed step
        model.world_model.head_end[2].weight.zero_()
        model.world_model.head_end[2].bias.copy_(torch.tensor([0.0, 50.0]))
    traj = RealTrajectory(
        np.zeros((7, 16, 16, 3), np.uint8), np.zeros(6, np.int64), np.zeros(6, np.float32),
        np.asarray([False] * 5 + [True]),
    )  # fmt: skip
    report, _ = measure_fidelity(model, [traj], horizon=3, stride=1, temperature=1.0)
    # Starts 1..5 see real steps t..t+2 until the real end at step 5: starts 1 and 2 dream 3
    # ends each and see no real end; start 3 sees it at h=3 (its ends at h=1, 2, 3 are within
    # two steps), start 4 at h=2 (ends at h=1, 2), start 5 at h=1 (its end at h=1).
    assert report.dreamed_ends == 12 and report.real_ends == 3
    assert report.end_precision == pytest.approx(3 / 12)  # only at the real step
    assert report.end_precision_early == pytest.approx(6 / 12)
    assert report.end_recall == report.end_recall_early == 1.0
    assert "up to 2 steps early: precision 0.500, recall 1.000" in report.summary_table()


class _BrightFrameBall:
    """A probe that sees its object in every bright frame (mean above 128) and nowhere else."""

    name = "ball"

    def real_positions(self, ram: np.ndarray, size: int) -> RealObjects:
        everywhere = np.ones(len(ram), dtype=bool)
        return RealObjects(np.zeros((len(ram), 2)), everywhere, everywhere)

    def find(self, frames: np.ndarray) -> ProbeHits:
        return ProbeHits(np.zeros((len(frames), 2)), frames.mean(axis=(1, 2, 3)) > 128)


def test_ends_dreamed_after_the_object_left_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dreamed end counts when the real life was already lost: after the real episode's
    last frame that shows the probe's object, up to its real end."""
    model = _model()
    with torch.no_grad():  # a world model that ends every dreamed step
        model.world_model.head_end[2].weight.zero_()
        model.world_model.head_end[2].bias.copy_(torch.tensor([0.0, 50.0]))
    frames = np.zeros((7, 16, 16, 3), np.uint8)
    frames[:3] = 255  # the object shown in the frames of steps 0-2, gone from step 3 on
    traj = RealTrajectory(
        frames, np.zeros(6, np.int64), np.zeros(6, np.float32),
        np.asarray([False] * 5 + [True]), ram=np.zeros((7, 128), np.uint8),
    )  # fmt: skip
    monkeypatch.setattr(fidelity_module, "probes_for", lambda game: (_BrightFrameBall(),))
    report, _ = measure_fidelity(model, [traj], horizon=3, stride=1, temperature=1.0)
    # Starts t = 1..5 dream real steps t..t+2 until the real end at step 5, ending at each;
    # the life is lost at steps 3-5: start 1 ends once there, 2 twice, 3 three times (its
    # real end at h=3), 4 twice (h=2), 5 once (h=1): 9 of 12 dreamed ends, all 3 real ends.
    assert report.dreamed_ends == 12 and report.real_ends == 3
    assert report.end_object == "ball"
    assert report.end_precision_object_left == pytest.approx(9 / 12)
    assert report.end_recall_object_left == 1.0
    assert report.end_precision_early == pytest.approx(6 / 12)  # unchanged
    assert (
        "after the real ball's last frame (the life already lost), up to the real end: "
        "precision 0.750, recall 1.000" in report.summary_table()
    )
    plain = RealTrajectory(traj.frames, traj.actions, traj.rewards, traj.ends)  # no RAM
    without, _ = measure_fidelity(model, [plain], horizon=3, stride=1)  # no probes
    assert without.end_object is None and without.end_precision_object_left is None


def test_early_ends_count_each_dream_once():
    from rem_env.fidelity import _EarlyEnds

    early = _EarlyEnds()
    early.add([1, 4, 5], real_step=7)  # 5 is two steps early; 1 and 4 are not
    early.add([2], real_step=None)  # a dreamed end where the real episode went on
    early.add([], real_step=3)  # a real end the dream missed
    early.add([3, 4], real_step=4)  # one real end found twice: counted once
    assert (early.dreamed, early.dreamed_right, early.real, early.real_found) == (6, 3, 3, 2)
    assert early.precision() == 0.5 and early.recall() == pytest.approx(2 / 3)
    assert _EarlyEnds().precision() is None and _EarlyEnds().recall() is None


def test_measure_fidelity_rejects_episodes_too_short():
    traj = RealTrajectory(
        np.zeros((1, 16, 16, 3), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.float32),
        np.zeros(0, bool),
    )  # fmt: skip
    with pytest.raises(ValueError, match="no recorded episode"):
        measure_fidelity(_model(), [traj])


def test_record_real_trajectories_on_breakout():
    model = _model()
    trajs = record_real_trajectories(model, "Breakout", RandomAgent(4, seed=0), 1, seed=0)
    assert len(trajs) == 5  # one per life of a whole game
    for traj in trajs:
        assert traj.frames.shape == (len(traj) + 1, 16, 16, 3)
        assert traj.frames.dtype == np.uint8
        assert traj.ends[-1] and not traj.ends[:-1].any()
        assert set(np.unique(traj.rewards)) <= {0.0, 1.0, 4.0, 7.0}
        assert traj.actions.min() >= 0 and traj.actions.max() < 4


def test_run_fidelity_writes_report_files(tmp_path):
    model = _model()
    report = run_fidelity(
        model, "Breakout", RandomAgent(4, seed=1), tmp_path, games=1, horizon=3, max_steps=60
    )
    data = json.loads((tmp_path / "fidelity.json").read_text())
    assert data["horizon"] == 3 and data["token_accuracy"] == report.token_accuracy
    assert data["game"] == "Breakout" and data["agent"] == "RandomAgent"
    assert (tmp_path / "fidelity_curve.png").stat().st_size > 0
    assert (tmp_path / "fidelity_strip.png").stat().st_size > 0
    assert "| 1 |" in report.summary_table()


def test_cli_fidelity(tmp_path, capsys):
    out = tmp_path / "fid"
    code = main(
        ["fidelity", "REM-Breakout-v0", "--random-weights", "tiny", "--games", "1",
         "--horizon", "2", "--max-steps", "40", "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    assert "token accuracy" in capsys.readouterr().out
    data = json.loads((out / "fidelity.json").read_text())
    assert (data["temperature"], data["event_temperature"]) == (1.0, None)
    code = main(
        ["fidelity", "REM-Breakout-v0", "--random-weights", "tiny", "--games", "1",
         "--horizon", "2", "--max-steps", "40", "--out", str(out), "--device", "cpu",
         "--temperature", "0", "--event-temperature", "1"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "fidelity.json").read_text())
    assert (data["temperature"], data["event_temperature"]) == (0.0, 1.0)
    assert main(["fidelity", "REM-Breakout-v0", "--random-weights", "tiny", "--horizon", "0"]) == 2
    assert "--horizon" in capsys.readouterr().err
    code = main(
        ["fidelity", "REM-Breakout-v0", "--random-weights", "tiny", "--games", "1",
         "--horizon", "2", "--max-steps", "40", "--out", str(out), "--device", "cpu",
         "--context", "3"]
    )  # fmt: skip
    assert code == 0 and json.loads((out / "fidelity.json").read_text())["context"] == 3
    assert "up to 3 real frames" in capsys.readouterr().out
    assert main(["fidelity", "REM-Breakout-v0", "--random-weights", "tiny", "--context", "1"]) == 2
    assert "--context must be at least the model's context_length (2)" in capsys.readouterr().err


def test_cli_fidelity_under_bf16_autocast(tmp_path, capsys):
    out = tmp_path / "fid"
    code = main(
        ["fidelity", "REM-Breakout-v0", "--random-weights", "tiny", "--games", "1",
         "--horizon", "2", "--max-steps", "40", "--out", str(out), "--device", "cpu",
         "--autocast", "bf16"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "fidelity.json").read_text())
    assert all(0.0 <= a <= 1.0 for a in data["token_accuracy"])


def test_autocast_dreams_in_bf16_but_keeps_the_real_side_in_float32(monkeypatch):
    model = _model()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    traj = RealTrajectory(frames, np.zeros(8, np.int64), np.zeros(8, np.float32), np.zeros(8, bool))
    seen: list[bool] = []
    imagine = model.imagine_step

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return imagine(*args, **kwargs)

    monkeypatch.setattr(model, "imagine_step", recording)
    plain, _ = measure_fidelity(model, [traj], horizon=3, stride=2, temperature=0.0)
    bf16, _ = measure_fidelity(
        model, [traj], horizon=3, stride=2, temperature=0.0, autocast=torch.bfloat16
    )
    assert seen and not any(seen[: len(seen) // 2]) and all(seen[len(seen) // 2 :])
    assert bf16.tokenizer_psnr == plain.tokenizer_psnr  # the ceiling: real frames, float32
    assert bf16.compared == plain.compared


def test_dreams_start_from_up_to_context_real_frames(monkeypatch):
    """With ``context=4`` each dream starts from the (up to) 4 real frames its episode has before
    it, at the same real steps as with REM's 2; the states are those of each start alone."""
    model = _model()
    traj, table = _self_dream(model, steps=9, seed=7)
    monkeypatch.setattr(model, "encode", _lookup_encode(table))
    first_states = []
    imagine = model.imagine_step

    def spy(state, *args, **kwargs):
        if not first_states or first_states[-1][1] is not None:
            first_states.append((state, None))
        return imagine(state, *args, **kwargs)

    monkeypatch.setattr(model, "imagine_step", spy)
    report, _ = measure_fidelity(model, [traj], horizon=2, stride=3, temperature=0.0, context=4)
    assert report.context == 4 and "up to 4 real frames" in report.summary_table()
    state = first_states[0][0]
    tokens = torch.stack([table[p.tobytes()] for p in traj.frames])  # (T+1, K)
    block = model.world_model.tokens_per_block
    starts = list(range(1, len(traj), 3))
    assert state.batch_size == len(starts)
    for row, t in enumerate(starts):
        n = min(4, t + 1)
        alone = model.start_state(
            tokens[None, t - n + 1 : t + 1],
            torch.as_tensor(traj.actions[t - n + 1 : t])[None],
            position=3 * block,
        )
        assert torch.equal(state.obs_tokens[row], alone.obs_tokens[0])
        for mine, theirs in zip(state.retention, alone.retention, strict=True):
            assert torch.allclose(mine[row], theirs[0], atol=1e-5), t
    default, _ = measure_fidelity(model, [traj], horizon=2, stride=3, temperature=0.0)
    assert default.rollouts == report.rollouts and default.context is None
    with pytest.raises(ValueError, match="context_length"):
        measure_fidelity(model, [traj], context=1)
