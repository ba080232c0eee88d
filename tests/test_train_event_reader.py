"""rem_train.train_event_reader, and rem-train with an event reader."""

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
from rem_train.train_event_reader import _reconstructed, dreamed_frames, main
from rem_train.trainer import Trainer


def _replay(folder: Path) -> Path:
    """Two episodes in which a bright square moves; a reward wherever it reaches column 30."""
    with ReplayBuffer(folder, (64, 64, 3)) as buffer:
        for t in range(40):
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[10:14, 20 + t % 20 : 24 + t % 20] = 200
            buffer.append(frame, t % 4, float(t % 20 == 10), terminated=t in (19, 39))
    return folder


def _source(folder: Path) -> tuple[Path, REMModel]:
    torch.manual_seed(0)
    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL, "Breakout"))
    model.save_pretrained(folder)
    return folder, model


def test_the_export_is_the_source_whose_rewards_the_reader_gives(tmp_path: Path) -> None:
    source, before = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "er"),
            "--pool", "8", "--steps", "3", "--eval-every", "2", "--eval-segments", "4",
            "--width", "4", "--heads", "rewards", "--frames", "real"]  # fmt: skip
    assert main(argv) == 0
    export = REMModel.from_pretrained(tmp_path / "er" / "export")
    assert export.config.world_model.event_reader_width == 4
    state, wm = export.state_dict(), export.world_model
    for key, value in before.state_dict().items():
        if ".head_reward." not in key:  # all but the reward head: kept
            assert torch.equal(state[key], value), key
    assert wm.head_reward[-1].weight.abs().sum() == 0 and wm.head_reward[-1].bias.abs().sum() == 0
    out = wm.event_reader.out
    assert out.weight[:3].abs().sum() > 0  # trained (it starts at zero) ...
    assert out.weight[3:].abs().sum() == 0 and out.bias[3:].abs().sum() == 0  # ... ends kept
    lines = [json.loads(line) for line in (tmp_path / "er" / "progress.jsonl").open()]
    assert lines[0]["rewards"] == 2 and lines[0]["ends"] == 2  # every event joins the pool
    assert 8 < lines[0]["pool"] <= 12
    assert [line["step"] for line in lines[1:]] == [2, 3]
    assert set(lines[-1]["reward"]) >= {"nll", "precision", "recall"}
    record = json.loads((tmp_path / "er" / "export" / "training.json").read_text())
    assert record["preset"] == "event reader training" and record["event_reader_trained_steps"] == 3


def test_the_export_is_the_evaluation_with_the_lowest_held_out_nll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rem_train.train_event_reader as module

    real, seen = module.check_events, []

    def check(model: REMModel, *args: object, **kwargs: object) -> dict[str, object]:
        result = real(model, *args, **kwargs)
        reader = model.world_model.event_reader.state_dict()
        seen.append({k: v.clone() for k, v in reader.items()})  # bias corrected, as exported
        nll = [0.5, 0.2, 0.9][len(seen) - 1]  # the second evaluation is the best
        return {name: dataclasses.replace(c, nll=nll) for name, c in result.items()}

    monkeypatch.setattr(module, "check_events", check)
    source, _ = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "er"),
            "--pool", "8", "--steps", "3", "--eval-every", "1", "--eval-segments", "2",
            "--width", "4", "--frames", "real"]  # fmt: skip
    assert main(argv) == 0
    exported = REMModel.from_pretrained(tmp_path / "er" / "export").world_model.event_reader
    for key, value in exported.state_dict().items():
        assert torch.equal(value, seen[1][key]), key
    assert not torch.equal(seen[1]["out.weight"], seen[2]["out.weight"])  # it trained on
    record = json.loads((tmp_path / "er" / "export" / "training.json").read_text())
    assert record["event_reader_steps"] == 2 and record["event_reader_trained_steps"] == 3


def test_the_bias_is_corrected_for_the_events_the_pool_holds_more_often(tmp_path: Path) -> None:
    """With the reader's weights untrained (lr 0) its export gives each reward class the log of
    its rate in the replay over its rate in the pool, and nothing to the ends (kept)."""
    source, _ = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "er"),
            "--pool", "6", "--steps", "1", "--eval-segments", "2", "--width", "4",
            "--heads", "rewards", "--frames", "real", "--lr", "0"]  # fmt: skip
    assert main(argv) == 0
    pool = json.loads((tmp_path / "er" / "progress.jsonl").open().readline())
    bias = REMModel.from_pretrained(tmp_path / "er" / "export").world_model.event_reader.out.bias
    no_reward = (pool["pool"] - pool["rewards"]) / pool["pool"]
    want = [0.0, np.log((38 / 40) / no_reward), np.log((2 / 40) / (pool["rewards"] / pool["pool"]))]
    assert bias[:3].tolist() == pytest.approx(want, abs=1e-5)
    assert bias[3:].tolist() == [0.0, 0.0]


