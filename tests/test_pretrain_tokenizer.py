"""Tokenizer pretraining on real frames (python -m rem_train.pretrain_tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rem_env import REMModel
from rem_env.actor_critic_files import load_actor_critic, save_actor_critic
from rem_env.models.actor_critic import ActorCritic
from rem_train.batches import frames_to_tensor
from rem_train.config import TrainConfig
from rem_train.export import START_CONTEXTS, play_start_contexts
from rem_train.pretrain_tokenizer import FrameSet, PretrainConfig, main, pretrain


def test_a_short_run_grows_the_codebook_logs_the_ball_and_resumes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    start = REMModel(TrainConfig.from_preset("cpu", "Breakout").model_config())
    start.save_pretrained(tmp_path / "start")
    config = PretrainConfig(
        frames=80, held_out=40, steps=2, batch_size=4, micro_batch=2, eval_every=1,
        vocab_size=512, restart_dead_codes_every=1, warmup_steps=1,
    )  # fmt: skip
    export = pretrain(config, tmp_path / "run", init_from=str(tmp_path / "start"))
    model = REMModel.from_pretrained(export)
    assert model.config.tokenizer.vocab_size == 512
    kept = model.tokenizer.encoder.conv_in.weight
    assert not torch.equal(kept, start.tokenizer.encoder.conv_in.weight)  # it trained
    records = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").open()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert {"psnr", "codes_used", "ball_recall", "ball_frames"} <= records[-1].keys()
    # the added codes started as copies of the first 256 (never picked); restarts moved them
    added, first = model.tokenizer.codebook[256:], start.tokenizer.codebook
    assert not (added == first).all(dim=1).any()
    # the start contexts are real openings in the new tokenizer's codes
    tokens, actions = play_start_contexts(model, "Breakout", START_CONTEXTS, seed=config.seed)
    assert torch.equal(model.start_tokens, tokens) and torch.equal(model.start_actions, actions)
    # a second call resumes at step 2 and goes on to 3
    assert main(["--out", str(tmp_path / "run"), "--steps", "3", "--frames", "80",
                 "--held-out", "40", "--batch-size", "4", "--micro-batch", "2",
                 "--eval-every", "1", "--vocab-size", "512",
                 "--init-from", str(tmp_path / "start")]) == 0  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").open()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    info = json.loads((export / "tokenizer_pretraining.json").read_text())
    assert info["steps"] == 3 and info["init_from"] == str(tmp_path / "start")
    training = json.loads((export / "training.json").read_text())  # read by --init-from
    assert training["tokenizer_steps"] == "2-3" and "--steps 3" in training["command"]
    assert [step["tokenizer_steps"] for step in training["lineage"]] == ["0-2"]


def test_decoder_only_keeps_every_token_the_world_model_and_the_actor_critic(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    start = REMModel(TrainConfig.from_preset("cpu", "Breakout").model_config())
    start.save_pretrained(tmp_path / "start")
    actor_critic = ActorCritic.from_config(start.config, hidden_size=32)
    save_actor_critic(actor_critic, tmp_path / "start")
    evaluation = {"scores": [3.0, 5.0], "mean": 4.0, "std": 1.0}
    record = {"command": "rem-train --preset cpu", "preset": "cpu", "evaluation": evaluation}
    (tmp_path / "start" / "training.json").write_text(json.dumps(record))
    manifest_file = tmp_path / "start" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["training"] = {"env_steps": 1234, "epochs": 5}
    manifest_file.write_text(json.dumps(manifest))
    config = PretrainConfig(
        frames=80, held_out=40, steps=2, batch_size=4, micro_batch=2, eval_every=1,
        warmup_steps=1, lr=1e-2, decoder_only=True,
    )  # fmt: skip
    export = pretrain(config, tmp_path / "run", init_from=str(tmp_path / "start"))
    model = REMModel.from_pretrained(export)
    trained, before = model.state_dict(), start.state_dict()
    changed = {key for key in before if not torch.equal(trained[key], before[key])}
    assert changed and all(
        key.startswith(("tokenizer.decoder.", "tokenizer.post_quant_conv.")) for key in changed
    )
    frames = FrameSet.load(tmp_path / "run" / "frames.npz").frames
    batch = frames_to_tensor(frames[:32])
    with torch.no_grad():
        assert torch.equal(model.encode(batch), start.encode(batch))
    shipped = load_actor_critic(export).state_dict()
    assert all(torch.equal(shipped[k], v) for k, v in actor_critic.state_dict().items())
    # its record keeps the source's actor-critic evaluation (the decoder cannot change it)
    training = json.loads((export / "training.json").read_text())
    assert training["evaluation"] == evaluation
    assert training["init_from"]["source"] == str(tmp_path / "start")
    assert [step["command"] for step in training["lineage"]] == ["rem-train --preset cpu"]
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["training"] == {"env_steps": 1234, "epochs": 5}  # the source's, as noted


def test_decoder_only_without_a_model_to_start_from_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "run"), "--decoder-only", "true"])
    assert stop.value.code == 2
    assert "give init_from" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # a decoder-only run folder resumed as a whole-tokenizer run: said before any work
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "state.json").write_text(json.dumps({"step": 2, "decoder_only": True}))
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "dec"), "--init-from", str(tmp_path / "model")])
    assert stop.value.code == 2 and "decoder_only True" in capsys.readouterr().err
