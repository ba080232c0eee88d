"""rem_train.pretrain_frame_conv: a frame conv trained alone joins a model's world model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hang_guard import HANG_GUARD_S

from rem_env import REMConfig, REMModel
from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
from rem_train.pretrain_frame_conv import FrameConvPretrainConfig, learning_rate, main
from rem_train.replay import ReplayBuffer


def _replay(folder: Path) -> Path:
    """Two episodes of frames in which a bright square moves one pixel a step; a reward at
    every fifth step."""
    with ReplayBuffer(folder, (64, 64, 3)) as buffer:
        for t in range(24):
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[10 + t % 12 : 14 + t % 12, 20 + t : 24 + t] = 200
            buffer.append(frame, t % 4, float(t % 5 == 2), terminated=t in (11, 23))
    return folder


def _source(folder: Path, **world_model: int) -> Path:
    torch.manual_seed(0)
    config = REMConfig(
        4, SMOKE_TOKENIZER, dataclasses.replace(SMOKE_WORLD_MODEL, **world_model), "Breakout"
    )
    REMModel(config).save_pretrained(folder)
    return folder


def test_the_export_is_the_source_with_a_trained_frame_conv(tmp_path: Path) -> None:
    source = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "fc"),
            "--segments", "32", "--steps", "3", "--eval-every", "2", "--eval-segments", "4",
            "--layers", "2", "--width", "8"]  # fmt: skip
    assert main(argv) == 0
    export = REMModel.from_pretrained(tmp_path / "fc" / "export")
    before = REMModel.from_pretrained(source)
    assert export.config.world_model.frame_conv_layers == 2
    assert export.config.world_model.frame_conv_width == 8
    state = export.state_dict()
    for key, value in before.state_dict().items():  # tokenizer, RetNet, start contexts: kept
        assert torch.equal(state[key], value), key
    assert export.world_model.frame_conv.out.weight.abs().sum() > 0  # trained (it starts at 0)
    lines = [json.loads(line) for line in (tmp_path / "fc" / "progress.jsonl").open()]
    assert 32 < lines[0]["triples"] <= 32 * 8  # up to 8 triples in a segment of 10 frames
    assert [line["step"] for line in lines[1:]] == [2, 3]
    assert set(lines[-1]["ball"]) >= {"frames", "predicted", "patch_accuracy"}
    record = json.loads((tmp_path / "fc" / "export" / "training.json").read_text())
    assert record["preset"] == "frame conv pretraining" and record["frame_conv_steps"] == 3
    assert record["command"].startswith("python -m rem_train.pretrain_frame_conv --init-from")


def test_bad_starts_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replay = _replay(tmp_path / "replay")
    source = _source(tmp_path / "source", frame_conv_layers=1)
    with pytest.raises(SystemExit):
        main(["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "a")])
    assert (
        "has a frame conv of 1 layers of 128 channels; give --layers 1" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["--init-from", str(source), "--replay", str(tmp_path / "nowhere"),
              "--out", str(tmp_path / "b")])  # fmt: skip
    assert "no replay folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "c"),
              "--steps", "0"])  # fmt: skip
    assert "--steps must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "d"),
              "--max-minutes", "-1"])  # fmt: skip
    assert "--max-minutes must be 0 (no limit) or positive" in capsys.readouterr().err


def _first_export(tmp_path: Path) -> tuple[Path, list[str]]:
    """A source's export with a small frame conv pretrained (2 steps) on it, and the options
    that pretraining took (to train on it the same way)."""
    source = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    common = ["--replay", str(replay), "--segments", "16", "--steps", "2", "--eval-every", "2",
              "--eval-segments", "4", "--layers", "1", "--width", "8"]  # fmt: skip
    assert main(["--init-from", str(source), "--out", str(tmp_path / "first"), *common]) == 0
    return tmp_path / "first" / "export", common


def test_an_export_s_frame_conv_of_the_same_sizes_is_trained_on(tmp_path: Path) -> None:
    first, common = _first_export(tmp_path)
    assert main(["--init-from", str(first), "--out", str(tmp_path / "second"), *common]) == 0
    before = REMModel.from_pretrained(first).state_dict()
    after = REMModel.from_pretrained(tmp_path / "second" / "export").state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():  # only the frame conv trains on
        assert torch.equal(after[key], value) != (".frame_conv." in key), key
    record = json.loads((tmp_path / "second" / "export" / "training.json").read_text())
    assert record["lineage"][-1]["preset"] == "frame conv pretraining"
    # --copy true gives that frame conv a copy gate (from zero) and trains it with the rest
    assert main(["--init-from", str(first), "--out", str(tmp_path / "third"), "--copy", "true",
                 *common]) == 0  # fmt: skip
    third = REMModel.from_pretrained(tmp_path / "third" / "export")
    assert third.config.world_model.frame_conv_copy
    assert third.world_model.frame_conv.copy_gate.weight.abs().sum() > 0
    assert set(third.state_dict()) - set(before) == {
        "world_model.frame_conv.copy_gate.weight", "world_model.frame_conv.copy_gate.bias"
    }  # fmt: skip


def test_events_train_the_frame_conv_s_event_layers_and_replace_the_heads(
    tmp_path: Path,
) -> None:
    """--events-weight: the export's frame conv reads rewards and ends (trained from zero), the
    RetNet's reward and end heads give nothing more (their output layers at zero), and every
    evaluation checks the heads on the held-out segments."""
    source = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "fc"),
            "--segments", "16", "--steps", "2", "--eval-every", "2", "--eval-segments", "4",
            "--layers", "1", "--width", "8", "--events-weight", "1"]  # fmt: skip
    assert main(argv) == 0
    export = REMModel.from_pretrained(tmp_path / "fc" / "export")
    assert export.config.world_model.frame_conv_events
    conv, wm = export.world_model.frame_conv, export.world_model
    assert conv.event_out.weight.abs().sum() > 0  # trained (it starts at 0)
    for head in (wm.head_reward, wm.head_end):
        assert head[-1].weight.abs().sum() == 0 and head[-1].bias.abs().sum() == 0
    before = REMModel.from_pretrained(source).state_dict()
    for key, value in before.items():  # the rest of the heads, the RetNet, the tokenizer
        if not key.startswith(("world_model.head_reward.2", "world_model.head_end.2")):
            assert torch.equal(export.state_dict()[key], value), key
    lines = [json.loads(line) for line in (tmp_path / "fc" / "progress.jsonl").open()]
    assert lines[0]["event_steps"] > lines[0]["triples"] and lines[0]["rewards"] > 0
    assert lines[0]["ends"] > 0  # the step that ends an episode is among them
    assert set(lines[-1]["reward"]) >= {"steps", "events", "nll", "precision", "recall"}
    assert lines[-1]["end"]["steps"] > 0
    record = json.loads((tmp_path / "fc" / "export" / "training.json").read_text())
    assert record["event_steps"] == lines[0]["event_steps"]


def test_token_weight_0_trains_only_the_event_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _source(tmp_path / "source", frame_conv_layers=1, frame_conv_width=8)
    replay = _replay(tmp_path / "replay")
    common = ["--init-from", str(source), "--replay", str(replay), "--segments", "16",
              "--steps", "4", "--eval-every", "2", "--eval-segments", "4", "--layers", "1",
              "--width", "8", "--token-weight", "0"]  # fmt: skip
    with pytest.raises(SystemExit):
        main([*common, "--out", str(tmp_path / "none")])
    assert "--token-weight 0 trains only the event layers" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "fc"), "--events-weight", "2"]) == 0
    before = REMModel.from_pretrained(source).state_dict()
    after = REMModel.from_pretrained(tmp_path / "fc" / "export").state_dict()
    for key, value in before.items():  # the frame conv's token layers are kept
        if ".head_reward.2." not in key and ".head_end.2." not in key:
            assert torch.equal(after[key], value), key
    assert after["world_model.frame_conv.event_out.weight"].abs().sum() > 0
    # The next frame does not change: its object check ran once, the heads' check every time.
    lines = [json.loads(line) for line in (tmp_path / "fc" / "progress.jsonl").open()]
    evaluations = [line for line in lines if "step" in line]
    assert [line["step"] for line in evaluations] == [2, 4]
    assert ["ball" in line for line in evaluations] == [True, False]
    assert all("reward" in line for line in evaluations)


def test_a_time_budget_stops_it_with_an_evaluated_export(tmp_path: Path) -> None:
    source = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "fc"),
            "--segments", "8", "--steps", "1000", "--eval-every", "500", "--eval-segments", "4",
            "--layers", "1", "--width", "8", "--max-minutes", "1e-6"]  # fmt: skip
    assert main(argv) == 0  # the first step already spends the budget
    lines = [json.loads(line) for line in (tmp_path / "fc" / "progress.jsonl").open()]
    assert [line.get("step") for line in lines] == [None, 1]
    assert "ball" in lines[-1]
    record = json.loads((tmp_path / "fc" / "export" / "training.json").read_text())
    assert record["frame_conv_steps"] == 1 and record["config"]["max_minutes"] == 1e-6


GATHER_MEMORY = textwrap.dedent("""
    import sys, tempfile
    import numpy as np
    from rem_env import REMConfig, REMModel
    from rem_train.config import SMOKE_TOKENIZER, SMOKE_WORLD_MODEL
    from rem_train.pretrain_frame_conv import gather_triples
    from rem_train.replay import ReplayBuffer

    def anonymous_kib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    model = REMModel(REMConfig(4, SMOKE_TOKENIZER, SMOKE_WORLD_MODEL))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder, ReplayBuffer(folder, (64, 64, 3)) as buffer:
        for t in range(300):
            frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            buffer.append(frame, t % 4, 0.0, terminated=t % 100 == 99)
        gather_triples(model, [buffer], 16, 10.0, seed=0)  # imports and first allocations
        before = anonymous_kib()
        triples = gather_triples(model, [buffer], 1000, 10.0, seed=0)
        grown = anonymous_kib() - before
    kept = (triples.tokens, triples.actions, triples.weights)
    own = sum(t.element_size() * t.numel() for t in kept)
    print(own // 1024, grown)
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_gathering_triples_keeps_little_more_than_the_triples() -> None:
    # Kept as many small tensors, 1,000 segments' triples (13.6 MiB) held ~140 MiB of fragmented
    # heap after the tokenizer's temporaries (30,000 segments: 9 GB); filled in place, 19-28 MiB
    # (the tensors' unused tail and the allocator's own). A fresh process, so that no other
    # test's allocations change the heap.
    done = subprocess.run(
        [sys.executable, "-c", GATHER_MEMORY], capture_output=True, text=True,
        timeout=HANG_GUARD_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    own_kib, grown_kib = map(int, done.stdout.split())
    assert own_kib > 10_000  # the triples of 1,000 segments of random frames
    assert grown_kib < 4 * own_kib, (own_kib, grown_kib)


def test_a_world_model_with_its_own_token_embeddings_is_trained_on_them(tmp_path: Path) -> None:
    """The frame conv reads the world model's observation embedding; a world model that does
    not share the tokenizer's codebook (the patch model's) has its own, of its own width."""
    source = _source(tmp_path / "source", shared_embeddings=False, embed_dim=48)
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "fc"),
            "--segments", "16", "--steps", "2", "--eval-every", "2", "--eval-segments", "4",
            "--layers", "1", "--width", "8"]  # fmt: skip
    assert main(argv) == 0
    export = REMModel.from_pretrained(tmp_path / "fc" / "export")
    assert export.world_model.frame_conv.out.weight.abs().sum() > 0