def test_a_reader_trained_on_from_its_export_keeps_its_bias(tmp_path: Path) -> None:
    """An export's bias carries the correction for the pool's rates; trained on (lr 0) from that
    export on the same pool, the reader exports the same bias, not the correction twice."""
    source, _ = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    common = ["--replay", str(replay), "--pool", "6", "--steps", "1", "--eval-segments", "2",
              "--width", "4", "--heads", "rewards", "--frames", "real"]  # fmt: skip
    assert main(["--init-from", str(source), "--out", str(tmp_path / "a"), *common]) == 0
    first = REMModel.from_pretrained(tmp_path / "a" / "export").world_model.event_reader.out.bias
    argv = ["--init-from", str(tmp_path / "a" / "export"), "--out", str(tmp_path / "b"), *common]
    assert main([*argv, "--lr", "0"]) == 0
    again = REMModel.from_pretrained(tmp_path / "b" / "export").world_model.event_reader.out.bias
    assert first[1:3].abs().min() > 0.05  # a correction to keep
    assert again.tolist() == pytest.approx(first.tolist(), abs=1e-6)


def test_dreamed_frames_start_from_the_real_frames_before_the_dream(tmp_path: Path) -> None:
    """A step dreamed one step reads the reconstruction of the real frame before it and a frame
    the model dreamed from it; a step too near its episode's start reads its reconstructions."""
    _, model = _source(tmp_path / "source")
    model.eval()
    with ReplayBuffer(_replay(tmp_path / "replay"), read_only=True) as replay:
        labels, steps = replay.step_labels(), np.array([0, 1, 5, 12, 21, 30])
        real = np.stack([replay.observations_at(np.maximum(steps - 1, labels.episode_first[steps])),
                         replay.observations_at(steps)], 1)  # fmt: skip
        recon = _reconstructed(model, real)
        rng = np.random.default_rng(0)
        one = dreamed_frames(model, replay, labels, steps, 1, rng)
        two = dreamed_frames(model, replay, labels, steps, 2, np.random.default_rng(1))
    # context length 2: steps 0, 1 (episode start 0) and 21 (start 20) have no context
    near = np.isin(steps, [0, 1, 21])
    assert np.array_equal(one[near], recon[near]) and np.array_equal(two[0], recon[0])
    assert np.array_equal(one[~near, 0], recon[~near, 0])  # the real frame t-1, reconstructed
    assert not np.array_equal(one[~near, 1], recon[~near, 1])  # frame t: dreamed
    # two steps: frame t-1 of the steps dreamed twice is dreamed too
    assert any(not np.array_equal(two[i, 0], recon[i, 0]) for i in np.flatnonzero(~near))


def test_a_step_dreamed_zero_steps_reads_its_reconstructed_real_frames(tmp_path: Path) -> None:
    _, model = _source(tmp_path / "source")
    model.eval()
    with ReplayBuffer(_replay(tmp_path / "replay"), read_only=True) as replay:
        labels, steps = replay.step_labels(), np.array([3, 5, 8, 12, 15, 25, 28, 33, 36])
        real = np.stack([replay.observations_at(steps - 1), replay.observations_at(steps)], 1)
        recon = _reconstructed(model, real)
        zero = dreamed_frames(model, replay, labels, steps, 1, np.random.default_rng(0), 0)
        mixed = dreamed_frames(model, replay, labels, steps, 2, np.random.default_rng(0), 0)
    same = [np.array_equal(mixed[i], recon[i]) for i in range(len(steps))]
    assert np.array_equal(zero[:, 0], recon[:, 0])  # frame t-1: real at horizons 0 and 1
    assert 0 < sum(np.array_equal(zero[i], recon[i]) for i in range(len(steps))) < len(steps)
    assert 0 < sum(same) < len(steps)  # some drawn 0 (reconstructed), some dreamed


