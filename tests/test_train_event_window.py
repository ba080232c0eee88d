"""rem_train.train_event_window, and rem-train with an event window."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, TrainConfig
from rem_train.replay import ReplayBuffer
from rem_train.train_event_window import main
from rem_train.trainer import Trainer

DELAY = 5
"""In the replay below an episode ends this many steps after its one marked frame."""


def _clock_replay(folder: Path, episodes: int = 12, seed: int = 0) -> Path:
    """Episodes of black frames but one, a bright square, after which the episode ends exactly
    DELAY steps later (a reward at the marked step): no two frames tell when."""
    rng = np.random.default_rng(seed)
    with ReplayBuffer(folder, (64, 64, 3)) as buffer:
        for _ in range(episodes):
            mark = int(rng.integers(2, 12))
            for t in range(mark + DELAY + 1):
                frame = np.zeros((64, 64, 3), np.uint8)
                if t == mark:
                    frame[20:44, 20:44] = 255
                buffer.append(frame, int(rng.integers(4)), float(t == mark),
                              terminated=t == mark + DELAY)  # fmt: skip
    return folder


def _outcome_replay(folder: Path, episodes: int = 16, seed: int = 0) -> Path:
    """Episodes of black frames where, at a random step, the step's reward shows only in the
    frame it leads to (a bright square): the frames up to the step cannot tell."""
    rng = np.random.default_rng(seed)
    with ReplayBuffer(folder, (64, 64, 3)) as buffer:
        for _ in range(episodes):
            mark, length = int(rng.integers(1, 8)), 10
            for t in range(length):
                frame = np.zeros((64, 64, 3), np.uint8)
                if t == mark:
                    frame[20:44, 20:44] = 255
                buffer.append(frame, int(rng.integers(4)), float(t == mark - 1),
                              terminated=t == length - 1)  # fmt: skip
    return folder


def _source(folder: Path) -> tuple[Path, REMModel]:
    torch.manual_seed(0)
    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, "Breakout"))
    model.save_pretrained(folder)
    return folder, model


def _progress(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "progress.jsonl").open()]


def test_the_window_learns_an_end_that_two_frames_cannot_tell(tmp_path: Path) -> None:
    source, _ = _source(tmp_path / "source")
    replay, held = _clock_replay(tmp_path / "replay"), _clock_replay(tmp_path / "held", seed=1)
    argv = ["--init-from", str(source), "--replay", str(replay), "--held-out", str(held),
            "--out", str(tmp_path / "ew"), "--frames", "8", "--width", "8", "--steps", "300",
            "--batch-size", "8", "--targets", "8", "--eval-every", "300", "--lr", "3e-3",
            "--heads", "ends"]  # fmt: skip
    assert main(argv) == 0
    last = _progress(tmp_path / "ew")[-1]
    ends = last["ends"]
    assert ends["nll"] < 0.35 * ends["base_nll"]  # the window reads the clock ...
    assert last["ends_two_frames_nll"] > 3 * ends["nll"]  # ... which two frames cannot
    assert ends["likeliest_recall"] > 0.8 and ends["likeliest_precision"] > 0.8
    assert "rewards" not in last  # a head not handed over is not scored


def test_the_export_hands_the_heads_over_to_the_window(tmp_path: Path) -> None:
    source, before = _source(tmp_path / "source")
    replay = _clock_replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "ew"),
            "--frames", "4", "--width", "4", "--steps", "3", "--eval-every", "2",
            "--batch-size", "4", "--targets", "4", "--heads", "ends"]  # fmt: skip
    assert main(argv) == 0
    export = REMModel.from_pretrained(tmp_path / "ew" / "export")
    assert export.config.world_model.event_window_frames == 4
    state, wm = export.state_dict(), export.world_model
    for key, value in before.state_dict().items():
        if ".head_end." not in key:  # all but the end head: kept
            assert torch.equal(state[key], value), key
    assert wm.head_end[-1].weight.abs().sum() == 0 and wm.head_end[-1].bias.abs().sum() == 0
    out = wm.event_window.out
    assert out.weight[3:].abs().sum() > 0  # trained (it starts at zero) ...
    assert out.weight[:3].abs().sum() == 0 and out.bias[:3].abs().sum() == 0  # ... rewards kept
    lines = _progress(tmp_path / "ew")
    assert lines[0]["steps"] == len(ReplayBuffer(replay, read_only=True))
    assert [line["step"] for line in lines[1:]] == [2, 3]
    record = json.loads((tmp_path / "ew" / "export" / "training.json").read_text())
    assert record["preset"] == "event window training"
    assert record["event_window_trained_steps"] == 3


def test_the_bias_is_corrected_for_the_events_drawn_more_often(tmp_path: Path) -> None:
    """Untrained (lr 0), the export's end bias is the log of the end classes' rates in the
    replay over their rates among the drawn steps (which hold more ends)."""
    source, _ = _source(tmp_path / "source")
    replay = _clock_replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "ew"),
            "--frames", "4", "--width", "4", "--steps", "1", "--batch-size", "4",
            "--targets", "4", "--heads", "ends", "--lr", "0", "--event-share", "1"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "ew" / "export" / "training.json").read_text())
    shift = record["event_window_shift"]
    bias = REMModel.from_pretrained(tmp_path / "ew" / "export").world_model.event_window.out.bias
    assert bias.tolist() == pytest.approx(shift, abs=1e-6)
    assert shift[:3] == [0.0, 0.0, 0.0]
    assert shift[4] < 0 < shift[3]  # ends drawn more often than the replay holds them


def test_bad_settings_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = _source(tmp_path / "source")
    replay = _clock_replay(tmp_path / "replay", episodes=3)
    base = ["--init-from", str(source), "--replay", str(replay)]
    for extra, message in (
        (["--heads", "bricks"], "--heads must name rewards, ends or both"),
        (["--frames", "0"], "--frames must be at least 1"),
        (["--cut-share", "2"], "--cut-share must lie in [0, 1]"),
        (["--change-width", "-1"], "--change-width must be 0 (none) or positive"),
        (["--replay", str(tmp_path / "nowhere")], "no replay folder"),
    ):
        with pytest.raises(SystemExit):
            main([*base, "--out", str(tmp_path / "x"), *extra])
        assert message in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "w"), "--steps", "1", "--frames", "3",
                 "--width", "4", "--batch-size", "2", "--targets", "2"]) == 0  # fmt: skip
    with pytest.raises(SystemExit):  # its window reads 3 frames
        main(["--init-from", str(tmp_path / "w" / "export"), "--replay", str(replay),
              "--out", str(tmp_path / "y"), "--width", "4"])  # fmt: skip
    assert "has an event window of 3 frames, width 4 and change width 0" in capsys.readouterr().err


def test_rem_train_adds_an_event_window_at_zero_and_trains_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = _source(tmp_path / "source")
    config = TrainConfig.from_preset("smoke", "Breakout")
    common = dataclasses.replace(
        config.common, init_from=str(source), init_parts="tokenizer,world_model", epochs=2
    )
    phase = dataclasses.replace(config.world_model, start_after_epoch=1)
    config = dataclasses.replace(
        config, common=common, world_model=phase, world_model_event_window=3
    )
    trainer = Trainer(config, tmp_path / "run")
    try:
        window = trainer.model.world_model.event_window
        assert window is not None and window.frames == 3 and window.out.weight.abs().sum() == 0
        assert "an event window added (at zero" in capsys.readouterr().out
        trainer.run()
        assert window.out.weight.abs().sum() > 0  # the world-model phase trained it
    finally:
        trainer.close()
    with pytest.raises(ValueError, match="world_model_event_window must be >= 0"):
        dataclasses.replace(config, world_model_event_window=-1)


@pytest.mark.parametrize(
    ("reads_next", "change_width"),
    [(True, 0), (True, 4), (False, 0)],
    ids=["reads-next", "reads-next-and-the-change", "own-frame"],
)
def test_a_window_that_reads_the_next_frame_learns_a_reward_shown_there(
    tmp_path: Path, reads_next: bool, change_width: int
) -> None:
    source, _ = _source(tmp_path / "source")
    replay = _outcome_replay(tmp_path / "replay")
    held = _outcome_replay(tmp_path / "held", seed=1)
    argv = ["--init-from", str(source), "--replay", str(replay), "--held-out", str(held),
            "--out", str(tmp_path / "ew"), "--frames", "3", "--width", "8", "--steps", "200",
            "--batch-size", "8", "--targets", "8", "--eval-every", "200", "--lr", "3e-3",
            "--heads", "rewards", "--reads-next", str(reads_next).lower(),
            "--change-width", str(change_width)]  # fmt: skip
    assert main(argv) == 0
    rewards = _progress(tmp_path / "ew")[-1]["rewards"]
    if reads_next:
        assert rewards["nll"] < 0.3 * rewards["base_nll"]
        assert rewards["likeliest_recall"] > 0.8 and rewards["likeliest_precision"] > 0.8
    else:  # the frames up to the step do not show it
        assert rewards["nll"] > 0.6 * rewards["base_nll"]
    export = REMModel.from_pretrained(tmp_path / "ew" / "export")
    assert export.config.world_model.event_window_reads_next is reads_next
    assert export.config.world_model.event_window_change_width == change_width
    card = (tmp_path / "ew" / "export" / "README.md").read_text()
    assert ("that ends at each step's next frame" in card) is reads_next
    assert ("reads the change of its last two frames" in card) is bool(change_width)


def test_the_next_frame_of_a_step_is_known_within_its_episode_or_after_its_end() -> None:
    from rem_train.train_event_window import TokenSteps, _window_index

    n = 7  # episodes [0, 3) ending at step 2, [3, 5) cut off, [5, 7) the replay's last
    ends = torch.tensor([False, False, True, False, False, False, False])
    steps = TokenSteps(torch.zeros(n, 4, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                       torch.ones(n, dtype=torch.long), ends,
                       np.array([0, 0, 0, 3, 3, 5, 5]))  # fmt: skip
    index, known = _window_index(steps, np.arange(n), frames=3, reads_next=True)
    assert index[:, -1].tolist() == [1, 2, 3, 4, 5, 6, 6]
    assert known[:, -1].tolist() == [True, True, True, True, False, True, False]
    assert index[:, 1].tolist() == list(range(n))  # the step's own frame
    assert known[:, 0].tolist() == [False, True, True, False, True, False, True]


def test_a_window_that_reads_the_other_way_is_replaced_taking_both_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = _source(tmp_path / "source")
    replay = _outcome_replay(tmp_path / "replay", episodes=3)
    small = ["--frames", "3", "--width", "4", "--batch-size", "2", "--targets", "2", "--steps",
             "1", "--replay", str(replay)]  # fmt: skip
    assert main(["--init-from", str(source), "--out", str(tmp_path / "own"), *small]) == 0
    own = str(tmp_path / "own" / "export")
    with pytest.raises(SystemExit):
        main(["--init-from", own, "--out", str(tmp_path / "x"), *small, "--reads-next", "true",
              "--heads", "rewards"])  # fmt: skip
    assert "must take over both heads" in capsys.readouterr().err
    assert main(["--init-from", own, "--out", str(tmp_path / "next"), *small,
                 "--reads-next", "true"]) == 0  # fmt: skip
    export = REMModel.from_pretrained(tmp_path / "next" / "export")
    assert export.config.world_model.event_window_reads_next


def test_rem_train_takes_a_window_that_reads_the_next_frame_only_as_one(tmp_path: Path) -> None:
    from rem_train.warm_start import WarmStartError

    source, _ = _source(tmp_path / "source")
    replay = _outcome_replay(tmp_path / "replay", episodes=3)
    assert main(["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "n"),
                 "--frames", "3", "--width", "64", "--batch-size", "2", "--targets", "2",
                 "--steps", "1", "--reads-next", "true"]) == 0  # fmt: skip
    export = tmp_path / "n" / "export"
    config = TrainConfig.from_preset("smoke", "Breakout")
    common = dataclasses.replace(
        config.common, init_from=str(export), init_parts="tokenizer,world_model"
    )
    own_frame = dataclasses.replace(config, common=common, world_model_event_window=3)
    with pytest.raises(WarmStartError, match=r"event_window\.reads_next_frame"):
        Trainer(own_frame, tmp_path / "own").close()
    trainer = Trainer(
        dataclasses.replace(own_frame, world_model_event_window_reads_next=True), tmp_path / "run"
    )
    try:
        loaded = trainer.model.world_model.state_dict()
        for key, value in REMModel.from_pretrained(export).world_model.state_dict().items():
            assert torch.equal(loaded[key], value), key
        assert trainer.model.world_model.event_window.reads_next
    finally:
        trainer.close()
    with pytest.raises(ValueError, match="at least 2 frames"):
        dataclasses.replace(config, world_model_event_window_reads_next=True)
    with pytest.raises(ValueError, match="event window of at least 2 frames"):
        dataclasses.replace(config, world_model_event_window_change_width=4)
    changes = dataclasses.replace(
        config, world_model_event_window=2, world_model_event_window_change_width=4
    )
    assert changes.model_config().world_model.event_window_change_width == 4


def _ball_replay(folder: Path, episodes: int = 12, seed: int = 0) -> Path:
    """Episodes whose frames show a red ball in Breakout's open area (where the ball probe looks)
    until a random step, then none; the game ends the episode DELAY steps after the ball's last
    frame, which frames without the ball cannot tell apart."""
    rng = np.random.default_rng(seed)
    with ReplayBuffer(folder, (64, 64, 3)) as buffer:
        for _ in range(episodes):
            gone = int(rng.integers(3, 10))
            for t in range(gone + DELAY + 1):
                frame = np.zeros((64, 64, 3), np.uint8)
                if t < gone:
                    frame[40:44, 20 + 2 * t : 24 + 2 * t] = (200, 72, 72)
                buffer.append(frame, int(rng.integers(4)), 0.0,
                              terminated=t == gone + DELAY)  # fmt: skip
    return folder


def test_early_ends_move_each_end_to_where_the_object_left() -> None:
    from rem_train.train_event_window import TokenSteps, ends_where_object_left

    # episodes [0, 6): seen at 0-1, ended at 5; [6, 9): never seen, ended at 8;
    # [9, 12): seen at 9-11, ended at 11 (the move stops at the game's end); [12, 14): cut off
    first = np.array([0] * 6 + [6] * 3 + [9] * 3 + [12] * 2)
    n = len(first)
    ends = torch.zeros(n, dtype=torch.bool)
    ends[[5, 8, 11]] = True
    seen = np.zeros(n, bool)
    seen[[0, 1, 9, 10, 11, 12]] = True
    zeros = torch.zeros(n, dtype=torch.long)
    steps = TokenSteps(torch.zeros(n, 4, dtype=torch.long), zeros, zeros + 1, ends, first, seen)
    moved = ends_where_object_left(steps, lead=2)
    assert moved.ends.nonzero().flatten().tolist() == [3, 8, 11]
    assert np.flatnonzero(~moved.scored).tolist() == [4, 5]
    assert torch.equal(steps.ends, ends)  # the steps given are left as they were
    before = ends_where_object_left(steps, lead=-3)  # not before the episode's first step
    assert before.ends.nonzero().flatten().tolist() == [0, 8, 9]
    assert np.flatnonzero(~before.scored).tolist() == [1, 2, 3, 4, 5, 10, 11]
    with pytest.raises(ValueError, match="object probe"):
        ends_where_object_left(steps._replace(seen=None), lead=0)


def test_a_window_with_early_ends_learns_the_end_where_the_ball_left(tmp_path: Path) -> None:
    source, _ = _source(tmp_path / "source")
    replay, held = _ball_replay(tmp_path / "replay"), _ball_replay(tmp_path / "held", seed=1)
    argv = ["--init-from", str(source), "--replay", str(replay), "--held-out", str(held),
            "--frames", "4", "--width", "8", "--steps", "300", "--batch-size", "8",
            "--targets", "8", "--eval-every", "300", "--lr", "3e-3", "--heads", "ends"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "game")]) == 0
    assert main([*argv, "--out", str(tmp_path / "early"), "--early-ends", "true"]) == 0
    game, early = _progress(tmp_path / "game"), _progress(tmp_path / "early")
    total = game[0]["steps"]
    assert game[0]["scored_steps"] == total
    # Each episode ends at its first frame without the ball; the DELAY after it are unscored.
    assert early[0]["scored_steps"] == total - 12 * DELAY
    assert early[0]["ends"] == game[0]["ends"] == 12
    # The ball in the frame before and not in the step's: four frames tell. At the game's step,
    # DELAY frames without the ball later, the last three such steps look the same to them.
    assert early[-1]["ends"]["nll"] < 0.35 * early[-1]["ends"]["base_nll"]
    assert early[-1]["ends"]["likeliest_recall"] > 0.8
    assert game[-1]["ends"]["nll"] > 2 * early[-1]["ends"]["nll"]


def test_early_ends_need_a_game_with_an_object_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, "Pong")).save_pretrained(
        tmp_path / "pong"
    )
    replay = _ball_replay(tmp_path / "replay", episodes=2)
    small = ["--frames", "3", "--width", "4", "--batch-size", "2", "--targets", "2", "--steps",
             "1", "--replay", str(replay), "--out", str(tmp_path / "x")]  # fmt: skip
    with pytest.raises(SystemExit):
        main(["--init-from", str(tmp_path / "pong"), *small, "--early-ends", "true"])
    assert "Pong has none" in capsys.readouterr().err