def test_train_embedding_trains_the_world_model_s_own_token_embedding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _source(tmp_path / "source", shared_embeddings=False, embed_dim=48)
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--segments", "16",
            "--steps", "2", "--eval-every", "2", "--eval-segments", "4", "--layers", "1",
            "--width", "8"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "fc"), "--train-embedding", "true"]) == 0
    before = REMModel.from_pretrained(source).world_model.embedding.weight
    after = REMModel.from_pretrained(tmp_path / "fc" / "export").world_model.embedding.weight
    vocab = SMOKE_TOKENIZER.vocab_size
    assert not torch.equal(after[:vocab], before[:vocab])  # the tokens' rows trained
    assert torch.equal(after[vocab:], before[vocab:])  # the actions' rows did not
    assert main([*argv, "--out", str(tmp_path / "fc2"), "--train-embedding", "false"]) == 0
    kept = REMModel.from_pretrained(tmp_path / "fc2" / "export").world_model.embedding.weight
    assert torch.equal(kept, before)
    shared = _source(tmp_path / "shared")
    with pytest.raises(SystemExit):
        main([*argv, "--init-from", str(shared), "--out", str(tmp_path / "fc3"),
              "--train-embedding", "true"])  # fmt: skip
    assert "tokenizer's codebook (shared_embeddings)" in capsys.readouterr().err