def test_a_reader_trained_on_dreamed_frames_keeps_the_lowest_dreamed_nll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rem_train.train_event_reader as module

    real, seen = module._pool_nll, []

    def pool_nll(reader: torch.nn.Module, pool: module.StepPool) -> dict[str, float]:
        assert len(pool) == 6  # the held-out pool: uniformly drawn steps only
        real(reader, pool)
        seen.append({k: v.clone() for k, v in reader.state_dict().items()})
        nll = [0.5, 0.9, 0.2][len(seen) - 1]  # the third evaluation is the best
        return {"rewards": nll, "ends": nll}

    monkeypatch.setattr(module, "_pool_nll", pool_nll)
    source, _ = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "er"),
            "--pool", "8", "--steps", "3", "--eval-every", "1", "--eval-segments", "2",
            "--width", "4", "--frames", "dreamed", "--dream-steps", "2",
            "--held-out-pool", "6"]  # fmt: skip
    assert main(argv) == 0
    lines = [json.loads(line) for line in (tmp_path / "er" / "progress.jsonl").open()]
    assert lines[0]["held_out_pool"] == 6 and lines[0]["rewards"] == 2
    assert [line["dreamed_nll"] for line in lines[1:]] == [
        {"rewards": n, "ends": n} for n in (0.5, 0.9, 0.2)
    ]
    exported = REMModel.from_pretrained(tmp_path / "er" / "export").world_model.event_reader
    for key, value in exported.state_dict().items():
        assert torch.equal(value, seen[2][key]), key
    record = json.loads((tmp_path / "er" / "export" / "training.json").read_text())
    assert record["event_reader_steps"] == 3 and record["config"]["frames"] == "dreamed"


def test_bad_settings_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    base = ["--init-from", str(source), "--replay", str(replay)]
    for extra, message in (
        (["--heads", "bricks"], "--heads must name rewards, ends or both"),
        (["--frames", "blurred"], "--frames must be one of reconstructed, real, dreamed"),
        (["--dream-steps", "0"], "--dream-steps must be at least 1"),
        (["--min-dream-steps", "4"], "--min-dream-steps must be 0 to --dream-steps"),
        (["--pool", "0"], "--pool must be at least 1"),
    ):
        with pytest.raises(SystemExit):
            main([*base, "--out", str(tmp_path / "x"), *extra])
        assert message in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "w"), "--steps", "1", "--pool", "4",
                 "--width", "4", "--frames", "real", "--eval-segments", "2"]) == 0  # fmt: skip
    with pytest.raises(SystemExit):  # its reader has width 4
        main(["--init-from", str(tmp_path / "w" / "export"), "--replay", str(replay),
              "--out", str(tmp_path / "y"), "--width", "8"])  # fmt: skip
    assert "has an event reader of width 4; give --width 4" in capsys.readouterr().err


def test_rem_train_adds_an_event_reader_at_zero_and_trains_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = _source(tmp_path / "source")
    config = TrainConfig.from_preset("smoke", "Breakout")
    common = dataclasses.replace(
        config.common, init_from=str(source), init_parts="tokenizer,world_model", epochs=2
    )
    phase = dataclasses.replace(config.world_model, start_after_epoch=1)
    config = dataclasses.replace(
        config, common=common, world_model=phase, world_model_event_reader=4
    )
    trainer = Trainer(config, tmp_path / "run")
    try:
        reader = trainer.model.world_model.event_reader
        assert reader is not None and reader.out.weight.abs().sum() == 0
        assert "an event reader added (at zero" in capsys.readouterr().out
        trainer.run()
        assert reader.out.weight.abs().sum() > 0  # the world-model phase trained it
    finally:
        trainer.close()
    with pytest.raises(ValueError, match="world_model_event_reader must be >= 0"):
        dataclasses.replace(config, world_model_event_reader=-1)


def test_the_dreamed_heads_read_the_decoded_dreamed_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--world-model.dreamed-heads-weight`` the reader reads the decodings of the
    segments' dreamed tokens as well as of the real ones (one forward of both)."""
    decoded: list[tuple[int, ...]] = []
    real = REMModel.segment_frames

    def recording(self: REMModel, obs_tokens: torch.Tensor) -> torch.Tensor | None:
        decoded.append(tuple(obs_tokens.shape))
        return real(self, obs_tokens)

    monkeypatch.setattr(REMModel, "segment_frames", recording)
    config = TrainConfig.from_preset("smoke", "Breakout")
    phase = dataclasses.replace(
        config.world_model, start_after_epoch=1, steps_per_epoch=1, dreamed_heads_weight=1.0
    )
    common = dataclasses.replace(config.common, epochs=2)
    config = dataclasses.replace(
        config, common=common, world_model=phase, world_model_event_reader=4
    )
    trainer = Trainer(config, tmp_path / "run")
    try:
        trainer.run()
    finally:
        trainer.close()
    b, t = phase.batch_size, phase.segment_length
    k = trainer.model.config.tokenizer.tokens_per_frame
    assert (b, t, k) in decoded  # the dreamed pass's forward
    assert (2 * b, t, k) in decoded  # the loss's forward: real segments, then dreamed ones