def test_end_share_draws_the_last_steps_of_ended_episodes_without_their_padding(
    tmp_path: Path,
) -> None:
    """--end-share 1: every segment is an episode's last 10 steps (one end in each); an episode
    shorter than that is padded at the front, and no triple or step reads the padding."""
    from rem_train.pretrain_frame_conv import gather

    model = REMModel.from_pretrained(_source(tmp_path / "source"))
    with ReplayBuffer(tmp_path / "replay", (64, 64, 3)) as buffer:
        for length in (6, 30):  # two episodes that end: 6 and 30 steps
            for t in range(length):
                frame = np.zeros((64, 64, 3), np.uint8)
                frame[10 + t % 12 : 14 + t % 12, 20 + t : 24 + t] = 200  # never a black frame
                buffer.append(frame, t % 4, 0.0, terminated=t == length - 1)
        triples, steps = gather(model, [buffer], 16, 10.0, seed=0, events=True, end_share=1.0)
    black = model.tokenizer.encode(torch.zeros(1, 3, 64, 64)).tokens[0]  # a padded frame's
    assert not (triples.tokens == black).all(dim=-1).any()
    assert not (steps.tokens == black).all(dim=-1).any()
    assert int(steps.ends.sum()) == 16  # one end per segment
    short = (len(triples) - 16 * 4) // 4  # 4 triples from the short episode, 8 from the long
    assert len(triples) == 16 * 4 + 4 * short and 0 < short < 16


def test_end_lead_draws_the_steps_before_an_episode_s_last_ones(tmp_path: Path) -> None:
    """--end-lead L: the end-share segments stop L steps before the end (Breakout's ball
    leaves the screen about 10 steps before it), and hold no end."""
    with ReplayBuffer(tmp_path / "replay", (2, 2, 3)) as buffer:
        for t in range(30):  # one episode of 30 steps that ended: step t took action t
            buffer.append(np.zeros((2, 2, 3), np.uint8), t, 0.0, terminated=t == 29)
        rng = np.random.default_rng(0)
        led = buffer.sample_episode_ends(2, 10, rng, lead=6)
        assert led.actions.tolist() == [list(range(14, 24))] * 2 and not led.ends.any()
        assert buffer.sample_episode_ends(1, 10, rng).actions.tolist() == [list(range(20, 30))]
        padded = buffer.sample_episode_ends(1, 10, rng, lead=25)  # 5 real steps, then padding
        assert padded.mask.tolist() == [[False] * 5 + [True] * 5]
        with pytest.raises(ValueError, match="lead must be >= 0"):
            buffer.sample_episode_ends(1, 10, rng, lead=-1)


def test_the_command_refuses_a_negative_end_lead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replay = _replay(tmp_path / "replay")
    with pytest.raises(SystemExit):
        main(["--init-from", str(tmp_path), "--replay", str(replay), "--out", str(tmp_path / "o"),
              "--end-lead", "-2"])  # fmt: skip
    assert "--end-lead must be >= 0, got -2" in capsys.readouterr().err


def test_frames_gathers_each_triple_with_the_frames_before_it(tmp_path: Path) -> None:
    """--frames F: each predicted frame comes with the F frames before it (those before the
    segment's first: -1) and each step with its frame and the F - 1 before it; the latest of
    them are the triples and steps of two frames."""
    from rem_train.pretrain_frame_conv import gather

    model = REMModel.from_pretrained(_source(tmp_path / "source"))
    with ReplayBuffer(_replay(tmp_path / "replay"), read_only=True) as buffer:
        two = gather(model, [buffer], 12, 10.0, seed=3, events=True)
        four = gather(model, [buffer], 12, 10.0, seed=3, events=True, frames=4)
    for (a, b), width in zip(zip(two, four, strict=True), (3, 2), strict=True):
        assert b.tokens.shape[1:] == (width + 2, 64)
        assert torch.equal(b.tokens[:, -width:], a.tokens) and torch.equal(b.actions, a.actions)
    windows, steps = four
    assert (windows.tokens[:, -3:] >= 0).all() and (steps.tokens[:, -2:] >= 0).all()
    missing = (windows.tokens[:, :2] < 0).all(dim=-1)  # (N, 2): frames t-4, t-3 not in it
    present = (windows.tokens[:, :2] >= 0).all(dim=-1)
    assert (missing | present).all()  # a frame is missing whole or not at all
    assert missing.any() and present.all(dim=1).any()
    assert not (missing[:, 1] & ~missing[:, 0]).any()  # t-3 missing: t-4 missing too


def test_frames_widens_a_frame_conv_of_fewer_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two, common = _first_export(tmp_path)
    assert main(["--init-from", str(two), "--out", str(tmp_path / "four"), "--frames", "4",
                 *common]) == 0  # fmt: skip
    four = REMModel.from_pretrained(tmp_path / "four" / "export")
    conv = four.world_model.frame_conv
    assert four.config.world_model.frame_conv_frames == 4 and conv.frames == 4
    assert conv.layers[0].weight[:, conv.latest_channels :].abs().sum() > 0  # trained from 0
    tokens, actions = torch.randint(16, (2, 6, 64)), torch.randint(4, (2, 6))
    state = four.world_model.start_state(tokens[:, :2], actions[:, :1], four.tokenizer.codebook)
    assert state.recent_obs_tokens.shape == (2, 3, 64)
    with pytest.raises(SystemExit):
        main(["--init-from", str(tmp_path / "four" / "export"), "--out", str(tmp_path / "back"),
              *common])  # fmt: skip
    assert "reads 4 frames; give --frames 4 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--init-from", str(two), "--out", str(tmp_path / "one"), "--frames", "1", *common])
    assert "--frames must be in [2, 10), got 1" in capsys.readouterr().err


def test_a_cosine_schedule_lowers_the_learning_rate_to_lr_final(tmp_path: Path) -> None:
    source = _source(tmp_path / "source")
    replay = _replay(tmp_path / "replay")
    argv = ["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "fc"),
            "--segments", "8", "--steps", "5", "--eval-every", "1", "--eval-segments", "4",
            "--layers", "1", "--width", "8", "--lr", "1e-3", "--lr-schedule", "cosine",
            "--lr-final", "1e-4"]  # fmt: skip
    assert main(argv) == 0
    lines = [json.loads(line) for line in (tmp_path / "fc" / "progress.jsonl").open()][1:]
    rates = [line["lr"] for line in lines]  # the rate of each step, taken after 0..4 of 5 spent
    expected = [1e-4 + 9e-4 * (1 + np.cos(np.pi * spent / 5)) / 2 for spent in range(5)]
    assert rates == pytest.approx(expected, rel=1e-2)
    assert rates[0] == pytest.approx(1e-3) and rates == sorted(rates, reverse=True)
    record = json.loads((tmp_path / "fc" / "export" / "training.json").read_text())
    assert record["config"]["lr_schedule"] == "cosine"


def test_the_command_refuses_an_unknown_schedule_or_a_final_rate_above_lr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replay = _replay(tmp_path / "replay")
    common = ["--init-from", str(tmp_path), "--replay", str(replay), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main([*common, "--lr-schedule", "linear"])
    assert "--lr-schedule must be one of constant, cosine, got 'linear'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lr_schedule must be one of"):  # not through the CLI
        learning_rate(FrameConvPretrainConfig(lr_schedule="linear"), 0.5)
    with pytest.raises(SystemExit):
        main([*common, "--lr-schedule", "cosine", "--lr", "1e-4", "--lr-final", "1e-3"])
    assert "--lr-final must be in (0, --lr], got 0.001" in capsys.readouterr().err
    source = _source(tmp_path / "source")  # a constant rate below the default final one is fine
    assert main(["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "f"),
                 "--segments", "8", "--steps", "1", "--eval-segments", "4", "--layers", "1",
                 "--width", "8", "--lr", "1e-6"]) == 0  # fmt: skip


def test_pixels_gives_the_frame_conv_the_codes_pixels_and_trains_it_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rem_env.config import TokenizerConfig
    from rem_env.models.frame_conv import PIXEL_CHANNELS

    torch.manual_seed(0)
    patches = TokenizerConfig(image_size=64, num_downsamples=3, vocab_size=16, embed_dim=192,
                              kind="patch")  # fmt: skip
    world_model = dataclasses.replace(
        SMOKE_WORLD_MODEL, shared_embeddings=False, frame_conv_layers=1, frame_conv_width=8,
        frame_conv_frames=4,
    )  # fmt: skip
    source = tmp_path / "source"
    REMModel(REMConfig(4, patches, world_model, "Breakout")).save_pretrained(source)
    replay = _replay(tmp_path / "replay")
    common = ["--replay", str(replay), "--segments", "16", "--steps", "2", "--eval-every", "2",
              "--eval-segments", "4", "--layers", "1", "--width", "8", "--frames", "4"]  # fmt: skip
    out = tmp_path / "pixels"
    assert main(["--init-from", str(source), "--out", str(out), "--pixels", "true", *common]) == 0
    export = REMModel.from_pretrained(out / "export")
    assert export.config.world_model.frame_conv_pixels == 8
    conv = export.world_model.frame_conv
    assert conv.pixels == 8 and conv.layers[0].weight[:, -PIXEL_CHANNELS:].abs().sum() > 0
    before = REMModel.from_pretrained(source).state_dict()
    for key, value in export.state_dict().items():  # all but the frame conv: the source's
        if ".frame_conv." not in key:
            assert torch.equal(value, before[key]), key
    card = (out / "export" / "README.md").read_text()
    assert "with a frame conv of 4 frames that reads the frames' pixels (not in REM)" in card
    again = tmp_path / "again"  # a frame conv that reads pixels is trained on
    assert main(["--init-from", str(out / "export"), "--out", str(again), "--pixels", "true",
                 *common]) == 0  # fmt: skip
    trained_on = REMModel.from_pretrained(again / "export").state_dict()
    assert trained_on.keys() == export.state_dict().keys()
    two = [*common[:-1], "2"]
    for init_from, bad, message in (
        (out / "export", [], "reads pixels: give --pixels true"),
        (source, ["--pixels", "true", *two], "frame conv of 4 frames: give --frames 4"),
    ):
        with pytest.raises(SystemExit):
            main(["--init-from", str(init_from), "--out", str(tmp_path / "x"), *common, *bad])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # REM's VQ-VAE has no patches of pixels
        main(["--init-from", str(_source(tmp_path / "vq")), "--out", str(tmp_path / "y"),
              "--pixels", "true", *common])  # fmt: skip
    assert "tokenizer is of kind 'vqvae'" in capsys.readouterr().err


def test_start_share_draws_the_first_steps_of_episodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--start-share 1: every segment is an episode's first 10 steps, each episode as likely
    (one of 6 steps, padded at the end, and one of 40); the rest of a segment never reads past
    its episode."""
    from rem_train.pretrain_frame_conv import gather

    model = REMModel.from_pretrained(_source(tmp_path / "source"))
    with ReplayBuffer(tmp_path / "replay", (64, 64, 3)) as buffer:
        for length in (6, 40):
            for t in range(length):
                frame = np.zeros((64, 64, 3), np.uint8)
                frame[10 + t % 12 : 14 + t % 12, 20 + t : 24 + t] = 200
                buffer.append(frame, (t + length) % 4, 0.0, terminated=t == length - 1)
        triples, steps = gather(model, [buffer], 32, 10.0, seed=0, events=True, start_share=1.0)
        first = buffer.sample_episode_starts(2, 10, np.random.default_rng(0))
    longer = (len(triples) - 32 * 4) // 4  # 4 triples from the short episode, 8 from the long
    assert len(triples) == 32 * 4 + 4 * longer and 0 < longer < 32
    assert int(steps.ends.sum()) == 32 - longer  # the short episode's end, none of the long's
    # Each triple's action is one of the episodes' first 9 actions, never a later one.
    firsts = {(t + length) % 4 for length in (6, 40) for t in range(min(length, 9))}
    assert set(triples.actions.tolist()) <= firsts
    assert first.mask.sum() in (12, 16, 20)  # 6 or 10 real steps a segment
    source = tmp_path / "source"
    replay = _replay(tmp_path / "replay2")
    with pytest.raises(SystemExit):
        main(["--init-from", str(source), "--replay", str(replay), "--out", str(tmp_path / "x"),
              "--end-share", "0.6", "--start-share", "0.5"])  # fmt: skip
    assert "--start-share must be in [0, 1 - --end-share] = [0, 0.4], got 0.5" in (
        capsys.readouterr().err
    )


def test_moving_from_context_weighs_each_predicted_frame_by_the_frames_before_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--moving-from context: a triple's weights are the movement of its frames t-2 -> t-1
    (moving_patch_weights(moving_from="context") at t); the square of the replay moves at
    every step, so both ways weigh some patches up, but not the same ones."""
    from rem_train.pretrain_frame_conv import gather

    model = REMModel.from_pretrained(_source(tmp_path / "source"))
    with ReplayBuffer(_replay(tmp_path / "replay"), read_only=True) as buffer:
        target = gather(model, [buffer], 12, 10.0, seed=3, events=False)[0]
        context = gather(model, [buffer], 12, 10.0, seed=3, events=False, moving_from="context")[0]
    assert torch.equal(target.tokens, context.tokens)
    assert (context.weights == 11).any() and not torch.equal(target.weights, context.weights)
    with pytest.raises(SystemExit):
        main(["--init-from", str(tmp_path / "source"), "--replay", str(tmp_path / "replay"),
              "--out", str(tmp_path / "x"), "--moving-from", "next"])  # fmt: skip
    assert "--moving-from must be one of target, context, got 'next'" in capsys.readouterr().err


def test_completion_trains_a_completion_that_starts_as_the_model_it_joins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--completion N`` adds a completion at zero (the world model dreams the very frames it
    dreamed before) and trains it on the frames' hidden patches; a completion of other sizes
    is a clear error."""
    first, common = _first_export(tmp_path)
    out = tmp_path / "completion"
    assert main(["--init-from", str(first), "--out", str(out), "--completion", "2",
                 *common]) == 0  # fmt: skip
    export = REMModel.from_pretrained(out / "export")
    conv = export.world_model.frame_conv
    assert export.config.world_model.frame_conv_completion == 2 and len(conv.completion) == 4
    assert conv.completion_out.weight.abs().sum() > 0  # trained (it starts at zero)
    card = (out / "export" / "README.md").read_text()
    assert "and draws each frame in rounds (a completion)" in card

    # At zero, the completion changes no dreamed frame: each patch keeps its logits and noise.
    before = REMModel.from_pretrained(first)
    grown = REMModel(export.config)
    grown.load_state_dict(before.state_dict(), strict=False)
    tokens, actions = torch.randint(16, (3, 2, 64)), torch.randint(4, (3, 1))
    dreams = []
    for model in (before, grown):
        torch.manual_seed(5)
        world_model, codebook = model.world_model.eval(), model.tokenizer.codebook
        state = world_model.start_state(tokens, actions, codebook)
        with torch.no_grad():
            steps = []
            for _ in range(3):
                step, state = world_model.step(state, torch.tensor([1, 2, 3]), codebook=codebook)
                steps.append(step.obs_tokens)
        dreams.append(torch.stack(steps))
    assert torch.equal(dreams[0], dreams[1])

    with pytest.raises(SystemExit):
        main(["--init-from", str(out / "export"), "--out", str(tmp_path / "x"), "--completion",
              "3", *common])  # fmt: skip
    assert "has a completion of 2 layers; give --completion 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--init-from", str(first), "--out", str(tmp_path / "y"), "--completion", "-1",
              *common])  # fmt: skip
    assert "--completion must be >= 0" in capsys.readouterr().err


def test_completion_only_trains_the_completion_and_keeps_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--completion-only true``: only the completion's weights change; without a completion,
    or with event layers or the embedding to train, it is a clear error."""
    first, common = _first_export(tmp_path)
    out = tmp_path / "only"
    assert main(["--init-from", str(first), "--out", str(out), "--completion", "2",
                 "--completion-only", "true", *common]) == 0  # fmt: skip
    before = REMModel.from_pretrained(first).state_dict()
    after = REMModel.from_pretrained(out / "export").state_dict()
    kept = [key for key in after if ".frame_conv.completion" not in key]
    assert kept == list(before) and all(torch.equal(after[key], before[key]) for key in kept)
    out_weight = [value for key, value in after.items() if "completion_out.weight" in key]
    assert out_weight[0].abs().sum() > 0  # trained (it starts at zero)
    for bad, message in (
        ([], "trains a completion: give --completion C"),
        (["--completion", "2", "--events-weight", "1"], "no --events-weight or --train-embedding"),
    ):
        with pytest.raises(SystemExit):
            main(["--init-from", str(first), "--out", str(tmp_path / "x"), "--completion-only",
                  "true", *bad, *common])  # fmt: skip
        assert message in capsys.readouterr().err
